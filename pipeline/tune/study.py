"""Where a study lives and how it survives a kill: the storage behind ``--storage``, the study of a search
(created, or continued when the same command runs again), and trials left running by a dead process
failed and retried.

Storages: a journal file (the default, ``OUT/study.journal``: Optuna's ``JournalFileBackend``, which
several processes, or machines sharing a file system, append to under a lock), or any URL SQLAlchemy takes
(``sqlite:///FILE``, ``postgresql://USER:PASSWORD@HOST:PORT/DB``, ``mysql://...``).

A trial killed mid-way is found two ways. Each trial records its owner (host, process id and the
process's start time): a command starting on the same host fails at once every running trial whose owner
process is gone. Across hosts, each running trial beats a heartbeat every ``HEARTBEAT_SECONDS``
(Optuna's own for RDB storages; for the journal, a trial attribute written by ``HeartbeatJournalStorage``),
and a trial silent for ``GRACE_SECONDS`` is failed by the next trial to start anywhere. Either way the
failed trial is queued again with the same parameters (Optuna's ``RetryHeartbeatStaleTrialCallback``), and
the retry continues the killed trial's run directory from its last checkpoint.
"""
from __future__ import annotations

import copy
import importlib.util
import os
import socket
import time
import warnings
import zlib
from pathlib import Path

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import TrialState

from pipeline.errors import ConfigError, MrrnError, first_line

JOURNAL_FILE = "study.journal"
HEARTBEAT_SECONDS = 30
GRACE_SECONDS = 120
MAX_RETRIES = 3  # a trial killed this many times is left failed
OWNER_ATTR = "mrrn:owner"  # {"host", "pid", "started"}: the process running a trial
HEARTBEAT_ATTR = "mrrn:heartbeat"  # journal storage: the time of the last heartbeat (seconds since the epoch)
RDB_SCHEMES = ("sqlite", "postgresql", "postgres", "mysql", "mssql", "oracle")


class StorageError(MrrnError):
    """A storage that cannot be opened: an unknown URL, an unreachable server, a damaged file."""


def quiet_optuna():
    """Optuna's own log lines and experimental-feature warnings off: the command says what happens itself."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def shown(url: str) -> str:
    """A storage URL as messages show it: without its password."""
    if "://" not in url:
        return url
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy reads: shown up to the scheme
        return url.split("://")[0] + "://..."


def open_storage(url: str | None, out: Path):
    """The Optuna storage of ``--storage`` (None: the journal file in ``out``); refused in one line when it
    cannot be opened."""
    quiet_optuna()
    if url is None or "://" not in url:
        return _journal(Path(url) if url else Path(out) / JOURNAL_FILE)
    scheme = url.split("://")[0].split("+")[0].lower()
    if scheme == "file":
        return _journal(Path(url.split("://", 1)[1]))
    if scheme not in RDB_SCHEMES:
        raise StorageError(f"--storage {shown(url)}: unknown storage {scheme!r}; give a journal file path, "
                           "sqlite:///FILE or postgresql://USER@HOST:PORT/DATABASE")
    return _rdb(url)


def _retry_callback():
    return RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES)


def _journal(path: Path):
    if path.is_dir():
        raise StorageError(f"--storage {path}: a directory; a journal storage is a file")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        backend = JournalFileBackend(str(path))
        return HeartbeatJournalStorage(backend)
    except (OSError, ValueError, KeyError) as err:
        raise StorageError(f"--storage {path}: cannot open the journal file ({first_line(err)})") from None


def with_driver(url: str) -> str:
    """``postgresql://`` (or ``postgres://``) through the PostgreSQL driver that is installed: SQLAlchemy 2.1 reads
    a bare ``postgresql://`` as psycopg 3, and mrrn installs psycopg2."""
    scheme, rest = url.split("://", 1)
    if scheme in ("postgresql", "postgres") and importlib.util.find_spec("psycopg") is None \
            and importlib.util.find_spec("psycopg2") is not None:
        return f"postgresql+psycopg2://{rest}"
    return url


def _rdb(url: str):
    try:
        return RDBStorage(with_driver(url), heartbeat_interval=HEARTBEAT_SECONDS, grace_period=GRACE_SECONDS,
                          heartbeat_stale_trial_callback=_retry_callback())
    except ModuleNotFoundError as err:
        raise StorageError(f"--storage {shown(url)}: its database driver is not installed ({err.name})") from None
    except Exception as err:  # SQLAlchemy's errors: a bad URL, a server that is down, a refused login
        reason = first_line(getattr(err, "orig", None) or err)
        raise StorageError(f"--storage {shown(url)}: cannot open the database ({reason})") from None


