"""systemd's system-call filter as systemd builds it from a unit's SystemCallFilter= lines, with every
group expanded by ``systemd-analyze syscall-filter`` (systemd's own tables, not a list kept here).
Shared by tests/test_systemd_unit.py and tests/test_unit_filter.py."""

from __future__ import annotations

import functools
import subprocess


@functools.lru_cache(maxsize=1)
def syscall_groups() -> dict[str, list[str]]:
    """Every group systemd knows -> its entries (system calls and nested @groups), from systemd-analyze."""
    out = subprocess.run(["systemd-analyze", "--no-pager", "syscall-filter"], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    groups: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in out.splitlines():
        if line.startswith("@"):
            current = groups.setdefault(line.strip(), [])
        elif line.startswith((" ", "\t")) and current is not None:
            entry = line.strip()
            if entry and not entry.startswith("#"):
                current.append(entry)
        else:  # a comment or blank line at column 0 ends the group
            current = None
    if "@system-service" not in groups:
        raise RuntimeError(f"systemd-analyze syscall-filter listed no @system-service group:\n{out[:2000]}")
    return groups


def expand(name: str) -> set[str]:
    """A system call, or a group with its nested groups expanded, as systemd expands it."""
    if not name.startswith("@"):
        return {name}
    groups = syscall_groups()
    if name not in groups:
        raise KeyError(f"systemd-analyze does not know the group {name} (known: {', '.join(sorted(groups))})")
    names: set[str] = set()
    for entry in groups[name]:
        names |= expand(entry)
    return names


def filter_lines(unit_text: str) -> list[str]:
    """The values of the [Service] section's SystemCallFilter= lines, in order."""
    section, values = "", []
    for raw in unit_text.splitlines():
        line = raw.strip()
        if line.startswith("[") and line.endswith("]"):
            section = line
        elif section == "[Service]" and line.startswith("SystemCallFilter="):
            values.append(line.split("=", 1)[1].strip())
    return values


def effective_filter(unit_text: str) -> tuple[bool, set[str]]:
    """(allow_list, names) as systemd builds them from the unit's SystemCallFilter= lines: the first
    non-empty line decides the mode; an allow list starts with @default; an empty line resets; later
    lines add to the set when they match its mode and take from it when they do not."""
    allow_list: bool | None = None
    names: set[str] = set()
    for value in filter_lines(unit_text):
        if not value:
            allow_list, names = None, set()
            continue
        invert = value.startswith("~")
        entries = value.lstrip("~").split()
        if allow_list is None:
            allow_list = not invert
            if allow_list:
                names |= expand("@default")
        for entry in entries:
            if invert != allow_list:  # allow list + allowed, or deny list + denied: add
                names |= expand(entry)
            else:
                names -= expand(entry)
    if allow_list is None:
        raise ValueError("the unit has no SystemCallFilter= line")
    return allow_list, names


def denied_names(unit_text: str) -> set[str]:
    """Every system call a ``~`` line of the unit names (groups expanded)."""
    names: set[str] = set()
    for value in filter_lines(unit_text):
        if value.startswith("~"):
            for entry in value[1:].split():
                names |= expand(entry)
    return names
