"""The decoding workers' process server: a forkserver that has imported ``pipeline.extract.features`` and nothing
more. This module imports nothing heavy, so the command line can start the server before it imports
torch itself: the two imports then overlap instead of delaying the first frames by seconds.

A plain fork would copy a process whose torch thread pools have run, and torch ops in the child
(preprocessing) can then deadlock; spawn would pay a fresh torch import per worker.

A worker's parent is the server, not the command, so torch's own check (is my parent alive?) never
sees the command die; and the server lives while a worker holds its pipe. After a ``kill -9`` both
would stay forever, holding their memory. So every worker watches the command itself
(:func:`exit_with`) and ends when it ends; the server then ends too.
"""
from __future__ import annotations

import multiprocessing
import multiprocessing.forkserver
import os
import select
import threading
import time

PRELOAD = ["pipeline.extract.features"]


def worker_context():
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


def start_early() -> None:
    """Start the server now (a no-op when it runs already)."""
    worker_context()
    multiprocessing.forkserver.ensure_running()


def exit_with(main_pid: int, worker_id: int = 0) -> None:
    """A DataLoader ``worker_init_fn`` (with ``functools.partial(exit_with, os.getpid())``): a daemon thread
    ends this worker as soon as process ``main_pid`` has ended."""
    threading.Thread(target=_wait_for_exit, args=(main_pid,), name="mrrn-watch-main", daemon=True).start()


def _wait_for_exit(pid: int) -> None:
    try:
        fd = os.pidfd_open(pid)  # Linux >= 5.3: readable once the process has ended, with no pid reuse race
    except (AttributeError, OSError):
        fd = None
    if fd is not None:
        select.select([fd], [], [])
    else:
        while _alive(pid):
            time.sleep(1.0)
    os._exit(1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