class HeartbeatJournalStorage(JournalStorage, BaseHeartbeat):
    """Optuna's journal storage with heartbeats: each running trial writes the time into a trial attribute
    every ``HEARTBEAT_SECONDS``; a running trial whose last beat is older than ``GRACE_SECONDS`` is stale."""

    def record_heartbeat(self, trial_id: int) -> None:
        self.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, time.time())

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        now, stale = time.time(), []
        for trial in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
            beat = trial.system_attrs.get(HEARTBEAT_ATTR)
            if beat is None and trial.datetime_start is not None:
                beat = trial.datetime_start.timestamp()
            if beat is not None and now - beat > GRACE_SECONDS:
                stale.append(trial._trial_id)
        return stale

    def get_heartbeat_interval(self) -> int:
        return HEARTBEAT_SECONDS

    def get_heartbeat_stale_trial_callback(self):
        return _retry_callback()


def load_study(storage, name: str, *, seed: int, pruner: str):
    """The study ``name`` in ``storage``, created when new (maximising validation video top-1) and continued
    otherwise, with the TPE sampler of ``seed`` (``TrialSeededTPE``) and the pruner named."""
    # constant liar: a running trial counts as a poor one, so that trials running at once spread out
    sampler = TrialSeededTPE(seed=seed, n_startup_trials=5, constant_liar=True)
    try:
        return optuna.create_study(storage=storage, study_name=name, direction="maximize", sampler=sampler,
                                   pruner=make_pruner(pruner), load_if_exists=True)
    except Exception as err:  # a damaged journal, a database that went away
        if isinstance(err, MrrnError):
            raise
        raise StorageError(f"study {name}: cannot be created or read ({first_line(err)})") from None


class TrialSeededTPE(optuna.samplers.TPESampler):
    """TPE whose random numbers for a trial come from ``seed`` and the trial's number alone.

    The storage gives every trial of a study its own number, so: one process searching alone proposes the
    same trials every time it runs (its trials' scores are seeded too); a study continued later draws on
    for the numbers after its last trial, not the first ones again; and workers or commands sharing a study
    never draw the same numbers (their trials' numbers differ), without mixing in a process id. Which
    trials workers running at once propose still depends on which finishes first."""

    def __init__(self, *, seed: int, **options):
        super().__init__(seed=seed, **options)
        self._trial_seed = seed

    def before_trial(self, study, trial) -> None:
        seeded = zlib.crc32(f"{self._trial_seed}:{trial.number}".encode())
        # Optuna's own generators (TPE's and its random sampler's for the first trials), reseeded in place
        self._rng.rng.seed(seeded)
        self._random_sampler._rng.rng.seed(seeded)
        super().before_trial(study, trial)


PRUNERS = ("median", "hyperband", "none")


def make_pruner(name: str):
    """``median``: stop a trial whose validation accuracy at an epoch is below the median of earlier trials at
    that epoch, once 3 trials have finished and after its first epoch; ``hyperband``: Optuna's Hyperband over
    1 epoch up to the longest; ``none``: every trial runs all its epochs."""
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, reduction_factor=3)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ConfigError(f"--pruner {name}: not one of {', '.join(PRUNERS)}")


# -- owners: which process runs a trial, and whether it is still alive

def this_process() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": _start_time(os.getpid())}


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (``/proc/PID/stat`` field 22), which tells a live
    process from a later one given the same id; None where there is no /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def owner_alive(owner: dict) -> bool:
    """Whether the process ``owner`` names still runs (True for another host's: its heartbeat decides)."""
    if owner.get("host") != socket.gethostname():
        return True
    started = _start_time(int(owner.get("pid", -1)))
    return started is not None and (owner.get("started") is None or started == owner["started"])


def claim(trial) -> None:
    """Record this process as the owner of ``trial`` (an ``optuna.Trial`` it runs)."""
    trial.storage.set_trial_system_attr(trial._trial_id, OWNER_ATTR, this_process())


def fail_dead_trials(study) -> list[int]:
    """Fail every running trial of ``study`` whose owner process on this host has ended (``kill -9``, a crash)
    and queue it again; the numbers of the trials failed. Another process's live trials are left alone."""
    failed = []
    storage = study._storage
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = trial.system_attrs.get(OWNER_ATTR)
        if owner is None or owner_alive(owner):
            continue
        try:
            if not storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
                continue
        except UpdateFinishedTrialError:  # another process failed it first, and queued it again
            continue
        failed.append(trial.number)
        _retry_callback()(study, copy.deepcopy(storage.get_trial(trial._trial_id)))
    return failed


def requeue_interrupted(study) -> None:
    """After Ctrl-C: the trial this process was running, which Optuna has marked failed, queued again so that
    the same command continues it from its last checkpoint."""
    me = this_process()
    for trial in reversed(study.get_trials(deepcopy=False)):
        if trial.system_attrs.get(OWNER_ATTR) == me:
            if trial.state == TrialState.FAIL and "failed" not in trial.user_attrs:
                _retry_callback()(study, copy.deepcopy(trial))
            return
