"""`mrrn tune --workers N`: N trials at once on one machine. Each worker is a process of its own (spawned:
a fresh interpreter, not a fork of one whose torch thread pools have run), on its own GPU (round robin over
the GPUs) or, on the CPU, with its share of the cores. A worker reads the level once and keeps it in memory
for all its trials (``level_data.load_level_data`` keeps the last data read). Which trial a worker runs
next, Optuna's storage decides: no trial runs twice, in one command or across machines.

The command's ``--trials`` are shared by its workers as tickets: each worker takes one before each trial,
so a fast worker runs more trials than a slow one, and the command runs exactly ``--trials`` of them.
With ``--workers 1`` the trials run in the command's own process.
"""
from __future__ import annotations

import dataclasses
import multiprocessing
import os
import sys
import time

from pipeline.tune.space import trial_settings
from pipeline.tune.study import fail_dead_trials, load_study, open_storage, requeue_interrupted
from pipeline.tune.trial import Search, make_objective


@dataclasses.dataclass(frozen=True)
class Work:
    """What every worker does: the searches in order (one per cache), the command's trials for each, when
    to stop starting trials, and the seed of the samplers (``--seed``, unless the caller gives another)."""

    searches: tuple[Search, ...]
    trials: int  # per search, shared by the workers
    deadline: float | None  # time.time() after which no trial starts (--timeout)
    seed: int


class Tickets:
    """The trials left to start of each search, shared by the workers (a counter in shared memory; a plain
    count with ``ctx`` None, for the trials of this process alone)."""

    def __init__(self, ctx, searches: int, trials: int):
        self._left = [ctx.Value("i", trials) if ctx is not None else [trials] for _ in range(searches)]

    def take(self, search: int) -> bool:
        left = self._left[search]
        if isinstance(left, list):
            left[0] -= 1
            return left[0] >= 0
        with left.get_lock():
            if left.value <= 0:
                return False
            left.value -= 1
            return True


def worker_devices(workers: int, device: str) -> list[str]:
    """Each worker's --device: with GPUs (``--device auto`` or ``cuda``), worker i on ``cuda:(i % GPUs)``; else
    every worker on the CPU (or on the one device named)."""
    from pipeline.distributed import gpus_listed

    gpus = gpus_listed() if device in ("auto", "cuda") else 0
    if gpus > 0:
        return [f"cuda:{i % gpus}" for i in range(workers)]
    return [device if device not in ("auto", "cuda") else "cpu"] * workers


def threads_per_worker(workers: int) -> int:
    return max(1, (os.cpu_count() or 1) // workers)


def run_workers(work: Work, workers: int, device: str, log) -> None:
    """Run ``work`` with ``workers`` processes (in this one when 1) and wait for them. A worker that fails
    stops the command with its one-line error once the others have finished their trials."""
    devices = worker_devices(workers, device)
    if workers == 1:
        work_in_this_process(work, Tickets(None, len(work.searches), work.trials), devices[0], log)
        return
    ctx = multiprocessing.get_context("spawn")
    tickets = Tickets(ctx, len(work.searches), work.trials)
    errors = ctx.SimpleQueue()
    processes = [ctx.Process(target=_worker_process, name=f"mrrn-tune-worker-{i}", args=(work, tickets),
                             kwargs=dict(index=i, device=devices[i], threads=threads_per_worker(workers),
                                         parent=os.getpid(), errors=errors))
                 for i in range(workers)]
    for process in processes:
        process.start()
    try:
        for process in processes:
            process.join()
    except KeyboardInterrupt:  # the workers got it too: each queues its trial again and ends
        for process in processes:
            process.join()
        raise
    problems = []
    while not errors.empty():
        problems.append(errors.get())
    crashed = [p for p in processes if p.exitcode != 0]
    if problems or crashed:
        from pipeline.errors import TrainError

        raise TrainError(problems[0] if problems else
                         f"{crashed[0].name} ended with exit status {crashed[0].exitcode} (its output above says why)")


def _worker_process(work: Work, tickets: Tickets, *, index: int, device: str, threads: int, parent: int, errors) -> None:
    """A worker process: ends with the command that started it (``kill -9`` of the command included), uses its
    share of the cores, runs trials until the tickets are gone; its one-line error goes back to the command."""
    from pipeline.errors import MrrnError, first_line
    from pipeline.extract.workers import exit_with

    exit_with(parent)
    import torch

    torch.set_num_threads(threads)
    try:
        work_in_this_process(work, tickets, device, lambda m: print(f"worker {index}: {m}", file=sys.stderr,
                                                                              flush=True))
    except MrrnError as err:
        errors.put(first_line(err))
    except KeyboardInterrupt:
        pass
    sys.stderr.flush()
    os._exit(0)  # no interpreter teardown (torch's takes seconds); every file is closed by now


def work_in_this_process(work: Work, tickets: Tickets, device: str, log) -> None:
    """Every search in turn: open its study, read its level once, run trials while tickets last."""
    for number, search in enumerate(work.searches):
        search = dataclasses.replace(search, base=dataclasses.replace(search.base, device=device))
        study = load_study(open_storage(search.storage, search.storage_home), search.study_name, seed=work.seed,
                           pruner=search.pruner)
        objective = make_objective(search, validation_videos(search), log)
        while not _past(work.deadline) and tickets.take(number):
            failed = fail_dead_trials(study)
            if failed:
                log(f"{search.label}: trial{'s' * (len(failed) > 1)} {', '.join(map(str, failed))} of a process that "
                    "ended mid-way marked failed and queued again")
            try:
                study.optimize(objective, n_trials=1, gc_after_trial=False)
            except KeyboardInterrupt:
                requeue_interrupted(study)
                raise


def validation_videos(search: Search) -> int:
    """Read the search's level into memory (kept there for every trial of this process) and count its
    validation videos."""
    from pipeline import distributed
    from pipeline.extract.backbone import resolve_device
    from pipeline.train.level_data import load_level_data

    cfg = trial_settings(search.base, {"model": search.space.models[0]}, search.base.out, search.flow_cache)
    device = distributed.current().device(resolve_device(cfg.device))
    data = load_level_data(cfg, device, log=lambda m: None)
    return len(data.val.keys) if data.val is not None else 0


def _past(deadline: float | None) -> bool:
    return deadline is not None and time.time() >= deadline
