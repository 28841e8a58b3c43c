"""What a cache file lists, and writing it: the header, the video table with each video's rows and digest,
failures, split lists and missing keys; either as an index over parts (schema 2) or as a single file
holding every level (schema 1). The layout is documented in ``docs/cache-format.md``.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from pipeline import __version__
from pipeline.atomic import ensure_room, publish, tmp_path
from pipeline.cache.identity import CacheIdentity, canonical_json
from pipeline.cache.parts import Part, write_parts_table, write_rows, write_virtual_levels
from pipeline.cache.stored_tables import utf8
from pipeline.cache.reader import (
    IDENTITY_ATTR,
    INDEX_SCHEMA_VERSION,
    SCHEMA_VERSION,
    STR,
    FailedRecord,
    FeatureCache,
    Splits,
    VideoRecord,
)
from pipeline.errors import writing


def now_utc() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# The video table's columns and their types, in file order; "key" sorted. Strings are UTF-8 bytes (numpy "S")
# from reading to writing: a commit neither decodes nor encodes the videos already stored.
VIDEO_COLUMNS = {"key": "S", "class_name": "S", "label": np.int32, "frames": np.int64, "offset": np.int64,
                 "fps": np.float32, "width": np.int32, "height": np.int32, "frames_reported": np.int64, "digest": "S"}


def video_columns(videos: list[tuple[VideoRecord, str]]) -> dict[str, np.ndarray]:
    """Records (with their digests) as the video table's columns, in the order given."""
    return {name: utf8(digest if name == "digest" else getattr(rec, name) for rec, digest in videos) if dtype == "S"
            else np.array([getattr(rec, name) for rec, _ in videos], dtype=dtype)
            for name, dtype in VIDEO_COLUMNS.items()}


def stored_columns(cache: FeatureCache) -> dict[str, np.ndarray]:
    """A committed cache's video table by column, as stored (no record is built, no string decoded)."""
    raw = cache.raw_columns
    return {name: raw[name] if dtype == "S" else np.asarray(raw[name], dtype=dtype) for name, dtype in VIDEO_COLUMNS.items()}


@dataclass
class Contents:
    """What an index lists: the video table by column (``VIDEO_COLUMNS``, in key order; each offset the video's
    first row in the index's levels, with its digest), failures, the split lists and the keys missing on disk."""

    videos: dict[str, np.ndarray]
    failed: list[FailedRecord]
    splits: Splits
    missing: tuple[str, ...]

    def version(self, commit: int) -> str:
        """The commit's name: its number and a digest of what it lists ('12-3fa2c1d9'); two caches that
        list the same videos with the same features, failures and splits share the digest."""
        digest = hashlib.blake2b(digest_size=4)
        for name in ("key", "digest"):
            digest.update(b"\0".join(self.videos[name].tolist()) + b"\1")
        for name in ("frames", "label"):
            digest.update(np.ascontiguousarray(self.videos[name], dtype=np.int64).tobytes())
        digest.update(canonical_json([[f.key for f in self.failed], {str(n): list(p) for n, p in self.splits.items()},
                                      list(self.missing)]).encode())
        return f"{commit}-{digest.hexdigest()}"


def merge(sources: list[tuple[dict[str, np.ndarray], list[FailedRecord]]]):
    """The one merge, used by commit and by the join of shards, over (video columns, failures) sources oldest
    first: a video extracted in any source is in, from the newest source that has it (a video extracted
    again with --redo replaces the old rows); a failure counts only for a video no source extracted (the
    newest reason wins). Both come out in key order."""
    columns = {name: np.concatenate([cols[name] for cols, _ in sources]) if sources else np.zeros(0, dtype)
               for name, dtype in VIDEO_COLUMNS.items()}
    keys = columns["key"]  # UTF-8 bytes sort as their strings do
    _, last = np.unique(keys[::-1], return_index=True)  # sorted keys, each at its newest source
    keep = len(keys) - 1 - last
    videos = {name: column[keep] for name, column in columns.items()}
    failed: dict[str, FailedRecord] = {}
    for _, source_failed in sources:
        for rec in source_failed:
            failed[rec.key] = rec
    undone = sorted(failed)
    undone = [k for k, done in zip(undone, np.isin(utf8(undone), videos["key"])) if not done] if undone else []
    return videos, [failed[k] for k in undone]


