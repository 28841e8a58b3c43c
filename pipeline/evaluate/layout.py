"""The files of a run directory (``mrrn train``) and of a fusion directory (``mrrn fuse``): their names,
and what makes a directory one or the other. Every reader and writer takes the names from here. No
torch, h5py or OpenCV: fusion and reports use it too.

A run directory::

    config.json        the run record: the training settings, the identity of each cache read, the mrrn version
    metrics.jsonl      one line per epoch: loss, train acc, clip acc, video top-1/top-5, mean class acc, lr, s
    last.pt, best.pt   model + optimiser + epoch + run record (+ RNG state in last.pt, for --resume); best.pt
                       is the epoch with the best video top-1 on the validation videos when there are some
                       (--val-fraction), else on the test videos
    scores_test.npz    the test videos' softmax scores (videos, K) with keys and labels: what fusion reads
    scores_val.npz     the same for the validation videos, with --val-fraction (fusion's weight search)
    summary.json       written last
    events.out.tfevents.*  TensorBoard's view of metrics.jsonl, and the run's hyper-parameters once it is
                       finished (``pipeline/train/tensorboard_log.py``)
    pruned.json        only in a run `mrrn tune` stopped early (its pruner): the epoch it stopped after and why;
                       such a run is unfinished (no summary.json), and `mrrn train --resume` would finish it

A run is finished when it holds its record and its summary: training writes the record first and the
summary last, and a fusion directory, which has a summary.json too, has no record.

A fusion directory::

    fused_scores.npz   the fused video scores (videos, K) with keys, labels, classes, the runs and the method
    summary.json       the method, the weights and one row of metrics per run and for the fusion
    summary.md         that table as Markdown
    report.md          the report (``mrrn report``), with confusion.png, per_class.png, curves_<run>.png

A directory is a fusion directory when it holds fused_scores.npz. A report on a single run writes the
report's files into the run directory.

Every directory mrrn writes says what made it: ``made_by.json`` (a run, a sweep or a fusion), written
before anything else; a sweep directory holds results.csv, results.md and one run directory per grid
point. A directory written before that record existed is known by its files. While a command writes a
directory it holds the directory's lock, ``.lock`` (``pipeline/locks.py``), removed when it is done.
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path

from pipeline import __version__
from pipeline.atomic import write_text
from pipeline.errors import MrrnError, writing
from pipeline.locks import ExclusiveLock

RUN_RECORD = "config.json"
METRICS = "metrics.jsonl"
LAST_CHECKPOINT = "last.pt"  # the last epoch's: what --resume continues and what predict uses
BEST_CHECKPOINT = "best.pt"
RUN_SUMMARY = "summary.json"
EVENT_FILE_PREFIX = "events.out.tfevents."  # TensorBoard reads every file whose name holds "tfevents"
PRUNED_MARK = "pruned.json"  # {"epoch", "epochs", "reason"}: a run stopped early by `mrrn tune`'s pruner
SCORE_PARTS = ("test", "val")

SWEEP_TABLES = ("results.csv", "results.md")
MADE_BY = "made_by.json"  # {"kind": "run" | "sweep" | "fusion", "command": "train" | "sweep" | "fuse", "mrrn_version"}
DIRECTORY_LOCK = ".lock"
KIND_COMMANDS = {"run": "train", "sweep": "sweep", "fusion": "fuse", "tune": "tune"}  # what makes each kind of directory

FUSED_SCORES = "fused_scores.npz"
FUSION_SUMMARY = "summary.json"
FUSION_TABLE = "summary.md"


def scores_name(part: str) -> str:
    """The score file of ``part`` (one of ``SCORE_PARTS``)."""
    if part not in SCORE_PARTS:
        raise ValueError(f"score files are of {' or '.join(SCORE_PARTS)} videos, not {part!r}")
    return f"scores_{part}.npz"


def event_files(run: str | Path) -> list[Path]:
    """A run directory's TensorBoard event files, oldest first (their names start with the time)."""
    return sorted(Path(run).glob(f"{EVENT_FILE_PREFIX}*"))


