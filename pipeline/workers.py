"""The decoding workers' process server: a forkserver that has imported ``pipeline.features`` and nothing
more. This module imports nothing heavy, so the command line can start the server before it imports
torch itself: the two imports then overlap instead of delaying the first frames by seconds.

A plain fork would copy a process whose torch thread pools have run, and torch ops in the child
(preprocessing) can then deadlock; spawn would pay a fresh torch import per worker.
"""
from __future__ import annotations

import multiprocessing
import multiprocessing.forkserver

PRELOAD = ["pipeline.features"]


def worker_context():
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


def start_early() -> None:
    """Start the server now (a no-op when it runs already)."""
    worker_context()
    multiprocessing.forkserver.ensure_running()
