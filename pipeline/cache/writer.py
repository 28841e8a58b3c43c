"""Writing a cache: an exclusive lock, the journal, one merge, and the atomic replace of ``FILE.h5``.

Crash safety. ``FILE.h5`` is never modified in place: a commit writes ``FILE.h5.tmp`` and renames it
over ``FILE.h5`` (atomic), so the file is always a complete, valid cache. While extraction runs, each
finished video goes to the journal at once (``journal.py``), so no finished work exists only in
memory; a killed run loses at most the videos in flight, and the next run merges the journal.
``FILE.h5.lock`` (an OS file lock, released when the process dies) keeps a second writer out; the writer
removes the file when it is done (``locks.py`` says why that is safe).
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import h5py
import numpy as np

from pipeline import __version__
from pipeline.atomic import ensure_room, publish, tmp_path
from pipeline.cache.reader import (
    IDENTITY_ATTR,
    SCHEMA_VERSION,
    STR,
    CacheError,
    CacheLockedError,
    ConfigMismatchError,
    FailedRecord,
    FeatureCache,
    Splits,
    VideoRecord,
    lock_path,
    remove_cache_files,
    require_identity,
)
from pipeline.errors import writing
from pipeline.locks import ExclusiveLock
from pipeline.cache.identity import CacheIdentity
from pipeline.cache.journal import Journal

CHUNK_BYTES = 1 << 20  # a level's storage unit: one checksum per MiB of features

def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class CacheLock(ExclusiveLock):
    """The exclusive right to write the cache at ``path``: the OS lock of ``FILE.h5.lock`` (``locks.py``)."""

    def __init__(self, path: Path):
        self.path = path
        super().__init__(lock_path(path), lambda: CacheLockedError(
            f"{path}: another mrrn process is writing this cache (lock {lock_path(path)} is held); "
            "wait for it to finish or use another --out"), remove=True)  # no lock file left once done


# ----------------------------------------------------------------------------------------------
# What goes into a new file: videos with where their rows are, and failures


class Rows(Protocol):
    """Where a video's features come from when a new file is written: a committed cache or a journal entry.
    ``reading()`` keeps it open while all its levels are read."""

    def rows(self, level: str) -> np.ndarray:
        """The video's features of one level, ``(frames, C)``."""

    def reading(self) -> contextlib.AbstractContextManager:
        ...