def write_index(path: Path, identity: CacheIdentity, contents: Contents, parts: tuple[Part, ...], *,
                created: str, commit: int) -> None:
    """The index ``path`` over ``parts`` (schema 2), written to ``path.tmp``, flushed and renamed over
    ``path``: its tables, and each level as a virtual dataset. No feature is copied."""
    tmp = tmp_path(path)
    ensure_room(path, _tables_size(contents) + (64 << 10))
    try:
        with writing(path), h5py.File(tmp, "w", libver=("earliest", "v110")) as f:
            _write_header(f, identity, created, INDEX_SCHEMA_VERSION, contents.version(commit))
            _write_tables(f, contents)
            write_parts_table(f, parts)
            write_virtual_levels(f, identity, parts)
        publish(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_cache_file(path: Path, identity: CacheIdentity, rows: list, contents: Contents, *, created: str,
                     commit: int) -> None:
    """A single-file cache (schema 1, which every mrrn reads): the features of ``rows`` (``(VideoRecord, Rows)``
    of the videos ``contents`` lists, in its order) copied into it back to back, written to ``path.tmp``,
    flushed and renamed over ``path``."""
    tmp = tmp_path(path)
    row = sum(identity.stored_widths.values()) * np.dtype(identity.dtype).itemsize
    ensure_room(path, int(contents.videos["frames"].sum() * row * 1.01) + _tables_size(contents) + (64 << 10))
    offsets = np.cumsum(np.concatenate([[0], contents.videos["frames"]]))[:-1].astype(np.int64)
    try:
        with writing(path), h5py.File(tmp, "w", libver=("earliest", "v110")) as f:
            digests = write_rows(f, identity, rows, offsets.tolist())
            placed = Contents({**contents.videos, "offset": offsets, "digest": utf8(digests)},
                              contents.failed, contents.splits, contents.missing)
            _write_header(f, identity, created, SCHEMA_VERSION, placed.version(commit))
            _write_tables(f, placed)
        publish(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _tables_size(contents: Contents) -> int:
    """About how many bytes the tables take, with HDF5's overhead."""
    return 2 * (len(contents.videos["key"]) * 160 + sum(len(f.reason) + 200 for f in contents.failed))


def _write_header(f: h5py.File, identity: CacheIdentity, created: str, schema: int, version: str) -> None:
    f.attrs["schema_version"] = schema
    f.attrs[IDENTITY_ATTR] = identity.canonical()
    f.attrs["mrrn_version"] = __version__
    f.attrs["created_utc"] = created
    f.attrs["updated_utc"] = now_utc()
    f.attrs["version"] = version
    stored = identity.to_json()
    for name in ("backbone", "weights", "dataset", "dtype", "precision"):  # copies for h5dump readers
        f.attrs[name] = str(stored[name])
    f.create_dataset("classes", data=np.array(identity.classes, dtype=object), dtype=STR)


def _strings(values) -> np.ndarray:
    """``values`` (str, or a column of UTF-8 bytes) as one fixed-length UTF-8 column, as wide as the longest:
    written and read in one copy, where variable-length strings cost a heap object each (and every commit
    rewrites the index). h5py, and every mrrn version, read both kinds alike."""
    column = values if isinstance(values, np.ndarray) and values.dtype.kind == "S" else utf8(values)
    return column.astype(h5py.string_dtype("utf-8", max(column.dtype.itemsize, 1)))


def _write_tables(f: h5py.File, contents: Contents) -> None:
    """The video table (with each video's first row and digest), failures, split lists and missing keys."""
    failed = contents.failed
    g = f.create_group("videos")
    for column, dtype in VIDEO_COLUMNS.items():
        values = contents.videos[column]
        g.create_dataset(column, data=_strings(values) if dtype == "S" else values.astype(dtype, copy=False))
    fg = f.create_group("failed")
    fg.create_dataset("key", data=_strings(r.key for r in failed))
    fg.create_dataset("class_name", data=_strings(r.class_name for r in failed))
    fg.create_dataset("label", data=np.array([r.label for r in failed], dtype=np.int32))
    fg.create_dataset("reason", data=_strings(r.reason for r in failed))
    sg = f.create_group("splits")
    for n, (train, test) in sorted(contents.splits.items()):
        s = sg.create_group(str(n))
        s.create_dataset("train", data=_strings(train))
        s.create_dataset("test", data=_strings(test))
    f.create_group("missing").create_dataset("key", data=_strings(sorted(contents.missing)))


