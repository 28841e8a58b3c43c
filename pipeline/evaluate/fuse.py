"""Fusion of several runs' video scores (MRRN eq. 10; Res-LSTM's sum and product), and its summary.

    weighted   P = sum_i w_i P_i, weights matched to runs by level (paper: 0.7 high, 0.2 mid, 0.1 low),
               or by modality:level / modality where RGB and flow runs are fused
    sum        P = sum_i P_i
    product    P = prod_i P_i (computed as a sum of logs, then renormalised)

Every run must score the same videos, classes, cache and split; anything else is refused with what
differs. ``--search`` chooses the weights on validation videos held out of the *training* videos
(``mrrn train --val-fraction``): the search is given validation scores only, never test scores.
"""
from __future__ import annotations

import itertools
import json
import math
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pipeline.atomic import atomic_file, write_text
from pipeline.config import FUSION_METHODS, LEVELS, PAPER_FUSION_WEIGHTS
from pipeline.errors import MrrnError
from pipeline.cache.contents import conflict
from pipeline.cache.identity import IdentityError
from pipeline.evaluate.layout import FusionFiles, RunFiles, claimed, kind_refusal, mark_made_by
from pipeline.evaluate.metrics import video_metrics
from pipeline.evaluate.runfiles import read_run_summary
from pipeline.evaluate.scores import RunScores, read_scores

SEARCH_STEP = 0.05  # weight grid on the simplex for --search
BARE_WEIGHT_LEVELS = tuple(PAPER_FUSION_WEIGHTS)  # whose weights bare numbers in --weights are: high, mid, low


class FuseError(MrrnError):
    """Runs that cannot be fused as asked; the message says what differs."""


def load_scores(run: str | Path, part: str = "test") -> RunScores:
    """A finished run's ``scores_<part>.npz`` (part: test or val), refused in one line when the run is
    unfinished, or the file absent, unreadable or not finite."""
    files = RunFiles(run)
    path = files.scores_file(part)
    unfinished = files.unfinished_reason()
    if unfinished:
        raise FuseError(unfinished)
    if not path.is_file():
        hint = " (train it with --val-fraction for --search)" if part == "val" else ""
        raise FuseError(f"{path}: no {part} scores{hint}")
    try:
        scores = read_scores(files.path, part)
    except IdentityError as err:
        raise FuseError(f"{path}: unreadable cache identity ({err})") from None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        raise FuseError(f"{path}: damaged score file ({type(err).__name__}: {err})") from None
    if not np.isfinite(scores.scores).all():
        raise FuseError(f"{path}: the scores are not finite (NaN or infinity); retrain the run")
    return scores


def check_compatible(runs: list[RunScores]) -> None:
    """Refuse runs that do not score the same videos and classes of the same cache and split."""
    if len(runs) < 2:
        raise FuseError("fusion needs at least two runs")
    first = runs[0]
    for other in runs[1:]:
        pair = f"{other.run} and {first.run}"
        if other.cache_identity.without_stream() != first.cache_identity.without_stream():
            raise FuseError(f"{pair} were trained on different caches (backbone, weights, preprocessing or dataset)")
        if other.split != first.split:
            raise FuseError(f"{pair} use different splits ({other.split} and {first.split})")
        if other.classes != first.classes:
            raise FuseError(f"{pair} have different classes ({len(other.classes)} and {len(first.classes)})")
        if other.keys != first.keys:
            only = sorted(set(other.keys) ^ set(first.keys))
            what = f"{len(only)} video(s) in one only, e.g. {only[0]}" if only else "the same videos in another order"
            raise FuseError(f"{pair} score different videos: {what}")
        if not np.array_equal(other.labels, first.labels):
            raise FuseError(f"{pair} give the same videos different labels")


def check_same_contents(run_dirs: list[str | Path]) -> None:
    """Refuse runs that read one cache with different contents (their run records' fingerprints); runs
    recorded before fingerprints existed pass."""
    records = []
    for run in run_dirs:
        path = RunFiles(run).record_file
        try:
            records.append((str(run), json.loads(path.read_text())))
        except (OSError, ValueError) as err:
            raise FuseError(f"{path}: damaged run record ({type(err).__name__}: {err})") from None
    clash = conflict([(name, r) for name, r in records if isinstance(r, dict)])
    if clash:
        raise FuseError(clash)


