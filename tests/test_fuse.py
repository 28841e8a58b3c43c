"""Fusion against hand-computed numbers, refusals of mismatched runs, and a weight search that never
sees test videos."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from cli import main
from pipeline.config import FlowSpec
from pipeline.evaluate.fuse import FuseError, fuse, run_fuse, search_weights
from pipeline.evaluate.scores import RunScores, write_scores
from tests.conftest import make_identity

CLASSES = np.array(["a", "b", "c"])
KEYS = np.array(["a/1.avi", "b/1.avi", "c/1.avi"])
LABELS = np.array([0, 1, 2])
# video scores (V=3, K=3) per level
LOW = np.array([[0.2, 0.5, 0.3], [0.1, 0.8, 0.1], [0.6, 0.2, 0.2]])
MID = np.array([[0.5, 0.4, 0.1], [0.3, 0.3, 0.4], [0.2, 0.2, 0.6]])
HIGH = np.array([[0.4, 0.5, 0.1], [0.2, 0.7, 0.1], [0.3, 0.3, 0.4]])


CACHE = make_identity(classes=tuple(CLASSES))


def write_run(path, level, scores, part="test", keys=KEYS, labels=LABELS, classes=CLASSES, split=1, cache=CACHE,
              streams="rgb"):
    """A finished run directory's score file, written as training writes it; its run record and summary
    (config.json, summary.json) mark it finished, and fusion reads nothing else of them."""
    path.mkdir(parents=True, exist_ok=True)
    write_scores(RunScores(run=path, level=level, model="rrn", streams=streams, split=split, cache_identity=cache,
                           classes=tuple(classes), keys=tuple(keys), labels=labels, scores=scores), part)
    (path / "config.json").write_text("{}\n")
    summary = {"out": str(path), "epochs": 1, "final": {"epoch": 1, "loss": 0.5, "video_top1": 0.5}, "parameters": 1,
               "seconds_per_epoch": 0.1, "resumed_from": 0}
    (path / "summary.json").write_text(json.dumps(summary) + "\n")
    return path


@pytest.fixture
def runs(tmp_path):
    return [write_run(tmp_path / lvl, lvl, s) for lvl, s in (("low", LOW), ("mid", MID), ("high", HIGH))]


def test_weighted_fusion_is_eq_10_with_the_paper_weights(runs, tmp_path):
    s = run_fuse(runs, tmp_path / "f")
    # by hand, video 0: 0.1*[.2,.5,.3] + 0.2*[.5,.4,.1] + 0.7*[.4,.5,.1] = [.40, .48, .12]
    fused = np.load(tmp_path / "f" / "fused_scores.npz")["scores"]
    np.testing.assert_allclose(fused[0], [0.40, 0.48, 0.12])
    np.testing.assert_allclose(fused[1], [0.21, 0.63, 0.16])  # .01+.06+.14, .08+.06+.49, .01+.08+.07
    np.testing.assert_allclose(fused[2], [0.31, 0.27, 0.42])  # .06+.04+.21, .02+.04+.21, .02+.12+.28
    assert s.weights == {"low": 0.1, "mid": 0.2, "high": 0.7}
    fused_row = s.rows[-1]
    assert fused_row["name"] == "fused" and fused_row["video_top1"] == pytest.approx(2 / 3)  # videos 1 and 2
    assert [r["name"] for r in s.rows] == ["low", "mid", "high", "fused"]
    assert [r["video_top1"] for r in s.rows[:3]] == pytest.approx([1 / 3, 2 / 3, 2 / 3])  # high: videos 1, 2


def test_sum_and_product_by_hand():
    total = fuse([LOW, MID, HIGH], "sum")
    np.testing.assert_allclose(total[0], np.array([1.1, 1.4, 0.5]) / 3.0)
    product = fuse([LOW, MID, HIGH], "product")
    raw = np.array([0.2 * 0.5 * 0.4, 0.5 * 0.4 * 0.5, 0.3 * 0.1 * 0.1])  # [.04, .1, .003]
    np.testing.assert_allclose(product[0], raw / raw.sum())
    np.testing.assert_allclose(fuse([LOW, HIGH], "weighted", [0.5, 0.5])[2], [0.45, 0.25, 0.3])


def test_custom_weights_from_the_command_line(runs, tmp_path):
    result = CliRunner().invoke(main, ["fuse", *map(str, runs), "--out", str(tmp_path / "f"), "--weights", "0,0,1"])
    assert result.exit_code == 0, result.output  # all weight on low
    summary = json.loads((tmp_path / "f" / "summary.json").read_text())
    assert summary["weights"] == {"low": 1.0, "mid": 0.0, "high": 0.0}
    np.testing.assert_allclose(np.load(tmp_path / "f" / "fused_scores.npz")["scores"], LOW)
    assert "| video top-1 (%) | 33.33 | 66.67 | 66.67 | 33.33 |" in result.output
    assert (tmp_path / "f" / "report.md").is_file()


def fuse_cli(runs, out, *options):
    return CliRunner().invoke(main, ["fuse", *map(str, runs), "--out", str(out), *options])


def test_fewer_bare_weights_than_levels_weigh_high_then_mid(runs, tmp_path):
    low, mid, high = runs
    result = fuse_cli([mid, high], tmp_path / "f", "--weights", "0.7,0.3")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "f" / "summary.json").read_text())["weights"] == {"mid": 0.3, "high": 0.7}
    np.testing.assert_allclose(np.load(tmp_path / "f" / "fused_scores.npz")["scores"], 0.7 * HIGH + 0.3 * MID)
    result = fuse_cli([low, mid, high], tmp_path / "h", "--weights", "0.7,0.3")  # low has no number
    assert result.exit_code == 1, result.output
    assert result.stderr.strip() == "Error: no weight for the rgb low run (weights given: high=0.7, mid=0.3)"
    assert not (tmp_path / "h").exists()


@pytest.mark.parametrize("weights", ["0.5,0.2,0.2,0.1", "0.7,,high=0.3", ","])
def test_bare_weights_beyond_three_or_mixed_or_none_are_refused(runs, tmp_path, weights):
    result = fuse_cli(runs, tmp_path / "f", "--weights", weights)
    assert result.exit_code == 1, result.output
    assert result.stderr.strip() == ("Error: --weights: expected 'high=0.7,mid=0.2,low=0.1', "
                                     "'rgb:high=0.5,flow:high=0.5' or one to three numbers for high, mid, low in "
                                     f"that order, got {weights!r}")


def test_only_finished_runs_are_fused_and_a_fusion_directory_is_not_a_run(runs, tmp_path):
    fused, absent = tmp_path / "fused", tmp_path / "absent"
    assert fuse_cli(runs, fused).exit_code == 0
    result = fuse_cli([runs[0], fused], tmp_path / "f", "--method", "sum")
    assert result.stderr.strip() == f"Error: {fused}: a fusion directory, not a run; give the runs it fused instead"
    (runs[1] / "config.json").unlink()  # the scores and summary of a run, without its run record
    result = fuse_cli(runs[:2], tmp_path / "f", "--method", "sum")
    assert result.stderr.strip() == (f"Error: {runs[1]}: not a finished run (no config.json: not a directory "
                                     "`mrrn train` wrote)")
    result = fuse_cli([runs[0], absent], tmp_path / "f", "--method", "sum")
    assert result.stderr.strip() == f"Error: {absent}: no such run directory"
    assert not (tmp_path / "f").exists()


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(keys=np.array(["a/1.avi", "b/1.avi", "c/9.avi"])), "score different videos: 2 video(s) in one only"),
        (dict(classes=np.array(["a", "b", "x"])), "have different classes"),
        (dict(split=2), "use different splits (2 and 1)"),
        (dict(cache=make_identity(classes=tuple(CLASSES), backbone_weights="random:seed=1")),
         "were trained on different caches"),
        (dict(labels=np.array([0, 1, 1])), "give the same videos different labels"),
    ],
)
def test_mismatched_runs_are_refused(runs, tmp_path, change, message):
    odd = write_run(tmp_path / "odd", "high", HIGH, **change)
    with pytest.raises(FuseError, match=message.replace("(", r"\(").replace(")", r"\)")):
        run_fuse([runs[0], odd], tmp_path / "f")


def test_weighted_fusion_needs_a_weight_for_each_run(runs, tmp_path):
    twin = write_run(tmp_path / "high2", "high", LOW)
    with pytest.raises(FuseError, match="the weight of high would serve more than one run"):
        run_fuse([runs[2], twin], tmp_path / "f")
    assert run_fuse([runs[2], twin], tmp_path / "f", method="sum").rows[-1]["name"] == "fused"
    with pytest.raises(FuseError, match="no weight for the rgb low run"):
        run_fuse(runs, tmp_path / "f", weights={"high": 0.5, "mid": 0.5})


def test_rgb_and_flow_runs_take_weights_by_modality_and_level(runs, tmp_path):
    flow_cache = make_identity(classes=tuple(CLASSES), modality="flow", flow=FlowSpec(size=64))
    flow = write_run(tmp_path / "flow_high", "high", LOW, streams="flow", cache=flow_cache)
    with pytest.raises(FuseError, match="rgb:high=0.5,flow:high=0.5"):  # the paper's weights are by level only
        run_fuse([runs[2], flow], tmp_path / "f")
    s = run_fuse([runs[2], flow], tmp_path / "f", weights={"rgb:high": 0.25, "flow:high": 0.75})
    assert s.weights == {"high": 0.25, "flow high": 0.75}
    np.testing.assert_allclose(np.load(tmp_path / "f" / "fused_scores.npz")["scores"], 0.25 * HIGH + 0.75 * LOW)
    s = run_fuse([runs[0], runs[2], flow], tmp_path / "g", weights={"flow": 0.5, "high": 0.3, "low": 0.2})
    assert s.weights == {"low": 0.2, "high": 0.3, "flow high": 0.5}  # modality:level, then modality, then level
    result = CliRunner().invoke(main, ["fuse", str(runs[2]), str(flow), "--out", str(tmp_path / "h"),
                                       "--weights", "rgb:high=1,flow:high=3"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "h" / "summary.json").read_text())["weights"] == {"high": 1.0, "flow high": 3.0}


def test_search_chooses_weights_on_validation_videos_only(tmp_path):
    # validation: only the mid run is right; test: only the low run is right
    val_keys, val_labels = np.array(["a/v.avi", "b/v.avi"]), np.array([0, 1])
    right, wrong = np.array([[0.9, 0.05, 0.05], [0.05, 0.9, 0.05]]), np.array([[0.05, 0.9, 0.05], [0.9, 0.05, 0.05]])
    dirs = []
    for level, val_scores in (("low", wrong), ("mid", right)):
        d = write_run(tmp_path / level, level, LOW if level == "low" else np.roll(LOW, 1, axis=1))
        write_run(d, level, val_scores, part="val", keys=val_keys, labels=val_labels)
        dirs.append(d)
    s = run_fuse(dirs, tmp_path / "f", search=True)
    assert s.searched and s.weights["mid"] > s.weights["low"]
    assert search_weights([wrong, right], val_labels) == [s.weights["low"], s.weights["mid"]]
    # the test scores play no part: change them completely and the chosen weights stay
    for d in dirs:
        write_run(d, d.name, np.full((3, 3), 1 / 3))
    assert run_fuse(dirs, tmp_path / "g", search=True).weights == s.weights


def test_search_needs_validation_scores(runs, tmp_path):
    with pytest.raises(FuseError, match=r"scores_val.npz: no val scores \(train it with --val-fraction"):
        run_fuse(runs, tmp_path / "f", search=True)
