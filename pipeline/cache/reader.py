"""The HDF5 feature cache: its schema, records and reader, with verification.

The format is documented in ``docs/cache-format.md``. ``reader.py`` and ``writer.py`` are the
only modules that import h5py. Writing (lock, journal, merge, atomic replace) lives in
``writer.py`` and ``journal.py``.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from pipeline.errors import MrrnError, first_line
from pipeline.cache.identity import CacheIdentity, IdentityError
from pipeline.cache.contents import split_problems
from pipeline.cache.schema import schema_problem, version_problem

SCHEMA_VERSION = 1
IDENTITY_ATTR = "config"  # the file attribute holding the cache identity (its name kept from the first format)
STR = h5py.string_dtype("utf-8")
COPY_ROWS = 1 << 16  # rows per block when copying or checking features


class CacheError(MrrnError):
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


Splits = dict[int, tuple[tuple[str, ...], tuple[str, ...]]]  # split -> (train keys, test keys)


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
        except IdentityError as err:
            self._file.close()
            raise CacheError(f"{self.path}: damaged cache identity (attribute {IDENTITY_ATTR!r}: {err})") from None
        except Exception:
            self._file.close()
            raise

    def _read_header(self):
        f = self._file
        version = f.attrs.get("schema_version")
        if version is None or IDENTITY_ATTR not in f.attrs:
            raise CacheError(f"{self.path}: not an mrrn feature cache (no schema_version/{IDENTITY_ATTR} attributes)")
        problem = version_problem(f)
        if problem:
            raise CacheError(f"{self.path}: damaged cache ({problem})")
        if int(version) != SCHEMA_VERSION:
            raise CacheError(f"{self.path}: cache schema version {version}, this mrrn reads {SCHEMA_VERSION}")
        problem = schema_problem(f)  # every group and column of the right kind and length; no value read yet
        if problem:
            raise CacheError(f"{self.path}: damaged cache ({problem}); extract the dataset again into another --out")
        self.identity = CacheIdentity.from_json(str(self.attrs[IDENTITY_ATTR]))
        # level -> columns per frame: its width times the views (view-major; docs/cache-format.md)
        self.levels: dict[str, int] = self.identity.stored_widths
        self._datasets: dict[str, h5py.Dataset] = {}
        self.videos: tuple[VideoRecord, ...] = _read_videos(f["videos"])
        fl = f["failed"]
        self.failed: tuple[FailedRecord, ...] = tuple(
            FailedRecord(str(k), int(lab), str(c), str(r))
            for k, lab, c, r in zip(fl["key"].asstr()[:], fl["label"][:], fl["class_name"].asstr()[:], fl["reason"].asstr()[:])
        )
        self.index = {rec.key: i for i, rec in enumerate(self.videos)}
        self.splits: Splits = {
            int(n): (tuple(g["train"].asstr()[:]), tuple(g["test"].asstr()[:])) for n, g in f["splits"].items()
        }
        self.missing: tuple[str, ...] = _keys_of(f, "missing/key")  # named by split files, not on disk; () in older caches
        self.digests: tuple[str, ...] = _keys_of(f, "videos/digest") or ("",) * len(self.videos)  # "" when not stored

    def close(self):
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def classes(self) -> tuple[str, ...]:
        return self.identity.classes

    @property
    def attrs(self) -> dict:
        return {k: (v.decode() if isinstance(v, bytes) else v) for k, v in self._file.attrs.items()}

    @property
    def total_frames(self) -> int:
        return int(sum(v.frames for v in self.videos))

    def stored_levels(self) -> list[str]:
        """The levels of the identity that the file holds (a damaged file may lack one)."""
        return [name for name in self.levels if name in self._file["features"]]

    def level_shape(self, level: str) -> tuple[int, ...]:
        return tuple(self._features(level).shape)

    def _features(self, level: str) -> h5py.Dataset:
        if level not in self._datasets:
            stored = [name for name in self.levels if name in self._file["features"]]
            if level not in stored:
                raise CacheError(f"{self.path}: no level {level!r} in this cache (it has: {', '.join(stored) or 'none'})")
            self._datasets[level] = self._file["features"][level]
        return self._datasets[level]

    def load_level(self, level: str) -> np.ndarray:
        """All frames of one level, ``(total_frames, V * C)``, in one read; rows of video i start at its
        offset. ``V`` views side by side, view-major (``V = 1``, the centre crop, unless extracted with --views)."""
        try:
            return self._features(level)[...]
        except OSError as err:  # a stored chunk fails its Fletcher-32 checksum, or the file is cut short
            raise CacheError(f"{self.path}: level {level} cannot be read ({first_line(err)}); run "
                             f"`mrrn inspect {self.path} --verify`, then `mrrn extract ... --redo-damaged`") from None

    def rows(self, level: str, start: int, count: int) -> np.ndarray:
        """``count`` rows of one level from row ``start``, ``(count, C)``."""
        return self._features(level)[start : start + count]

    def video_features(self, key: str, level: str) -> np.ndarray:
        """One video's frames of one level, ``(T, C)``."""
        rec = self.videos[self.index[key]]
        return self.rows(level, rec.offset, rec.frames)

    def verify(self) -> list[str]:
        """Check every entry: table consistency, offsets, frame counts, shapes, stored checksums (caches
        written with them) and finite values."""
        problems = self.table_problems() + self.split_problems()
        problems += [f"features/{level}: missing" for level in self.levels if level not in self._file["features"]]
        for level, mask in self._row_problems().items():
            for what, bad in mask.items():
                for rec in self.videos:
                    n = int(bad[rec.offset : rec.offset + rec.frames].sum())
                    if n:
                        problems.append(f"video {rec.key!r}: {n} frame(s) of level {level} {what}")
        return problems

    def damaged_keys(self) -> list[str]:
        """The videos with rows that fail their checksum or are not finite, in any level; every video when
        a level is missing or of the wrong shape."""
        if any(p.startswith("features/") for p in self.table_problems()) or \
                any(level not in self._file["features"] for level in self.levels):
            return [rec.key for rec in self.videos]
        bad = np.zeros(self.total_frames, dtype=bool)
        for mask in self._row_problems().values():
            for rows in mask.values():
                bad[: len(rows)] |= rows
        return [rec.key for rec in self.videos if bad[rec.offset : rec.offset + rec.frames].any()]

    def _row_problems(self) -> dict[str, dict[str, np.ndarray]]:
        """Per level of the right shape: boolean masks of the rows that 'are not finite' and that 'are damaged
        (checksum mismatch)'."""
        masks = {}
        for level, dim in self.levels.items():
            if level not in self._file["features"]:
                continue
            ds = self._features(level)
            if ds.shape == (self.total_frames, dim):
                masks[level] = dict(zip(("are not finite", "are damaged (checksum mismatch)"), _scan(ds)))
        return masks

    def split_problems(self, *, unaccounted: bool = True) -> list[str]:
        """Every split list checked: no key in both parts or listed twice, (``unaccounted``) each key extracted,
        missing or failed."""
        return split_problems(self.splits, set(self.index), set(self.missing), {f.key for f in self.failed},
                              unaccounted=unaccounted)

    def table_problems(self) -> list[str]:
        """The cheap part of :meth:`verify`: the video table against itself, the class list and the shapes
        of the levels (no feature is read)."""
        problems, rows = self._verify_table()
        for level, dim in self.levels.items():
            if level in self._file["features"] and self._features(level).shape != (rows, dim):
                problems.append(f"features/{level}: shape {self._features(level).shape}, expected ({rows}, {dim})")
        return problems

    def _verify_table(self) -> tuple[list[str], int]:
        """Problems of the video table, and the number of feature rows it accounts for."""
        problems, seen, expected_offset = [], set(), 0
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
        for key in sorted({f.key for f in self.failed} & seen):
            problems.append(f"video {key!r}: listed both as extracted and as failed")
        return problems, expected_offset


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


