"""A cache that grows by parts: a commit writes only its new videos, an earlier single-file cache becomes the
first part unrewritten, a missing or altered part is one line, a killed commit leaves nothing behind, and
`mrrn compact` makes one file again."""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from pipeline.cache.reader import CacheError, FailedRecord, FeatureCache, VideoRecord
from pipeline.cache.writer import CacheWriter
from tests.conftest import copy_cache, key_ordered, make_identity, one_line_error, run

IDENTITY = make_identity()
FIXTURE = Path(__file__).with_name("fixtures") / "v0.1.0" / "cache.h5"


def add(path: Path, *videos: tuple[str, int], identity=IDENTITY, label: int = 0) -> None:
    """Commit ``videos`` ((key, frames), rows seeded by the key) into the cache at ``path``."""
    with CacheWriter(path, identity) as w:
        for key, frames in videos:
            rng = np.random.default_rng(int(hashlib.sha1(key.encode()).hexdigest()[:8], 16))
            rows = {name: rng.normal(size=(frames, width)).astype(np.float32) for name, width in identity.stored_widths.items()}
            w.add_video(VideoRecord(key, label, identity.classes[label], frames, 25.0, 80, 60, frames), rows)
        w.finish()


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_commit_writes_its_new_videos_as_one_part_and_leaves_the_others_untouched(tmp_path):
    path = tmp_path / "c.h5"
    add(path, ("a/1.avi", 5), ("a/2.avi", 4))
    with FeatureCache(path) as c:
        (first,) = c.parts
        before = {"stat": os.stat(first.path(path)), "bytes": digest(first.path(path)), "rows": key_ordered(c, "high")}
    add(path, ("a/0.avi", 3))
    with FeatureCache(path) as c:
        assert [p.rows for p in c.parts] == [9, 3] and c.parts[0] == first
        assert os.stat(first.path(path)).st_ino == before["stat"].st_ino and digest(first.path(path)) == before["bytes"]
        assert [v.key for v in c.videos] == ["a/0.avi", "a/1.avi", "a/2.avi"]  # the table stays in key order
        np.testing.assert_array_equal(key_ordered(c, "high")[3:], before["rows"])
        assert c.load_level("low").shape == (12, 128) and c.verify() == []


def test_an_earlier_single_file_cache_becomes_the_first_part_without_being_rewritten(tmp_path):
    old = shutil.copy(FIXTURE, tmp_path / "cache.h5")  # written by mrrn 0.1.0: one file, every level in it
    before = os.stat(old)
    with FeatureCache(old) as c:
        identity, rows = c.identity, key_ordered(c, "mid")
    add(Path(old), ("walk/walk9.avi", 2), identity=identity, label=1)
    with FeatureCache(old) as c:
        first = c.parts[0].path(Path(old))
        assert os.stat(first).st_ino == before.st_ino and os.stat(first).st_size == before.st_size  # the same file
        assert [p.rows for p in c.parts] == [14, 2] and len(c.videos) == 5
        np.testing.assert_array_equal(np.concatenate([c.video_features(k, "mid") for k in
                                                      ("jump/jump0.avi", "jump/jump1.avi", "walk/walk0.avi", "walk/walk1.avi")]), rows)
        assert c.verify() == []


def test_a_missing_part_is_one_line_everywhere_and_never_zeros(sample_cache, tmp_path):
    cache = copy_cache(sample_cache, tmp_path / "c.h5")
    with FeatureCache(cache) as c:
        part = c.parts[-1]
    part.path(cache).unlink()
    for args in (("inspect", cache), ("inspect", cache, "--verify"),
                 ("train", "--cache", cache, "--level", "high", "--out", tmp_path / "r", "--epochs", "1")):
        one_line_error(run(*args), f"{cache}: part {part.name} is missing")
    with h5py.File(cache, "r") as f:  # a plain h5py reader sees NaN where the part was, which no check lets pass
        assert np.isnan(f["features/high"][-1]).all()


def test_an_altered_part_is_found_by_verify(sample_cache, tmp_path):
    cache = copy_cache(sample_cache, tmp_path / "c.h5")
    with FeatureCache(cache) as c:
        part = c.parts[0].path(cache)
    with h5py.File(part, "r") as f:
        start = f["features/mid"].id.get_chunk_info(0).byte_offset
    with open(part, "r+b") as f:  # one flipped byte
        f.seek(start + 100)
        byte = f.read(1)
        f.seek(start + 100)
        f.write(bytes([byte[0] ^ 0xFF]))
    verify = run("inspect", cache, "--verify")
    assert verify.exit_code == 1 and "of level mid are damaged (checksum mismatch)" in verify.output, verify.output
    other = tmp_path / "other"
    other.mkdir()
    other = copy_cache(sample_cache, other / "c.h5")
    with FeatureCache(other) as c:
        part = c.parts[0].path(other)
    with h5py.File(part, "r+") as f:  # another part in its place: its own id
        f.attrs["mrrn_part"] = "0" * 16
    verify = run("inspect", other, "--verify")
    assert verify.exit_code == 1 and ("is another file than the one committed" in verify.output
                                      or "has changed on disk" in verify.output), verify.output