def parse_weights(text: str | None) -> dict[str, float] | None:
    """--weights as written on the command line: 'high=0.7,mid=0.2,low=0.1', 'rgb:high=0.5,flow:high=0.5',
    'rgb=1,flow=1.5', or one to three bare numbers, the weights of high, mid and low in that order (eq. 10's):
    '0.7,0.3' weighs high and mid and gives low no weight, so a low run is then refused by ``weights_for``."""
    if text is None:
        return None
    items = [t.strip() for t in text.split(",") if t.strip()]
    try:
        if all("=" in t for t in items):
            weights = {k.strip(): float(v) for k, v in (t.split("=", 1) for t in items)}
        elif len(items) <= len(BARE_WEIGHT_LEVELS):
            weights = dict(zip(BARE_WEIGHT_LEVELS, (float(t) for t in items)))
        else:
            raise ValueError(f"{len(items)} numbers")
        if not weights:
            raise ValueError("no weights")
    except ValueError:
        raise FuseError(f"--weights: expected 'high=0.7,mid=0.2,low=0.1', 'rgb:high=0.5,flow:high=0.5' or one to "
                        f"three numbers for {', '.join(BARE_WEIGHT_LEVELS)} in that order, got {text!r}") from None
    bad = [f"{k}={v}" for k, v in weights.items() if not (math.isfinite(v) and v >= 0)]
    if bad:
        raise FuseError(f"--weights: each weight must be a finite number >= 0, got {', '.join(bad)}")
    return weights


def default_method(streams: list[tuple[str, str]]) -> str:
    """Eq. 10's weighted fusion when the runs are one per level of one stream, else the sum."""
    one_per_level = len(set(streams)) == len(streams) and len({s for s, _ in streams}) == 1
    return "weighted" if one_per_level else "sum"


def weights_for(streams: list[tuple[str, str]], weights: dict[str, float] | None) -> list[float]:
    """One weight per run given as (modality, level): the weight of ``modality:level``, else of the
    modality, else of the level (``weights`` or the paper's 0.7 high, 0.2 mid, 0.1 low). A key that
    would serve two runs is refused: weights must say which run they are for."""
    weights = PAPER_FUSION_WEIGHTS if weights is None else weights
    keys = []
    for modality, level in streams:
        key = next((k for k in (f"{modality}:{level}", modality, level) if k in weights), None)
        if key is None:
            raise FuseError(f"no weight for the {modality} {level} run (weights given: "
                            f"{', '.join(f'{k}={v:g}' for k, v in weights.items())})")
        keys.append(key)
    shared = sorted({k for k in keys if keys.count(k) > 1})
    if shared:
        raise FuseError(f"the weight of {', '.join(shared)} would serve more than one run; give each run its own, "
                        "e.g. --weights rgb:high=0.5,flow:high=0.5 (modality:level), or use --method sum or product")
    chosen = [float(weights[k]) for k in keys]
    if not sum(chosen) > 0:
        raise FuseError(f"the weights of these runs add up to {sum(chosen):g}; at least one must be above 0")
    return chosen


def fuse(scores: list[np.ndarray], method: str, weights: list[float] | None = None) -> np.ndarray:
    """Fuse per-run video scores, each (videos, K), into (videos, K) rows that sum to 1."""
    stack = np.stack(scores)  # (runs, videos, K)
    if method == "weighted":
        fused = np.tensordot(np.asarray(weights, dtype=np.float64), stack, axes=1)
    elif method == "sum":
        fused = stack.sum(0)
    elif method == "product":
        log = np.log(np.clip(stack, 1e-12, None)).sum(0)
        fused = np.exp(log - log.max(axis=1, keepdims=True))
    else:
        raise FuseError(f"unknown fusion method {method!r}; expected one of {', '.join(FUSION_METHODS)}")
    return fused / fused.sum(axis=1, keepdims=True)


def search_weights(val_scores: list[np.ndarray], val_labels: np.ndarray, step: float = SEARCH_STEP) -> list[float]:
    """The weights on a ``step`` grid of the simplex that maximise video top-1 on *validation* scores
    (ties: higher mean class accuracy, then the grid's first). Only validation data comes in here."""
    n = len(val_scores)
    ticks = int(round(1 / step))
    best_key, best = None, None
    num_classes = val_scores[0].shape[1]
    for cut in itertools.combinations(range(ticks + n - 1), n - 1):  # stars and bars: all compositions
        parts = np.diff([-1, *cut, ticks + n - 1]) - 1
        weights = (parts / ticks).tolist()
        m = video_metrics(fuse(val_scores, "weighted", weights), val_labels, num_classes)
        key = (m["video_top1"], m["mean_class_acc"])
        if best_key is None or key > best_key:
            best_key, best = key, weights
    return best


