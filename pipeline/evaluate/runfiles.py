"""Reading a run's JSON files back strictly: ``metrics.jsonl`` (one line per epoch) and ``summary.json``.
A file cut short, emptied or of another shape is named with the line and the reason, never a traceback.
No torch: fusion, reports and sweeps read them too. Where they are: ``layout.py``; how training writes
them: ``pipeline/train/rundir.py``.
"""
from __future__ import annotations

import json
import numbers
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import TrainError

# what every metrics line and every summary holds, and the kind of each value
METRIC_FIELDS = {"epoch": int, "loss": numbers.Real, "video_top1": numbers.Real}
SUMMARY_FIELDS = {"out": str, "epochs": int, "final": dict, "parameters": int, "seconds_per_epoch": numbers.Real,
                  "resumed_from": int}
REPAIR = "`mrrn train ... --resume` with the run's settings rebuilds it from the run's last checkpoint"


class DamagedRunFile(TrainError):
    """A file of a run directory that cannot be read back; the message names it and the reason."""


@dataclass
class Metrics:
    """The lines of a metrics.jsonl that read back, in order, and the damaged ones: (line number, reason)."""

    rows: list[dict] = field(default_factory=list)
    damaged: list[tuple[int, str]] = field(default_factory=list)

    def problem(self, path: Path) -> str:
        """One line naming the file and its first damaged line."""
        line, reason = self.damaged[0]
        more = f" (and {len(self.damaged) - 1} more)" if len(self.damaged) > 1 else ""
        return f"{path}: line {line} is damaged ({reason}){more}"


def _shape_problem(obj, fields: dict) -> str | None:
    if not isinstance(obj, dict):
        return f"a {type(obj).__name__}, not an object"
    for name, kind in fields.items():
        value = obj.get(name)
        if value is None:
            return f"no {name!r}"
        if not isinstance(value, kind) or isinstance(value, bool):
            return f"{name!r} is {value!r}"
    return None


def read_metrics(path: Path) -> Metrics:
    """Every line of ``path`` (none when the file is absent): the good ones, and why each other one is not
    (cut mid-line, not JSON, an epoch out of order, a field missing)."""
    metrics = Metrics()
    if not path.is_file():
        return metrics
    try:
        text = path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise DamagedRunFile(f"{path}: cannot be read ({type(err).__name__}: {err})") from None
    lines = text.split("\n")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line, parse_constant=_no_constant)
        except ValueError as err:
            cut = number == len(lines) and not text.endswith("\n")
            metrics.damaged.append((number, "cut mid-line" if cut else f"not JSON: {err}"))
            continue
        problem = _shape_problem(row, METRIC_FIELDS)
        if problem is None and metrics.rows and row["epoch"] <= metrics.rows[-1]["epoch"]:
            problem = f"epoch {row['epoch']} after epoch {metrics.rows[-1]['epoch']}"
        if problem:
            metrics.damaged.append((number, problem))
        else:
            metrics.rows.append(row)
    return metrics


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number mrrn writes")


def read_run_summary(path: Path) -> dict:
    """A run's summary.json; empty, cut short or of another shape is refused in one line naming it."""
    try:
        summary = json.loads(path.read_text(), parse_constant=_no_constant)
    except OSError as err:
        raise DamagedRunFile(f"{path}: cannot be read ({err.strerror or err})") from None
    except ValueError as err:
        reason = "empty" if not path.read_bytes().strip() else f"not JSON: {err}"
        raise DamagedRunFile(f"{path}: damaged run summary ({reason}); {REPAIR}") from None
    problem = _shape_problem(summary, SUMMARY_FIELDS) or _shape_problem(summary["final"], METRIC_FIELDS)
    if problem:
        raise DamagedRunFile(f"{path}: damaged run summary ({problem}); {REPAIR}")
    return summary
