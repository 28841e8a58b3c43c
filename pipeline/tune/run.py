"""`mrrn tune`: the searches of a command line (one per cache), checked before anything is trained, run by
the workers, then written out.

The output folder is a tune folder (``made_by.json`` says so): a run, sweep or fusion directory is refused.
Several commands may share it and its study at once (each writes the tables when it ends, one at a time),
so, unlike ``sweep``, a tune folder is not locked for the whole command: each trial's run directory is.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from pipeline.atomic import write_text
from pipeline.cache.reader import read_identity
from pipeline.config import TrainConfig
from pipeline.errors import ConfigError, writing
from pipeline.evaluate.layout import DirectoryError, kind_refusal, mark_made_by
from pipeline.train.sweep import check_caches
from pipeline.tune.space import SearchSpace, for_cache
from pipeline.tune.study import load_study, open_storage
from pipeline.tune.tables import csv_text, overview, tables_lock, write_outputs
from pipeline.tune.trial import Search
from pipeline.tune.workers import Work, run_workers

# Settings that do not change what a trial computes, left out of the study's name
NOT_IN_STUDY_NAME = ("out", "device", "max_memory", "cache", "flow_cache", "eval_batch_size")


@dataclasses.dataclass(frozen=True)
class TuneRequest:
    """What `mrrn tune` was asked: the fixed settings (``base``), the caches, the space and how to search it."""

    base: TrainConfig
    caches: tuple[str, ...]
    space: SearchSpace
    out: Path
    trials: int
    workers: int = 1
    storage: str | None = None  # None: OUT/study.journal
    study_name: str | None = None  # None: derived from the caches, level and space
    pruner: str = "median"
    timeout: float | None = None  # seconds after which no trial starts
    flow_cache: str | None = None
    sampler_seed: int | None = None  # None: base.seed (--seed); benchmarks repeat a search with other samplers

    @property
    def seed_of_sampler(self) -> int:
        return self.base.seed if self.sampler_seed is None else self.sampler_seed


def plan(request: TuneRequest) -> list[Search]:
    """A search per cache, with its study's name: the same command gets the same name (and so continues its
    study); another space, level, cache or fixed setting gets another."""
    base = request.base
    if not base.val_fraction > 0:
        raise ConfigError(f"--val-fraction {base.val_fraction:g}: tune compares trials on validation videos held out "
                          "of the training videos, never on the test split; give a fraction > 0 such as 0.2")
    described = check_caches(list(request.caches))
    searches = []
    for label, cache in described.items():
        identity = read_identity(Path(cache["path"]))
        space = for_cache(request.space, len(identity.views), flow_cache=request.flow_cache)
        fixed = {k: v for k, v in dataclasses.replace(base, cache=cache["path"]).to_json().items()
                 if k not in NOT_IN_STUDY_NAME}
        digest = space.digest(cache=identity.to_json(), fixed=fixed, flow_cache=request.flow_cache is not None)
        name = request.study_name or f"mrrn-{label}-{base.level}-{digest}"
        if request.study_name and len(described) > 1:
            name = f"{request.study_name}-{label}"
        out = request.out / label if len(described) > 1 else request.out
        searches.append(Search(base=dataclasses.replace(base, cache=cache["path"], out=str(out)), space=space, out=out,
                               study_name=name, storage=request.storage, storage_home=request.out,
                               pruner=request.pruner, label=label, flow_cache=request.flow_cache))
    return searches


def run_tune(request: TuneRequest, log) -> list[tuple[Search, list[dict]]]:
    """Check the folder, the caches, the space and the storage; run ``request.trials`` trials per cache with
    the workers; write trials.csv, results.md and the plots. Returns each search with its rows."""
    out = Path(request.out)
    refusal = kind_refusal(out, "tune")
    if refusal:
        raise DirectoryError(refusal)
    if out.exists() and not out.is_dir():
        raise DirectoryError(f"{out}: exists and is not a directory; --out names a tune folder")
    searches = plan(request)
    if request.storage is not None:  # refused before the folder is made
        open_storage(request.storage, out)
    with writing(out):
        out.mkdir(parents=True, exist_ok=True)
    with tables_lock(out):  # several commands may start on one folder at once
        for folder in {out, *(s.out for s in searches)}:
            with writing(folder):
                folder.mkdir(parents=True, exist_ok=True)
            mark_made_by(folder, "tune")
    for search in searches:  # the study opens (or is created) here, so that a bad storage is said once
        study = load_study(open_storage(search.storage, out), search.study_name, seed=request.seed_of_sampler,
                           pruner=search.pruner)
        done = len(study.trials)
        log(f"{search.label}: study {search.study_name} in {search.storage or out / 'study.journal'}"
            + (f": continuing after {done} trial{'s' * (done != 1)}" if done else ": new"))
    deadline = None if request.timeout is None else time.time() + request.timeout
    try:
        run_workers(Work(tuple(searches), request.trials, deadline, request.seed_of_sampler), request.workers,
                    request.base.device, log)
    except KeyboardInterrupt:  # the tables of what the study holds, then the command's own message
        _write_tables(searches, out, request, log)
        raise
    return _write_tables(searches, out, request, log)


def _write_tables(searches: list[Search], out: Path, request: TuneRequest, log) -> list[tuple[Search, list[dict]]]:
    """Each search's tables from its study as the storage holds it now (other commands' trials included)."""
    results = []
    for search in searches:
        study = load_study(open_storage(search.storage, out), search.study_name, seed=request.seed_of_sampler,
                           pruner=search.pruner)
        results.append((search, write_outputs(search, study, log)))
    if len(searches) > 1:
        with tables_lock(out):
            write_text(out / "trials.csv", csv_text([row for _, rows in results for row in rows]))
            write_text(out / "results.md", overview(results))
    return results
