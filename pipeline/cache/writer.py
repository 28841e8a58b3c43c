"""Writing a cache: an exclusive lock, the journal, one merge, new parts, and the atomic replace of the index.

Crash safety. ``FILE.h5`` is never modified in place: a commit writes its new videos as a new part
(``parts.py``), then a new index to ``FILE.h5.tmp`` and renames it over ``FILE.h5`` (atomic), so the file
is always a complete, valid cache. While extraction runs, each
finished video goes to the journal at once (``journal.py``), so no finished work exists only in
memory; a killed run loses at most the videos in flight, and the next run merges the journal.
``FILE.h5.lock`` (an OS file lock, released when the process dies) keeps a second writer out; the writer
removes the file when it is done (``locks.py`` says why that is safe).
"""
from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from pipeline.cache.identity import CacheIdentity
from pipeline.cache.journal import Journal, pending_entries
from pipeline.cache.parts import Part, link_part, new_part_name, parts_dir, remove_stray_parts, row_parts, write_part
from pipeline.cache.reader import (
    CacheError,
    CacheLockedError,
    ConfigMismatchError,
    FailedRecord,
    FeatureCache,
    Splits,
    VideoRecord,
    journal_dir,
    lock_path,
    remove_cache_files,
    require_identity,
)
from pipeline.cache.stored_tables import utf8
from pipeline.cache.tables import Contents, merge, now_utc, stored_columns, video_columns, write_cache_file, write_index
from pipeline.errors import writing
from pipeline.locks import ExclusiveLock


class CacheLock(ExclusiveLock):
    """The exclusive right to write the cache at ``path``: the OS lock of ``FILE.h5.lock`` (``locks.py``)."""

    def __init__(self, path: Path):
        self.path = path
        super().__init__(lock_path(path), lambda: CacheLockedError(
            f"{path}: another mrrn process is writing this cache (lock {lock_path(path)} is held); "
            "wait for it to finish or use another --out"), remove=True)  # no lock file left once done