def _keys_of(f: h5py.File, name: str) -> tuple[str, ...]:
    """A string dataset that newer caches hold, () where the file has none."""
    return tuple(str(k) for k in f[name].asstr()[:]) if name in f else ()


def _read_videos(v: h5py.Group) -> tuple[VideoRecord, ...]:
    keys, names = v["key"].asstr()[:], v["class_name"].asstr()[:]
    cols = {name: v[name][:] for name in ("label", "frames", "offset", "fps", "width", "height", "frames_reported")}
    return tuple(
        VideoRecord(
            key=str(keys[i]), label=int(cols["label"][i]), class_name=str(names[i]),
            frames=int(cols["frames"][i]), fps=float(cols["fps"][i]), width=int(cols["width"][i]),
            height=int(cols["height"][i]), frames_reported=int(cols["frames_reported"][i]),
            offset=int(cols["offset"][i]),
        )
        for i in range(len(keys))
    )


def read_identity(path: Path) -> CacheIdentity:
    with FeatureCache(path) as cache:
        return cache.identity


def require_identity(path: Path, identity: CacheIdentity) -> None:
    """Refuse an existing cache of another identity, naming what differs."""
    have = read_identity(path)
    if have != identity:
        raise ConfigMismatchError(
            f"{path}: made with a different configuration ({have.diff(identity)}); "
            "use another --out, or the cache's own settings"
        )
