"""Check a freshly built edge-agent version before it is switched to (run by the package's postinst
with the new virtual environment's Python): everything the daemon imports loads, and every bundled
demo model infers on the bundled sample image with ONNX Runtime in a scratch state directory.

Prints one line per check; exits 1 naming the first failure. Needs no network and writes nothing
outside its scratch directory.
"""

from __future__ import annotations

import importlib
import os
import sys
import tempfile
import time

MODULES = ("numpy", "cv2", "onnxruntime", "flask", "flask_openapi3", "gunicorn", "pydantic", "paho.mqtt.client",
           "prometheus_client", "urllib3", "edge_agent.server", "edge_agent.pipelines.pipeline",
           "edge_agent.mqtt.bridge")
DEMO_MODELS = ("shapes/1", "shapes-seg/1", "shapes-pose/1", "shapes-cls/1")


def main() -> int:
    t0 = time.monotonic()
    for name in MODULES:
        try:
            importlib.import_module(name)
        except Exception as exc:  # any failure to import is the answer
            print(f"check: import {name} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
    print(f"check: {len(MODULES)} modules import")
    with tempfile.TemporaryDirectory(prefix="edge-agent-check-") as scratch:
        config = os.path.join(scratch, "config.toml")
        open(config, "w").close()  # the defaults, whatever /etc/edge-agent/config.toml says
        os.environ.update({"EDGE_AGENT_CONFIG": config, "EDGE_AGENT_PATHS__STATE_DIR": scratch,
                           "EDGE_AGENT_PATHS__CACHE_DIR": scratch, "EDGE_AGENT_ENGINE__BACKEND": "ort",
                           "EDGE_AGENT_MODELS__OFFLINE": "true"})
        import edge_agent
        from edge_agent.images import load_image
        from edge_agent.models.accelerate_setup import SAMPLE_IMAGE

        image = load_image(SAMPLE_IMAGE)
        for model_id in DEMO_MODELS:
            try:
                # the demo classifier is weak on a picture of many shapes: its top class at any score
                confidence = 0.0 if model_id == "shapes-cls/1" else 0.4
                body = edge_agent.get_model(model_id).infer(image, confidence=confidence).to_json()
            except Exception as exc:  # the model is the answer
                print(f"check: {model_id} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
                return 1
            found = len(body["predictions"])
            if not found:
                print(f"check: {model_id} found nothing on the sample image", file=sys.stderr)
                return 1
            print(f"check: {model_id} infers ({found} predictions)")
    print(f"check: passed in {time.monotonic() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
