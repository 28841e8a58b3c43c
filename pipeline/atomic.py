"""Writing files so that a crash, a kill or a power loss leaves either the old version or the new one, whole.

A new version is written to ``NAME.tmp``, flushed to the disk (``fsync``), renamed over ``NAME`` (atomic
on POSIX) and the rename itself is flushed (``fsync`` of the folder). Only then is it trusted. A failure
to write becomes one line naming the file and the cause (:func:`pipeline.errors.writing`).
"""
from __future__ import annotations

import contextlib
import os
import resource
from pathlib import Path

from pipeline.errors import WriteError, writing


def ensure_room(path: Path, size: int) -> None:
    """Refuse, before writing, a file of about ``size`` bytes that the disk or the process's file size
    limit cannot take: a library that writes through its own I/O (HDF5) may not recover from a failed
    write, so the room is checked first."""
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if limit != resource.RLIM_INFINITY and size > limit:
        raise WriteError(f"{path}: cannot write (file too large: about {size / 2**20:.1f} MiB, over this process's "
                         f"file size limit of {limit / 2**20:.1f} MiB)")
    with writing(path):
        stat = os.statvfs(path.parent)
    free = stat.f_bavail * stat.f_frsize
    if size > free:
        raise WriteError(f"{path}: cannot write (disk full: about {size / 2**20:.1f} MiB needed, "
                         f"{free / 2**20:.1f} MiB free)")


def fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (renames, new files) to the disk."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def tmp_path(path: Path) -> Path:
    return path.with_name(path.name + ".tmp")


def publish(tmp: Path, path: Path, durable: bool = True) -> None:
    """Make the finished file ``tmp`` the new ``path``: flushed, renamed, and the rename flushed."""
    with writing(path):
        if durable:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
        if durable:
            fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "wb", durable: bool = True):
    """``with atomic_file(p) as f: f.write(...)``: ``p`` is replaced whole when the block ends, or left as it
    was when it raises."""
    path = Path(path)
    tmp = tmp_path(path)
    try:
        with writing(path):
            with open(tmp, mode) as f:
                yield f
                f.flush()
                if durable:
                    os.fsync(f.fileno())
            os.replace(tmp, path)
            if durable:
                fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | os.PathLike, text: str, durable: bool = True) -> None:
    with atomic_file(path, "w", durable) as f:
        f.write(text)
