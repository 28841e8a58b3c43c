"""A cache file's tables as read: the video table by column, failures, split lists and missing keys.

The strings of the video table are kept as stored, UTF-8 bytes (``raw``), which is all a commit needs to list
the stored videos again: no string is decoded or built per video. Decoded columns, records and the key index
are built when first asked for, once per version of the file in a process.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np


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


Splits = dict[int, tuple[tuple[str, ...], tuple[str, ...]]]  # split -> (train keys, test keys)

NUMBER_COLUMNS = ("label", "frames", "offset", "fps", "width", "height", "frames_reported")
TEXT_COLUMNS = ("key", "class_name", "digest")  # UTF-8 strings; "digest" absent in caches written before it


def utf8(values) -> np.ndarray:
    """Strings as one column of UTF-8 bytes (numpy ``S``), as wide as the longest."""
    encoded = [str(v).encode() for v in values]
    return np.array(encoded, dtype=f"S{max(map(len, encoded), default=1) or 1}")


def text(column: np.ndarray) -> np.ndarray:
    """A column of UTF-8 bytes decoded, as an object array of str."""
    return np.array([b.decode() for b in column.tolist()], dtype=object)


def _stored_bytes(ds: h5py.Dataset) -> np.ndarray:
    """A string dataset (fixed-length, or the variable-length strings earlier versions wrote) as UTF-8 bytes."""
    values = ds[:]
    if values.dtype.kind == "S":
        return values.astype(f"S{max(values.dtype.itemsize, 1)}")  # drops h5py's metadata
    return np.array([v if isinstance(v, bytes) else str(v).encode() for v in values.tolist()], dtype="S") \
        if len(values) else np.zeros(0, "S1")


def _strings(f: h5py.File, name: str) -> tuple[str, ...]:
    """A string dataset as str, () where the file has none (datasets newer caches hold)."""
    return tuple(text(_stored_bytes(f[name]))) if name in f else ()


@dataclass
class StoredTables:
    """A cache file's tables as read; the decoded columns, records and key index built when first asked for."""

    raw: dict[str, np.ndarray]  # the video table: TEXT_COLUMNS as UTF-8 bytes, NUMBER_COLUMNS as stored
    failed: tuple[FailedRecord, ...]
    splits: Splits
    missing: tuple[str, ...]
    _columns: dict[str, np.ndarray] | None = None
    _digests: tuple[str, ...] | None = None
    _records: tuple[VideoRecord, ...] | None = None
    _index: dict[str, int] | None = None

    def columns(self) -> dict[str, np.ndarray]:
        """The video table with key and class_name as str."""
        if self._columns is None:
            self._columns = {"key": text(self.raw["key"]), "class_name": text(self.raw["class_name"]),
                             **{name: self.raw[name] for name in NUMBER_COLUMNS}}
        return self._columns

    def digests(self) -> tuple[str, ...]:
        """Each video's digest; "" where not stored (caches written before digests)."""
        if self._digests is None:
            self._digests = tuple(text(self.raw["digest"]))
        return self._digests

    def records(self) -> tuple[VideoRecord, ...]:
        if self._records is None:
            cols = self.columns()
            ints = {name: cols[name].tolist() for name in NUMBER_COLUMNS}  # Python numbers, converted at once
            self._records = tuple(
                VideoRecord(key=key, label=label, class_name=name, frames=frames, fps=float(fps), width=width,
                            height=height, frames_reported=reported, offset=offset)
                for key, name, label, frames, fps, width, height, reported, offset in zip(
                    cols["key"].tolist(), cols["class_name"].tolist(), ints["label"], ints["frames"], ints["fps"],
                    ints["width"], ints["height"], ints["frames_reported"], ints["offset"]))
        return self._records

    def index(self) -> dict[str, int]:
        if self._index is None:
            self._index = {k: i for i, k in enumerate(self.columns()["key"].tolist())}
        return self._index


_READ: dict[tuple, StoredTables] = {}  # (path, inode, mtime, size) -> its tables; a commit replaces the file
_KEEP = 4  # files whose tables a process keeps (a cache and a flow cache, and their previous versions)


def tables_of(path: Path, f: h5py.File) -> StoredTables:
    """The tables of the open file ``f`` at ``path``, read once per version of the file in this process."""
    st = os.stat(path)
    key = (str(path.resolve()), st.st_ino, st.st_mtime_ns, st.st_size)
    if key not in _READ:
        v, fl = f["videos"], f["failed"]
        raw = {name: _stored_bytes(v[name]) for name in ("key", "class_name")}
        raw["digest"] = _stored_bytes(v["digest"]) if "digest" in v else np.full(len(raw["key"]), b"", dtype="S1")
        raw.update({name: v[name][:] for name in NUMBER_COLUMNS})
        _READ[key] = StoredTables(
            raw=raw,
            failed=tuple(FailedRecord(k, int(lab), c, r) for k, lab, c, r in
                         zip(_strings(f, "failed/key"), fl["label"][:], _strings(f, "failed/class_name"),
                             _strings(f, "failed/reason"))),
            splits={int(n): (_strings(g, "train"), _strings(g, "test")) for n, g in f["splits"].items()},
            missing=_strings(f, "missing/key"))
        while len(_READ) > _KEEP:
            _READ.pop(next(iter(_READ)))
    return _READ[key]