class RunFiles:
    """Where each file of one run directory is."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.record_file = self.path / RUN_RECORD
        self.metrics_file = self.path / METRICS
        self.summary_file = self.path / RUN_SUMMARY
        self.pruned_file = self.path / PRUNED_MARK

    def pruned(self) -> dict | None:
        """What ``pruned.json`` says (the epoch the run stopped after, of how many, and why); None when the run
        was not pruned or the mark does not read back."""
        try:
            mark = json.loads(self.pruned_file.read_text())
        except (OSError, ValueError):
            return None
        return mark if isinstance(mark, dict) and {"epoch", "epochs", "reason"} <= mark.keys() else None

    def checkpoint_file(self, name: str) -> Path:
        return self.path / name

    def scores_file(self, part: str) -> Path:
        return self.path / scores_name(part)

    def is_finished(self) -> bool:
        return self.record_file.is_file() and self.summary_file.is_file()

    def unfinished_reason(self) -> str | None:
        """None for a finished run; otherwise why it is not one, as one line naming the directory."""
        if self.is_finished():
            return None
        if not self.path.is_dir():
            return f"{self.path}: no such run directory"
        if not self.record_file.is_file():
            if FusionFiles(self.path).is_fusion():
                return f"{self.path}: a fusion directory, not a run; give the runs it fused instead"
            return f"{self.path}: not a finished run (no {RUN_RECORD}: not a directory `mrrn train` wrote)"
        pruned = self.pruned()
        if pruned:
            return (f"{self.path}: not a finished run: pruned by `mrrn tune` after epoch {pruned['epoch']} of "
                    f"{pruned['epochs']} ({pruned['reason']}); finish it with `mrrn train ... --resume`")
        return f"{self.path}: not a finished run (no {RUN_SUMMARY}); finish it with `mrrn train ... --resume`"


class FusionFiles:
    """Where each file of one fusion directory is (the report's: ``ReportFiles``)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.fused_scores_file = self.path / FUSED_SCORES
        self.summary_file = self.path / FUSION_SUMMARY
        self.table_file = self.path / FUSION_TABLE

    def is_fusion(self) -> bool:
        return self.fused_scores_file.is_file()


class ReportFiles:
    """Where each file of a report is: in a fusion directory, or in the run directory it reports on."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.report_file = self.path / "report.md"
        self.confusion_file = self.path / "confusion.png"
        self.per_class_file = self.path / "per_class.png"

    def curves_file(self, run_name: str) -> Path:
        """The training curves of the run whose directory is called ``run_name``."""
        return self.path / f"curves_{run_name}.png"


def directory_kind(path: str | Path) -> str | None:
    """What made the directory ``path``: 'run', 'sweep' or 'fusion' as its ``made_by.json`` says or, for a
    directory written before that record, as its files show; None for a new, empty or other directory."""
    path = Path(path)
    try:
        kind = json.loads((path / MADE_BY).read_text()).get("kind")
        if kind in KIND_COMMANDS:
            return kind
    except (OSError, ValueError, AttributeError):
        pass  # no record (an older directory) or an unreadable one: known by its files
    if FusionFiles(path).is_fusion():
        return "fusion"
    if (path / RUN_RECORD).is_file():
        return "run"
    if any((path / name).is_file() for name in SWEEP_TABLES):
        return "sweep"
    return None


def kind_refusal(path: str | Path, kind: str) -> str | None:
    """None when ``mrrn {KIND_COMMANDS[kind]}`` may write a ``kind`` directory at ``path`` (new, empty, of
    no known kind, or of this kind); otherwise the one-line refusal: another command's results are never
    overwritten."""
    found = directory_kind(path) if Path(path).is_dir() else None
    if found is None or found == kind:
        return None
    return (f"{path}: a {found} directory (made by `mrrn {KIND_COMMANDS[found]}`), not a {kind} directory; "
            f"`mrrn {KIND_COMMANDS[kind]}` never writes over another command's results: use another --out")


class DirectoryError(MrrnError):
    """A directory another command made, or one another mrrn process is writing now."""


def mark_made_by(path: str | Path, kind: str) -> None:
    """Record that ``path`` is a ``kind`` directory (``made_by.json``), unless it says so already."""
    if directory_kind(path) != kind or not (Path(path) / MADE_BY).is_file():
        record = {"kind": kind, "command": KIND_COMMANDS[kind], "mrrn_version": __version__}
        write_text(Path(path) / MADE_BY, json.dumps(record) + "\n")


@contextlib.contextmanager
def claimed(path: str | Path, kind: str | None = None):
    """``with claimed(out, "run"):`` this process alone writes the directory ``path``: refused in one line,
    before anything is written, when it holds another command's results (``kind_refusal``; ``kind`` None:
    any directory, as a report writes into a run or a fusion) or another mrrn process holds its lock.
    The directory is created if need be, and removed again if nothing was written into it."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise DirectoryError(f"{path}: exists and is not a directory; --out names a {kind or 'run or fusion'} directory")
    refusal = kind and kind_refusal(path, kind)
    if refusal:
        raise DirectoryError(refusal)
    created = not path.exists()
    with writing(path):
        path.mkdir(parents=True, exist_ok=True)
    lock_file = path / DIRECTORY_LOCK
    try:
        with ExclusiveLock(lock_file, lambda: DirectoryError(
                f"{path}: another mrrn process is writing this directory (lock {lock_file} is held); wait for it to "
                "finish" + (" or use another --out" if kind else "")), remove=True):
            refusal = kind and kind_refusal(path, kind)  # again, now that no other writer can change it
            if refusal:
                raise DirectoryError(refusal)
            yield path
    finally:
        if created:
            with contextlib.suppress(OSError):
                path.rmdir()  # only when empty: a refused or failed first command leaves nothing behind
