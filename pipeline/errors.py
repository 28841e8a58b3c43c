"""The project's error base class: what the command line shows as one line.

Every error that means "the user's input or world is not as asked" (a bad option, a damaged file, a
missing video, a disk that is full) derives from :class:`MrrnError`; its message names the file or
option and the reason. Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import contextlib
import errno
import re
from pathlib import Path


class MrrnError(Exception):
    """A condition of the user's input or environment; ``str(err)`` is one line naming what and why."""


class ConfigError(MrrnError, ValueError):
    """Settings that do not make sense together or are out of range."""


class TrainError(MrrnError):
    """A training run that cannot start or go on as asked (its data, its run directory)."""


class WriteError(MrrnError, OSError):
    """A file that could not be written: disk full, read-only, no permission, over a size limit."""


_WRITE_REASONS = {
    errno.ENOSPC: "disk full", errno.EDQUOT: "disk quota exceeded", errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied", errno.EPERM: "permission denied", errno.ENOTDIR: "a parent is not a directory",
    errno.EFBIG: "file too large (the file system's or the process's file size limit)", errno.EISDIR: "is a directory",
}


def _errno_of(err: BaseException) -> int | None:
    """The OS error number of an error, also when a library only put it in the message (h5py: 'errno = 28')."""
    if isinstance(err, OSError) and err.errno:
        return err.errno
    found = re.search(r"errno = (\d+)", str(err))
    return int(found[1]) if found else None


def first_line(err: BaseException, skip: str | None = None) -> str:
    """An error's message as one line: its first non-blank line (after those starting with ``skip``, such as a
    title above the details), else its type's name. Libraries such as torch write messages of many lines."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    kept = [line for line in lines if not (skip and line.startswith(skip))]
    return (kept or lines or [type(err).__name__])[0]


def _not_a_folder(path) -> str | None:
    """Why ``path`` cannot be created when one of its parents exists and is a file: that parent, named."""
    for parent in Path(path).parents:
        if parent.exists() and not parent.is_dir():
            return f"{parent} is a file, not a directory"
    return None


def write_failure_reason(err: BaseException) -> str:
    code = _errno_of(err)
    if code in _WRITE_REASONS:
        return _WRITE_REASONS[code]
    text = (err.strerror if isinstance(err, OSError) and err.strerror else str(err)).strip().splitlines()
    return text[0] if text else type(err).__name__


@contextlib.contextmanager
def writing(path):
    """Around code that writes ``path``: an OS error becomes a one-line :class:`WriteError` naming the path
    and the cause (disk full, read-only file system, ...)."""
    try:
        yield
    except WriteError:
        raise
    except OSError as err:
        blocked = _errno_of(err) in (errno.EEXIST, errno.ENOTDIR) and _not_a_folder(path)
        raise WriteError(f"{path}: cannot write ({blocked or write_failure_reason(err)})") from None


class OutOfMemory(MrrnError):
    """The device (or the machine) ran out of memory; the message names the settings to lower."""


@contextlib.contextmanager
def memory_for(what: str, settings: str):
    """Around one phase of a command: torch's (or numpy's) out-of-memory error becomes one line naming the
    phase and the settings that size it. Recognised by name and text, so that this module needs no torch."""
    try:
        yield
    except (RuntimeError, MemoryError) as err:  # torch.OutOfMemoryError is a RuntimeError
        text = str(err)
        if not (isinstance(err, MemoryError) or type(err).__name__ == "OutOfMemoryError"
                or "can't allocate memory" in text or "out of memory" in text.lower()):
            raise
        size = re.search(r"[Tt]ried to allocate ([\d.]+) ?(bytes|[KMGT]iB)", text)
        asked = ""
        if size:
            gib = float(size[1]) / 2**30 if size[2] == "bytes" else float(size[1]) if size[2] == "GiB" else None
            asked = f" (it asked for {gib:.1f} GiB)" if gib is not None else f" (it asked for {size[1]} {size[2]})"
        raise OutOfMemory(f"out of memory while {what}{asked}; lower {settings}") from None