@dataclass
class FuseSummary:
    out: str
    method: str
    weights: dict[str, float] | None  # per run name, for weighted fusion
    searched: bool
    rows: list[dict]  # one per run and one for the fusion: name, video_top1, video_top5, mean_class_acc
    computed_on: dict | None = None  # the test videos the numbers are over (``scores.Coverage``); None in older files


def summary_markdown(s: FuseSummary) -> str:
    names = [r["name"] for r in s.rows]
    lines = ["| | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for metric, title in (("video_top1", "video top-1"), ("video_top5", "video top-5"),
                          ("mean_class_acc", "mean class accuracy")):
        lines.append(f"| {title} (%) | " + " | ".join(f"{100 * r[metric]:.2f}" for r in s.rows) + " |")
    how = s.method
    if s.weights:
        how += " with weights " + ", ".join(f"{k} {v:g}" for k, v in s.weights.items())
        how += " (chosen on validation videos)" if s.searched else ""
    on = s.computed_on
    over = f"Every number is {on['statement']}.\n" if on and not on["complete"] else ""
    return "\n".join(lines) + f"\n\nFusion: {how}.\n" + over


def run_fuse(run_dirs: list[str | Path], out: str | Path, method: str = "weighted",
             weights: dict[str, float] | None = None, search: bool = False) -> FuseSummary:
    """Fuse the runs' test scores into the fusion directory ``out`` (its files: ``layout.FusionFiles``)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FuseError(f"{out}: exists and is not a directory; --out names the fuse directory")
    refusal = kind_refusal(out, "fusion") or given_twice(run_dirs)  # before anything is read or written
    if refusal:
        raise FuseError(refusal)
    runs = [load_scores(r, "test") for r in run_dirs]
    for r in run_dirs:  # every input read back before anything is written: a damaged summary is named
        read_run_summary(RunFiles(r).summary_file)
    check_compatible(runs)
    check_same_contents(run_dirs)
    run_weights = None
    if search:
        if method != "weighted":
            raise FuseError("--search chooses weights, so it needs --method weighted")
        val = [load_scores(r, "val") for r in run_dirs]
        check_compatible(val)
        run_weights = search_weights([v.scores for v in val], val[0].labels)
    elif method == "weighted":
        run_weights = weights_for([(r.streams, r.level) for r in runs], weights)
    fused = fuse([r.scores for r in runs], method, run_weights)
    num_classes = len(runs[0].classes)
    labels = runs[0].labels
    order = sorted(runs, key=lambda r: list(LEVELS).index(r.level))
    rows = [{"name": r.name, "run": str(r.run), **video_metrics(r.scores, labels, num_classes)} for r in order]
    rows.append({"name": "fused", "run": str(out), **video_metrics(fused, labels, num_classes)})
    summary = FuseSummary(out=str(out), method=method, searched=search, rows=rows,
                          weights={r.name: w for r, w in zip(runs, run_weights)} if run_weights else None,
                          computed_on=runs[0].coverage.to_json())
    files = FusionFiles(out)
    with claimed(out, "fusion"):  # one writer: a second fusion into ``out`` at once is refused
        mark_made_by(out, "fusion")
        with atomic_file(files.fused_scores_file) as f:
            np.savez(f, scores=fused, keys=np.array(runs[0].keys), labels=runs[0].labels,
                     classes=np.array(runs[0].classes), runs=np.array([str(r.run) for r in runs]), method=method)
        write_text(files.summary_file, json.dumps(asdict(summary), indent=2, allow_nan=False) + "\n")
        write_text(files.table_file, summary_markdown(summary))
    return summary


def given_twice(run_dirs: list[str | Path]) -> str | None:
    """The refusal of a run given twice (under one name or two): a run is not fused with itself."""
    seen: dict[Path, str | Path] = {}
    for run in run_dirs:
        where = Path(run).resolve()
        if where in seen:
            return f"{run}: the same run as {seen[where]}, given twice; a run is fused with other runs, not with itself"
        seen[where] = run
    return None
