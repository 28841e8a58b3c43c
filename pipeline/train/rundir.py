"""A training run's directory: how each of its files is written and read, and how a run is loaded again.
Which files it holds, their names and when a run is finished: ``pipeline/evaluate/layout.py``.

Checkpoints hold only tensors, numbers, strings, lists and dicts, and are loaded with
``torch.load(weights_only=True)``: opening a run directory never runs code from it.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch

from pipeline import __version__
from pipeline.atomic import atomic_file, write_text
from pipeline.cache.contents import CACHE_VERSIONS, FINGERPRINT, changes, fingerprint
from pipeline.cache.reader import FeatureCache, read_identity
from pipeline.config import TrainConfig
from pipeline.errors import TrainError, first_line, writing
from pipeline.cache.identity import CacheIdentity, IdentityError, flat_settings, word_differences
from pipeline.evaluate.layout import LAST_CHECKPOINT, MADE_BY, RUN_RECORD, RunFiles, mark_made_by
from pipeline.evaluate.runfiles import DamagedRunFile, read_metrics, read_run_summary
from pipeline.train.checkpoints import expected_shapes, model_problem
from pipeline.train.heads import build_model
from pipeline.train.tensorboard_log import RunEvents

# Settings that may change when a run is resumed: they do not change what the run computes (the cache
# is compared by its identity, so a moved cache file is still the same cache).
RESUMABLE_FIELDS = ("out", "device", "epochs", "cache", "flow_cache", "max_memory")


@dataclass
class RunSummary:
    out: str
    epochs: int
    final: dict  # the last epoch's metrics
    parameters: int
    seconds_per_epoch: float
    resumed_from: int  # epochs already done when this call started
    already_complete: bool = False
    computed_on: dict | None = None  # the test videos (and classes) the numbers are over: ``scores.Coverage``; None in older runs


def run_record(cfg: TrainConfig) -> dict:
    """The run record (config.json): the training settings and the identity of each cache read (headers only)."""
    record = {"train": cfg.to_json(), "cache": read_identity(Path(cfg.cache)).to_json(), "mrrn_version": __version__}
    if cfg.flow_cache is not None:
        record["flow_cache"] = read_identity(Path(cfg.flow_cache)).to_json()
    read = {name: _contents(Path(path), cfg.split) for name, path in (("cache", cfg.cache), ("flow_cache", cfg.flow_cache))
            if path is not None}
    record[FINGERPRINT] = {name: fp for name, (fp, _) in read.items() if fp is not None}  # the data the run is pinned to
    record[CACHE_VERSIONS] = {name: version for name, (_, version) in read.items()}  # the commit of each cache read
    return record


def _contents(path: Path, split: int) -> tuple[dict | None, str]:
    """(the fingerprint of what the cache at ``path`` holds for ``split``, None without that split; the cache's
    version name). No feature is read."""
    with FeatureCache(path) as cache:
        return (fingerprint(cache, split) if split in cache.splits else None), cache.version


def _require_same_contents(path: Path, old: dict, record: dict) -> None:
    """Refuse to go on with (or to report again) a run whose caches now hold other contents than it was trained
    on, saying what changed; a record without a fingerprint (an older version's) passes."""
    now = record.get(FINGERPRINT) or {}
    for name, fp in (old.get(FINGERPRINT) or {}).items():
        what = changes(fp, now[name]) if name in now else ""
        if what:
            raise TrainError(f"{path}: this run was trained on other contents of {record['train'][name]} than it holds "
                             f"now ({what}); use another --out to train on the cache as it is")


def _comparable(record: dict) -> dict:
    """The settings that decide what a run computes, flat, so a refusal can name each difference.
    Fields added to the settings after a run was made take their defaults."""
    train = TrainConfig.from_json(record["train"]).to_json()
    flat = flat_settings({k: v for k, v in train.items() if k not in RESUMABLE_FIELDS})
    for name, prefix in (("cache", "cache "), ("flow_cache", "flow cache ")):
        if name in record:
            flat.update(flat_settings(CacheIdentity.from_json(record[name]).to_json(), prefix))
    return flat


def _write_json(path: Path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")  # strict JSON: never NaN or Infinity


class RunDir(RunFiles):
    """One run directory: reading and writing its files (where they are: ``RunFiles``)."""

    def __init__(self, path: str | Path):
        super().__init__(path)
        self.events = RunEvents(self.path)  # TensorBoard's view of metrics.jsonl (train/tensorboard_log.py)

    def read_record(self) -> dict | None:
        """The run record, None when there is none yet; a damaged one is refused."""
        if not self.record_file.is_file():
            return None
        try:
            record = json.loads(self.record_file.read_text())
            _comparable(record)  # every field it needs is there and readable
            return record
        except (ValueError, KeyError, TypeError, IdentityError) as err:
            raise DamagedRunFile(f"{self.record_file}: damaged run configuration ({type(err).__name__}: {err}); "
                             "use another --out") from None

    def check(self, record: dict, epochs: int, resume: bool, log) -> RunSummary | None:
        """Before training into this directory: the finished run's summary when it already holds this run
        with these epochs; None when training may start (or resume); a refusal otherwise."""
        if self.path.exists() and not self.path.is_dir():
            raise TrainError(f"{self.path}: exists and is not a directory; --out names a run directory")
        old = self.read_record()
        if old is None:
            return None
        if _comparable(old) != _comparable(record):
            raise TrainError(f"{self.path}: holds a run of another configuration "
                             f"({word_differences(_comparable(old), _comparable(record), 'that run', 'this run')}); use another --out")
        _require_same_contents(self.path, old, record)
        done = old["train"]["epochs"]
        if self.is_finished():
            damaged = self.damage()
            if epochs == done and damaged is None:
                log(f"{self.path}: already complete ({epochs} epoch{'s' * (epochs != 1)}); nothing to do")
                return RunSummary(**{**self.read_summary(), "already_complete": True})
            if epochs == done:
                if not resume:
                    raise DamagedRunFile(f"{damaged}; pass --resume to rebuild it from the run's last checkpoint")
                log(f"warning: {damaged}; rebuilding it from the run's last checkpoint (--resume)")
                return None
            if epochs < done:
                raise TrainError(f"{self.path}: holds a finished run of {done} epochs; a run is extended, never "
                                 f"shortened: use another --out for {epochs} epoch{'s' * (epochs != 1)}")
            if not resume:
                raise TrainError(f"{self.path}: holds a finished run of {done} epoch{'s' * (done != 1)}; pass --resume to extend it "
                                 f"to {epochs}, or use another --out")
            return None
        if not resume:
            raise TrainError(f"{self.path}: holds an unfinished run of this configuration; pass --resume to continue "
                             "it or use another --out")
        reached = self.checkpoint_epoch()
        if reached > epochs:
            raise TrainError(f"{self.path}: its last checkpoint is of epoch {reached}; a run is extended, never "
                             f"shortened: use another --out for {epochs} epoch{'s' * (epochs != 1)}")
        return None

    def start(self, record: dict) -> None:
        """Training begins (or goes on): the run record is written and the run is unfinished until its
        summary is written again."""
        with writing(self.path):
            self.path.mkdir(parents=True, exist_ok=True)
            self.summary_file.unlink(missing_ok=True)
            self.pruned_file.unlink(missing_ok=True)  # a pruned run continued (--resume) is no longer pruned
        mark_made_by(self.path, "run")
        _write_json(self.record_file, record)

    def abandon(self) -> None:
        """Remove what :meth:`start` wrote for a run that never finished an epoch (out of memory at once), so
        that the same --out takes the run again with other settings; a directory left empty goes too."""
        for leftover in (self.record_file, self.metrics_file, self.path / MADE_BY):
            leftover.unlink(missing_ok=True)
        self.events.remove()
        with contextlib.suppress(OSError):
            self.path.rmdir()

    def mark_pruned(self, epoch: int, epochs: int, reason: str) -> None:
        """The run stopped after ``epoch`` of ``epochs`` because a tuner's pruner judged it hopeless: said in
        ``pruned.json``; the run stays unfinished (no summary), its finished epochs kept."""
        _write_json(self.pruned_file, {"epoch": epoch, "epochs": epochs, "reason": reason})

    # -- metrics and summary

    def append_metrics(self, metrics: dict) -> None:
        line = json.dumps(metrics, allow_nan=False) + "\n"  # strict JSON: never NaN or Infinity
        with writing(self.metrics_file), open(self.metrics_file, "a") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        self.events.add_epoch(metrics)

    def keep_metrics_until(self, epoch: int, log=print) -> None:
        """As training starts or resumes: drop metrics lines of epochs after the checkpoint (a kill between the
        two writes), and damaged lines (cut mid-line, edited), saying so: the epochs they held keep no numbers.
        The TensorBoard event files are written again with the lines kept; their warnings go through ``log``."""
        rows = []
        if self.metrics_file.exists():
            metrics = read_metrics(self.metrics_file)
            if metrics.damaged:
                log(f"warning: {metrics.problem(self.metrics_file)}; dropped (the run goes on from its checkpoint of epoch {epoch})")
            rows = [row for row in metrics.rows if row["epoch"] <= epoch]
            write_text(self.metrics_file, "".join(json.dumps(row, allow_nan=False) + "\n" for row in rows))
        self.events.restart(rows, log)

    def last_metrics(self) -> dict:
        """The metrics of the epoch last.pt holds; refused when that line is lost (nothing to rebuild it from)."""
        epoch, rows = self.checkpoint_epoch(), read_metrics(self.metrics_file).rows
        if not rows or rows[-1]["epoch"] != epoch:
            raise DamagedRunFile(f"{self.metrics_file}: the numbers of epoch {epoch}, the run's last, are lost and "
                                 "cannot be rebuilt from its checkpoint; train again into another --out")
        return rows[-1]

    def damage(self) -> str | None:
        """Why a finished run's summary.json or metrics.jsonl does not read back; None when both do."""
        try:
            self.read_summary()
        except DamagedRunFile as err:
            return str(err).split("; ")[0]
        metrics = read_metrics(self.metrics_file)
        return metrics.problem(self.metrics_file) if metrics.damaged else None

    def write_summary(self, summary: RunSummary) -> None:
        _write_json(self.summary_file, {k: v for k, v in asdict(summary).items() if k != "already_complete"})
        self.events.finish(summary.final)

    def read_summary(self) -> dict:
        """The summary's fields this version knows (newer ones are left out); a damaged file is refused."""
        summary = read_run_summary(self.summary_file)
        return {f.name: summary[f.name] for f in fields(RunSummary) if f.name in summary}

    # -- checkpoints

    def save_checkpoint(self, state: dict, name: str) -> None:
        buffer = io.BytesIO()  # serialised first, so a failed write is an OS error naming its cause
        torch.save(state, buffer)
        with atomic_file(self.checkpoint_file(name)) as f:
            f.write(buffer.getbuffer())

    def checkpoint_epoch(self) -> int:
        """The epoch last.pt holds (0 without one); a checkpoint without an epoch number is refused."""
        if not self.checkpoint_file(LAST_CHECKPOINT).is_file():
            return 0
        state = self.load_checkpoint(LAST_CHECKPOINT)
        epoch = state.get("epoch") if isinstance(state, dict) else None
        if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 1:
            raise DamagedRunFile(f"{self.checkpoint_file(LAST_CHECKPOINT)}: not a checkpoint of a run (no epoch number in it); "
                             "use another --out")
        return epoch

    def load_checkpoint(self, name: str) -> dict:
        """A checkpoint of plain data (tensors, numbers, strings, lists, dicts), on the CPU; anything that
        would need code to unpickle is refused."""
        path = self.checkpoint_file(name)
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises many types for a damaged or unsafe file
            raise DamagedRunFile(f"{path}: not a checkpoint mrrn can load safely ({first_line(err)})") from None


@dataclass
class TrainedRun:
    run: Path
    cfg: TrainConfig
    model: torch.nn.Module  # in eval mode, on the requested device
    classes: tuple[str, ...]
    identities: tuple[CacheIdentity, ...]  # the caches it reads: one, or RGB and flow (twostream)


def load_run(run: str | Path, device: torch.device, checkpoint: str = LAST_CHECKPOINT) -> TrainedRun:
    """A finished run's model (the last epoch's, which produced its reported scores) ready for inference."""
    rundir = RunDir(run)
    record = rundir.read_record()
    if not rundir.checkpoint_file(checkpoint).is_file() or record is None:
        raise TrainError(f"{rundir.path}: not a run directory with {checkpoint} and {RUN_RECORD}")
    unfinished = rundir.unfinished_reason()
    if unfinished:
        raise TrainError(unfinished)
    cfg = TrainConfig.from_json(record["train"])
    identities = tuple(CacheIdentity.from_json(record[c]) for c in ("cache", "flow_cache") if c in record)
    width = sum(identity.level_widths[cfg.level] for identity in identities)
    classes = identities[0].classes
    state = rundir.load_checkpoint(checkpoint)
    problem = model_problem(state, expected_shapes(cfg, width, len(classes)))  # before any model is built
    if problem:
        raise TrainError(f"{rundir.checkpoint_file(checkpoint)}: does not fit the run's model ({problem}); "
                         f"{RUN_RECORD} or the checkpoint was changed after training")
    model = build_model(cfg, width, len(classes))
    try:
        model.load_state_dict(state["model"])
    except (KeyError, TypeError, RuntimeError) as err:
        raise TrainError(f"{rundir.checkpoint_file(checkpoint)}: does not fit the run's model ({first_line(err)})") from None
    if not all(torch.isfinite(p).all() for p in model.state_dict().values() if p.is_floating_point()):
        raise TrainError(f"{rundir.checkpoint_file(checkpoint)}: the model's weights are not finite; retrain the run")
    return TrainedRun(rundir.path, cfg, model.to(device).eval(), classes, identities)
