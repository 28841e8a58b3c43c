"""A run is pinned to the data it trained on: its record holds a fingerprint of the cache contents it used, so a
rerun or --resume on a cache that changed since is refused in one line saying what changed, and fuse and
predict refuse runs trained on different contents of one cache."""
from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
from click.testing import CliRunner

from cli import main
from pipeline.errors import TrainError
from pipeline.evaluate.fuse import FuseError, run_fuse
from pipeline.extract.run import run_extract
from pipeline.train.loop import fit
from tests.conftest import copy_cache, QUIET, small_extract_config, write_lines
from tests.conftest import small_train_config as small

REPLACED = "Stripes/v_Stripes_g03_c01.avi"  # a training video of the sample data


def extract(sample_dir, videos, cache, splits=None, **settings):
    cfg = small_extract_config(videos, cache, dataset="ucf101", splits=splits or sample_dir / "ucfTrainTestlist",
                               **settings)
    return run_extract(cfg, **QUIET)


def tiny(cache, out, **changes):
    return small(cache, out, **{"hidden": 16, "layers": 1, "epochs": 2, **changes})


def test_the_run_record_holds_the_fingerprint_of_the_split_it_used(sample_cache, tmp_path):
    fit(tiny(sample_cache, tmp_path / "run", epochs=1), **QUIET)
    pinned = json.loads((tmp_path / "run" / "config.json").read_text())["fingerprint"]["cache"]
    assert pinned["split"] == 1 and (len(pinned["train"]), len(pinned["test"])) == (48, 32)
    frames, label, digest = pinned["test"]["CircleGrow/v_CircleGrow_g01_c01.avi"].split(":")
    assert int(frames) > 0 and label == "0" and len(digest) == 16


def test_a_finished_run_on_split_lists_that_changed_is_refused_until_they_are_back(sample_dir, sample_cache, tmp_path):
    cache = copy_cache(sample_cache, tmp_path / "c.h5")
    cfg = tiny(cache, tmp_path / "run")
    first = fit(cfg, **QUIET)
    splits = shutil.copytree(sample_dir / "ucfTrainTestlist", tmp_path / "splits")
    test_lines = (splits / "testlist01.txt").read_text().splitlines()
    train_lines = (splits / "trainlist01.txt").read_text().splitlines()
    assert test_lines[0].startswith("CircleGrow/")  # label 1
    write_lines(splits / "testlist01.txt", test_lines[1:])
    write_lines(splits / "trainlist01.txt", train_lines + [f"{test_lines[0]} 1"])
    extract(sample_dir, sample_dir / "videos", cache, splits)  # nothing to extract: the lists are written again

    args = ["train", "--cache", str(cache), "--level", "high", "--hidden", "16", "--layers", "1", "--epochs", "2",
            "--lr", "1e-3", "--lr-step", "100", "--normalize", "--quiet", "--out", str(tmp_path / "run")]
    rerun = CliRunner().invoke(main, args)
    assert rerun.exit_code == 1
    assert rerun.stderr == (f"Error: {tmp_path / 'run'}: this run was trained on other contents of {cache} than it "
                            "holds now (1 test video moved to train); use another --out to train on the cache as it is\n")
    with pytest.raises(TrainError, match=r"\(1 test video moved to train\)"):
        fit(dataclasses.replace(cfg, epochs=3), resume=True, **QUIET)

    extract(sample_dir, sample_dir / "videos", cache)  # the cause removed: the split files as they were
    again = fit(cfg, **QUIET)
    assert again.already_complete and again.final == first.final


def test_runs_on_different_contents_of_one_cache_are_neither_resumed_nor_fused_nor_used_together(
        sample_dir, sample_cache, tmp_path):
    cache = copy_cache(sample_cache, tmp_path / "c.h5")
    low = fit(tiny(cache, tmp_path / "low", level="low"), **QUIET)
    videos = tmp_path / "videos"
    shutil.copytree(sample_dir / "videos", videos)
    shutil.copy(videos / "Checkerboard/v_Checkerboard_g03_c01.avi", videos / REPLACED)  # a new version of the video
    extract(sample_dir, videos, cache, redo=(REPLACED,))
    fit(tiny(cache, tmp_path / "high", level="high"), **QUIET)

    with pytest.raises(TrainError, match=r"\(features of 1 video re-extracted\)"):
        fit(tiny(cache, tmp_path / "low", level="low", epochs=3), resume=True, **QUIET)
    with pytest.raises(FuseError) as fused:
        run_fuse([tmp_path / "low", tmp_path / "high"], tmp_path / "fused")
    assert str(fused.value) == (f"{tmp_path / 'low'} and {tmp_path / 'high'} were trained on different contents of the "
                                f"same cache (for {tmp_path / 'high'}: features of 1 video re-extracted)")
    assert not (tmp_path / "fused").exists()
    from pipeline.predict import predict

    with pytest.raises(FuseError, match=r"features of 1 video re-extracted"):
        predict([videos / REPLACED], [tmp_path / "low", tmp_path / "high"], device="cpu")

    shutil.copy(sample_dir / "videos" / REPLACED, videos / REPLACED)  # the cause removed: the video as it was
    extract(sample_dir, videos, cache, redo=(REPLACED,))
    resumed = fit(tiny(cache, tmp_path / "low", level="low", epochs=3), resume=True, **QUIET)
    assert resumed.resumed_from == 2 and resumed.final["epoch"] == 3 and low.final["epoch"] == 2
