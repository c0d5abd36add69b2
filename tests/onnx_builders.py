"""Small hand-made ONNX models whose outputs are known exactly, for testing decoders and the store.

Each graph returns fixed tensors (given per image) broadcast over a dynamic batch axis, plus
``0 * mean(input)`` so that the output depends on the input and ONNX Runtime keeps the batch size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def constant_model(
    path: Path,
    outputs: dict[str, np.ndarray],
    input_hw: tuple[int, int] = (64, 64),
    metadata: dict[str, str] | None = None,
    batch: int | str = "batch",
) -> Path:
    """Write a model with input ``images`` [batch, 3, H, W] and the given per-image outputs."""
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["mean"], axes=[1, 2, 3], keepdims=1),  # [B,1,1,1]
        helper.make_node("Mul", ["mean", "zero"], ["zeroed"]),
    ]
    inits = [numpy_helper.from_array(np.zeros((), np.float32), "zero")]
    graph_outputs = []
    for name, value in outputs.items():
        value = value.astype(np.float32)
        inits.append(numpy_helper.from_array(value[None], f"{name}_const"))
        # Reshape the [B,1,1,1] zero to [B, 1, ..., 1] with the output's rank, then add.
        rank = value.ndim + 1
        shape_name = f"{name}_shape"
        inits.append(numpy_helper.from_array(np.array([-1] + [1] * (rank - 1), np.int64), shape_name))
        nodes.append(helper.make_node("Reshape", ["zeroed", shape_name], [f"{name}_z"]))
        nodes.append(helper.make_node("Add", [f"{name}_const", f"{name}_z"], [name]))
        graph_outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [batch, *value.shape]))
    graph = helper.make_graph(
        nodes, "constant", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [batch, 3, *input_hw])],
        graph_outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for key, value in (metadata or {}).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def ultralytics_metadata(task: str, names: list[str], imgsz: tuple[int, int], **extra: str) -> dict[str, str]:
    """metadata_props as ultralytics writes them: str() of Python objects."""
    md = {"description": "test model", "author": "tests", "version": "8.3.0", "stride": "32", "task": task,
          "batch": "1", "imgsz": str(list(imgsz)), "names": str(dict(enumerate(names))), "channels": "3",
          "end2end": "False"}
    md.update(extra)
    return md
