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

A run is finished when it holds its record and its summary: training writes the record first and the
summary last, and a fusion directory, which has a summary.json too, has no record.

A fusion directory::

    fused_scores.npz   the fused video scores (videos, K) with keys, labels, classes, the runs and the method
    summary.json       the method, the weights and one row of metrics per run and for the fusion
    summary.md         that table as Markdown
    report.md          the report (``mrrn report``), with confusion.png, per_class.png, curves_<run>.png

A directory is a fusion directory when it holds fused_scores.npz. A report on a single run writes the
report's files into the run directory.
"""
from __future__ import annotations

from pathlib import Path

RUN_RECORD = "config.json"
METRICS = "metrics.jsonl"
LAST_CHECKPOINT = "last.pt"  # the last epoch's: what --resume continues and what predict uses
BEST_CHECKPOINT = "best.pt"
RUN_SUMMARY = "summary.json"
SCORE_PARTS = ("test", "val")

FUSED_SCORES = "fused_scores.npz"
FUSION_SUMMARY = "summary.json"
FUSION_TABLE = "summary.md"


def scores_name(part: str) -> str:
    """The score file of ``part`` (one of ``SCORE_PARTS``)."""
    if part not in SCORE_PARTS:
        raise ValueError(f"score files are of {' or '.join(SCORE_PARTS)} videos, not {part!r}")
    return f"scores_{part}.npz"


class RunFiles:
    """Where each file of one run directory is."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.record_file = self.path / RUN_RECORD
        self.metrics_file = self.path / METRICS
        self.summary_file = self.path / RUN_SUMMARY

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
