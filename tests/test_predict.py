"""mrrn predict: a cached test video gets exactly the scores evaluation gave it; the demo-style models find
a sample video's class among the top-k; a corrupt file among several gets its one-line error and the
others are still predicted."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from cli import main
from pipeline.evaluate.fuse import fuse
from pipeline.predict import predict


def runs_args(level_runs):
    return [arg for lvl in ("low", "mid", "high") for arg in ("--runs", str(level_runs[lvl]))]


def test_predicting_a_cached_test_video_reproduces_its_stored_scores(level_runs, sample_dir):
    """The same path from video to features as extraction, and the same clip-to-video mean as evaluation."""
    stored = np.load(level_runs["high"] / "scores_test.npz")
    keys = list(map(str, stored["keys"]))
    for key in ("FadeBlueToRed/v_FadeBlueToRed_g02_c01.avi", "Stripes/v_Stripes_g01_c02.avi"):
        result = predict([sample_dir / "videos" / key], [level_runs["high"]], top=8, device="cpu")[0]
        got = dict(result.top)
        expected = dict(zip(map(str, stored["classes"]), stored["scores"][keys.index(key)]))
        assert got.keys() == expected.keys()
        for cls, p in expected.items():
            assert got[cls] == pytest.approx(p, abs=2e-3)


def test_true_class_is_in_the_top_k_and_fusion_follows_eq_10(level_runs, sample_dir):
    videos = [sample_dir / "videos" / cls / f"v_{cls}_g01_c01.avi" for cls in ("FillDown", "Stripes", "CircleGrow")]
    results = predict(videos, [level_runs[lvl] for lvl in ("low", "mid", "high")], top=3)
    for video, result in zip(videos, results):
        assert result.error is None
        assert video.parent.name in [cls for cls, _ in result.top]
        assert [p for _, p in result.top] == sorted((p for _, p in result.top), reverse=True)
    # the fused ranking is 0.1 low + 0.2 mid + 0.7 high of the runs' own predictions
    alone = [{c: p for c, p in predict(videos[:1], [level_runs[lvl]], top=8)[0].top} for lvl in ("low", "mid", "high")]
    classes = sorted(alone[0])
    expected = fuse([np.array([[a[c] for c in classes]]) for a in alone], "weighted", [0.1, 0.2, 0.7])[0]
    for cls, p in results[0].top:
        assert p == pytest.approx(expected[classes.index(cls)], abs=1e-6)


def test_a_corrupt_video_among_several(level_runs, sample_dir, tmp_path):
    bad = tmp_path / "broken.avi"
    bad.write_bytes(b"\x00" * 4096)
    good = sample_dir / "videos" / "Checkerboard" / "v_Checkerboard_g02_c01.avi"
    result = CliRunner().invoke(main, ["predict", str(bad), str(good), *runs_args(level_runs), "--top", "2"])
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [f"Error: {bad}: OpenCV cannot open it as a video (not a video, "
                                                  "damaged header or unknown codec)"]
    assert result.stdout.splitlines()[0] == str(good)
    assert "1. Checkerboard" in result.stdout

    as_json = CliRunner().invoke(main, ["predict", str(good), str(bad), *runs_args(level_runs), "--json"])
    items = json.loads(as_json.stdout)
    assert [i["error"] is None for i in items] == [True, False]
    assert items[0]["top"][0]["class"] == "Checkerboard" and len(items[0]["top"]) == 5
