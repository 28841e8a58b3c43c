"""A structurally damaged cache is one line, never a traceback; a missing level is repaired by
--redo-damaged; --redo of a video that no longer decodes keeps its old features and says so; a backbone
that gives NaN or infinity never leaves a cache that training refuses behind an exit status of 0."""
from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from pipeline.cache.reader import FeatureCache, VideoRecord
from tests.conftest import assert_same_cache, copy_cache, folder_dataset, one_line_error, run, seeded_resnet


def fails_with(result, *fragments):
    """Exit status 1, the skipped videos said one line each, and one closing 'Error: ...' line."""
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 1, result.output
    assert lines[-1].startswith("Error: ") and all(not x.startswith("Error") for x in lines[:-1]), result.stderr
    assert all(line.startswith(("skipped ", "--redo-damaged: ", "resuming ")) for line in lines[:-1]), result.stderr
    for fragment in fragments:
        assert fragment in lines[-1], lines[-1]


def extract_args(root: Path, out: Path, *extra) -> list:
    return ["extract", "--dataset", "folder", "--root", root, "--out", out, "--short-side", "64", "--crop", "64",
            "--batch-size", "16", "--workers", "0", "--quiet", *(extra or ("--backbone-weights", "random"))]


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    return folder_dataset(tmp_path_factory.mktemp("damaged_caches") / "videos", per_class=2)


