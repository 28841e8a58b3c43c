"""Checking a cache's values (``mrrn inspect --verify``, ``--redo-damaged``): the video table against itself
and the levels, every part as committed, every chunk's checksum, finiteness, and each video's rows
against the digest recorded when they were committed.
"""
from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import h5py
import numpy as np

from pipeline.cache.parts import LEVELS_GROUP, part_id_problem, row_parts

if TYPE_CHECKING:
    from pipeline.cache.reader import FeatureCache

COPY_ROWS = 1 << 16  # rows per block when checking features
NOT_FINITE, DAMAGED = "are not finite", "are damaged (checksum mismatch)"


def verify(cache: FeatureCache) -> list[str]:
    """Every problem of ``cache``, one line each."""
    problems = table_problems(cache) + cache.split_problems()
    problems += [f"features/{level}: missing" for level in cache.levels if level not in cache.stored_levels()]
    problems += [p for p in (part_id_problem(cache.path, part) for part in cache.parts) if p]
    masks = _row_problems(cache)
    for level, mask in masks.items():
        for what, bad in mask.items():
            for rec in cache.videos:
                n = int(bad[rec.offset : rec.offset + rec.frames].sum())
                if n:
                    problems.append(f"video {rec.key!r}: {n} frame(s) of level {level} {what}")
    if not cache.part_problems() and len(cache.stored_levels()) == len(cache.levels):
        reported = {p.split("'")[1] for p in problems if p.startswith("video '")}
        problems += _digest_problems(cache, reported)
    return problems


def damaged_keys(cache: FeatureCache) -> list[str]:
    """The videos with rows that fail their checksum or are not finite, in any level; every video when a
    level is missing or of the wrong shape."""
    if any(p.startswith("features/") for p in table_problems(cache)) or len(cache.stored_levels()) < len(cache.levels):
        return [rec.key for rec in cache.videos]
    bad = np.zeros(cache.level_rows, dtype=bool)
    for mask in _row_problems(cache).values():
        for rows in mask.values():
            bad[: len(rows)] |= rows
    return [rec.key for rec in cache.videos if bad[rec.offset : rec.offset + rec.frames].any()]


def table_problems(cache: FeatureCache) -> list[str]:
    """The cheap part of :func:`verify`: the video table against itself, the class list, the shapes of the
    levels and the parts on disk (no feature is read)."""
    problems, rows = _table_problems(cache)
    for level, dim in cache.levels.items():
        if level in cache.stored_levels() and cache.level_shape(level) != (rows, dim):
            problems.append(f"features/{level}: shape {cache.level_shape(level)}, expected ({rows}, {dim})")
    return problems + cache.part_problems()


def _table_problems(cache: FeatureCache) -> tuple[list[str], int]:
    """Problems of the video table, and the number of rows each level must have. A single-file cache holds
    its videos back to back in key order; an index over parts holds each video's rows in one part, and
    rows that no video owns (a video extracted again) are allowed there."""
    problems, seen, classes = [], set(), cache.classes
    by_parts = bool(cache.parts)
    rows = sum(p.rows for p in cache.parts) if by_parts else 0
    for rec in cache.videos:
        where = f"video {rec.key!r}"
        if rec.key in seen:
            problems.append(f"{where}: duplicate key")
        seen.add(rec.key)
        if rec.frames <= 0:
            problems.append(f"{where}: {rec.frames} frames")
        if not by_parts and rec.offset != rows:
            problems.append(f"{where}: offset {rec.offset}, expected {rows}")
        if not 0 <= rec.label < len(classes) or classes[rec.label] != rec.class_name:
            problems.append(f"{where}: label {rec.label} / class {rec.class_name!r} disagree with the class list")
        if not by_parts:
            rows = rec.offset + max(rec.frames, 0)
    if by_parts:
        problems += _overlaps(cache, rows)
    for key in sorted({f.key for f in cache.failed} & seen):
        problems.append(f"video {key!r}: listed both as extracted and as failed")
    return problems, rows


