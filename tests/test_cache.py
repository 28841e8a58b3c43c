"""The HDF5 cache: round trip, journal resume, refusals, verification."""
from __future__ import annotations

import h5py
import numpy as np
import pytest

from pipeline.cache import (
    CacheError,
    CacheLockedError,
    CacheWriter,
    ConfigMismatchError,
    FailedRecord,
    FeatureCache,
    VideoRecord,
    pending_journal,
)

IDENTITY = {
    "backbone": "resnet34", "weights": "random:seed=0", "dtype": "float16", "precision": "fp32",
    "dataset": "folder", "classes": ["a", "b"],
    "preprocess": {"short_side": 64, "crop": 64, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                   "resize": "bilinear-antialias-uint8"},
    "levels": {"low": ["layer2", 128], "mid": ["layer3", 256], "high": ["layer4", 512]},
    "modality": "rgb",
}


def record(key, frames, label=0):
    return VideoRecord(key=key, label=label, class_name=IDENTITY["classes"][label], frames=frames, fps=25.0,
                       width=80, height=60, frames_reported=frames)


def features(frames, seed):
    rng = np.random.default_rng(seed)
    return {lvl: rng.normal(size=(frames, dim)).astype(np.float32) for lvl, dim in (("low", 128), ("mid", 256), ("high", 512))}


def test_round_trip_sorted_by_key_with_offsets_and_float16(tmp_path):
    path = tmp_path / "c.h5"
    feats = {"b/2.avi": features(5, 1), "a/1.avi": features(3, 2)}
    with CacheWriter(path, IDENTITY) as w:
        w.add_video(record("b/2.avi", 5, 1), feats["b/2.avi"])
        w.add_video(record("a/1.avi", 3), feats["a/1.avi"])
        w.add_failure(FailedRecord("a/bad.avi", 0, "a", "empty file (0 bytes)"))
        w.finish()
    assert not (tmp_path / "c.h5.journal").exists()
    with FeatureCache(path) as c:
        assert [v.key for v in c.videos] == ["a/1.avi", "b/2.avi"]
        assert [v.offset for v in c.videos] == [0, 3]
        assert c.failed == (FailedRecord("a/bad.avi", 0, "a", "empty file (0 bytes)"),)
        assert c.load_level("high").shape == (8, 512) and c.load_level("high").dtype == np.float16
        for key, f in feats.items():
            np.testing.assert_allclose(c.video_features(key, "mid"), f["mid"], rtol=1e-3, atol=1e-3)
        assert c.identity == IDENTITY and c.verify() == []


def test_a_killed_writer_leaves_a_valid_file_and_its_journal_is_merged_next_time(tmp_path):
    path = tmp_path / "c.h5"
    w = CacheWriter(path, IDENTITY).__enter__()
    w.add_video(record("a/1.avi", 4), features(4, 0))
    w._release()  # what a kill -9 leaves: no commit, the OS drops the lock
    with FeatureCache(path) as c:  # readable and valid, just without the unmerged video
        assert c.videos == () and c.verify() == []
    assert pending_journal(path) == 1
    with CacheWriter(path, IDENTITY) as w2:
        assert w2.complete == {"a/1.avi"}
        w2.finish()
    with FeatureCache(path) as c:
        assert [v.key for v in c.videos] == ["a/1.avi"]
    assert pending_journal(path) == 0


def test_a_later_success_replaces_an_earlier_failure(tmp_path):
    path = tmp_path / "c.h5"
    with CacheWriter(path, IDENTITY) as w:
        w.add_failure(FailedRecord("a/1.avi", 0, "a", "truncated"))
        w.finish()
    with CacheWriter(path, IDENTITY) as w:
        assert w.complete == set()  # failures are retried
        w.add_video(record("a/1.avi", 2), features(2, 0))
        w.finish()
    with FeatureCache(path) as c:
        assert [v.key for v in c.videos] == ["a/1.avi"] and c.failed == ()


def test_other_configuration_is_refused_saying_what_differs(tmp_path):
    path = tmp_path / "c.h5"
    with CacheWriter(path, IDENTITY) as w:
        w.finish()
    other = {**IDENTITY, "weights": "random:seed=1", "preprocess": {**IDENTITY["preprocess"], "crop": 32}}
    with pytest.raises(ConfigMismatchError) as err:
        CacheWriter(path, other).__enter__()
    assert "weights: cache random:seed=0, this run random:seed=1" in str(err.value)
    assert "'crop': 64" in str(err.value) and "'crop': 32" in str(err.value)


def test_a_second_writer_is_refused(tmp_path):
    path = tmp_path / "c.h5"
    with CacheWriter(path, IDENTITY):
        with pytest.raises(CacheLockedError, match="another mrrn process is writing this cache"):
            CacheWriter(path, IDENTITY).__enter__()
    with CacheWriter(path, IDENTITY):  # free again once the first is done
        pass


def test_verify_catches_a_corrupted_entry(tmp_path):
    path = tmp_path / "c.h5"
    with CacheWriter(path, IDENTITY) as w:
        w.add_video(record("a/1.avi", 3), features(3, 0))
        w.add_video(record("a/2.avi", 3), features(3, 1))
        w.finish()
    with h5py.File(path, "r+") as f:
        f["features/mid"][4] = np.nan
    with FeatureCache(path) as c:
        assert c.verify() == ["video 'a/2.avi': 1 frame(s) of level mid are not finite"]
    with h5py.File(path, "r+") as f:
        f["videos/frames"][0] = 2
    with FeatureCache(path) as c:
        problems = c.verify()
    assert "video 'a/2.avi': offset 3, expected 2" in problems


def test_not_a_cache_is_a_clear_error(tmp_path):
    (tmp_path / "x.h5").write_text("nope")
    with pytest.raises(CacheError, match="x.h5: not a readable HDF5 cache"):
        FeatureCache(tmp_path / "x.h5")
    with h5py.File(tmp_path / "y.h5", "w"):
        pass
    with pytest.raises(CacheError, match="y.h5: not an mrrn feature cache"):
        FeatureCache(tmp_path / "y.h5")
    with pytest.raises(CacheError, match="z.h5: cache file not found"):
        FeatureCache(tmp_path / "z.h5")


def test_a_cache_from_before_modalities_reads_as_rgb(tmp_path):
    path = tmp_path / "c.h5"
    old = {k: v for k, v in IDENTITY.items() if k != "modality"}
    with CacheWriter(path, old) as w:
        w.finish()
    with FeatureCache(path) as c:
        assert c.identity["modality"] == "rgb"
    with CacheWriter(path, {**old, "modality": "rgb"}) as w:  # and an rgb run may resume it
        w.finish()
