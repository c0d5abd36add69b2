"""The import layers (tools/check_layers.py, docs/architecture.md): no import goes up a layer, imports
within a layer form no cycle, and an import inside a function says why it is there."""

from __future__ import annotations

import importlib.util
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import pytest

TOOL = Path(__file__).resolve().parent.parent / "tools" / "check_layers.py"


@pytest.fixture(scope="module")
def check_layers() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_layers", TOOL)
    assert spec is not None, f"cannot load {TOOL}"
    assert spec.loader is not None, f"cannot load {TOOL}"
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def found(check_layers: ModuleType) -> list[object]:
    problems: list[object] = check_layers.problems()
    return problems


def _of(found: list[object], *kinds: str) -> list[str]:
    return [str(p) for p in found if getattr(p, "kind", None) in kinds]


def test_every_module_has_a_layer(found: list[object]) -> None:
    assert _of(found, "unplaced") == []


def test_no_import_goes_up_a_layer(found: list[object]) -> None:
    assert _of(found, "layer") == []


def test_imports_within_a_layer_form_no_cycle(found: list[object]) -> None:
    assert _of(found, "cycle") == []


def test_every_import_inside_a_function_says_why(found: list[object]) -> None:
    assert _of(found, "lazy") == []


def _tree(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


def test_the_check_names_each_kind_of_problem(tmp_path: Path, check_layers: ModuleType) -> None:
    """A made-up tree with one problem of each kind: each is reported, with its file and line."""
    _tree(tmp_path, {
        "engines/__init__.py": "",
        "edge_agent/__init__.py": "",
        "edge_agent/errors.py": "def f():\n    from edge_agent.runtime import Runtime  # lazy: hides a layer breach\n",
        "edge_agent/results.py": "from edge_agent import roboflow_json\n",
        "edge_agent/roboflow_json.py": "def f():\n    from edge_agent import results  # lazy: a cycle\n",
        "edge_agent/visualize.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                   "    from edge_agent import results\n"
                                   "def f():\n    import cv2\n",
        "edge_agent/runtime.py": "from edge_agent import __version__\n",
        "edge_agent/unknown.py": "",
    })
    got = sorted((p.kind, p.text) for p in check_layers.problems(tmp_path))
    assert got == [
        ("cycle", "import cycle within the basics layer: edge_agent.results, edge_agent.roboflow_json"),
        ("layer", "edge_agent/errors.py:2: edge_agent.errors (basics) imports edge_agent.runtime (runtime), "
                  "a layer above it"),
        ("lazy", "edge_agent/visualize.py:5: cv2 imported inside a function without a '# lazy: <reason>' comment"),
        ("unplaced", "edge_agent/unknown.py: edge_agent.unknown has no layer: place it in "
                     "tools/check_layers.py's LAYERS"),
    ]