@dataclass(frozen=True)
class StoredRows:
    """A video's rows in a committed cache."""

    cache: FeatureCache
    record: VideoRecord

    def rows(self, level: str) -> np.ndarray:
        return self.cache.rows(level, self.record.offset, self.record.frames)

    def reading(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext(self)


@dataclass
class RecordSource:
    """Where the writer takes finished videos' records (and failures) from: a committed cache, the
    journal, or a shard being joined."""

    videos: list[tuple[VideoRecord, Rows]] = field(default_factory=list)
    failed: list[FailedRecord] = field(default_factory=list)

    @classmethod
    def of_cache(cls, cache: FeatureCache) -> RecordSource:
        return cls([(rec, StoredRows(cache, rec)) for rec in cache.videos], list(cache.failed))


def merge(sources: list[RecordSource]) -> tuple[list[tuple[VideoRecord, Rows]], list[FailedRecord]]:
    """The one merge, used by commit and by the join of shards, over sources oldest first: a video extracted
    in any source is in, from the newest source that has it (a video extracted again with --redo replaces
    the old rows); a failure counts only for a video no source extracted (the newest reason wins). Both
    lists come out in key order."""
    videos: dict[str, tuple[VideoRecord, Rows]] = {}
    failed: dict[str, FailedRecord] = {}
    for source in sources:
        for rec, rows in source.videos:
            videos[rec.key] = (rec, rows)
        for rec in source.failed:
            failed[rec.key] = rec
    return [videos[k] for k in sorted(videos)], [failed[k] for k in sorted(failed) if k not in videos]


def write_cache_file(path: Path, identity: CacheIdentity, videos: list[tuple[VideoRecord, Rows]],
                     failed: list[FailedRecord], splits: Splits, created: str, *, missing: tuple[str, ...] = ()) -> None:
    """Write a complete cache to ``path.tmp``, flush it to disk and rename it over ``path`` (atomic).
    ``missing``: the keys the split lists name that were not on disk."""
    tmp = tmp_path(path)
    ensure_room(path, _expected_size(identity, videos, failed))
    try:
        with writing(path), h5py.File(tmp, "w", libver=("earliest", "v110")) as f:
            _write_header(f, identity, created)
            offsets = _write_tables(f, [rec for rec, _ in videos], failed, splits)
            f.create_group("missing").create_dataset("key", data=_strings(sorted(missing)), dtype=STR)
            digests = _write_features(f, identity, videos, offsets)
            f["videos"].create_dataset("digest", data=_strings(digests), dtype=STR)
        publish(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _expected_size(identity: CacheIdentity, videos: list[tuple[VideoRecord, Rows]], failed: list[FailedRecord]) -> int:
    """About how many bytes the file will take: the features, the tables, and HDF5's own overhead."""
    row = sum(identity.stored_widths.values()) * np.dtype(identity.dtype).itemsize
    tables = sum(len(rec.key) + len(rec.class_name) + 60 for rec, _ in videos) + sum(len(f.reason) + 200 for f in failed)
    return int(sum(rec.frames for rec, _ in videos) * row * 1.01) + 2 * tables + (64 << 10)


def _write_header(f: h5py.File, identity: CacheIdentity, created: str) -> None:
    f.attrs["schema_version"] = SCHEMA_VERSION
    f.attrs[IDENTITY_ATTR] = identity.canonical()
    f.attrs["mrrn_version"] = __version__
    f.attrs["created_utc"] = created
    f.attrs["updated_utc"] = _now()
    stored = identity.to_json()
    for name in ("backbone", "weights", "dataset", "dtype", "precision"):  # copies for h5dump readers
        f.attrs[name] = str(stored[name])
    f.create_dataset("classes", data=np.array(identity.classes, dtype=object), dtype=STR)


def _strings(values) -> np.ndarray:
    return np.array(list(values), dtype=object)


def _write_tables(f: h5py.File, recs: list[VideoRecord], failed: list[FailedRecord], splits: Splits) -> np.ndarray:
    """The video table, failures and split lists; returns each video's first row."""
    offsets = np.cumsum([0] + [r.frames for r in recs])[:-1].astype(np.int64)
    g = f.create_group("videos")
    g.create_dataset("key", data=_strings(r.key for r in recs), dtype=STR)
    g.create_dataset("class_name", data=_strings(r.class_name for r in recs), dtype=STR)
    g.create_dataset("label", data=np.array([r.label for r in recs], dtype=np.int32))
    g.create_dataset("frames", data=np.array([r.frames for r in recs], dtype=np.int64))
    g.create_dataset("offset", data=offsets)
    g.create_dataset("fps", data=np.array([r.fps for r in recs], dtype=np.float32))
    g.create_dataset("width", data=np.array([r.width for r in recs], dtype=np.int32))
    g.create_dataset("height", data=np.array([r.height for r in recs], dtype=np.int32))
    g.create_dataset("frames_reported", data=np.array([r.frames_reported for r in recs], dtype=np.int64))
    fg = f.create_group("failed")
    fg.create_dataset("key", data=_strings(r.key for r in failed), dtype=STR)
    fg.create_dataset("class_name", data=_strings(r.class_name for r in failed), dtype=STR)
    fg.create_dataset("label", data=np.array([r.label for r in failed], dtype=np.int32))
    fg.create_dataset("reason", data=_strings(r.reason for r in failed), dtype=STR)
    sg = f.create_group("splits")
    for n, (train, test) in sorted(splits.items()):
        s = sg.create_group(str(n))
        s.create_dataset("train", data=_strings(train), dtype=STR)
        s.create_dataset("test", data=_strings(test), dtype=STR)
    return offsets


def _checksummed_chunks(rows: int, width: int, itemsize: int) -> dict:
    """Storage of a level: chunks of about CHUNK_BYTES, each with a Fletcher-32 checksum that HDF5 checks on
    every read, so damaged feature data is an error and never silently wrong numbers."""
    if rows == 0:
        return {}
    return {"chunks": (min(rows, max(1, CHUNK_BYTES // (width * itemsize))), width), "fletcher32": True}


def _write_features(f: h5py.File, identity: CacheIdentity, videos: list[tuple[VideoRecord, Rows]],
                    offsets: np.ndarray) -> list[str]:
    """Every video's rows of every level, video by video (each origin is opened once, in order); returns each
    video's digest of its rows (BLAKE2b of every level's bytes, 16 hex digits), computed as they are copied."""
    total = sum(rec.frames for rec, _ in videos)
    group = f.create_group("features")
    widths = identity.stored_widths  # level -> V * C
    out = {spec.name: group.create_dataset(spec.name, shape=(total, widths[spec.name]), dtype=identity.dtype,
                                           **_checksummed_chunks(total, widths[spec.name], np.dtype(identity.dtype).itemsize))
           for spec in identity.levels}
    for spec in identity.levels:
        out[spec.name].attrs["layer"] = spec.tap  # the attribute keeps its first name
    digests = []
    for (rec, rows), offset in zip(videos, offsets):
        digest = hashlib.blake2b(digest_size=8)
        with rows.reading():
            for level, ds in out.items():
                block = np.ascontiguousarray(rows.rows(level), dtype=ds.dtype)  # (frames, V * C)
                ds[offset : offset + rec.frames] = block
                digest.update(block.tobytes())
        digests.append(digest.hexdigest())
    return digests


# ----------------------------------------------------------------------------------------------
# The writer


class CacheWriter:
    """Exclusive writer of one cache: ``with CacheWriter(path, identity) as w: w.add_video(...); w.finish()``.

    On entry: takes the lock, checks an existing file's identity (refusing a different one),
    creates an empty valid file if there is none, and loads the journal left by a killed run.
    """

    def __init__(self, path: str | os.PathLike, identity: CacheIdentity, splits: Splits | None = None, log=print, *,
                 missing: tuple[str, ...] | None = None):
        self.path = Path(path)
        self.log = log
        self.identity = identity
        self.splits = splits  # None keeps the file's own
        self.missing = None if missing is None else tuple(sorted(missing))  # None keeps the file's own
        self.journal = Journal(self.path, identity)
        self.lock = CacheLock(self.path)
        self.complete: set[str] = set()  # keys extracted, in the file or the journal
        self.discard: set[str] = set()  # keys whose stored rows are damaged: a new failure of theirs drops them
        self.created = False  # this writer made the file: there was no cache at path

    def __enter__(self) -> CacheWriter:
        if self.path.is_dir():
            raise CacheError(f"{self.path}: is a directory; --out names the cache file (for example data/ucf101.h5)")
        with writing(self.path):  # a parent that is a file is named as the reason
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.lock.__enter__()
        try:
            self._open_state()
        except BaseException:
            self.lock.release()
            raise
        return self

    def __exit__(self, exc_type, *exc) -> None:
        try:
            if exc_type is not None and self.created and not self.complete:
                remove_cache_files(self.path)  # it holds nothing, and would refuse the corrected command's settings
        finally:
            self.lock.release()

    def _open_state(self) -> None:
        if self.path.exists():
            require_identity(self.path, self.identity)
            with FeatureCache(self.path) as cache:
                self.complete = {v.key for v in cache.videos}
                if self.splits is None:
                    self.splits = cache.splits
                if self.missing is None:
                    self.missing = cache.missing
        else:
            self.splits, self.missing = self.splits or {}, self.missing or ()
            write_cache_file(self.path, self.identity, [], [], self.splits, created=_now(), missing=self.missing)
            self.created = True
        self.complete |= {entry.key for entry in self.journal.open(self.log) if entry.ok}

    def add_video(self, rec: VideoRecord, features: dict[str, np.ndarray]) -> None:
        """features: {level: (rec.frames, C)}; written to the journal at once."""
        self.journal.add_video(rec, features)
        self.complete.add(rec.key)

    def add_failure(self, rec: FailedRecord) -> None:
        self.journal.add_failure(rec)

    def commit(self) -> None:
        """Merge the journal (and the current split lists) into FILE.h5, then empty the journal."""
        entries = self.journal.entries()
        with FeatureCache(self.path) as old:
            if not entries and old.splits == self.splits and old.missing == self.missing:
                return
            records = [(entry.record(), entry) for entry in entries]
            journalled = RecordSource([(r, e) for r, e in records if isinstance(r, VideoRecord)],
                                      [r for r, _ in records if isinstance(r, FailedRecord)])
            stored, failed_now = RecordSource.of_cache(old), {r.key for r in journalled.failed}
            stored.videos = [(r, rows) for r, rows in stored.videos if r.key not in self.discard & failed_now]
            videos, failed = merge([stored, journalled])
            write_cache_file(self.path, self.identity, videos, failed, self.splits, old.attrs.get("created_utc", ""),
                             missing=self.missing)
        for entry in entries:
            entry.path.unlink()

    def absorb(self, parts: list[Path]) -> None:
        """Join finished caches of the same identity (the shards of a multi-process extraction) into
        this one: one contiguous file in key order, written atomically like a commit. The parts are left
        in place; the caller removes them once this returns."""
        self.commit()
        with contextlib.ExitStack() as stack:
            old = stack.enter_context(FeatureCache(self.path))
            sources = [RecordSource.of_cache(old)]
            for path in parts:
                part = stack.enter_context(FeatureCache(path))
                if part.identity != old.identity:
                    raise ConfigMismatchError(f"{path}: made with a different configuration "
                                              f"({part.identity.diff(old.identity, 'shard', 'cache')})")
                sources.append(RecordSource.of_cache(part))
            videos, failed = merge(sources)
            write_cache_file(self.path, self.identity, videos, failed, self.splits, old.attrs.get("created_utc", ""),
                             missing=self.missing)

    def finish(self) -> None:
        """Commit and remove the (then empty) journal folder."""
        self.commit()
        self.journal.close()
