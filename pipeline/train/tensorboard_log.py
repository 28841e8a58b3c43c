"""A run's TensorBoard event files, beside its metrics.jsonl: every number of each epoch's metrics line as a
scalar (step: the epoch), and the run's hyper-parameters for the HParams dashboard. ``tensorboard --logdir
runs/`` then follows a run while it trains and shows a sweep's or a study's runs side by side
(docs/training.md).

The events are ``torch.utils.tensorboard``'s summaries in TensorBoard's record format, written by rank 0 in
the training thread, one epoch at a time, flushed and synced like metrics.jsonl. Not through a
``SummaryWriter``: it writes from a thread of its own, which prints a traceback when the disk is full, and it
keeps a file and a thread open per run (a sweep trains many runs in one process). Nor ``add_hparams``: it
writes into a sub-folder of the run (a timestamp unless named), copies the metrics under tags of their own and
only when the run ends. Here the hyper-parameters (the HParams plugin's session start) head the run's own
event file, so that running and stopped runs (a study's pruned trials) are in the dashboard too, with the
last values of the run's own scalars as their metrics; a finished run adds the session's end. No experiment
summary is written: TensorBoard then takes the columns from every run's hyper-parameters and scalar tags,
where one run's experiment would decide them for all.

The event files follow metrics.jsonl: when training starts or resumes they are written again from the lines
it keeps (``RunDir.keep_metrics_until``), so a resumed run never shows a stale or a repeated epoch. They are
a view of metrics.jsonl: a failure to write them is one warning line and training goes on.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import time
from pathlib import Path

from pipeline.errors import write_failure_reason
from pipeline.evaluate.layout import EVENT_FILE_PREFIX, RunFiles, event_files

TRAIN_TAGS = {"loss": "train/loss", "train_acc": "train/clip_acc"}  # the training clips' numbers
RUN_TAGS = {"lr": "lr", "seconds": "time/epoch_seconds"}  # the epoch's rate and duration
VAL_PREFIX = "val_"  # metrics.jsonl's validation numbers (--val-fraction); every other number is the test videos'
NOT_HPARAMS = ("out", "device", "max_memory")  # where a run is written and computes, not what it computes


def scalar_tag(key: str) -> str:
    """The tag of a metrics.jsonl key: ``train/loss``, ``train/clip_acc``; ``test/<key>`` and ``val/<key>`` for
    the test and validation videos' numbers; ``lr``; ``time/epoch_seconds``."""
    if key in TRAIN_TAGS:
        return TRAIN_TAGS[key]
    if key in RUN_TAGS:
        return RUN_TAGS[key]
    if key.startswith(VAL_PREFIX):
        return f"val/{key[len(VAL_PREFIX):]}"
    return f"test/{key}"


def epoch_scalars(metrics: dict) -> dict[str, float]:
    """Every number of a metrics line but its epoch (the step), by tag; words (``computed_on``) are left out."""
    return {scalar_tag(key): float(value) for key, value in metrics.items()
            if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool)}


def run_hparams(record: dict) -> dict[str, int | float | str | bool]:
    """A run's hyper-parameters from its run record: the training settings (the clip settings as
    ``clip_length``, ``clip_stride``, ``clip_max_clips``; the learning rate as used), the arithmetic it
    computed in and its cache's backbone. Settings without a value (no flow cache) are left out."""
    train = {key: value for key, value in record["train"].items() if key not in NOT_HPARAMS}
    clip = train.pop("clip", None) or {}
    hparams = {**train, **{f"clip_{key}": value for key, value in clip.items()},
               "precision": record.get("precision", train.get("precision")),
               "backbone": (record.get("cache") or {}).get("backbone")}
    return {key: value for key, value in hparams.items() if isinstance(value, (bool, int, float, str))}


