"""The HDF5 feature cache: its schema, records and reader, with verification.

The format is documented in ``docs/cache-format.md``. ``reader.py`` and ``writer.py`` are the
only modules that import h5py. Writing (lock, journal, merge, atomic replace) lives in
``writer.py`` and ``journal.py``.
"""
from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

import h5py
import numpy as np

from pipeline.errors import MrrnError, first_line
from pipeline.cache.identity import CacheIdentity, IdentityError
from pipeline.cache.contents import split_problems
from pipeline.cache.parts import Part, open_level, part_problems, parts_dir, read_parts
from pipeline.cache.schema import schema_problem, version_problem
from pipeline.cache import verify
from pipeline.cache.spans import read_spans
from pipeline.cache.stored_tables import FailedRecord, Splits, VideoRecord, tables_of  # noqa: F401 (re-exported)

SCHEMA_VERSION = 1  # a single file holding every level (and every cache written before 0.3.0)
INDEX_SCHEMA_VERSION = 2  # an index over parts (parts.py): its levels are virtual datasets
IDENTITY_ATTR = "config"  # the file attribute holding the cache identity (its name kept from the first format)
STR = h5py.string_dtype("utf-8")


class CacheError(MrrnError):
    """A cache that cannot be used as asked; the message names the file and the reason."""


class ConfigMismatchError(CacheError):
    pass


class CacheLockedError(CacheError):
    pass


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
    """A cache file with its lock, (empty) journal and parts; used once shards are joined."""
    for leftover in (path, lock_path(path)):
        leftover.unlink(missing_ok=True)
    shutil.rmtree(journal_dir(path), ignore_errors=True)
    shutil.rmtree(parts_dir(path), ignore_errors=True)