def _overlaps(cache: FeatureCache, rows: int) -> list[str]:
    """Videos of an index whose rows lie outside the levels, span two parts, or overlap another video's."""
    starts = np.cumsum([0] + [p.rows for p in cache.parts])  # part i: rows [starts[i], starts[i + 1])
    problems, end, previous = [], 0, None
    for rec in sorted(cache.videos, key=lambda r: r.offset):
        where = f"video {rec.key!r}"
        last = rec.offset + rec.frames
        if rec.offset < 0 or last > rows:
            problems.append(f"{where}: rows {rec.offset}-{last} outside the {rows} rows of the parts")
        elif np.searchsorted(starts, rec.offset, "right") != np.searchsorted(starts, last - 1, "right"):
            problems.append(f"{where}: rows {rec.offset}-{last} span two parts")
        if previous is not None and rec.offset < end:
            problems.append(f"{where}: rows {rec.offset}-{last} overlap those of {previous!r}")
        end, previous = max(end, last), rec.key
    return problems


def _level_sources(cache: FeatureCache, level: str):
    """(first row, dataset) of each stored block of a level: the parts' own datasets, or the file's."""
    first = 0
    for part in row_parts(cache):
        with h5py.File(part.path(cache.path), "r") as f:
            yield first, f[LEVELS_GROUP][level]
        first += part.rows


def _row_problems(cache: FeatureCache) -> dict[str, dict[str, np.ndarray]]:
    """Per level of the right shape: boolean masks of the rows that 'are not finite' and that 'are damaged
    (checksum mismatch)', over the level's rows."""
    masks, rows = {}, cache.level_rows
    if cache.part_problems():
        return masks
    for level, dim in cache.levels.items():
        if level not in cache.stored_levels() or cache.level_shape(level) != (rows, dim):
            continue
        not_finite, damaged = np.zeros(rows, dtype=bool), np.zeros(rows, dtype=bool)
        for first, ds in _level_sources(cache, level):
            a, b = _scan(ds)
            not_finite[first : first + len(a)], damaged[first : first + len(b)] = a, b
        masks[level] = {NOT_FINITE: not_finite, DAMAGED: damaged}
    return masks


def _scan(ds: h5py.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """(rows that are not finite, rows in a chunk whose checksum fails) of a ``(N, C)`` dataset, read in
    blocks; a block that fails is read again chunk by chunk to find the damaged ones."""
    n = ds.shape[0]
    not_finite, damaged = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
    step = ds.chunks[0] if ds.chunks else COPY_ROWS
    block = max(step, COPY_ROWS // step * step)
    for start in range(0, n, block):
        parts = [(start, min(start + block, n))]
        try:
            not_finite[start : start + block] = ~np.isfinite(ds[start : start + block]).all(axis=1)
            continue
        except OSError:
            parts = [(s, min(s + step, n)) for s in range(start, min(start + block, n), step)]
        for a, b in parts:
            try:
                not_finite[a:b] = ~np.isfinite(ds[a:b]).all(axis=1)
            except OSError:
                damaged[a:b] = True
    return not_finite, damaged


def _digest_problems(cache: FeatureCache, reported: set[str]) -> list[str]:
    """Videos whose rows are not the ones committed: each video's BLAKE2b over its rows of every level,
    in level order, against ``/videos/digest`` (caches written before digests, and the ``reported`` keys,
    are skipped). Read level by level in blocks of neighbouring videos."""
    listed = [(rec, d) for rec, d in zip(cache.videos, cache.digests) if d and rec.key not in reported]
    listed.sort(key=lambda x: x[0].offset)
    hashes = [hashlib.blake2b(digest_size=8) for _ in listed]
    for level in cache.levels:
        ds = cache.dataset(level)
        i = 0
        while i < len(listed):
            j, first = i, listed[i][0].offset
            while j < len(listed) and listed[j][0].offset + listed[j][0].frames - first <= COPY_ROWS or j == i:
                j += 1
            last = max(rec.offset + rec.frames for rec, _ in listed[i:j])
            try:
                block = ds[first:last]  # (rows, C)
            except OSError:  # a damaged chunk; reported by the scan
                return []
            for k in range(i, j):
                rec = listed[k][0]
                hashes[k].update(np.ascontiguousarray(block[rec.offset - first : rec.offset - first + rec.frames]).tobytes())
            i = j
    return [f"video {rec.key!r}: its rows differ from those committed (digest {h.hexdigest()}, committed {d})"
            for (rec, d), h in zip(listed, hashes) if h.hexdigest() != d]
