"""The HDF5 cache: round trip, journal resume, refusals, verification."""
from __future__ import annotations

import dataclasses
import json

import h5py
import numpy as np
import pytest

from pipeline.cache.reader import CacheError, CacheLockedError, ConfigMismatchError, FailedRecord, FeatureCache, VideoRecord
from pipeline.cache.writer import CacheWriter
from pipeline.config import Preprocess
from pipeline.cache.journal import pending_entries
from tests.conftest import make_identity

IDENTITY = make_identity()


def record(key, frames, label=0):
    return VideoRecord(key=key, label=label, class_name=IDENTITY.classes[label], frames=frames, fps=25.0,
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
    w.lock.release()  # what a kill -9 leaves: no commit, the OS drops the lock
    with FeatureCache(path) as c:  # readable and valid, just without the unmerged video
        assert c.videos == () and c.verify() == []
    assert pending_entries(path) == (1, 0)
    with CacheWriter(path, IDENTITY) as w2:
        assert w2.complete == {"a/1.avi"}
        w2.finish()
    with FeatureCache(path) as c:
        assert [v.key for v in c.videos] == ["a/1.avi"]
    assert pending_entries(path) == (0, 0)


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
    other = dataclasses.replace(IDENTITY, backbone_weights="random:seed=1", preprocess=Preprocess(short_side=64, crop=32))
    with pytest.raises(ConfigMismatchError) as err:
        CacheWriter(path, other).__enter__()
    assert str(err.value) == (f"{path}: made with a different configuration (preprocess.crop: cache 64, this run 32; "
                              "weights: cache random:seed=0, this run random:seed=1); use another --out, or the "
                              "cache's own settings")


def test_a_second_writer_is_refused(tmp_path):
    path = tmp_path / "c.h5"
    with CacheWriter(path, IDENTITY):
        with pytest.raises(CacheLockedError, match="another mrrn process is writing this cache"):
            CacheWriter(path, IDENTITY).__enter__()
    with CacheWriter(path, IDENTITY):  # free again once the first is done
        pass


def test_a_finished_cache_leaves_no_files_beside_it(tmp_path):
    path = tmp_path / "c.h5"
    with CacheWriter(path, IDENTITY) as w:
        assert (tmp_path / "c.h5.lock").exists()  # while it writes
        w.add_video(record("a/1.avi", 3), features(3, 0))
        w.finish()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.h5", "c.h5.parts"]  # the index and its parts
    (tmp_path / "c.h5.lock").touch()  # left by a writer killed with kill -9: the OS released its lock
    with CacheWriter(path, IDENTITY) as w:
        w.finish()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.h5", "c.h5.parts"]  # the index and its parts


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
    assert any(p.startswith("video 'a/1.avi': its rows differ from those committed") for p in problems)


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
    with CacheWriter(path, IDENTITY) as w:
        w.finish()
    old = {k: v for k, v in IDENTITY.to_json().items() if k != "modality"}  # as mrrn wrote it before flow
    with h5py.File(path, "r+") as f:
        f.attrs["config"] = json.dumps(old)
    with FeatureCache(path) as c:
        assert c.identity.modality == "rgb" and c.identity == IDENTITY
    with CacheWriter(path, IDENTITY) as w:  # and an rgb run may resume it
        w.finish()


def test_a_journal_of_another_identity_is_never_merged(tmp_path):
    path = tmp_path / "c.h5"
    w = CacheWriter(path, IDENTITY).__enter__()
    w.add_video(record("a/1.avi", 2), features(2, 0))
    w.lock.release()  # killed before the commit
    other = dataclasses.replace(IDENTITY, backbone_weights="random:seed=5")
    (tmp_path / "c.h5").unlink()  # the cache is gone, its journal is left
    with pytest.raises(ConfigMismatchError, match="c.h5.journal: left by a run with other settings "
                                                  r"\(weights: journal random:seed=0, this run random:seed=5\)"):
        CacheWriter(path, other).__enter__()
