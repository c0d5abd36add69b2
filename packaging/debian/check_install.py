"""Check a freshly built edge-agent version before it is switched to (run by the package's postinst
with the new virtual environment's Python): everything the daemon imports loads, and the checks of
``edge-agent selftest`` pass on ONNX Runtime (every bundled demo model finds what the bundled sample
image holds), in a scratch state directory.

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
        from edge_agent import selftest
        from edge_agent.settings import Settings

        # selftest's checks on ONNX Runtime: every demo model finds what the sample image holds
        checks = selftest.run(Settings.from_env(), report=lambda c: print("check:", selftest.text_line(c), end=""))
        failed = [c for c in checks if c.ok is False]
        if failed:
            print(f"check: {failed[0].name} failed: {failed[0].detail}", file=sys.stderr)
            return 1
    print(f"check: passed in {time.monotonic() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
