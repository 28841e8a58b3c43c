"""The project's error base class: what the command line shows as one line.

Every error that means "the user's input or world is not as asked" (a bad option, a damaged file, a
missing video, a disk that is full) derives from :class:`MrrnError`; its message names the file or
option and the reason. Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import contextlib
import errno
import re


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
        raise WriteError(f"{path}: cannot write ({write_failure_reason(err)})") from None
