"""The HDF5 feature cache: schema, writer (journal + atomic commit), reader and verification.

This is the only module that imports h5py. The format is documented in ``data/README.md``.

Crash safety. ``FILE.h5`` is never modified in place: a commit writes ``FILE.h5.tmp`` and renames it
over ``FILE.h5`` (atomic), so the file is always a complete, valid cache. While extraction runs, each
finished video is written at once to the journal ``FILE.h5.journal/`` (one ``.npz`` per video,
written to a temporary name and renamed), so no finished work exists only in memory; a killed run
loses at most the videos in flight, and the next run merges the journal into ``FILE.h5``.
``FILE.h5.lock`` (an OS file lock, released when the process dies) keeps a second writer out.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from pipeline import __version__
from pipeline.config import LEVELS

SCHEMA_VERSION = 1
STR = h5py.string_dtype("utf-8")
COPY_ROWS = 1 << 16  # rows per block when copying features between files


# POSIX locks never conflict within one process, so this process's own writers are tracked here.
_HELD_BY_THIS_PROCESS: set[str] = set()


class CacheError(Exception):
    """A cache that cannot be used as asked; the message names the file and the reason."""


class ConfigMismatchError(CacheError):
    pass


class CacheLockedError(CacheError):
    pass


@dataclass(frozen=True)
class VideoRecord:
    key: str
    label: int
    class_name: str
    frames: int  # frames actually decoded = rows of each level
    fps: float
    width: int
    height: int
    frames_reported: int  # the container's frame count (-1 unknown), for the record
    offset: int = -1  # first row in /features/<level>; -1 until committed


@dataclass(frozen=True)
class FailedRecord:
    key: str
    label: int
    class_name: str
    reason: str


def journal_dir(path: Path) -> Path:
    return Path(f"{path}.journal")


def lock_path(path: Path) -> Path:
    return Path(f"{path}.lock")


def shard_dir(path: Path) -> Path:
    """Where the ranks of a multi-process extraction write their shards of FILE.h5: FILE.h5.shards/."""
    return Path(f"{path}.shards")


def shard_path(path: Path, rank: int, world: int) -> Path:
    return shard_dir(path) / f"{rank}-of-{world}.h5"


def remove_cache_files(path: Path) -> None:
    """A cache file with its lock and (empty) journal; used once shards are joined."""
    for leftover in (path, lock_path(path)):
        leftover.unlink(missing_ok=True)
    shutil.rmtree(journal_dir(path), ignore_errors=True)


def canonical(identity: dict) -> str:
    return json.dumps(identity, sort_keys=True, separators=(",", ":"))


def source_identity(identity: dict) -> dict:
    """What the streams of one dataset and backbone share (RGB and flow caches fuse and train together):
    the identity without its modality and flow settings."""
    return {k: v for k, v in identity.items() if k not in ("modality", "flow")}


def describe_differences(have: dict, want: dict) -> str:
    """'weights: cache random:seed=0, this run sha256:...; crop: cache 224, this run 64'."""
    parts = []
    for name in sorted(set(have) | set(want)):
        if have.get(name) != want.get(name):
            a, b = have.get(name, "(absent)"), want.get(name, "(absent)")
            if name == "classes" and isinstance(a, list) and isinstance(b, list):
                a, b = f"{len(a)} classes", f"{len(b)} classes" + (" (others)" if len(a) == len(b) else "")
            parts.append(f"{name}: cache {a}, this run {b}")
    return "; ".join(parts)


# ----------------------------------------------------------------------------------------------
# Reading


class FeatureCache:
    """Read access to a committed cache file. Levels load whole in one read: ``load_level('high')``."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise CacheError(f"{self.path}: cache file not found")
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as err:
            raise CacheError(f"{self.path}: not a readable HDF5 cache ({err})") from None
        try:
            self._read_header()
        except KeyError as err:  # a group or dataset of the schema is absent
            self._file.close()
            raise CacheError(f"{self.path}: incomplete or damaged cache ({err.args[0] if err.args else err})") from None
        except Exception:
            self._file.close()
            raise

    def _read_header(self):
        f = self._file
        version = f.attrs.get("schema_version")
        if version is None or "config" not in f.attrs:
            raise CacheError(f"{self.path}: not an mrrn feature cache (no schema_version/config attributes)")
        if int(version) != SCHEMA_VERSION:
            raise CacheError(f"{self.path}: cache schema version {version}, this mrrn reads {SCHEMA_VERSION}")
        self.identity: dict = json.loads(f.attrs["config"])
        self.identity.setdefault("modality", "rgb")  # caches written before flow existed hold RGB features
        self.classes: tuple[str, ...] = tuple(self.identity["classes"])
        by_width = sorted(self.identity["levels"].items(), key=lambda kv: kv[1][1])
        self.levels: dict[str, int] = {lvl: int(dim) for lvl, (_, dim) in by_width}  # low, mid, high
        v = f["videos"]
        keys = v["key"].asstr()[:]
        cols = {name: v[name][:] for name in ("label", "frames", "offset", "fps", "width", "height", "frames_reported")}
        names = v["class_name"].asstr()[:]
        self.videos: tuple[VideoRecord, ...] = tuple(
            VideoRecord(
                key=str(keys[i]), label=int(cols["label"][i]), class_name=str(names[i]),
                frames=int(cols["frames"][i]), fps=float(cols["fps"][i]), width=int(cols["width"][i]),
                height=int(cols["height"][i]), frames_reported=int(cols["frames_reported"][i]),
                offset=int(cols["offset"][i]),
            )
            for i in range(len(keys))
        )
        fl = f["failed"]
        self.failed: tuple[FailedRecord, ...] = tuple(
            FailedRecord(str(k), int(lab), str(c), str(r))
            for k, lab, c, r in zip(fl["key"].asstr()[:], fl["label"][:], fl["class_name"].asstr()[:], fl["reason"].asstr()[:])
        )
        self.index = {rec.key: i for i, rec in enumerate(self.videos)}
        self.splits: dict[int, tuple[tuple[str, ...], tuple[str, ...]]] = {
            int(n): (tuple(g["train"].asstr()[:]), tuple(g["test"].asstr()[:])) for n, g in f["splits"].items()
        }

    def close(self):
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def attrs(self) -> dict:
        return {k: (v.decode() if isinstance(v, bytes) else v) for k, v in self._file.attrs.items()}

    @property
    def total_frames(self) -> int:
        return int(sum(v.frames for v in self.videos))

    def level_shape(self, level: str) -> tuple[int, ...]:
        return tuple(self._features(level).shape)

    def _features(self, level: str) -> h5py.Dataset:
        stored = [name for name in self.levels if name in self._file["features"]]
        if level not in stored:
            raise CacheError(f"{self.path}: no level {level!r} in this cache (it has: {', '.join(stored) or 'none'})")
        return self._file["features"][level]

    def load_level(self, level: str) -> np.ndarray:
        """All frames of one level, ``(total_frames, C)``, in one read; rows of video i start at its offset."""
        return self._features(level)[...]

    def video_features(self, key: str, level: str) -> np.ndarray:
        """One video's frames of one level, ``(T, C)``."""
        rec = self.videos[self.index[key]]
        return self._features(level)[rec.offset : rec.offset + rec.frames]

    def verify(self) -> list[str]:
        """Check every entry: table consistency, offsets, frame counts, shapes and finite values."""
        problems = []
        seen, expected_offset = set(), 0
        for rec in self.videos:
            where = f"video {rec.key!r}"
            if rec.key in seen:
                problems.append(f"{where}: duplicate key")
            seen.add(rec.key)
            if rec.frames <= 0:
                problems.append(f"{where}: {rec.frames} frames")
            if rec.offset != expected_offset:
                problems.append(f"{where}: offset {rec.offset}, expected {expected_offset}")
            if not 0 <= rec.label < len(self.classes) or self.classes[rec.label] != rec.class_name:
                problems.append(f"{where}: label {rec.label} / class {rec.class_name!r} disagree with the class list")
            expected_offset = rec.offset + max(rec.frames, 0)
        bad_rows: dict[str, np.ndarray] = {}
        for level, dim in self.levels.items():
            ds = self._features(level)
            if ds.shape != (expected_offset, dim):
                problems.append(f"features/{level}: shape {ds.shape}, expected ({expected_offset}, {dim})")
                continue
            bad = np.zeros(ds.shape[0], dtype=bool)
            for start in range(0, ds.shape[0], COPY_ROWS):
                block = ds[start : start + COPY_ROWS]
                bad[start : start + len(block)] = ~np.isfinite(block).all(axis=1)
            bad_rows[level] = bad
        for level, bad in bad_rows.items():
            if bad.any():
                for rec in self.videos:
                    n = int(bad[rec.offset : rec.offset + rec.frames].sum())
                    if n:
                        problems.append(f"video {rec.key!r}: {n} frame(s) of level {level} are not finite")
        failed_keys = {f.key for f in self.failed}
        for key in sorted(failed_keys & seen):
            problems.append(f"video {key!r}: listed both as extracted and as failed")
        return problems


