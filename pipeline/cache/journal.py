"""The extraction journal ``FILE.h5.journal/``: every finished (or failed) video on disk at once.

One ``.npz`` per video, named by the SHA-1 of its key, written to a temporary name and renamed, so an
entry is whole or absent. ``config.json`` (``IDENTITY_FILE``) holds the identity of the run that writes it, so a
journal left by a run of another identity is never merged. :class:`CacheWriter` commits the entries
into ``FILE.h5`` and then removes them.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import zipfile
from dataclasses import asdict
from pathlib import Path

import numpy as np

from pipeline.atomic import atomic_file, write_text
from pipeline.cache.reader import ConfigMismatchError, FailedRecord, VideoRecord, journal_dir
from pipeline.errors import writing
from pipeline.cache.identity import CacheIdentity, IdentityError

IDENTITY_FILE = "config.json"  # the journal's cache identity (its name kept from the first format)
DAMAGED = "damaged"  # entries that cannot be read are moved here, and their videos extracted again
_UNREADABLE = (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile)


class DamagedEntry(Exception):
    """A journal entry that cannot be read back whole (zero bytes, cut short, bad checksum)."""


class JournalEntry:
    """One journalled video: its record, and (for a finished video) its rows of each level."""

    def __init__(self, path: Path):
        self.path = path
        self._open = None  # the entry's arrays while reading() is active
        try:
            with np.load(path, allow_pickle=False) as z:
                self.meta: dict = json.loads(str(z["meta"]))
            self.record()
        except _UNREADABLE as err:
            raise DamagedEntry(f"{type(err).__name__}: {err}") from None

    def check(self, identity: CacheIdentity) -> None:
        """Read every array back (the zip checks each one's CRC-32) and check its shape, or raise DamagedEntry."""
        if not self.ok:
            return
        try:
            with np.load(self.path, allow_pickle=False) as z:
                for level, width in identity.stored_widths.items():
                    if z[level].shape != (self.meta["frames"], width):
                        raise ValueError(f"level {level} has shape {z[level].shape}")
        except _UNREADABLE as err:
            raise DamagedEntry(f"{type(err).__name__}: {err}") from None

    @property
    def key(self) -> str:
        return self.meta["key"]

    @property
    def ok(self) -> bool:
        return self.meta["status"] == "ok"

    def record(self) -> VideoRecord | FailedRecord:
        if self.ok:
            return VideoRecord(**{k: self.meta[k] for k in VideoRecord.__dataclass_fields__ if k in self.meta})
        return FailedRecord(self.meta["key"], self.meta["label"], self.meta["class_name"], self.meta["reason"])

    @contextlib.contextmanager
    def reading(self):
        """Keep the entry open while several levels are read (one open instead of one per level)."""
        with np.load(self.path, allow_pickle=False) as z:
            self._open = z
            try:
                yield self
            finally:
                self._open = None

    def rows(self, level: str) -> np.ndarray:
        """The video's features of one level, ``(frames, C)``."""
        if self._open is not None:
            return self._open[level]
        with np.load(self.path, allow_pickle=False) as z:
            return z[level]


class Journal:
    """The journal of the cache at ``cache_path``, written by a run of ``identity``."""

    def __init__(self, cache_path: Path, identity: CacheIdentity):
        self.dir = journal_dir(cache_path)
        self.identity = identity

    def open(self, log=print) -> list[JournalEntry]:
        """Check that a journal left behind was written for this identity, make sure the folder
        exists with our identity, and return the entries already in it, each read back whole. An entry
        that cannot be read is moved to ``damaged/`` and named through ``log``: its video is not done."""
        entries = []
        if self.dir.exists():
            self._require_identity()
            entries = self._checked_entries(log)
        with writing(self.dir):
            self.dir.mkdir(exist_ok=True)
        write_text(self.dir / IDENTITY_FILE, self.identity.canonical())
        return entries

    def _require_identity(self) -> None:
        ident_file = self.dir / IDENTITY_FILE
        if not ident_file.is_file():
            return
        try:
            theirs = CacheIdentity.from_json(ident_file.read_text())
        except IdentityError:
            theirs = None
        if theirs != self.identity:
            detail = f" ({theirs.diff(self.identity, 'journal', 'this run')})" if theirs is not None else ""
            raise ConfigMismatchError(
                f"{self.dir}: left by a run with other settings{detail}; delete it to start over"
            )

    def _checked_entries(self, log) -> list[JournalEntry]:
        entries = []
        for path in sorted(self.dir.glob("*.npz")):
            try:
                entry = JournalEntry(path)
                entry.check(self.identity)
                entries.append(entry)
            except DamagedEntry as err:
                aside = self.dir / DAMAGED / path.name
                with writing(aside):
                    aside.parent.mkdir(exist_ok=True)
                    os.replace(path, aside)
                log(f"warning: {path}: damaged journal entry ({err}); moved to {aside}, its video will be extracted again")
        return entries

    def entries(self) -> list[JournalEntry]:
        """The entries on disk: those this run wrote, and those :meth:`open` found whole."""
        return [JournalEntry(p) for p in sorted(self.dir.glob("*.npz"))]

    def _write(self, key: str, meta: dict, arrays: dict[str, np.ndarray]) -> None:
        """One entry, on the disk (flushed, renamed, the rename flushed) before this returns."""
        with atomic_file(self.dir / f"{hashlib.sha1(key.encode()).hexdigest()}.npz") as f:
            np.savez(f, meta=np.array(json.dumps(meta)), **arrays)

    def add_video(self, rec: VideoRecord, features: dict[str, np.ndarray]) -> None:
        """features: {level: (rec.frames, V * C)}, stored in the cache's dtype; on disk when this returns."""
        for level, width in self.identity.stored_widths.items():
            if features[level].shape != (rec.frames, width):
                raise ValueError(f"{rec.key}: level {level} has shape {features[level].shape}, "
                                 f"expected ({rec.frames}, {width})")
        meta = {"status": "ok", **{k: v for k, v in asdict(rec).items() if k != "offset"}}
        dtype = self.identity.dtype
        self._write(rec.key, meta, {s.name: np.asarray(features[s.name], dtype=dtype) for s in self.identity.levels})

    def add_failure(self, rec: FailedRecord) -> None:
        self._write(rec.key, {"status": "failed", **asdict(rec)}, {})

    def close(self) -> None:
        """Remove the (then empty) journal folder once everything in it is committed."""
        for leftover in self.dir.glob("*.tmp"):
            leftover.unlink()
        (self.dir / IDENTITY_FILE).unlink(missing_ok=True)
        try:
            self.dir.rmdir()
        except OSError:
            pass


def pending_entries(cache_path: Path) -> tuple[int, int]:
    """(entries in FILE.h5.journal/ waiting to be merged after a killed run, entries that cannot be read
    and will be set aside), from the entries' headers."""
    folder = journal_dir(Path(cache_path))
    readable = damaged = 0
    for path in sorted(folder.glob("*.npz")) if folder.is_dir() else []:
        try:
            JournalEntry(path)
            readable += 1
        except DamagedEntry:
            damaged += 1
    return readable, damaged
