"""Incomplete splits are never silent: the cache records the split lists as the split files give them with
the videos missing on disk, training refuses an incomplete split unless --allow-missing, and then every
number printed or written says what it is over."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from cli import main
from pipeline.cache.inspect import inspect_cache
from pipeline.cache.reader import FeatureCache
from pipeline.datasets.index import index_folder
from pipeline.extract.run import run_extract
from tests.conftest import copy_cache, QUIET, folder_dataset, small_extract_config

GONE = "CircleGrow/v_CircleGrow_g01_c01.avi"  # a test video of the sample data (groups 1 and 2 are test)
TINY = ["--hidden", "16", "--layers", "1", "--epochs", "2", "--lr", "1e-3", "--normalize", "--quiet"]


def link_videos(sample_dir, videos, *, leave_out=()):
    """The sample videos under ``videos`` as symbolic links, but for ``leave_out``."""
    for src in sorted((sample_dir / "videos").rglob("*.avi")):
        key = src.relative_to(sample_dir / "videos").as_posix()
        if key not in leave_out:
            (videos / key).parent.mkdir(parents=True, exist_ok=True)
            (videos / key).symlink_to(src)
    return videos


def extract_sample(sample_dir, videos, out):
    cfg = small_extract_config(videos, out, dataset="ucf101", splits=sample_dir / "ucfTrainTestlist")
    return run_extract(cfg, **QUIET)


@pytest.fixture(scope="module")
def short_cache(sample_dir, tmp_path_factory):
    """The sample data extracted with one test video deleted from disk."""
    root = tmp_path_factory.mktemp("short")
    extract_sample(sample_dir, link_videos(sample_dir, root / "videos", leave_out={GONE}), root / "short.h5")
    return root / "short.h5"


def train(cache, out, *extra):
    return CliRunner().invoke(main, ["train", "--cache", str(cache), "--out", str(out), *TINY, *extra])


def test_the_cache_records_the_split_lists_with_the_videos_missing_on_disk(short_cache):
    with FeatureCache(short_cache) as cache:
        train_keys, test_keys = cache.splits[1]
        assert (len(train_keys), len(test_keys)) == (48, 32) and GONE in test_keys
        assert cache.missing == (GONE,) and GONE not in cache.index
        assert cache.verify() == []
    assert "split       1: 48 train, 31 of 32 test (1 missing on disk)" in inspect_cache(short_cache).lines


def test_training_refuses_an_incomplete_test_split_without_allow_missing(short_cache, tmp_path):
    result = train(short_cache, tmp_path / "run", "--level", "high")
    assert result.exit_code == 1
    assert result.stderr == (f"Error: {short_cache}: 1 of the 32 test videos of split 1 are not in the cache (1 missing "
                             f"on disk): {GONE}; --allow-missing trains without them\n")
    assert not (tmp_path / "run" / "config.json").exists()


def test_with_allow_missing_every_number_says_it_is_over_31_of_32_test_videos(short_cache, tmp_path):
    over = "over 31 of 32 test videos (1 missing)"
    for level in ("low", "high"):
        result = train(short_cache, tmp_path / level, "--level", level, "--allow-missing")
        assert result.exit_code == 0, result.output
        epoch_lines = [line for line in result.stderr.splitlines() if line.startswith("epoch")]
        assert len(epoch_lines) == 2 and all(line.endswith(over) for line in epoch_lines)
        assert "clip " in result.stdout and over in result.stdout  # the final line
        summary = json.loads((tmp_path / level / "summary.json").read_text())
        assert summary["computed_on"]["statement"] == over
        assert (summary["computed_on"]["test_videos"], summary["computed_on"]["test_videos_listed"]) == (31, 32)
        with np.load(tmp_path / level / "scores_test.npz") as z:
            assert z["scores"].shape[0] == 31 and int(z["videos_listed"]) == 32
    fused = CliRunner().invoke(main, ["fuse", str(tmp_path / "low"), str(tmp_path / "high"), "--out",
                                      str(tmp_path / "fused")])
    assert fused.exit_code == 0, fused.output
    assert f"Every number is {over}." in fused.stdout  # fuse's table
    assert f"Every number is {over}." in (tmp_path / "fused" / "report.md").read_text()
    assert json.loads((tmp_path / "fused" / "summary.json").read_text())["computed_on"]["statement"] == over
    single = CliRunner().invoke(main, ["report", str(tmp_path / "high")])
    assert single.exit_code == 0 and over in (tmp_path / "high" / "report.md").read_text()


def test_a_sweep_table_says_what_an_incomplete_split_left(short_cache, tmp_path):
    result = CliRunner().invoke(main, ["sweep", "--cache", str(short_cache), "--out", str(tmp_path), *TINY,
                                       "--epochs", "1", "--allow-missing"])
    assert result.exit_code == 0, result.output
    assert "Numbers of high_rrn_h16_l1_mean: over 31 of 32 test videos (1 missing)." in result.stdout
    assert "over 31 of 32 test videos (1 missing)" in (tmp_path / "results.csv").read_text()


def test_complete_splits_keep_their_output(sample_cache, tmp_path):
    result = train(sample_cache, tmp_path / "run", "--level", "high", "--epochs", "1")
    assert result.exit_code == 0, result.output
    assert "test videos" not in result.output
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["computed_on"]["statement"] == "over 32 of 32 test videos" and summary["computed_on"]["complete"]


def test_mean_class_accuracy_says_when_a_class_has_no_test_video_left(tmp_path):
    root = folder_dataset(tmp_path / "data", per_class=4)
    [test_walk] = [e.key for e in index_folder(root, test_fraction=0.25).test if e.key.startswith("walk/")]
    (root / test_walk).write_bytes(b"")  # fails to decode: walk has no test video left
    cache = tmp_path / "c.h5"
    run_extract(small_extract_config(root, cache, test_fraction=0.25), **QUIET)
    refused = train(cache, tmp_path / "refused", "--level", "high")
    assert refused.exit_code == 1 and "(1 failed to decode)" in refused.stderr
    result = train(cache, tmp_path / "run", "--level", "high", "--allow-missing")
    assert result.exit_code == 0, result.output
    assert ("over 1 of 2 test videos (1 missing); mean class over 1 of 2 classes (1 has no test video left)"
            in result.stdout)


def test_with_the_video_back_on_disk_the_cache_is_whole_again(short_cache, sample_dir, sample_cache, tmp_path):
    """The cause removed: the video restored and the same extraction rerun gives the cache an uninterrupted
    extraction of the whole sample data gives, training needs no --allow-missing, and the run trained without the
    video is not reported again as if it were this cache's."""
    cache = copy_cache(short_cache, tmp_path / "short.h5")
    assert train(cache, tmp_path / "partial", "--level", "high", "--epochs", "1", "--allow-missing").exit_code == 0
    summary = extract_sample(sample_dir, link_videos(sample_dir, tmp_path / "videos"), cache)
    assert summary.extracted == 1
    rerun = train(cache, tmp_path / "partial", "--level", "high", "--epochs", "1", "--allow-missing")
    assert rerun.exit_code == 1 and "than it holds now (1 video added)" in rerun.stderr  # its numbers are not this cache's
    with FeatureCache(cache) as restored, FeatureCache(sample_cache) as whole:
        assert restored.missing == () and restored.splits == whole.splits and restored.verify() == []
        assert [(v.key, v.frames, v.label) for v in restored.videos] == [(v.key, v.frames, v.label) for v in whole.videos]
    result = train(cache, tmp_path / "run", "--level", "high", "--epochs", "1")
    assert result.exit_code == 0, result.output
    assert "test videos" not in result.output