@dataclass(frozen=True)
class StoredRows:
    """A video's rows in a committed cache."""

    cache: FeatureCache
    record: VideoRecord

    def rows(self, level: str) -> np.ndarray:
        return self.cache.rows(level, self.record.offset, self.record.frames)

    def reading(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext(self)


# ----------------------------------------------------------------------------------------------
# The writer


class CacheWriter:
    """Exclusive writer of one cache: ``with CacheWriter(path, identity) as w: w.add_video(...); w.finish()``.

    On entry: takes the lock, checks an existing file's identity (refusing a different one), creates an
    empty valid file if there is none, removes parts no index names, and loads the journal left by a
    killed run. ``commit_every``: (videos, seconds) after which finished videos are committed while the
    run goes on, so the journal holds at most one interval's videos.
    """

    def __init__(self, path: str | os.PathLike, identity: CacheIdentity, splits: Splits | None = None, log=print, *,
                 missing: tuple[str, ...] | None = None, commit_every: tuple[int, float] | None = None):
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
        self.commit_every = commit_every
        self._pending, self._last_commit = 0, time.monotonic()

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
                self.complete = set(cache.columns["key"].tolist())
                if self.splits is None:
                    self.splits = cache.splits
                if self.missing is None:
                    self.missing = cache.missing
                with writing(parts_dir(self.path)):
                    remove_stray_parts(self.path, cache.parts)
        else:
            self.splits, self.missing = self.splits or {}, self.missing or ()
            write_cache_file(self.path, self.identity, [], Contents(video_columns([]), [], self.splits, self.missing),
                             created=now_utc(), commit=0)
            self.created = True
        self.complete |= {entry.key for entry in self.journal.open(self.log) if entry.ok}

    def add_video(self, rec: VideoRecord, features: dict[str, np.ndarray]) -> None:
        """features: {level: (rec.frames, C)}; written to the journal at once, and committed with the others
        of its interval (``commit_every``)."""
        self.journal.add_video(rec, features)
        self.complete.add(rec.key)
        self._count_pending()

    def add_failure(self, rec: FailedRecord) -> None:
        self.journal.add_failure(rec)
        self._count_pending()

    def _count_pending(self) -> None:
        self._pending += 1
        if self.commit_every is not None:
            videos, seconds = self.commit_every
            if self._pending >= videos or time.monotonic() - self._last_commit >= seconds:
                self.commit()

    def _parts_of(self, cache: FeatureCache) -> tuple[Part, ...]:
        """The parts of the open cache at this writer's path; a single-file cache with rows is made the
        first part of its own index (a hard link: it is neither copied nor rewritten)."""
        if cache.parts:
            return cache.parts
        return tuple(link_part(whole, self.path, self.path, new_part_name(self.path, ())) for whole in row_parts(cache))

    def _lists_unchanged(self, cache: FeatureCache) -> bool:
        """Whether the open cache already holds this run's split lists and missing keys."""
        return cache.splits == self.splits and cache.missing == self.missing

    def _write_index(self, old: FeatureCache, videos: dict, failed: list[FailedRecord], parts: tuple[Part, ...]) -> None:
        """The next version of the index (``old``'s next commit) over ``parts``."""
        write_index(self.path, self.identity, Contents(videos, failed, self.splits, self.missing), parts,
                    created=old.attrs.get("created_utc", ""), commit=old.commit + 1)

    def commit(self) -> None:
        """The journal's videos as one new part, then a new index naming it (and the current split lists);
        then the journal is emptied. Nothing stored is copied."""
        entries = self.journal.entries()
        with FeatureCache(self.path) as old:
            if not entries and self._lists_unchanged(old):
                return
            records = [(entry.record(), entry) for entry in entries]
            new = sorted([(r, e) for r, e in records if isinstance(r, VideoRecord)], key=lambda x: x[0].key)
            failed_now = [r for r, _ in records if isinstance(r, FailedRecord)]
            stored = stored_columns(old)
            dropped = np.isin(stored["key"], utf8(sorted(self.discard & {r.key for r in failed_now})))
            stored = {name: column[~dropped] for name, column in stored.items()}
            parts = self._parts_of(old)
            placed = video_columns([])
            if new:
                part, offsets, digests = write_part(self.path, new_part_name(self.path, parts), self.identity, new)
                first = sum(p.rows for p in parts)
                parts += (part,)
                placed = video_columns([(replace(rec, offset=first + o), d) for (rec, _), o, d in zip(new, offsets, digests)])
            self._write_index(old, *merge([(stored, list(old.failed)), (placed, failed_now)]), parts)
        for entry in entries:
            entry.path.unlink()
        self._pending, self._last_commit = 0, time.monotonic()

    def absorb(self, shards: list[Path]) -> None:
        """Join finished caches of the same identity (the shards of a multi-process extraction) into this
        one by the index alone: their parts are linked into ``FILE.h5.parts/`` (hard links, no row copied)
        and a new index names them. The shards are left in place; the caller removes them once this returns."""
        self.commit()
        with FeatureCache(self.path) as old:
            parts, sources = self._parts_of(old), [(stored_columns(old), list(old.failed))]
            for path in shards:
                with FeatureCache(path) as shard:
                    if shard.identity != old.identity:
                        raise ConfigMismatchError(f"{path}: made with a different configuration "
                                                  f"({shard.identity.diff(old.identity, 'shard', 'cache')})")
                    first = sum(p.rows for p in parts)
                    for part in row_parts(shard):
                        parts += (link_part(part, path, self.path, new_part_name(self.path, parts)),)
                    columns = stored_columns(shard)
                    sources.append(({**columns, "offset": columns["offset"] + first}, list(shard.failed)))
            if all(not len(v["key"]) and not f for v, f in sources[1:]) and self._lists_unchanged(old):
                return
            self._write_index(old, *merge(sources), parts)

    def finish(self) -> None:
        """Commit and remove the (then empty) journal folder."""
        self.commit()
        self.journal.close()


def compact(path: Path) -> tuple[int, int]:
    """Merge a cache's parts into one file (schema 1, every level stored in it, in key order), atomically,
    then remove the parts. Returns (parts before, rows no longer used that were dropped)."""
    with CacheLock(path):
        with FeatureCache(path) as cache:
            if not cache.parts:
                return 0, 0
            if sum(pending_entries(path)):
                raise CacheError(f"{path}: finished videos wait in {journal_dir(path)}; rerun the same `mrrn extract` "
                                 "to commit them first")
            contents = Contents(stored_columns(cache), list(cache.failed), cache.splits, cache.missing)
            write_cache_file(path, cache.identity, [(rec, StoredRows(cache, rec)) for rec in cache.videos], contents,
                             created=cache.attrs.get("created_utc", ""), commit=cache.commit + 1)
            before, unused = len(cache.parts), cache.level_rows - cache.total_frames
        remove_stray_parts(path, ())
    return before, unused
