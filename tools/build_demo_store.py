"""Import the trained demo models (tools/train_demo_models.py output) into the package's built-in store.

    python tools/train_demo_models.py --out build/demo-models
    python tools/build_demo_store.py build/demo-models

The built-in store (edge_agent/demo/store/<project>/<version>/) is read-only at run time and is made
with the same importer users' models go through, so the demo exercises the real code path.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from edge_agent.demo.shapes import CLASSES, KEYPOINT_NAMES, VERTEX_COUNT
from edge_agent.store.model_store import BUILTIN_ROOT, ModelStore

DEMO_IDS = {
    "shapes-det.onnx": "shapes/1",
    "shapes-seg.onnx": "shapes-seg/1",
    "shapes-pose.onnx": "shapes-pose/1",
    "shapes-cls.onnx": "shapes-cls/1",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", type=Path, help="folder with the exported .onnx files")
    args = ap.parse_args()
    shutil.rmtree(BUILTIN_ROOT, ignore_errors=True)
    store = ModelStore(BUILTIN_ROOT, builtin_root=None)
    for file, model_id in DEMO_IDS.items():
        manifest = store.install(args.models / file, model_id)
        if manifest.task == "keypoint-detection":
            # Each class names only the vertices it has: a circle has none, a square four, ...
            names = {i: KEYPOINT_NAMES[: VERTEX_COUNT[c]] for i, c in enumerate(CLASSES)}
            manifest = store.update(model_id, keypoint_names=names)
        size_mb = manifest.weights.bytes / 1e6
        print(f"{model_id:<16} {manifest.task:<22} {size_mb:.2f} MB  {manifest.weights.sha256[:12]}")
    store.clean()


if __name__ == "__main__":
    main()
