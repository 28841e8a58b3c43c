"""One writer at a time: an exclusive OS lock for a cache file (``FILE.h5.lock``) and for a run, sweep or
fusion directory (``DIR/.lock``).

A POSIX record lock (``lockf``) is owned by this process alone: forked decoding workers do not inherit
it, and the OS releases it the moment the process dies, kill -9 included, so a lock is never stale.
POSIX locks never conflict within one process, so this process's own locks are tracked here too.
No torch, h5py or OpenCV: fusion and reports take a lock too.
"""
from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path
from typing import Callable

from pipeline.errors import MrrnError, writing

_HELD_BY_THIS_PROCESS: set[str] = set()
_BUSY = (errno.EACCES, errno.EAGAIN)


class ExclusiveLock:
    """``with ExclusiveLock(lock_file, busy):`` the right to write what ``lock_file`` guards; ``busy()``
    is the error raised at once when another writer holds it. With ``remove``, the lock file is removed
    on release (a waiting writer that opened the removed file notices and opens the new one)."""

    def __init__(self, lock_file: Path, busy: Callable[[], MrrnError], *, remove: bool = False):
        self.lock_file = Path(lock_file)
        self.busy = busy
        self.remove = remove
        self._fd: int | None = None
        self._held = str(self.lock_file.resolve())

    def __enter__(self) -> ExclusiveLock:
        if self._held in _HELD_BY_THIS_PROCESS:
            raise self.busy()
        while True:
            with writing(self.lock_file):
                fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                os.close(fd)
                if err.errno in _BUSY:
                    raise self.busy() from None
                raise
            if _same_file(fd, self.lock_file):  # not a file its last holder removed meanwhile
                break
            os.close(fd)
        self._fd = fd
        _HELD_BY_THIS_PROCESS.add(self._held)
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def release(self) -> None:
        if self._fd is not None:
            if self.remove:
                self.lock_file.unlink(missing_ok=True)  # while still held: no one can take the old file
            fcntl.lockf(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
            _HELD_BY_THIS_PROCESS.discard(self._held)


def _same_file(fd: int, path: Path) -> bool:
    try:
        here, there = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def is_held(lock_file: Path) -> bool:
    """Whether a writer holds the lock of ``lock_file`` now (this process or another). Asked with a shared
    lock taken and given back at once; never when this process holds it (closing a file would release it)."""
    if str(Path(lock_file).resolve()) in _HELD_BY_THIS_PROCESS:
        return True
    try:
        fd = os.open(lock_file, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as err:
        return err.errno in _BUSY
    finally:
        os.close(fd)
    return False
