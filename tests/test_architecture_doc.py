"""docs/architecture.md stays drawn from the code: every module of ``engines/`` and ``edge_agent/`` has
a row in its module map, and every module it names exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "architecture.md"


def _modules() -> set[str]:
    found = set()
    for package in ("engines", "edge_agent"):
        for path in (ROOT / package).rglob("*.py"):
            rel = path.relative_to(ROOT).as_posix()
            if "/demo/" in rel:
                continue  # the demo data set has rows of its own (its generator, its store)
            if path.name == "__init__.py" and not re.search(r"^(def|class) ", path.read_text(), re.M):
                continue  # a package's docstring only: the package is described by its modules' rows

            found.add(rel)
    return found


def _named() -> set[str]:
    text = DOC.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    named = set()
    for row in rows:
        first = row.split("|")[1]
        paths = re.findall(r"`([^`]+\.py)`", first)
        base = ""
        for p in paths:
            if "/" in p:
                base = p.rsplit("/", 1)[0]
                named.add(p)
            elif base:  # "`edge_agent/http/v1.py`, `v2.py`": siblings of the first
                named.add(f"{base}/{p}")
    return named


def test_every_module_has_a_row_in_the_module_map() -> None:
    missing = sorted(_modules() - _named())
    assert missing == [], f"modules without a row in docs/architecture.md: {missing}"


def test_every_module_the_map_names_exists() -> None:
    gone = sorted(p for p in _named() if not (ROOT / p).is_file())
    assert gone == [], f"docs/architecture.md names modules that do not exist: {gone}"
