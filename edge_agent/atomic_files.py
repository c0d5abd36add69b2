"""Writes that survive power loss: a reader sees the old content or the new, never a torn file.

Owns the temp-file, fsync, rename, fsync-the-directory sequence for files (one file, or many with one
flush to disk), and the fsync of a whole directory tree before the caller renames it into place.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import cast

log = logging.getLogger(__name__)


def fsync_dir(path: Path) -> None:
    """Make a rename or creation inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Atomically replace ``path`` with ``data``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_text(path: Path, text: str, mode: int = 0o644) -> None:
    write_bytes(path, text.encode("utf-8"), mode)


@functools.cache
def _libc_syncfs() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).syncfs
    except (AttributeError, OSError):
        return None
    function.argtypes, function.restype = [ctypes.c_int], ctypes.c_int
    return cast(Callable[[int], int], function)


def _flush_file_systems(folders: Iterable[Path]) -> bool:
    """Linux's ``syncfs`` on the file system of each folder: every dirty page written and waited for,
    at one call per file system. False where the C library has no ``syncfs`` or a call fails (the
    caller then fsyncs file by file)."""
    syncfs = _libc_syncfs()
    if syncfs is None:
        return False
    seen: set[int] = set()
    for folder in folders:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            device = os.fstat(fd).st_dev
            if device in seen:
                continue
            seen.add(device)
            if syncfs(fd) != 0:
                log.debug("syncfs on %s failed: %s", folder, os.strerror(ctypes.get_errno()))
                return False
        finally:
            os.close(fd)
    return True


def write_many(files: Iterable[tuple[Path, bytes]], mode: int = 0o644) -> None:
    """Atomically replace each path with its bytes, as ``write_bytes`` does, but with one flush to disk
    for them all: each file is written to a temp file, then one ``syncfs`` per file system (where
    Linux has it; else an fsync per file), then the renames, then an fsync per folder. Costs about
    half the CPU of ``write_bytes`` one by one (bench/active_learning.py). When it raises, some files
    may already be in place, each whole."""
    staged: list[tuple[str, Path]] = []
    try:
        for path, data in files:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            staged.append((tmp, path))
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.chmod(tmp, mode)
        folders = list(dict.fromkeys(path.parent for _tmp, path in staged))
        if not _flush_file_systems(folders):
            for tmp, _path in staged:
                fd = os.open(tmp, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        for tmp, path in staged:
            os.replace(tmp, path)
    except BaseException:
        for tmp, _path in staged:
            Path(tmp).unlink(missing_ok=True)
        raise
    for folder in folders:
        fsync_dir(folder)


def fsync_tree(root: Path) -> None:
    """fsync every file and directory below ``root`` (before renaming it into place)."""
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            fd = os.open(Path(dirpath) / name, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(dirpath))

