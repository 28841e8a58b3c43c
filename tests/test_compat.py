"""Caches and run directories written by mrrn 0.1.0 (tests/fixtures/v0.1.0) still open, resume, extend,
predict and fuse with today's code."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from pipeline.cache.reader import FeatureCache
from pipeline.config import ExtractConfig, TrainConfig
from pipeline.extract.run import run_extract
from pipeline.train.loop import fit

FIXTURES = Path(__file__).with_name("fixtures") / "v0.1.0"
QUIET = dict(progress=False, log=lambda m: None)


@pytest.fixture
def old(tmp_path) -> Path:
    """A copy of the fixtures, so that no test changes the committed files."""
    return Path(shutil.copytree(FIXTURES, tmp_path / "v0.1.0"))


def old_run_config(old: Path, **changes) -> TrainConfig:
    settings = json.loads((old / "run_low_rrn" / "config.json").read_text())["train"]
    settings.update(cache=str(old / "cache.h5"), out=str(old / "run_low_rrn"), **changes)
    return TrainConfig.from_json(settings)


def test_an_old_cache_opens_verifies_and_resumes(old):
    with FeatureCache(old / "cache.h5") as cache:
        assert [v.key for v in cache.videos] == ["jump/jump0.avi", "jump/jump1.avi", "walk/walk0.avi",
                                                 "walk/walk1.avi"]
        assert cache.classes == ("jump", "walk") and cache.verify() == []
        assert cache.load_level("low").shape == (14, 128)
    lines = []
    cfg = ExtractConfig(dataset="folder", root=old / "videos", out=old / "cache.h5", backbone_weights="random", seed=0,
                        batch_size=8, workers=0, short_side=32, crop=32, test_fraction=0.5)
    summary = run_extract(cfg, progress=False, log=lines.append)
    assert summary.already_done == 4 and summary.extracted == 0


def test_an_old_finished_run_is_recognised_and_can_be_extended(old):
    assert fit(old_run_config(old), **QUIET).already_complete
    extended = fit(old_run_config(old, epochs=3), resume=True, **QUIET)
    assert extended.resumed_from == 2 and extended.final["epoch"] == 3
    epochs = [json.loads(line)["epoch"] for line in (old / "run_low_rrn" / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3]


def test_an_old_run_predicts_its_own_test_scores(old):
    from pipeline.predict import predict

    scores = np.load(old / "run_low_rrn" / "scores_test.npz")
    for row, key in enumerate(map(str, scores["keys"])):
        result = predict([old / "videos" / key], [old / "run_low_rrn"], top=2, device="cpu")[0]
        expected = dict(zip(map(str, scores["classes"]), scores["scores"][row]))
        for cls, p in result.top:
            assert p == pytest.approx(expected[cls], abs=1e-3)


def test_old_runs_fuse_and_report(old, tmp_path):
    from pipeline.evaluate.fuse import run_fuse

    twin = shutil.copytree(old / "run_low_rrn", tmp_path / "twin")
    summary = run_fuse([old / "run_low_rrn", twin], tmp_path / "fused", method="sum")
    assert [r["name"] for r in summary.rows] == ["low", "low", "fused"]
    assert summary.rows[-1]["video_top1"] == summary.rows[0]["video_top1"]
