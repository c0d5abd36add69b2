"""Check the import layers of ``engines`` and ``edge_agent`` (docs/architecture.md, "Layers").

    python tools/check_layers.py        # prints each problem; exit status 1 if there is one

Layers, bottom to top (a module belongs to the first entry whose name is its own or a package above it):

0. ``engines``: the inference back-ends; never imports ``edge_agent``.
1. basics: ``errors``, ``atomic_files``, ``params``, ``results``, ``roboflow_json``, ``responses``, ``url_fetch``,
   ``images``, ``heads``, ``events``, ``logring``, ``redaction``, ``settings`` and the configuration schemas it
   validates (``pipeline_spec``, ``sampling_strategies``), ``metrics``, ``telemetry``, ``visualize``, ``demo``.
2. ``store``: models on disk.
3. ``serving``: loaded models, batching, engine swaps.
4. ``provisioning``: models from Roboflow's API, URLs and uploads, activation checks.
5. ``inference``: how producers get a model and run it.
6. producers and outlets: ``pipelines``, ``active_learning``, ``mqtt``, ``http``.
7. ``runtime``: the composition root.
8. entry points: ``server``, ``cli``, ``systemd``, ``selftest``, ``__main__``, ``api`` and the package's
   ``__init__`` (the Python API).

Rules, for every ``import`` and ``from ... import``, at module level, inside a function or under
``if TYPE_CHECKING:``:

- An import never goes up a layer.
- Within one layer, imports that run (not those under ``if TYPE_CHECKING:``) form no cycle, counted
  module by module and with imports inside functions included.
- An import inside a function exists only to keep start-up light and says so: its lines carry a
  ``# lazy: <reason>`` comment (``# lazy: cv2``), naming what it keeps out of start-up.

One exception: ``from edge_agent import __version__`` is allowed everywhere. Python imports a package's
``__init__`` before any of its modules, and the version is a constant that needs nothing else.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("engines", "edge_agent")

LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("engines", ("engines",)),
    ("basics", ("edge_agent.errors", "edge_agent.atomic_files", "edge_agent.params", "edge_agent.results",
                "edge_agent.roboflow_json", "edge_agent.responses", "edge_agent.url_fetch", "edge_agent.images",
                "edge_agent.heads", "edge_agent.events", "edge_agent.settings", "edge_agent.pipeline_spec",
                "edge_agent.sampling_strategies", "edge_agent.metrics", "edge_agent.telemetry",
                "edge_agent.visualize", "edge_agent.demo", "edge_agent.logring", "edge_agent.redaction")),
    ("store", ("edge_agent.store",)),
    ("serving", ("edge_agent.serving",)),
    ("provisioning", ("edge_agent.provisioning",)),
    ("inference", ("edge_agent.inference",)),
    ("producers", ("edge_agent.pipelines", "edge_agent.active_learning", "edge_agent.mqtt", "edge_agent.http")),
    ("runtime", ("edge_agent.runtime",)),
    ("entry points", ("edge_agent.server", "edge_agent.cli", "edge_agent.systemd", "edge_agent.selftest",
                      "edge_agent.__main__", "edge_agent.api", "edge_agent")),
)
ALLOWED_EVERYWHERE = {("edge_agent", "__version__")}
LAZY_MARK = "# lazy:"


@dataclass(frozen=True)
class Problem:
    kind: str  # "unplaced" (a module the table lacks), "layer", "cycle" or "lazy"
    text: str  # file:line and what is wrong

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    target: str  # the imported module (of this project)
    line: int
    in_function: bool
    type_only: bool  # under ``if TYPE_CHECKING:``
    marked_lazy: bool


def layer_of(module: str) -> int | None:
    """The index of ``module``'s layer in ``LAYERS``; None for a module the table does not place."""
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if prefix == "edge_agent" and module != "edge_agent":
                continue  # the package's own __init__ only; its modules are placed by their own entries
            if module == prefix or module.startswith(prefix + "."):
                return index
    return None


def modules(root: Path = ROOT) -> dict[str, Path]:
    """Every module of the project's packages: dotted name -> file."""
    found = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, known: set[str]) -> list[str]:
    """The project modules an import statement loads (``from p import m`` loads ``p.m`` when that is a module)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        parts = module.split(".") if is_package else module.split(".")[:-1]
        parts = parts[: len(parts) - node.level + 1]
        base = ".".join(parts + ([base] if base else []))
    out = []
    for alias in node.names:
        if (base, alias.name) in ALLOWED_EVERYWHERE:
            continue
        sub = f"{base}.{alias.name}"
        out.append(sub if sub in known else base)
    return out


def imports(module: str, path: Path, known: set[str]) -> Iterator[Import]:
    """The imports of project modules in one file, with where they stand."""
    source = path.read_text(encoding="utf-8")
    lines = source.splitlines()
    tree = ast.parse(source, str(path))
    is_package = path.name == "__init__.py"

    def visit(node: ast.AST, in_function: bool, type_only: bool) -> Iterator[Import]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                span = lines[child.lineno - 1: (child.end_lineno or child.lineno)]
                marked = any(LAZY_MARK in line for line in span)
                for target in _targets(child, module, is_package, known):
                    if target.split(".")[0] in PACKAGES:
                        yield Import(module, target, child.lineno, in_function, type_only, marked)
                    elif in_function and not type_only:  # a library: only the lazy mark is checked
                        yield Import(module, target, child.lineno, in_function, type_only, marked)
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                yield from visit(child, True, type_only)
            elif isinstance(child, ast.If) and _is_type_checking(child.test):
                for stmt in child.body:
                    yield from visit(ast.Module(body=[stmt], type_ignores=[]), in_function, True)
                for stmt in child.orelse:
                    yield from visit(ast.Module(body=[stmt], type_ignores=[]), in_function, type_only)
            else:
                yield from visit(child, in_function, type_only)

    yield from visit(tree, False, False)


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def connect(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            connect(v)
    return found


def problems(root: Path = ROOT) -> list[Problem]:
    """Every breach of the rules above."""
    found = modules(root)
    known = set(found)
    out: list[Problem] = []
    edges: dict[str, set[str]] = {}
    for module, path in found.items():
        where = path.relative_to(root)
        layer = layer_of(module)
        if layer is None:
            out.append(Problem("unplaced", f"{where}: {module} has no layer: place it in tools/check_layers.py's "
                                           "LAYERS"))
            continue
        for imp in imports(module, path, known):
            project = imp.target.split(".")[0] in PACKAGES
            if imp.in_function and not imp.type_only and not imp.marked_lazy:
                out.append(Problem("lazy", f"{where}:{imp.line}: {imp.target} imported inside a function without a "
                                           f"'{LAZY_MARK} <reason>' comment"))
            if not project:
                continue
            target_layer = layer_of(imp.target)
            if target_layer is None:
                continue  # reported once, as a module without a layer
            if target_layer > layer:
                out.append(Problem("layer", f"{where}:{imp.line}: {module} ({LAYERS[layer][0]}) imports "
                                            f"{imp.target} ({LAYERS[target_layer][0]}), a layer above it"))
            elif target_layer == layer and not imp.type_only and imp.target != module:
                edges.setdefault(module, set()).add(imp.target)
    for cycle in _cycles(edges):
        out.append(Problem("cycle", f"import cycle within the {LAYERS[layer_of(cycle[0]) or 0][0]} layer: "
                                    f"{', '.join(cycle)}"))
    return out


def main() -> int:
    found = problems()
    for line in found:
        print(line)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
