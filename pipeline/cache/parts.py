"""A cache by parts: ``FILE.h5`` is a small index over immutable part files in ``FILE.h5.parts/``.

A commit writes only its new videos' rows, as one new part (flushed, then renamed into place), and then
replaces the index ``FILE.h5`` atomically (``writer.py``). Its cost is the new rows plus the index's
tables, never the features already stored. Each level of the index is an HDF5 virtual dataset: the
parts' rows one after another, so mrrn and plain h5py alike read ``/features/<level>`` as one array.
Parts are never modified; a part no index names (left by a commit that was killed) is removed by the
next writer. The format is documented in ``docs/cache-format.md``.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import h5py
import numpy as np

from pipeline.atomic import ensure_room, fsync_dir, publish, tmp_path
from pipeline.errors import writing

if TYPE_CHECKING:
    from pipeline.cache.identity import CacheIdentity
    from pipeline.cache.reader import FeatureCache

CHUNK_BYTES = 1 << 20  # a level's storage unit: one checksum per MiB of features
PART_ATTR = "mrrn_part"  # a part file's attribute: its random id, which the index records
LEVELS_GROUP = "features"  # where a part (and a single-file cache) keeps its levels


def parts_dir(path: Path) -> Path:
    """The folder of the cache ``path``'s parts: ``FILE.h5.parts/``."""
    return Path(f"{path}.parts")


@dataclass(frozen=True)
class Part:
    """One immutable file of a cache's rows: rows ``[first, first + rows)`` of every level, where ``first``
    is the sum of the rows of the parts before it."""

    name: str  # relative to the cache's folder: 'ucf101.h5.parts/00003-1a2b3c4d.h5'
    rows: int
    size: int  # bytes, as committed
    uid: str  # the part's PART_ATTR; '' for a whole earlier cache file made the first part

    def path(self, cache: Path) -> Path:
        return cache.parent / self.name


class Rows(Protocol):
    """Where a video's features come from when rows are written: a committed cache or a journal entry.
    ``reading()`` keeps it open while all its levels are read."""

    def rows(self, level: str) -> np.ndarray:
        """The video's features of one level, ``(frames, C)``."""

    def reading(self) -> contextlib.AbstractContextManager:
        ...


def row_parts(cache: FeatureCache) -> tuple[Part, ...]:
    """The files holding an open cache's rows, in row order: its parts, or the single file itself (none when it
    holds no row)."""
    if cache.parts or not cache.level_rows:
        return cache.parts
    return (Part(cache.path.name, cache.level_rows, cache.path.stat().st_size, ""),)


def read_parts(f: h5py.File) -> tuple[Part, ...]:
    """The parts an index names, in row order; () for a single-file cache."""
    if "parts" not in f:
        return ()
    g = f["parts"]
    return tuple(Part(str(n), int(r), int(s), str(u))
                 for n, r, s, u in zip(g["name"].asstr()[:], g["rows"][:], g["size"][:], g["uid"].asstr()[:]))


def write_parts_table(f: h5py.File, parts: tuple[Part, ...]) -> None:
    g = f.create_group("parts")
    g.create_dataset("name", data=np.array([p.name for p in parts], dtype=object), dtype=h5py.string_dtype())
    g.create_dataset("rows", data=np.array([p.rows for p in parts], dtype=np.int64))
    g.create_dataset("size", data=np.array([p.size for p in parts], dtype=np.int64))
    g.create_dataset("uid", data=np.array([p.uid for p in parts], dtype=object), dtype=h5py.string_dtype())


def part_problems(cache: Path, parts: tuple[Part, ...]) -> list[str]:
    """Parts that are not on disk as committed (from the file system alone: nothing is read)."""
    problems = []
    for part in parts:
        path = part.path(cache)
        if not path.is_file():
            problems.append(f"part {part.name} is missing (deleted, or moved without the cache)")
        elif path.stat().st_size != part.size:
            problems.append(f"part {part.name} has changed on disk ({path.stat().st_size} bytes, "
                            f"committed with {part.size})")
    return problems


def part_id_problem(cache: Path, part: Part) -> str | None:
    """Whether the file at ``part``'s path is the part committed (its id), read from its header."""
    if not part.uid:
        return None
    try:
        with h5py.File(part.path(cache), "r") as f:
            uid = f.attrs.get(PART_ATTR)
    except OSError as err:
        return f"part {part.name} cannot be opened ({err})"
    return None if uid == part.uid else f"part {part.name} is another file than the one committed (id {uid!r})"


def new_part_name(cache: Path, parts: tuple[Part, ...]) -> str:
    """'FILE.h5.parts/00004-9f2c41d0.h5': the next number, and a random suffix so that a name is never
    reused, even by a commit killed before its index was written."""
    numbers = [int(Path(p.name).name.split("-")[0]) for p in parts if Path(p.name).name.split("-")[0].isdigit()]
    return f"{cache.name}.parts/{max(numbers, default=-1) + 1:05d}-{secrets.token_hex(4)}.h5"


