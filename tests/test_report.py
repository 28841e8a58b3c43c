"""Reports: the PNGs are real images of the right kind, report.md embeds them with the table and the
most confused class pairs."""
from __future__ import annotations

import matplotlib.image
import numpy as np
from click.testing import CliRunner

from cli import main
from pipeline.evaluate.report import confusion, most_confused, per_class_accuracy


def test_confusion_and_most_confused_by_hand():
    scores = np.array([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8], [0.7, 0.2, 0.1]])
    labels = np.array([0, 1, 1, 2, 2])
    m = confusion(scores, labels, 3)
    assert m.tolist() == [[1, 0, 0], [1, 1, 0], [1, 0, 1]]
    np.testing.assert_allclose(per_class_accuracy(m), [1.0, 0.5, 0.5])
    assert most_confused(m, ("a", "b", "c")) == [("c", "a", 1, 0.5), ("b", "a", 1, 0.5)]


def test_fuse_writes_a_report_with_images(level_runs, tmp_path):
    out = tmp_path / "fused"
    result = CliRunner().invoke(main, ["fuse", *(str(level_runs[lvl]) for lvl in ("low", "mid", "high")),
                                       "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = (out / "report.md").read_text()
    assert "| | low | mid | high | fused |" in report
    for name in ("confusion.png", "per_class.png", "curves_low.png", "curves_mid.png", "curves_high.png"):
        assert f"]({name})" in report
        image = matplotlib.image.imread(out / name)
        assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 200
        assert image[..., :3].std() > 0.05  # not a blank canvas
    assert "## Most confused classes" in report


def test_report_on_a_single_run(level_runs, tmp_path):
    result = CliRunner().invoke(main, ["report", str(level_runs["high"])])
    assert result.exit_code == 0, result.output
    assert (level_runs["high"] / "confusion.png").is_file()
    assert "| | high |" in (level_runs["high"] / "report.md").read_text()


def test_report_on_something_else_is_a_clear_error(tmp_path):
    result = CliRunner().invoke(main, ["report", str(tmp_path)])
    assert result.exit_code == 1
    assert "neither a fuse directory (fused_scores.npz) nor a finished run (scores_test.npz)" in result.stderr


def test_class_names_with_line_breaks_and_bars_keep_the_tables_whole(tmp_path):
    from pipeline.evaluate.scores import RunScores, write_scores
    from tests.conftest import make_identity

    classes = ("Jump\nHigh", "Run|Fast")
    run = tmp_path / "run"
    run.mkdir()
    scores = np.array([[0.2, 0.8], [0.9, 0.1], [0.7, 0.3]])  # every video confused with the other class
    write_scores(RunScores(run=run, level="high", model="rrn", streams="rgb", split=1,
                           cache_identity=make_identity(classes=classes), classes=classes, keys=("a/1", "b/1", "b/2"),
                           labels=np.array([0, 1, 1]), scores=scores), "test")
    for finished in ("config.json", "summary.json"):  # a finished run's record and summary
        (run / finished).write_text("{}\n")
    result = CliRunner().invoke(main, ["report", str(run)])
    assert result.exit_code == 0, result.output
    rows = [line for line in (run / "report.md").read_text().splitlines() if line.startswith("| ") and "%" in line]
    assert "| Run\\|Fast | Jump High | 2 | 100.0% |" in rows
    assert all(line.count(" | ") == 3 for line in rows if "Fast" in line)


def test_the_per_class_chart_marks_zero_bars_and_keeps_the_legend_off_the_title():
    from pipeline.evaluate.report import per_class_figure

    accuracies = {"low": np.array([1.0, 0.0, 0.5]), "high": np.array([0.5, 0.0, np.nan]), "fused": np.array([1.0, 0.5, 1.0])}
    fig = per_class_figure(accuracies, ("a", "b", "c"))
    ax = fig.axes[0]
    marks = sorted((t.get_text(), round(t.get_position()[1])) for t in ax.texts)
    assert marks == [("0%", 1), ("0%", 1), ("n/a", 2)]  # class b at 0% in two series, c without test videos
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legend, title = fig.legends[0].get_window_extent(renderer), ax.title.get_window_extent(renderer)
    assert not legend.overlaps(title) and not legend.overlaps(ax.get_window_extent(renderer))
