"""Writes that survive power loss: a reader sees the old content or the new, never a torn file.

Owns the temp-file, fsync, rename, fsync-the-directory sequence for files (one file, or many with one
flush to disk), and the fsync of a whole directory tree before the caller renames it into place.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

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


# File systems whose syncfs writes every dirty page and waits for it (by f_type, from statfs). FUSE
# (exfat-fuse, ntfs-3g), vfat and overlay file systems are left to fsync, which reaches the daemon or
# the device where syncfs may not.
SYNCFS_FILE_SYSTEMS = {0xEF53: "ext2/3/4", 0x58465342: "xfs", 0x9123683E: "btrfs", 0xF2F52010: "f2fs",
                       0x01021994: "tmpfs"}
SLOW_SYNCFS_S = 1.0  # a syncfs this slow waited for others' writes (a download, a recording): ...
SLOW_PAUSE_S = 60.0  # ... so fsync file by file for this long
_slow_until = 0.0
_next_warning = 0.0


class _StatFs(ctypes.Structure):
    _fields_ = [("f_type", ctypes.c_long), ("rest", ctypes.c_byte * 256)]  # f_type first, on every Linux ABI


@dataclass(frozen=True)
class _Libc:
    syncfs: Callable[[int], int]
    fstatfs: Callable[[int, Any], int]


@functools.cache
def _libc() -> _Libc | None:
    """syncfs and fstatfs where they can be trusted: Linux 5.8 or later (syncfs reports write-back
    errors since then; before, it returned 0 whatever happened) and a C library that has them."""
    if not sys.platform.startswith("linux"):
        return None
    release = re.match(r"(\d+)\.(\d+)", os.uname().release)
    if release is None or (int(release[1]), int(release[2])) < (5, 8):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        syncfs, fstatfs = libc.syncfs, libc.fstatfs
    except (AttributeError, OSError):
        return None
    syncfs.argtypes, syncfs.restype = [ctypes.c_int], ctypes.c_int
    fstatfs.argtypes, fstatfs.restype = [ctypes.c_int, ctypes.POINTER(_StatFs)], ctypes.c_int
    return _Libc(cast(Callable[[int], int], syncfs), cast(Callable[[int, Any], int], fstatfs))


def _flush_file_systems(folders: Iterable[Path]) -> bool:
    """``syncfs`` on the file system of each folder: every dirty page written and waited for, at one
    call per file system. False (the caller then fsyncs file by file) where it cannot be trusted
    (``_libc``, ``SYNCFS_FILE_SYSTEMS``), where a call fails (logged), and for a while after a call that
    took long, since it then waited for other writes to the same disk."""
    global _slow_until, _next_warning
    libc = _libc()
    if libc is None or time.monotonic() < _slow_until:
        return False
    seen: set[int] = set()
    for folder in folders:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            device = os.fstat(fd).st_dev
            if device in seen:
                continue
            seen.add(device)
            info = _StatFs()
            if libc.fstatfs(fd, ctypes.byref(info)) != 0 or (info.f_type & 0xFFFFFFFF) not in SYNCFS_FILE_SYSTEMS:
                return False
            started = time.monotonic()
            if libc.syncfs(fd) != 0:
                if time.monotonic() >= _next_warning:  # not once per batch
                    _next_warning = time.monotonic() + 60
                    log.warning("syncfs on %s failed (%s); writing file by file", folder,
                                os.strerror(ctypes.get_errno()))
                return False
            if time.monotonic() - started > SLOW_SYNCFS_S:
                _slow_until = time.monotonic() + SLOW_PAUSE_S
        finally:
            os.close(fd)
    return True


def write_many(files: Iterable[tuple[Path, bytes]], mode: int = 0o644) -> None:
    """Atomically replace each path with its bytes, as ``write_bytes`` does, but with one flush to disk
    for them all: each file is written to a temp file, then one ``syncfs`` per file system (where it
    can be trusted, see ``_flush_file_systems``; else an fsync per file), then the renames, then an
    fsync per folder. Costs about
    half the CPU of ``write_bytes`` one by one (bench/active_learning.py). When it raises, some files
    may already be in place, each whole."""
    staged: list[tuple[str, Path]] = []
    made: set[Path] = set()
    try:
        for path, data in files:
            if path.parent not in made:
                path.parent.mkdir(parents=True, exist_ok=True)
                made.add(path.parent)
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

