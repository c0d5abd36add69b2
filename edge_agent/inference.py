"""``Inference``: what every producer of results (HTTP requests, pipelines, MQTT commands, the watchdog)
uses to get a model and run it.

``model`` pulls an id the store lacks from Roboflow's API (unless the device is offline) and loads it
through the ``ModelManager``; ``infer`` runs a loaded model, counts the images, and announces each
result on the event bus when the producer names a ``source``. Producers receive this object, not the
``Runtime``: it is the only way they reach the models.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from edge_agent.events import EventBus, PredictionEvent
from edge_agent.metrics import Metrics
from edge_agent.params import InferenceParams
from edge_agent.provisioning.provisioner import Provisioner
from edge_agent.results import Result
from edge_agent.serving.manager import LoadedModel, ModelManager


class Inference:
    def __init__(self, provisioner: Provisioner, manager: ModelManager, metrics: Metrics, events: EventBus) -> None:
        self._provisioner = provisioner
        self._manager = manager
        self._metrics = metrics
        self._events = events

    def model(self, model_id: str, api_key: str | None = None) -> tuple[LoadedModel, bool]:
        """The loaded model and whether this call loaded it; an id the store lacks is first pulled
        from Roboflow's API with the caller's ``api_key`` (or ``[models] api_key``) unless the device
        is configured offline."""
        self._provisioner.pull(model_id, api_key)
        return self._manager.get(model_id)

    def serving(self, model_id: str) -> LoadedModel | None:
        """The model served for ``model_id`` now, if it is loaded (no load, no pull)."""
        return self._manager.peek(model_id)

    def infer(self, loaded: LoadedModel, images: list[np.ndarray], params: InferenceParams,
              source: str | None = None, captured_at: float | None = None,
              inference_id: str | None = None, frame_ids: Sequence[int] | None = None,
              active_learning: bool = True) -> list[Result]:
        """Run ``images``; with a ``source``, announce each result on the event bus (numbered by
        ``frame_ids``, else 1, 2, ... per source). ``active_learning=False``: the other outlets get
        the results, the active-learning sampler never takes these frames (Roboflow's
        ``disable_active_learning``)."""
        results = loaded.infer(images, params)
        self._metrics.count_images(loaded.model_id, len(images))
        if source is not None and self._events.active:
            now = time.time()
            for i, result in enumerate(results):
                frame_id = frame_ids[i] if frame_ids is not None else self._events.next_frame_id(source)
                self._events.publish(PredictionEvent(source, loaded.model_id, frame_id, captured_at or now, now,
                                                     result, inference_id, images[i], active_learning))
        return results