def checksummed_chunks(rows: int, width: int, itemsize: int) -> dict:
    """Storage of a level: chunks of about CHUNK_BYTES, each with a Fletcher-32 checksum that HDF5 checks on
    every read, so damaged feature data is an error and never silently wrong numbers."""
    if rows == 0:
        return {}
    return {"chunks": (min(rows, max(1, CHUNK_BYTES // (width * itemsize))), width), "fletcher32": True}


def write_rows(f: h5py.File, identity: CacheIdentity, videos: list, offsets: list[int]) -> list[str]:
    """Every level of ``videos`` (``(VideoRecord, Rows)`` pairs) at ``offsets`` into ``f``'s levels, video
    by video (each origin opened once); returns each video's digest of its rows (BLAKE2b of every level's
    bytes in level order, 16 hex digits), computed as they are copied."""
    total = sum(rec.frames for rec, _ in videos)
    group = f.create_group(LEVELS_GROUP)
    widths, itemsize = identity.stored_widths, np.dtype(identity.dtype).itemsize  # level -> V * C
    out = {spec.name: group.create_dataset(spec.name, shape=(total, widths[spec.name]), dtype=identity.dtype,
                                           **checksummed_chunks(total, widths[spec.name], itemsize))
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


def write_part(cache: Path, name: str, identity: CacheIdentity, videos: list) -> tuple[Part, list[int], list[str]]:
    """The rows of ``videos`` (``(VideoRecord, Rows)`` pairs, stored in this order) as the new part ``name``,
    on the disk before this returns; returns the part, each video's first row in it, and its digest."""
    path = cache.parent / name
    offsets = [int(x) for x in np.cumsum([0] + [rec.frames for rec, _ in videos])[:-1]]
    rows = sum(rec.frames for rec, _ in videos)
    with writing(path):
        path.parent.mkdir(exist_ok=True)
    ensure_room(path, int(rows * sum(identity.stored_widths.values()) * np.dtype(identity.dtype).itemsize * 1.01) + (64 << 10))
    uid, tmp = secrets.token_hex(8), tmp_path(path)
    try:
        with writing(path), h5py.File(tmp, "w", libver=("earliest", "v110")) as f:
            f.attrs[PART_ATTR] = uid
            digests = write_rows(f, identity, videos, offsets)
        publish(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return Part(name, rows, path.stat().st_size, uid), offsets, digests


def link_part(source: Part, source_cache: Path, cache: Path, name: str) -> Part:
    """``source`` (a part of ``source_cache``, or a whole single-file cache) made part ``name`` of ``cache``
    without copying a row: a hard link, or a copy where the file system has none."""
    src, dest = source.path(source_cache), cache.parent / name
    with writing(dest):
        dest.parent.mkdir(exist_ok=True)
        try:
            os.link(src, dest)
        except OSError:  # no hard links here (another file system, or one without them)
            shutil.copyfile(src, tmp_path(dest))
            publish(tmp_path(dest), dest)
        fsync_dir(dest.parent)
    return Part(name, source.rows, dest.stat().st_size, source.uid)


def write_virtual_levels(f: h5py.File, identity: CacheIdentity, parts: tuple[Part, ...]) -> None:
    """One virtual dataset per level over ``parts``' rows, in order. A row whose part cannot be opened reads
    as NaN (never as zeros), which every finiteness check catches; mrrn refuses such a cache before."""
    group = f.create_group(LEVELS_GROUP)
    total = sum(p.rows for p in parts)
    for spec in identity.levels:
        width = identity.stored_widths[spec.name]
        if not parts:
            ds = group.create_dataset(spec.name, shape=(0, width), dtype=identity.dtype)
        else:
            layout = h5py.VirtualLayout(shape=(total, width), dtype=identity.dtype)
            first = 0
            for part in parts:
                layout[first : first + part.rows] = h5py.VirtualSource(
                    part.name, f"{LEVELS_GROUP}/{spec.name}", shape=(part.rows, width), dtype=identity.dtype)
                first += part.rows
            ds = group.create_virtual_dataset(spec.name, layout, fillvalue=np.nan)
        ds.attrs["layer"] = spec.tap


def open_level(f: h5py.File, cache: Path, level: str) -> h5py.Dataset:
    """``/features/<level>`` of the index, its parts looked up beside ``cache`` (never in the working folder)."""
    dapl = h5py.h5p.create(h5py.h5p.DATASET_ACCESS)
    dapl.set_virtual_prefix(str(cache.resolve().parent).encode() + b"/")
    # No chunk cache for the parts: each part opened through the index otherwise keeps one (several MiB, measured),
    # so a process's memory grew with the number of parts; whole-chunk reads are as fast without it
    dapl.set_chunk_cache(521, 0, 1.0)
    return h5py.Dataset(h5py.h5d.open(f[LEVELS_GROUP].id, level.encode(), dapl=dapl))


def remove_stray_parts(cache: Path, parts: tuple[Part, ...]) -> int:
    """Remove the files in ``FILE.h5.parts/`` that the index does not name (a commit killed between its part
    and its index, or parts a compaction replaced); only ever called by the cache's writer, under its lock."""
    folder, named = parts_dir(cache), {Path(p.name).name for p in parts}
    removed = 0
    for path in folder.glob("*") if folder.is_dir() else []:
        if path.is_file() and path.name not in named:
            path.unlink()
            removed += 1
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
    return removed