class RunEvents:
    """The event files of one run directory, written by rank 0. A failure warns once through ``log``, and
    nothing more is written until training starts again."""

    def __init__(self, path: str | Path, log=print):
        self.files, self.log = RunFiles(path), log
        self.file: Path | None = None  # the event file this process appends to; None until it writes one
        self.failed = False

    def restart(self, rows: list[dict], log) -> None:
        """Training starts, or resumes after the epochs of ``rows`` (metrics.jsonl as kept): the run's event
        files are replaced by one holding exactly those epochs. Later warnings go through ``log``."""
        self.log, self.file, self.failed = log, None, False
        self._write(lambda: self._replace(rows))

    def add_epoch(self, metrics: dict) -> None:
        """An epoch's metrics line, as scalars; on disk when this returns (a live ``tensorboard`` shows it)."""
        self._write(lambda: self._append(_scalar_events(metrics)))

    def finish(self, final: dict) -> None:
        """The run is finished (``final``: its last epoch's metrics): the end of its HParams session."""
        self._write(lambda: self._append(_session_events(self._record(), final["epoch"])[1:]))

    def remove(self) -> None:
        """Every event file of the run goes (a run abandoned before its first epoch leaves nothing)."""
        for old in event_files(self.files.path):
            with contextlib.suppress(OSError):
                old.unlink()
        self.file = None

    def _write(self, write) -> None:
        if self.failed:
            return
        try:
            write()
        except Exception as err:  # event files must never stop training: any failure is one warning line
            self.failed = True
            self.log(f"warning: {self.file or self.files.path}: TensorBoard event files not written "
                     f"({write_failure_reason(err)}); metrics.jsonl holds every epoch")

    def _replace(self, rows: list[dict]) -> None:
        for old in event_files(self.files.path):
            old.unlink()
        if rows:
            self._append([event for row in rows for event in _scalar_events(row)])

    def _record(self) -> dict:
        return json.loads(self.files.record_file.read_text())

    def _append(self, events: list) -> None:
        """``events`` appended to this process's event file, flushed and synced. A new file starts with its
        header and the run's hyper-parameters."""
        from tensorboard.summary.writer.record_writer import RecordWriter

        if self.file is None:
            file = self.files.path / f"{EVENT_FILE_PREFIX}{int(time.time()):010d}.mrrn"
            events = [*_header_events(), *_session_events(self._record(), 0)[:1], *events]
            self.file = file
        records = io.BytesIO()
        writer = RecordWriter(records)
        for event in events:
            writer.write(event.SerializeToString())
        with open(self.file, "ab") as f:
            f.write(records.getbuffer())
            f.flush()
            os.fsync(f.fileno())


def _header_events() -> list:
    """An event file's first events: its format version, and a start at step 0, which tells a ``tensorboard``
    that showed the run's earlier event files to forget them (the file holds the run from its first epoch)."""
    from tensorboard.compat.proto.event_pb2 import Event, SessionLog

    now = time.time()
    return [Event(wall_time=now, step=0, file_version="brain.Event:2"),
            Event(wall_time=now, step=0, session_log=SessionLog(status=SessionLog.START))]


def _scalar_events(metrics: dict) -> list:
    from tensorboard.compat.proto.event_pb2 import Event
    from torch.utils.tensorboard.summary import scalar

    now = time.time()
    return [Event(wall_time=now, step=metrics["epoch"], summary=scalar(tag, value))
            for tag, value in epoch_scalars(metrics).items()]


def _session_events(record: dict, step: int) -> list:
    """The HParams plugin's session start (the run's hyper-parameters) and end (finished), as events at
    ``step``. Its metrics are the run's scalar tags, found by TensorBoard."""
    from tensorboard.compat.proto.event_pb2 import Event
    from torch.utils.tensorboard.summary import hparams

    _, start, end = hparams(run_hparams(record), {})  # the experiment summary is left out (the module's docstring)
    now = time.time()
    return [Event(wall_time=now, step=step, summary=start), Event(wall_time=now, step=step, summary=end)]
