"""Reports to look at: confusion matrix, per-class accuracy per level, training curves, report.md.

Works on a fuse directory (``mrrn fuse`` output: fused scores and the runs it fused) or on a single
run directory; the files of each, and of the report, are named in ``layout.py``. Needs matplotlib (the
``report`` extra, installed by ``make install``).
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

from pipeline.atomic import write_text
from pipeline.errors import MrrnError, writing
from pipeline.evaluate.fuse import FuseSummary, load_scores, summary_markdown
from pipeline.evaluate.layout import FUSED_SCORES, FusionFiles, ReportFiles, RunFiles, claimed, scores_name
from pipeline.evaluate.metrics import video_metrics
from pipeline.evaluate.runfiles import REPAIR, read_metrics
from pipeline.evaluate.scores import RunScores


class ReportError(MrrnError):
    pass


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ReportError("reports need matplotlib: pip install 'mrrn[report]' (make install includes it)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def confusion(scores: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(K, K) counts: row = true class, column = predicted class."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (labels, scores.argmax(1)), 1)
    return matrix


def per_class_accuracy(matrix: np.ndarray) -> np.ndarray:
    totals = matrix.sum(1)
    return np.divide(np.diag(matrix), totals, out=np.full(len(matrix), np.nan), where=totals > 0)


def most_confused(matrix: np.ndarray, classes: tuple[str, ...], top: int = 10) -> list[tuple[str, str, int, float]]:
    """The largest off-diagonal cells: (true, predicted, videos, share of the true class's videos)."""
    off = matrix.copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(off, axis=None)[::-1][:top]
    pairs = []
    for flat in order:
        t, p = np.unravel_index(flat, off.shape)
        if off[t, p] == 0:
            break
        pairs.append((classes[t], classes[p], int(off[t, p]), off[t, p] / max(matrix[t].sum(), 1)))
    return pairs


def plot_confusion(matrix: np.ndarray, classes: tuple[str, ...], path: Path, title: str) -> None:
    plt = _pyplot()
    k = len(classes)
    size = max(6.0, 0.16 * k + 3)  # about 0.16 inch per class: 101 classes -> 19 inches, labels readable
    font = max(4.0, min(10.0, 600 / k))
    share = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(size, size))
    image = ax.imshow(share, cmap="viridis", vmin=0, vmax=1)
    ax.set_xticks(range(k), classes, rotation=90, fontsize=font)
    ax.set_yticks(range(k), classes, fontsize=font)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    if k <= 20:
        for t in range(k):
            for p in range(k):
                if matrix[t, p]:
                    ax.text(p, t, str(matrix[t, p]), ha="center", va="center", fontsize=font,
                            color="black" if share[t, p] > 0.5 else "white")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class's videos")
    fig.tight_layout()
    with writing(path):
        fig.savefig(path, dpi=110)
    plt.close(fig)


def per_class_figure(accuracies: dict[str, np.ndarray], classes: tuple[str, ...]):
    """One bar per level (and the fusion) for every class, like the paper's figure 4. Horizontal, one
    row per class, so 101 classes stay readable (the figure grows in height). A bar of 0% is marked
    "0%" in its colour, and a class without test videos "n/a", so that neither reads as a missing bar.
    The legend sits under the axis, clear of the title."""
    plt = _pyplot()
    k, n = len(classes), len(accuracies)
    height = 0.8 / n
    fig, ax = plt.subplots(figsize=(9, max(4.0, 0.055 * k * n + 2.0)), layout="constrained")
    for i, (name, acc) in enumerate(accuracies.items()):
        rows = np.arange(k) + (i - (n - 1) / 2) * height
        bars = ax.barh(rows, 100 * np.nan_to_num(acc), height, label=name)
        for row, value in zip(rows, acc):
            if not value > 0:  # 0, or nan for a class without test videos
                ax.text(0.5, row, "0%" if value == 0 else "n/a", va="center", fontsize=6,
                        color=bars.patches[0].get_facecolor() if value == 0 else "0.4")
    ax.set_yticks(range(k), classes, fontsize=8)
    ax.set_ylim(k - 0.5, -0.5)  # first class at the top
    ax.set_xlabel("video accuracy (%)")
    ax.set_xlim(0, 100)
    ax.set_title("Per-class accuracy")
    fig.legend(loc="outside lower center", ncol=n, fontsize=8, frameon=False)
    return fig


def plot_per_class(accuracies: dict[str, np.ndarray], classes: tuple[str, ...], path: Path) -> None:
    fig = per_class_figure(accuracies, classes)
    with writing(path):
        fig.savefig(path, dpi=110)
    _pyplot().close(fig)


