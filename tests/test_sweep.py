"""mrrn sweep: one run per grid point, finished runs skipped, results.csv and paper-shaped tables."""
from __future__ import annotations

import csv

import numpy as np
import pytest
from click.testing import CliRunner

from cli import main


def test_sweep_runs_the_grid_once_and_writes_tables(sample_cache, tmp_path):
    args = ["sweep", "--cache", str(sample_cache), "--split", "1", "--level", "high", "--hidden", "16,32",
            "--layers", "1,2", "--epochs", "2", "--lr", "1e-3", "--normalize", "--quiet", "--out", str(tmp_path)]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    rows = list(csv.DictReader(open(tmp_path / "results.csv")))
    assert [(r["hidden"], r["layers"]) for r in rows] == [("16", "1"), ("16", "2"), ("32", "1"), ("32", "2")]
    for r in rows:  # each row is its run's own result, as its score file gives it
        scores = np.load(tmp_path / r["run"] / "scores_test.npz")
        top1 = (scores["scores"].argmax(1) == scores["labels"]).mean()
        assert float(r["video_top1"]) == pytest.approx(top1, abs=1e-4)
        assert int(r["epochs"]) == 2 and int(r["parameters"]) > 0
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == [
        "high_rrn_h16_l1_mean", "high_rrn_h16_l2_mean", "high_rrn_h32_l1_mean", "high_rrn_h32_l2_mean"]
    table = (tmp_path / "results.md").read_text()
    assert "(paper table 1 shape)" in table
    assert "| setting | 1 layer | 2 layers |" in table and "| 32 hidden units |" in table

    second = CliRunner().invoke(main, args)  # nothing left to train
    assert second.exit_code == 0
    assert second.stderr.count("(already complete)") == 4
    assert list(csv.DictReader(open(tmp_path / "results.csv"))) == rows


def test_sweep_over_levels_and_pooling_gives_the_table_2_shape(sample_cache, tmp_path):
    result = CliRunner().invoke(main, [
        "sweep", "--cache", str(sample_cache), "--levels", "low,high", "--pool", "mean,max", "--models", "rrn,meanpool",
        "--hidden", "16", "--layers", "1", "--epochs", "1", "--lr", "1e-3", "--normalize", "--quiet",
        "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "| model | pooling | low | high |" in result.output
    assert "| rrn | max |" in result.output and "| meanpool | - |" in result.output
    assert len(list(csv.DictReader(open(tmp_path / "results.csv")))) == 6  # 2 levels x (2 pools + meanpool)


def test_sweep_rejects_unknown_values(sample_cache, tmp_path):
    result = CliRunner().invoke(main, ["sweep", "--cache", str(sample_cache), "--levels", "low,top", "--out", str(tmp_path)])
    assert result.exit_code == 1 and result.stderr == "Error: --levels: top not in low, mid, high\n"


def test_a_flow_cache_that_no_run_reads_is_refused_before_anything_is_trained(sample_cache, tmp_path):
    for command in (["train", "--level", "high"], ["sweep", "--models", "rrn,meanpool"]):
        out = tmp_path / command[0]
        result = CliRunner().invoke(main, [*command, "--cache", str(sample_cache), "--flow-cache", str(sample_cache),
                                           "--hidden", "16", "--layers", "1", "--epochs", "1", "--out", str(out)])
        assert result.exit_code == 1, result.output
        assert result.stderr == ("Error: --flow-cache is read by --model twostream, --modality flow or a sweep over "
                                 "--modalities rgb,flow\n")
        assert not out.exists()


def test_a_sweep_reads_each_level_of_the_cache_once(sample_cache, tmp_path, monkeypatch):
    """The grid's runs on one level share its data: read once, not once per run."""
    from pipeline.cache.reader import FeatureCache

    reads, real = [], FeatureCache.read_videos

    def counted(self, level, spans):  # the real read, counted
        reads.append(level)
        return real(self, level, spans)

    monkeypatch.setattr(FeatureCache, "read_videos", counted)
    result = CliRunner().invoke(main, [
        "sweep", "--cache", str(sample_cache), "--levels", "low,high", "--hidden", "16,32", "--layers", "1,2",
        "--epochs", "1", "--lr", "1e-3", "--normalize", "--quiet", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert len(list(csv.DictReader(open(tmp_path / "results.csv")))) == 8
    assert sorted(reads) == ["high", "low"]
