"""The README's examples run as written.

Every ```python and ```sh block of README.md runs, in order, in one scratch folder that holds what a
clone's root holds for them (``edge_agent/`` and ``.venv/`` point at this checkout and its Python),
against a real ``edge-agent serve --preload shapes/1`` started by the test. The one change made to
the text: ``localhost:9001`` becomes the test server's loopback port. The venv is not on the PATH: shell
blocks find ``edge-agent`` and ``python`` only through the README's own ``. .venv/bin/activate``, which,
as in the terminal the README describes, holds for the blocks after it. A block that cannot run here
(it installs packages, needs root, or runs for ever) is preceded by ``<!-- not run: REASON -->``, and
the reason must be there.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from servers import running_server

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```\n", re.S | re.M)
NOT_RUN = re.compile(r"<!-- not run: (.+?) -->\s*$")
ACTIVATE = ". .venv/bin/activate"


def blocks() -> list[tuple[int, str, str, str | None]]:
    """(line, language, code, reason it is not run) of every fenced block."""
    text = README.read_text()
    found = []
    for match in FENCE.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        before = text[:match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        reason = NOT_RUN.search(before)
        found.append((line, match.group(1), match.group(2), reason.group(1) if reason else None))
    return found


def test_every_block_is_run_or_says_why_not() -> None:
    found = blocks()
    assert found, "README.md has no code block"
    for line, language, _, reason in found:
        assert language in ("sh", "python", "toml", "text", "json"), f"README.md:{line}: block without a known language"
        if language in ("toml", "text", "json"):
            continue
        assert reason is None or len(reason) > 10, f"README.md:{line}: say why the block is not run"
    runnable = [b for b in found if b[1] in ("sh", "python") and b[3] is None]
    assert len(runnable) >= 6, f"only {len(runnable)} README blocks run"


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    work = tmp_path / "clone"
    work.mkdir()
    (work / "edge_agent").symlink_to(ROOT / "edge_agent")
    (work / ".venv").symlink_to(Path(sys.prefix))
    return work


def test_readme_examples_run_as_written(scratch: Path, tmp_path: Path) -> None:
    with running_server(tmp_path / "state", args=("--preload", "shapes/1")) as server:
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT_")}
        venv_bin = str(Path(sys.executable).parent)
        path = [p for p in env.get("PATH", "").split(os.pathsep) if p and Path(p).resolve() != Path(venv_bin).resolve()]
        env.update(EDGE_AGENT_STATE_DIR=str(server.state_dir), EDGE_AGENT_CONFIG="",
                   EDGE_AGENT_MODELS__OFFLINE="true", MPLBACKEND="Agg", PATH=os.pathsep.join(path))
        env.pop("VIRTUAL_ENV", None)
        ran, activated = 0, False
        for line, language, code, reason in blocks():
            if language not in ("sh", "python") or reason is not None:
                continue
            code = code.replace("localhost:9001", f"127.0.0.1:{server.port}")
            if language == "python":
                cmd = [sys.executable, "-c", code]
            else:
                cmd = ["bash", "-e", "-o", "pipefail", "-c", (ACTIVATE + "\n" if activated else "") + code]
                activated = activated or ACTIVATE in code
            done = subprocess.run(cmd, cwd=scratch, env=env, capture_output=True, text=True, timeout=180)
            assert done.returncode == 0, (f"README.md:{line} ({language}) failed with {done.returncode}:\n{code}\n"
                                          f"--- stdout\n{done.stdout[-3000:]}\n--- stderr\n{done.stderr[-3000:]}\n"
                                          f"--- server\n{server.output()[-3000:]}")
            ran += 1
        assert ran >= 6