def plot_curves(run: Path, path: Path) -> bool:
    """Loss and clip/video accuracy per epoch of one run; False when it has no metrics."""
    metrics_file = RunFiles(run).metrics_file
    if not metrics_file.is_file():
        return False
    metrics = read_metrics(metrics_file)
    if metrics.damaged:
        raise ReportError(f"{metrics.problem(metrics_file)}; {REPAIR}")
    rows = metrics.rows
    if not rows:
        return False
    plt = _pyplot()
    epochs = [r["epoch"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    left.plot(epochs, [r["loss"] for r in rows], marker="o", markersize=3)
    left.set_xlabel("epoch")
    left.set_ylabel("training loss")
    for key, label in (("train_acc", "train clips"), ("clip_acc", "test clips"), ("video_top1", "test videos"),
                       ("val_video_top1", "validation videos")):
        if key in rows[0]:
            right.plot(epochs, [100 * r[key] for r in rows], marker="o", markersize=3, label=label)
    right.set_xlabel("epoch")
    right.set_ylabel("accuracy (%)")
    right.set_ylim(0, 105)
    right.legend(fontsize=8)
    fig.suptitle(run.name)
    fig.tight_layout()
    with writing(path):
        fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _single_run_summary(run: RunScores) -> FuseSummary:
    m = video_metrics(run.scores, run.labels, len(run.classes))
    return FuseSummary(out=str(run.run), method="single run", weights=None, searched=False,
                       rows=[{"name": run.name, "run": str(run.run), **m}], computed_on=run.coverage.to_json())


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell: no line breaks, no bare column separators."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _fused_inputs(fusion: FusionFiles) -> tuple[FuseSummary, list[RunScores], np.ndarray, np.ndarray]:
    """A fusion directory's summary, the runs it fused, and its fused scores (videos, K) and labels (videos,)."""
    try:
        summary = FuseSummary(**json.loads(fusion.summary_file.read_text()))
    except (OSError, ValueError, TypeError) as err:
        raise ReportError(f"{fusion.summary_file}: damaged fusion summary ({type(err).__name__}: {err}); "
                          "fuse again") from None
    try:
        with np.load(fusion.fused_scores_file, allow_pickle=False) as z:
            scores, labels = z["scores"], z["labels"]
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as err:
        raise ReportError(f"{fusion.path}: damaged fuse directory ({type(err).__name__}: {err})") from None
    if not np.isfinite(scores).all():
        raise ReportError(f"{fusion.fused_scores_file}: the fused scores are not finite; fuse again")
    runs = [load_scores(row["run"]) for row in summary.rows if row["name"] != "fused"]
    return summary, runs, scores, labels


def write_report(directory: str | Path) -> Path:
    """Write the PNGs and report.md into ``directory`` (a fuse or a run directory); returns report.md. The
    directory is claimed meanwhile: a report is refused while another mrrn process writes there."""
    directory = Path(directory)
    if not directory.is_dir():
        return _write_report(directory)  # refused there, saying what the directory should be
    with claimed(directory):
        return _write_report(directory)


def _write_report(directory: Path) -> Path:
    fusion, report_files = FusionFiles(directory), ReportFiles(directory)
    if fusion.is_fusion():
        summary, runs, final_scores, labels = _fused_inputs(fusion)
        title = "fused"
    elif RunFiles(directory).scores_file("test").is_file():
        runs = [load_scores(directory)]
        summary = _single_run_summary(runs[0])
        final_scores, labels, title = runs[0].scores, runs[0].labels, runs[0].name
    else:
        files = RunFiles(directory)
        pruned = files.pruned() and files.unfinished_reason()  # a trial run stopped by `mrrn tune`
        raise ReportError(pruned or f"{directory}: neither a fuse directory ({FUSED_SCORES}) nor a finished run "
                          f"({scores_name('test')})")
    classes = runs[0].classes
    matrix = confusion(final_scores, labels, len(classes))
    plot_confusion(matrix, classes, report_files.confusion_file,
                   f"Confusion matrix, {title} ({100 * np.trace(matrix) / matrix.sum():.1f}% of {matrix.sum()} videos)")
    accuracies = {r.name: per_class_accuracy(confusion(r.scores, labels, len(classes))) for r in runs}
    if len(runs) > 1:
        accuracies["fused"] = per_class_accuracy(matrix)
    plot_per_class(accuracies, classes, report_files.per_class_file)
    curves = [report_files.curves_file(r.run.name) for r in runs]  # one image per run that has metrics
    curves = [path for r, path in zip(runs, curves) if plot_curves(r.run, path)]

    lines = [f"# Report: {directory.name}", "", summary_markdown(summary), "## Confusion matrix", "",
             "Rows are true classes, columns predicted classes.", "",
             f"![confusion matrix]({report_files.confusion_file.name})", "", "## Per-class accuracy", "",
             f"![per-class accuracy]({report_files.per_class_file.name})", "", "## Most confused classes", ""]
    pairs = most_confused(matrix, classes)
    if pairs:
        lines += ["| true class | predicted as | videos | share of the true class |", "|---|---|---|---|"]
        lines += [f"| {_cell(t)} | {_cell(p)} | {n} | {100 * share:.1f}% |" for t, p, n, share in pairs]
    else:
        lines.append("No test video was confused.")
    lines += ["", "## Training curves", ""] + [f"![{path.name}]({path.name})" for path in curves]
    write_text(report_files.report_file, "\n".join(lines) + "\n")
    return report_files.report_file

