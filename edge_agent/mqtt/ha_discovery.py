"""Home Assistant MQTT discovery: one sensor per class (and one for the total) of each source, reading
the source's retained state topic, so a camera's object counts appear in Home Assistant on their own.

Published retained when a source first produces a result and again on every connect. Availability
follows the device's status topic (``online``; ``offline`` and ``stopped`` both mean unavailable).
"""

from __future__ import annotations

import json
import re
from typing import Any

from edge_agent.mqtt.topics import Topics, dumps


def _object_id(text: str) -> str:
    return re.sub(r"[^a-z0-9_]+", "_", text.lower()).strip("_") or "x"


def configs(topics: Topics, discovery_prefix: str, version: str, source_id: str,
            class_names: tuple[str, ...]) -> list[tuple[str, bytes]]:
    device_id = topics.device_id
    node = _object_id(device_id)
    device = {"identifiers": [f"edge-agent_{node}"], "name": device_id, "manufacturer": "edge-agent",
              "model": "edge-agent", "sw_version": version}
    availability = [{"topic": topics.status,
                     "value_template": "{{ 'online' if value == 'online' else 'offline' }}",
                     "payload_available": "online", "payload_not_available": "offline"}]
    out: list[tuple[str, bytes]] = []
    sensors: list[tuple[str, str, str]] = [
        (name, f"{source_id} {name}", "{{ value_json.counts.get(" + json.dumps(name) + ", 0) }}")
        for name in dict.fromkeys(class_names)
    ]
    sensors.append(("total", f"{source_id} total", "{{ value_json.total }}"))
    for key, title, template in sensors:
        object_id = f"{_object_id(source_id)}_{_object_id(key)}"
        body: dict[str, Any] = {
            "name": title,
            "unique_id": f"edge-agent_{node}_{object_id}",
            "object_id": f"{node}_{object_id}",
            "state_topic": topics.state(source_id),
            "value_template": template,
            "unit_of_measurement": "objects",
            "state_class": "measurement",
            "icon": "mdi:counter",
            "availability": availability,
            "availability_mode": "all",
            "device": device,
            "origin": {"name": "edge-agent", "sw_version": version},
            "json_attributes_topic": topics.state(source_id),
            "json_attributes_template": '{{ {"model_id": value_json.model_id, "frame_id": value_json.frame_id}'
                                        " | tojson }}",
        }
        out.append((f"{discovery_prefix}/sensor/{node}/{object_id}/config", dumps(body)))
    return out