@pytest.fixture(scope="module")
def whole(videos, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("whole") / "whole.h5"
    result = run(*extract_args(videos, out))
    assert result.exit_code == 0, result.output
    return out


def _replace(f: h5py.File, name: str, data) -> None:
    del f[name]
    f[name] = data


DAMAGES = {
    "schema_version abc": (lambda f: f.attrs.__setitem__("schema_version", "abc"),
                           "attribute schema_version 'abc' is not a whole number"),
    "a short column": (lambda f: _replace(f, "videos/frames", f["videos/frames"][:-1]), "videos/frames: 3 rows, but"),
    "a dataset where a group belongs": (lambda f: _replace(f, "videos", np.zeros(3)),
                                        "videos: a dataset where a group belongs"),
    "a split named abc": (lambda f: f.copy(f["splits/1"], "splits/abc"), "splits/abc: not a split number"),
    "a level stored as strings": (lambda f: _replace(f, "features/high", np.array([["x"] * 4] * 2, dtype=object).astype("S")),
                                  "features/high: "),
    "a missing column": (lambda f: f.__delitem__("failed/reason"), "failed/reason: missing"),
    "a column of another type": (lambda f: _replace(f, "videos/label", np.array(["a"] * 4, dtype="S")),
                                 "videos/label: of type string, expected integers"),
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_structurally_damaged_cache_is_one_line_for_every_command(whole, tmp_path, damage):
    cache = tmp_path / "c.h5"
    copy_cache(whole, cache)
    change, message = DAMAGES[damage]
    with h5py.File(cache, "r+") as f:
        change(f)
    one_line_error(run("inspect", cache, "--verify"), f"{cache}: damaged cache (", message)
    one_line_error(run("train", "--cache", cache, "--level", "high", "--out", tmp_path / "r"), f"{cache}: damaged cache (")


def test_a_missing_level_is_listed_and_re_extracted_by_redo_damaged(videos, whole, tmp_path):
    cache = tmp_path / "c.h5"
    copy_cache(whole, cache)
    with h5py.File(cache, "r+") as f:
        del f["features/low"]
    verify = run("inspect", cache, "--verify")
    assert verify.exit_code == 1 and "features/low: missing" in verify.output, verify.output
    repaired = run(*extract_args(videos, cache), "--backbone-weights", "random", "--redo-damaged")
    assert repaired.exit_code == 0, repaired.output
    assert "--redo-damaged: 4 video(s)" in repaired.stderr
    assert_same_cache(whole, cache, exact=True)


def test_redo_of_a_video_that_no_longer_decodes_keeps_its_old_features_and_says_so(videos, whole, tmp_path):
    root = Path(shutil.copytree(videos, tmp_path / "videos"))
    cache = tmp_path / "c.h5"
    copy_cache(whole, cache)
    good = (root / "jump" / "jump0.avi").read_bytes()
    (root / "jump" / "jump0.avi").write_bytes(good[: len(good) // 8])  # cut short since it was extracted
    result = run(*extract_args(root, cache), "--backbone-weights", "random", "--redo", "jump/jump0.avi")
    assert result.exit_code == 0, result.output
    assert "--redo jump/jump0.avi: " in result.stderr and "; the old features were kept" in result.stderr
    assert_same_cache(whole, cache, exact=True)  # still there, not listed as failed
    (root / "jump" / "jump0.avi").write_bytes(good)  # the cause removed
    again = run(*extract_args(root, cache), "--backbone-weights", "random", "--redo", "jump/jump0.avi")
    assert again.exit_code == 0 and "old features" not in again.stderr, again.output
    assert_same_cache(whole, cache, exact=True)


@pytest.fixture(scope="module")
def overflowing_weights(tmp_path_factory) -> Path:
    """A real ResNet-34 state_dict whose layer4 is scaled so that the high level overflows float16."""
    state = seeded_resnet(0).state_dict()
    state["layer4.0.conv1.weight"] = state["layer4.0.conv1.weight"] * 1e7
    path = tmp_path_factory.mktemp("weights") / "overflow.pt"
    torch.save(state, path)
    return path


def test_features_that_overflow_fail_their_videos_and_the_run(videos, overflowing_weights, tmp_path):
    out = tmp_path / "c.h5"
    result = run(*extract_args(videos, out, "--backbone-weights", overflowing_weights))
    fails_with(result, "the backbone's features are not finite (NaN or infinity) for 4 video(s)",
                   "level high:", "as float16", "--dtype float32")
    if out.exists():  # whatever was kept holds no non-finite number
        with FeatureCache(out) as c:
            assert c.verify() == [] and not c.videos
    fixed = run(*extract_args(videos, tmp_path / "f32.h5", "--backbone-weights", overflowing_weights,
                              "--dtype", "float32"))  # the cause removed: float32 holds these values
    assert fixed.exit_code == 0, fixed.output
    assert run("inspect", tmp_path / "f32.h5", "--verify").exit_code == 0


def test_redo_damaged_drops_features_that_come_out_non_finite_again(videos, overflowing_weights, tmp_path):
    from pipeline.cache.writer import CacheWriter
    from pipeline.config import ExtractConfig
    from pipeline.datasets.index import list_videos
    from pipeline.extract.run import cache_identity

    out = tmp_path / "c.h5"  # as an older version left it: one video's high level stored as infinity
    cfg = ExtractConfig(dataset="folder", root=videos, out=out, backbone_weights=str(overflowing_weights),
                        short_side=64, crop=64)
    listed = list_videos("folder", videos, None)
    identity = cache_identity(cfg, listed, "fp32")
    with CacheWriter(out, identity, listed.splits) as writer:
        for entry in listed.videos:
            rec = VideoRecord(entry.key, entry.label, listed.classes[entry.label], frames=3, fps=25.0, width=80,
                              height=60, frames_reported=3)
            feats = {name: np.zeros((3, width), np.float32) for name, width in identity.stored_widths.items()}
            if entry.key == "jump/jump0.avi":
                feats["high"][:] = np.inf
            writer.add_video(rec, feats)
        writer.finish()
    first = run(*extract_args(videos, out, "--backbone-weights", overflowing_weights, "--redo-damaged"))
    assert "--redo-damaged: 1 video(s)" in first.stderr, first.output
    fails_with(first, "not finite", "for 1 video(s), first jump/jump0.avi")
    with FeatureCache(out) as c:
        assert "jump/jump0.avi" not in c.index and [f.key for f in c.failed] == ["jump/jump0.avi"]
        assert c.verify() == []
    second = run(*extract_args(videos, out, "--backbone-weights", overflowing_weights, "--redo-damaged"))
    assert "--redo-damaged: 0 video(s)" in second.stderr, second.output