class FeatureCache:
    """Read access to a committed cache: a single file, or an index over parts (``parts.py``). Levels load
    whole in one read: ``load_level('high')``. Opening reads the header and the tables' columns; the video
    records are built when first asked for."""

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
        if int(version) not in (SCHEMA_VERSION, INDEX_SCHEMA_VERSION):
            raise CacheError(f"{self.path}: cache schema version {version}, this mrrn reads "
                             f"{SCHEMA_VERSION} and {INDEX_SCHEMA_VERSION}; a newer mrrn wrote it")
        problem = schema_problem(f)  # every group and column of the right kind and length; no value read yet
        if problem:
            raise CacheError(f"{self.path}: damaged cache ({problem}); extract the dataset again into another --out")
        self.identity = CacheIdentity.from_json(str(self.attrs[IDENTITY_ATTR]))
        # level -> columns per frame: its width times the views (view-major; docs/cache-format.md)
        self.levels: dict[str, int] = self.identity.stored_widths
        self._datasets: dict[str, h5py.Dataset] = {}
        self.parts: tuple[Part, ...] = read_parts(f) if int(version) == INDEX_SCHEMA_VERSION else ()
        problems = part_problems(self.path, self.parts)
        if problems:
            raise CacheError(f"{self.path}: {problems[0]}" + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else "")
                             + "; the cache cannot be read without it: restore it, or extract into another --out")
        self._tables = tables = tables_of(self.path, f)  # read once per command: later opens reuse them
        self.failed, self.splits = tables.failed, tables.splits
        self.missing: tuple[str, ...] = tables.missing  # named by split files, not on disk; () in older caches
        version_name = str(self.attrs.get("version", "0"))
        self.version: str = version_name  # the commit's name ('12-3fa2c1d9'); '0' before versions were written
        self.commit: int = int(version_name.split("-")[0]) if version_name.split("-")[0].isdigit() else 0

    @property
    def columns(self) -> dict[str, np.ndarray]:
        """The video table by column (key, class_name, label, frames, offset, ...); no record built."""
        return self._tables.columns()

    @property
    def raw_columns(self) -> dict[str, np.ndarray]:
        """The video table as stored: key, class_name and digest as UTF-8 bytes (nothing decoded)."""
        return self._tables.raw

    @property
    def digests(self) -> tuple[str, ...]:
        """Each video's digest of its rows, in key order; "" where not stored (caches written before digests)."""
        return self._tables.digests()

    @property
    def videos(self) -> tuple[VideoRecord, ...]:
        """The finished videos in key order (built on first use, once per file version and command)."""
        return self._tables.records()

    @property
    def index(self) -> dict[str, int]:
        """key -> position in :attr:`videos`."""
        return self._tables.index()

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
        """Frames of the finished videos (the rows they own)."""
        return int(self._tables.raw["frames"].sum())

    @property
    def level_rows(self) -> int:
        """Rows of each level: the total frames, plus, in an index over parts, rows no video owns any more."""
        stored = self.stored_levels()
        return self.level_shape(stored[0])[0] if stored else 0

    def part_problems(self) -> list[str]:
        """The parts not on disk as committed, now (nothing is read)."""
        return part_problems(self.path, self.parts)

    def stored_levels(self) -> list[str]:
        """The levels of the identity that the file holds (a damaged file may lack one)."""
        return [name for name in self.levels if name in self._file["features"]]

    def level_shape(self, level: str) -> tuple[int, ...]:
        return tuple(self.dataset(level).shape)

    def dataset(self, level: str) -> h5py.Dataset:
        """The open dataset of one level (virtual in an index over parts), ``(level_rows, V * C)``."""
        if level not in self._datasets:
            stored = [name for name in self.levels if name in self._file["features"]]
            if level not in stored:
                raise CacheError(f"{self.path}: no level {level!r} in this cache (it has: {', '.join(stored) or 'none'})")
            self._datasets[level] = open_level(self._file, self.path, level)
        return self._datasets[level]

    def load_level(self, level: str) -> np.ndarray:
        """All frames of one level, ``(total_frames, V * C)``, in one read; rows of video i start at its
        offset. ``V`` views side by side, view-major (``V = 1``, the centre crop, unless extracted with --views)."""
        with self._reading(level):
            return self.dataset(level)[...]

    @contextlib.contextmanager
    def _reading(self, level: str):
        try:
            yield
        except OSError as err:  # a stored chunk fails its Fletcher-32 checksum, or the file is cut short
            raise CacheError(f"{self.path}: level {level} cannot be read ({first_line(err)}); run "
                             f"`mrrn inspect {self.path} --verify`, then `mrrn extract ... --redo-damaged`") from None

    def read_videos(self, level: str, spans: list[tuple[int, int]]) -> tuple[np.ndarray, list[int]]:
        """The rows of ``spans`` ((first row, rows) per video) of one level packed in the order given, and each
        span's first row in the result (``spans.read_spans``: few large reads, in storage order)."""
        with self._reading(level):
            return read_spans(self.dataset(level), spans)

    def rows(self, level: str, start: int, count: int) -> np.ndarray:
        """``count`` rows of one level from row ``start``, ``(count, C)``."""
        return self.dataset(level)[start : start + count]

    def video_features(self, key: str, level: str) -> np.ndarray:
        """One video's frames of one level, ``(T, C)``."""
        rec = self.videos[self.index[key]]
        return self.rows(level, rec.offset, rec.frames)

    def verify(self) -> list[str]:
        """Every problem of the cache, one line each (``verify.py``): tables, parts, checksums, finite values
        and digests. Reads every row."""
        return verify.verify(self)

    def damaged_keys(self) -> list[str]:
        """The videos with rows that fail their checksum or are not finite (``verify.py``)."""
        return verify.damaged_keys(self)

    def split_problems(self, *, unaccounted: bool = True) -> list[str]:
        """Every split list checked: no key in both parts or listed twice, (``unaccounted``) each key extracted,
        missing or failed."""
        return split_problems(self.splits, set(self.index), set(self.missing), {f.key for f in self.failed},
                              unaccounted=unaccounted)

    def table_problems(self) -> list[str]:
        """The cheap part of :meth:`verify`: tables, level shapes and parts on disk (no feature is read)."""
        return verify.table_problems(self)


def read_identity(path: Path) -> CacheIdentity:
    """The identity of the cache at ``path`` from its header alone (no table is read): the same cost at a
    thousand videos and at a million. A file that is not a readable cache is refused as :class:`FeatureCache` does."""
    try:
        with h5py.File(path, "r") as f:
            if IDENTITY_ATTR in f.attrs and "schema_version" in f.attrs and not version_problem(f) \
                    and int(f.attrs["schema_version"]) in (SCHEMA_VERSION, INDEX_SCHEMA_VERSION):
                return CacheIdentity.from_json(str(f.attrs[IDENTITY_ATTR]))
    except (OSError, IdentityError):
        pass
    with FeatureCache(path) as cache:  # not a cache: its own one-line reason
        return cache.identity


def recorded_precision(path: Path, rank: int = 0, world: int = 1) -> str | None:
    """The precision the cache at ``path`` records, or (under ``world`` ranks) rank ``rank``'s shard of it; None
    while neither exists: what ``--precision auto`` continues, so that one cache never mixes precisions."""
    paths = (path, shard_path(path, rank, world)) if world > 1 else (path,)
    return next((read_identity(p).precision for p in paths if p.is_file()), None)


def require_identity(path: Path, identity: CacheIdentity) -> None:
    """Refuse an existing cache of another identity, naming what differs."""
    have = read_identity(path)
    if have != identity:
        raise ConfigMismatchError(
            f"{path}: made with a different configuration ({have.diff(identity)}); "
            "use another --out, or the cache's own settings"
        )
