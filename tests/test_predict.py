"""mrrn predict: the demo-style models find a sample video's class among the top-k; a corrupt file among
several gets its one-line error and the others are still predicted."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from cli import main
from pipeline.backbone import WeightsError
from pipeline.predict import backbone_weights, predict


def runs_args(level_runs):
    return [arg for lvl in ("low", "mid", "high") for arg in ("--runs", str(level_runs[lvl]))]


def test_true_class_is_in_the_top_k(level_runs, sample_dir):
    videos = [sample_dir / "videos" / cls / f"v_{cls}_g01_c01.avi" for cls in ("FillDown", "Stripes", "CircleGrow")]
    results = predict(videos, [level_runs[lvl] for lvl in ("low", "mid", "high")], top=3)
    for video, result in zip(videos, results):
        assert result.error is None
        assert video.parent.name in [cls for cls, _ in result.top]
        assert sum(p for _, p in result.top) <= 1.0 + 1e-6 and result.top[0][1] >= result.top[1][1]


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


def test_weights_that_are_not_available_are_refused(tmp_path):
    assert backbone_weights("random:seed=3", None) == ("random", 3)
    assert backbone_weights("torchvision:ResNet34_Weights.IMAGENET1K_V1", None) == ("imagenet", 0)
    with pytest.raises(WeightsError, match="pass it with --backbone-weights PATH"):
        backbone_weights("sha256:" + "ab" * 32, None)
    other = tmp_path / "other.pth"
    other.write_bytes(b"something else")
    with pytest.raises(WeightsError, match="sha256 differs"):
        backbone_weights("sha256:" + "ab" * 32, other)