def read_identity(path: Path) -> dict:
    with FeatureCache(path) as cache:
        return cache.identity


def require_identity(path: Path, identity: dict) -> None:
    """Refuse an existing cache made with another configuration, naming what differs."""
    have = read_identity(path)
    if have != identity:
        raise ConfigMismatchError(
            f"{path}: made with a different configuration ({describe_differences(have, identity)}); "
            "use another --out, or the cache's own settings"
        )


# ----------------------------------------------------------------------------------------------
# Writing


def _write_file(
    tmp: Path,
    identity: dict,
    videos: list[tuple[VideoRecord, object]],
    failed: list[FailedRecord],
    splits: dict[int, tuple[tuple[str, ...], tuple[str, ...]]],
    dtype: str,
    created: str,
) -> None:
    """Write a complete cache to ``tmp``. ``videos``: (record, source) in output order, where source is
    ``("file", h5py.File, offset)`` or ``("journal", npz path)``."""
    total = sum(rec.frames for rec, _ in videos)
    with h5py.File(tmp, "w", libver=("earliest", "v110")) as f:
        f.attrs["schema_version"] = SCHEMA_VERSION
        f.attrs["config"] = canonical(identity)
        f.attrs["mrrn_version"] = __version__
        f.attrs["created_utc"] = created
        f.attrs["updated_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        for name in ("backbone", "weights", "dataset", "dtype", "precision"):
            f.attrs[name] = str(identity[name])
        f.create_dataset("classes", data=np.array(identity["classes"], dtype=object), dtype=STR)
        g = f.create_group("videos")
        recs = [rec for rec, _ in videos]
        offsets = np.cumsum([0] + [r.frames for r in recs])[:-1].astype(np.int64)
        g.create_dataset("key", data=np.array([r.key for r in recs], dtype=object), dtype=STR)
        g.create_dataset("class_name", data=np.array([r.class_name for r in recs], dtype=object), dtype=STR)
        g.create_dataset("label", data=np.array([r.label for r in recs], dtype=np.int32))
        g.create_dataset("frames", data=np.array([r.frames for r in recs], dtype=np.int64))
        g.create_dataset("offset", data=offsets)
        g.create_dataset("fps", data=np.array([r.fps for r in recs], dtype=np.float32))
        g.create_dataset("width", data=np.array([r.width for r in recs], dtype=np.int32))
        g.create_dataset("height", data=np.array([r.height for r in recs], dtype=np.int32))
        g.create_dataset("frames_reported", data=np.array([r.frames_reported for r in recs], dtype=np.int64))
        fg = f.create_group("failed")
        fg.create_dataset("key", data=np.array([r.key for r in failed], dtype=object), dtype=STR)
        fg.create_dataset("class_name", data=np.array([r.class_name for r in failed], dtype=object), dtype=STR)
        fg.create_dataset("label", data=np.array([r.label for r in failed], dtype=np.int32))
        fg.create_dataset("reason", data=np.array([r.reason for r in failed], dtype=object), dtype=STR)
        sg = f.create_group("splits")
        for n, (train, test) in sorted(splits.items()):
            g = sg.create_group(str(n))
            g.create_dataset("train", data=np.array(train, dtype=object), dtype=STR)
            g.create_dataset("test", data=np.array(test, dtype=object), dtype=STR)
        feats = f.create_group("features")
        out = {lvl: feats.create_dataset(lvl, shape=(total, dim), dtype=dtype) for lvl, (_, dim) in LEVELS.items()}
        for level, ds in out.items():
            ds.attrs["layer"] = LEVELS[level][0]
        for (rec, source), offset in zip(videos, offsets):
            if source[0] == "file":
                _, old, old_offset = source
                for level, ds in out.items():
                    ds[offset : offset + rec.frames] = old["features"][level][old_offset : old_offset + rec.frames]
            else:
                with np.load(source[1], allow_pickle=False) as z:
                    for level, ds in out.items():
                        ds[offset : offset + rec.frames] = z[level].astype(dtype, copy=False)


class CacheWriter:
    """Exclusive writer of one cache: ``with CacheWriter(path, identity) as w: w.add_video(...); w.commit()``.

    On entry: takes the lock, checks an existing file's configuration (refusing a different one),
    creates an empty valid file if there is none, and loads the journal left by a killed run.
    """

    def __init__(self, path: str | os.PathLike, identity: dict, splits: dict | None = None):
        self.path = Path(path)
        self.identity = identity
        self.splits = splits  # {split: (train keys, test keys)}; None keeps the file's own
        self.journal = journal_dir(self.path)
        self._lock_fd: int | None = None
        self.complete: set[str] = set()  # keys extracted, in the file or the journal

    # -- lifecycle

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        held = str(self.path.resolve())
        busy = CacheLockedError(
            f"{self.path}: another mrrn process is writing this cache (lock {lock_path(self.path)} is held); "
            "wait for it to finish or use another --out"
        )
        if held in _HELD_BY_THIS_PROCESS:
            raise busy
        fd = os.open(lock_path(self.path), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            # A POSIX record lock: owned by this process alone (forked decoding workers do not inherit
            # it) and released by the OS the moment this process dies, kill -9 included.
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno in (errno.EACCES, errno.EAGAIN):
                raise busy from None
            raise
        self._lock_fd, self._held = fd, held
        _HELD_BY_THIS_PROCESS.add(held)
        try:
            self._open_state()
        except BaseException:
            self._release()
            raise
        return self

    def __exit__(self, *exc):
        self._release()

    def _release(self):
        if self._lock_fd is not None:
            fcntl.lockf(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None
            _HELD_BY_THIS_PROCESS.discard(self._held)

    def _open_state(self):
        if self.path.exists():
            require_identity(self.path, self.identity)
            with FeatureCache(self.path) as cache:
                self.complete = {v.key for v in cache.videos}
                if self.splits is None:
                    self.splits = cache.splits
        else:
            self.splits = self.splits or {}
            self._replace([], [], created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        if self.journal.exists():
            ident_file = self.journal / "config.json"
            if ident_file.is_file() and json.loads(ident_file.read_text()) != self.identity:
                raise ConfigMismatchError(
                    f"{self.journal}: left by a run with a different configuration; delete it to start over"
                )
            for entry in self._journal_entries():
                meta = _entry_meta(entry)
                if meta["status"] == "ok":
                    self.complete.add(meta["key"])
        self.journal.mkdir(exist_ok=True)
        (self.journal / "config.json").write_text(canonical(self.identity))

    def _journal_entries(self) -> list[Path]:
        return sorted(self.journal.glob("*.npz"))

    # -- adding work (each call leaves the video on disk before it returns)

    def _entry_path(self, key: str) -> Path:
        return self.journal / f"{hashlib.sha1(key.encode()).hexdigest()}.npz"

    def _write_entry(self, key: str, meta: dict, arrays: dict[str, np.ndarray]) -> None:
        final = self._entry_path(key)
        tmp = final.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            np.savez(f, meta=np.array(json.dumps(meta)), **arrays)
        os.replace(tmp, final)

    def add_video(self, rec: VideoRecord, features: dict[str, np.ndarray]) -> None:
        """features: {level: (rec.frames, C)}; written to the journal at once."""
        for level, (_, dim) in LEVELS.items():
            if features[level].shape != (rec.frames, dim):
                raise ValueError(f"{rec.key}: level {level} has shape {features[level].shape}, expected ({rec.frames}, {dim})")
        dtype = self.identity["dtype"]
        meta = {"status": "ok", **{k: v for k, v in rec.__dict__.items() if k != "offset"}}
        self._write_entry(rec.key, meta, {lvl: np.asarray(features[lvl], dtype=dtype) for lvl in LEVELS})
        self.complete.add(rec.key)

    def add_failure(self, rec: FailedRecord) -> None:
        self._write_entry(rec.key, {"status": "failed", **rec.__dict__}, {})

    # -- commit

    def commit(self) -> None:
        """Merge the journal (and the current split lists) into FILE.h5 (atomic replace), then empty
        the journal."""
        entries = self._journal_entries()
        with FeatureCache(self.path) as old:
            if not entries and old.splits == self.splits:
                return
            videos: dict[str, tuple[VideoRecord, object]] = {
                rec.key: (rec, ("file", old._file, rec.offset)) for rec in old.videos
            }
            failed = {f.key: f for f in old.failed}
            created = old.attrs.get("created_utc", "")
            for entry in entries:
                meta = _entry_meta(entry)
                key = meta["key"]
                if meta["status"] == "ok":
                    fields = {k: meta[k] for k in VideoRecord.__dataclass_fields__ if k in meta}
                    videos.setdefault(key, (VideoRecord(**fields), ("journal", entry)))
                    failed.pop(key, None)
                elif key not in videos:
                    failed[key] = FailedRecord(meta["key"], meta["label"], meta["class_name"], meta["reason"])
            ordered = [videos[k] for k in sorted(videos)]
            self._replace(ordered, [failed[k] for k in sorted(failed)], created)
        for entry in entries:
            entry.unlink()

    def absorb(self, parts: list[Path]) -> None:
        """Join finished caches of the same configuration (the shards of a multi-process extraction)
        into this one: one contiguous file in key order, written atomically like a commit. The parts
        are left in place; the caller removes them once this returns."""
        self.commit()
        with contextlib.ExitStack() as stack:
            old = stack.enter_context(FeatureCache(self.path))
            videos = {rec.key: (rec, ("file", old._file, rec.offset)) for rec in old.videos}
            failed = {f.key: f for f in old.failed}
            for path in parts:
                part = stack.enter_context(FeatureCache(path))
                if part.identity != old.identity:
                    raise ConfigMismatchError(f"{path}: made with a different configuration "
                                              f"({describe_differences(part.identity, old.identity)})")
                for rec in part.videos:
                    videos.setdefault(rec.key, (rec, ("file", part._file, rec.offset)))
                for f in part.failed:
                    failed.setdefault(f.key, f)
            failed = {k: f for k, f in failed.items() if k not in videos}
            self._replace([videos[k] for k in sorted(videos)], [failed[k] for k in sorted(failed)],
                          old.attrs.get("created_utc", ""))

    def _replace(self, videos, failed, created: str) -> None:
        tmp = Path(f"{self.path}.tmp")
        try:
            _write_file(tmp, self.identity, videos, failed, self.splits, self.identity["dtype"], created)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        finally:
            tmp.unlink(missing_ok=True)

    def finish(self) -> None:
        """Commit and remove the (then empty) journal folder."""
        self.commit()
        for leftover in self.journal.glob("*.tmp"):
            leftover.unlink()
        (self.journal / "config.json").unlink(missing_ok=True)
        try:
            self.journal.rmdir()
        except OSError:
            pass


def _entry_meta(entry: Path) -> dict:
    with np.load(entry, allow_pickle=False) as z:
        return json.loads(str(z["meta"]))


def pending_journal(path: Path) -> int:
    """How many finished videos wait in FILE.h5.journal/ to be merged (after a killed run)."""
    j = journal_dir(Path(path))
    return len(list(j.glob("*.npz"))) if j.is_dir() else 0