def test_a_part_left_by_a_killed_commit_is_removed_by_the_next_writer(tmp_path):
    path = tmp_path / "c.h5"
    add(path, ("a/1.avi", 3))
    stray = Path(f"{path}.parts") / "00001-deadbeef.h5"  # a part whose index was never written
    stray.write_bytes(b"half a part")
    with FeatureCache(path) as c:
        assert c.verify() == []  # the index does not name it
    add(path, ("a/2.avi", 2))
    assert not stray.exists()
    with FeatureCache(path) as c:
        assert len(c.parts) == 2 and c.verify() == []


def test_a_cache_moved_with_its_parts_reads_from_any_working_folder(tmp_path, monkeypatch):
    path = tmp_path / "made" / "c.h5"
    path.parent.mkdir()
    add(path, ("a/1.avi", 3))
    add(path, ("a/2.avi", 2))
    moved = tmp_path / "elsewhere"
    shutil.move(path.parent, moved)
    monkeypatch.chdir(tmp_path)
    with FeatureCache(Path("elsewhere") / "c.h5") as c:
        assert c.verify() == [] and c.video_features("a/2.avi", "low").shape == (2, 128)


def test_compact_merges_the_parts_into_one_file(tmp_path):
    path = tmp_path / "c.h5"
    add(path, ("a/1.avi", 3), ("a/2.avi", 2))
    add(path, ("a/0.avi", 4))
    add(path, ("a/1.avi", 5))  # extracted again: its first rows are no longer used
    with FeatureCache(path) as c:
        version, rows = c.version, {k: key_ordered(c, k) for k in c.levels}
        assert c.level_rows == 14 and c.total_frames == 11
    result = run("compact", path)
    assert result.exit_code == 0 and "compacted 3 parts into" in result.output and "3 rows" in result.output, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.h5"]
    with FeatureCache(path) as c:
        assert c.parts == () and c.level_rows == 11 and c.verify() == []
        assert c.version.split("-")[1] == version.split("-")[1]  # the same contents, under a new commit number
        for level, before in rows.items():
            np.testing.assert_array_equal(c.load_level(level), before)  # one file: key order
    assert "one file already" in run("compact", path).output
    add(path, ("a/3.avi", 1))  # and it grows by parts again
    with FeatureCache(path) as c:
        assert len(c.parts) == 2 and c.verify() == []


def test_opening_for_the_identity_alone_reads_no_table(tmp_path):
    from pipeline.cache.reader import read_identity

    path = tmp_path / "c.h5"
    add(path, ("a/1.avi", 3))
    with h5py.File(path, "r+") as f:
        del f["videos/frames"]  # a damaged table: the identity is still known, a full open refuses
    assert read_identity(path) == IDENTITY
    with pytest.raises(CacheError, match="videos/frames: missing"):
        FeatureCache(path)


def test_compact_waits_for_finished_videos_still_in_the_journal(tmp_path):
    path = tmp_path / "c.h5"
    add(path, ("a/1.avi", 3))
    add(path, ("a/2.avi", 2))
    w = CacheWriter(path, IDENTITY).__enter__()  # a run killed after journalling one video
    w.add_video(VideoRecord("a/3.avi", 0, "a", 2, 25.0, 80, 60, 2), {n: np.zeros((2, d), np.float32)
                                                                     for n, d in IDENTITY.stored_widths.items()})
    w.lock.release()
    one_line_error(run("compact", path), f"{path}: finished videos wait in {path}.journal",
                   "rerun the same `mrrn extract`")
    with FeatureCache(path) as c:  # nothing done is lost: the parts and the journal are as they were
        assert len(c.parts) == 2 and c.verify() == []
    assert len(list(Path(f"{path}.journal").glob("*.npz"))) == 1


def test_keys_in_any_script_keep_their_order_and_rows_across_commits(tmp_path):
    path = tmp_path / "c.h5"
    add(path, ("ñandú/vídeo 1.avi", 3), ("日本/b.avi", 2))
    with CacheWriter(path, IDENTITY) as w:
        w.add_failure(FailedRecord("a/ü.avi", 0, IDENTITY.classes[0], "cannot decode"))
        w.finish()
    add(path, ("a/ü.avi", 4), ("ñandú/vídeo 1.avi", 5))  # the failure extracted after all; a video replaced
    with FeatureCache(path) as c:
        keys = ["a/ü.avi", "ñandú/vídeo 1.avi", "日本/b.avi"]
        assert [v.key for v in c.videos] == sorted(keys) == keys and c.failed == ()
        assert [c.video_features(k, "low").shape[0] for k in keys] == [4, 5, 2] and c.verify() == []
    with h5py.File(path, "r") as f:  # plain h5py reads the table's strings as strings
        assert list(f["videos/key"].asstr()[:]) == keys
