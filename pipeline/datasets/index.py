"""Dataset indexes: UCF-101, HMDB-51 and plain class folders -> ``(key, path, label)`` per split.

Indexing reads the split files and lists the dataset folders; it never opens a video.
A video's *key* is its path relative to the dataset root with ``/`` separators
(``ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi``), so names repeated across classes stay apart.

Split files are checked strictly: a bad line, an unknown class, a duplicate entry or a video in both
train and test raises :class:`SplitFileError` naming the file and line. Videos a split file names but
that are not on disk are left out of ``train``/``test`` and listed in ``SplitIndex.missing``.
"""
from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from pipeline.config import DATASET_CHOICES, DEFAULT_TEST_FRACTION
from pipeline.errors import ConfigError, MrrnError
from pipeline.datasets.splitfiles import (SplitFileError, check_disjoint, read_class_index, read_hmdb_lists, read_ucf_list,
                                          split_numbers, ucf_list_file)

DATASETS = DATASET_CHOICES
VIDEO_EXTENSIONS = frozenset(
    {".avi", ".mp4", ".mkv", ".mov", ".webm", ".mpg", ".mpeg", ".m4v", ".wmv", ".flv", ".3gp", ".ogv"}
)


class DatasetError(MrrnError, FileNotFoundError):
    """A dataset root or split folder that is not there, or holds no videos."""


class MissingVideosError(MrrnError, FileNotFoundError):
    """Raised in strict mode when split files name videos that are not on disk."""


class VideoEntry(NamedTuple):
    key: str  # path relative to the dataset root, '/'-separated
    path: Path  # root / key
    label: int  # 0-based index into SplitIndex.classes


@dataclass(frozen=True)
class SplitIndex:
    dataset: str
    split: int
    root: Path
    classes: tuple[str, ...]
    train: tuple[VideoEntry, ...]
    test: tuple[VideoEntry, ...]
    missing: tuple[str, ...]  # keys named by the split files but absent under root
    listed: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())  # (train, test) keys as the split files list them

    def summary(self) -> dict[str, int]:
        return {
            "classes": len(self.classes),
            "train": len(self.train),
            "test": len(self.test),
            "missing": len(self.missing),
        }


def describe_missing(missing: tuple[str, ...] | list[str], root: Path, limit: int = 5) -> str:
    """One line: how many videos are missing under ``root`` and the first few of their keys."""
    shown = ", ".join(missing[:limit])
    more = f", ... (+{len(missing) - limit} more)" if len(missing) > limit else ""
    return f"{len(missing)} video(s) named by the split files are missing under {root}: {shown}{more}"


def one_class_warning(classes: tuple[str, ...]) -> str | None:
    """The warning for a dataset of one class, which a classifier cannot learn anything from; else None."""
    return (f"the dataset has one class ({classes[0]}): every video is of it, so every accuracy is 100% and "
            "means nothing; a classifier needs two classes or more") if len(classes) == 1 else None


# ----------------------------------------------------------------------------------------------
# Finding files on disk without opening them


def _is_file(entry: os.DirEntry) -> bool:
    """A directory entry that is (or links to) a regular file; a symlink loop or an entry that cannot be
    examined counts as absent, like a dangling link."""
    try:
        return entry.is_file()
    except OSError:
        return False


class _FileLister:
    """Answers 'is this key a file under root?' from one directory listing per folder."""

    def __init__(self, root: Path):
        self.root = root
        self._dirs: dict[str, frozenset[str]] = {}

    def exists(self, key: str) -> bool:
        folder, _, name = key.rpartition("/")
        if folder not in self._dirs:
            try:
                with os.scandir(self.root / folder) as it:
                    self._dirs[folder] = frozenset(e.name for e in it if _is_file(e))
            except OSError:  # absent, not a folder, a loop or unreadable: its videos are missing
                self._dirs[folder] = frozenset()
        return name in self._dirs[folder]


def _split_present(root: Path, entries: dict[str, tuple[int, int]], lister: _FileLister):
    present, missing = [], []
    for key, (label, _) in entries.items():
        if lister.exists(key):
            present.append(VideoEntry(key, root / key, label))
        else:
            missing.append(key)
    return present, missing


def _refuse_one_file_under_two_keys(root: Path, located: list[tuple[str, Path, int]]) -> None:
    """``located``: (key, split file, line) of every video present. A file reached by two keys (through a
    symbolic or hard link) would be one video counted twice, perhaps in train and test: refused."""
    seen: dict[tuple[int, int], tuple[str, Path, int]] = {}
    for key, file, line in located:
        try:
            st = os.stat(root / key)
        except OSError:
            continue
        first = seen.setdefault((st.st_dev, st.st_ino), (key, file, line))
        if first[0] != key:
            raise SplitFileError(file, line, f"{key!r} is the same file as {first[0]!r} ({first[1].name}:{first[2]})")


def _split_index(dataset, split, root, classes, train, test, *, missing, strict: bool, listed=None) -> SplitIndex:
    """The index of one split; under ``strict``, refused when split files name videos not on disk.
    ``listed``: (train, test) keys as the split files list them, missing ones included (default: those on disk)."""
    if strict and missing:
        raise MissingVideosError(describe_missing(missing, root))
    listed = listed or (tuple(e.key for e in train), tuple(e.key for e in test))
    return SplitIndex(dataset, split, root, tuple(classes), tuple(train), tuple(test), tuple(missing),
                      (tuple(listed[0]), tuple(listed[1])))


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DatasetError(f"{path}: {what} not found (or not a directory)")
    return path


# ----------------------------------------------------------------------------------------------
# The three dataset kinds


def index_ucf101(root: Path, splits: Path, split: int = 1, *, strict: bool = False) -> SplitIndex:
    """UCF-101 as distributed: ``classInd.txt``, ``trainlist0N.txt``, ``testlist0N.txt`` in ``splits``."""
    root, splits = _require_dir(Path(root), "dataset root"), _require_dir(Path(splits), "split folder")
    classes = read_class_index(splits / "classInd.txt")
    return _index_from_ucf_lists("ucf101", root, splits, split, classes, strict)


def _index_from_ucf_lists(dataset, root, splits, split, classes, strict) -> SplitIndex:
    train_file, test_file = ucf_list_file(splits, "trainlist", split), ucf_list_file(splits, "testlist", split)
    train_entries = read_ucf_list(train_file, classes)
    test_entries = read_ucf_list(test_file, classes)
    check_disjoint(train_file, train_entries, test_file, test_entries)
    lister = _FileLister(root)
    train, missing_train = _split_present(root, train_entries, lister)
    test, missing_test = _split_present(root, test_entries, lister)
    _refuse_one_file_under_two_keys(root, [(e.key, train_file, train_entries[e.key][1]) for e in train] +
                                    [(e.key, test_file, test_entries[e.key][1]) for e in test])
    return _split_index(dataset, split, root, classes, train, test, missing=missing_train + missing_test, strict=strict,
                        listed=(tuple(train_entries), tuple(test_entries)))


_HMDB_FILE = re.compile(r"^(?P<cls>.+)_test_split(?P<split>\d+)\.txt$")


def index_hmdb51(root: Path, splits: Path, split: int = 1, *, strict: bool = False) -> SplitIndex:
    """HMDB-51: one file per class and split, ``<class>_test_split<N>.txt``, lines ``<name>.avi <0|1|2>``.

    Labels follow the plain sort of the class names (``kick`` before ``kick_ball``). Published
    HMDB-51 label lists number some classes differently, so compare with them by class name.
    """
    root, splits = _require_dir(Path(root), "dataset root"), _require_dir(Path(splits), "split folder")
    by_class = {
        m["cls"]: p
        for p in splits.iterdir()
        if (m := _HMDB_FILE.match(p.name)) and int(m["split"]) == split
    }
    if not by_class:
        raise SplitFileError(splits, None, f"no HMDB-51 split files named <class>_test_split{split}.txt")
    classes = tuple(sorted(by_class))
    files = [by_class[c] for c in classes]
    parts = read_hmdb_lists(files, classes)
    lister = _FileLister(root)
    train, missing_train = _split_present(root, parts["train"], lister)
    test, missing_test = _split_present(root, parts["test"], lister)
    _refuse_one_file_under_two_keys(root, [(e.key, files[e.label], parts[part][e.key][1])
                                           for part, present in (("train", train), ("test", test)) for e in present])
    return _split_index("hmdb51", split, root, classes, train, test, missing=missing_train + missing_test,
                        strict=strict, listed=(tuple(parts["train"]), tuple(parts["test"])))


def stable_fraction(key: str) -> float:
    """A number in [0, 1) fixed by the key alone (sha1), the same on every machine and Python run."""
    return int.from_bytes(hashlib.sha1(key.encode("utf-8")).digest()[:8], "big") / 2.0**64


def hash_split(labelled: list[tuple[str, int]], fraction: float) -> tuple[list, list]:
    """Split ``(key, label)`` pairs per class: the videos sorted by :func:`stable_fraction` of their key,
    the first ``round(n * fraction)`` (at least one when a class has two or more videos) held out.
    Returns (kept, held out), each sorted by key. Depends on the keys alone: stable on every machine."""
    by_label: dict[int, list[str]] = {}
    for key, label in labelled:
        by_label.setdefault(label, []).append(key)
    kept, held = [], []
    for label, keys in by_label.items():
        keys = sorted(keys, key=lambda k: (stable_fraction(k), k))
        n_held = int(len(keys) * fraction + 0.5)
        if fraction > 0 and len(keys) >= 2:
            n_held = min(max(n_held, 1), len(keys) - 1)
        held += [(k, label) for k in keys[:n_held]]
        kept += [(k, label) for k in keys[n_held:]]
    return sorted(kept), sorted(held)


def index_folder(
    root: Path,
    splits: Path | None = None,
    split: int = 1,
    *,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    strict: bool = False,
) -> SplitIndex:
    """Plain class folders ``<root>/<class>/<video>``.

    With ``splits``: ``trainlist0N.txt`` / ``testlist0N.txt`` in UCF-101 format (and ``classInd.txt``
    if present, else the sorted class folders). Without: per class, the videos sorted by
    :func:`stable_fraction` of their key, the first ``round(n * test_fraction)`` (at least one when a
    class has two or more videos) go to test.
    """
    root = _require_dir(Path(root), "dataset root")
    if not 0.0 <= test_fraction < 1.0:
        raise ConfigError(f"test fraction must be in [0, 1), got {test_fraction}")
    skip = Path(splits).resolve() if splits is not None else None
    videos = {}  # class folder -> its video file names, for folders holding at least one video
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if folder.resolve() == skip:
            continue
        with os.scandir(folder) as it:
            names = [e.name for e in it if Path(e.name).suffix.lower() in VIDEO_EXTENSIONS and _is_file(e)]
        if names:
            videos[folder.name] = names
    if splits is not None:
        splits = _require_dir(Path(splits), "split folder")
        class_index = splits / "classInd.txt"
        classes = read_class_index(class_index) if class_index.is_file() else tuple(videos)
        return _index_from_ucf_lists("folder", root, splits, split, classes, strict)

    classes = tuple(videos)
    labelled = [(f"{folder}/{name}", label) for label, folder in enumerate(classes) for name in videos[folder]]
    kept, held = hash_split(labelled, test_fraction)
    train = [VideoEntry(k, root / k, label) for k, label in kept]
    test = [VideoEntry(k, root / k, label) for k, label in held]
    if not classes:
        raise DatasetError(f"{root}: no class folders with videos ({', '.join(sorted(VIDEO_EXTENSIONS))})")
    return _split_index("folder", split, root, classes, train, test, missing=[], strict=strict)


def build_index(
    dataset: str,
    root: Path,
    splits: Path | None = None,
    split: int = 1,
    *,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    strict: bool = False,
) -> SplitIndex:
    """Index ``dataset`` (one of :data:`DATASETS`) for one split."""
    if split < 1:
        raise ConfigError(f"split must be a positive number, got {split}")
    if dataset == "folder":
        return index_folder(root, splits, split, test_fraction=test_fraction, strict=strict)
    if dataset not in ("ucf101", "hmdb51"):
        raise ConfigError(f"unknown dataset {dataset!r}; expected one of {', '.join(DATASETS)}")
    if splits is None:
        raise ConfigError(f"{dataset} needs its split folder (--splits)")
    index = index_ucf101 if dataset == "ucf101" else index_hmdb51
    return index(root, splits, split, strict=strict)


@dataclass(frozen=True)
class VideoSet:
    """Every video of a dataset, for extraction (splits are applied later, at training time)."""

    dataset: str
    root: Path
    classes: tuple[str, ...]
    videos: tuple[VideoEntry, ...]  # sorted by key
    missing: tuple[str, ...]
    splits: dict[int, tuple[tuple[str, ...], tuple[str, ...]]]  # split -> (train keys, test keys) as listed, ``missing`` included


def _keys(index: SplitIndex) -> tuple[tuple[str, ...], tuple[str, ...]]:
    return tuple(e.key for e in index.train), tuple(e.key for e in index.test)


def list_videos(
    dataset: str,
    root: Path,
    splits: Path | None = None,
    *,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    strict: bool = False,
) -> VideoSet:
    """The union of every split the split folder holds (each split file is checked as in
    :func:`build_index`), with each split's train/test keys; for ``folder`` without split files,
    every video in the class folders and one split made by :func:`index_folder`."""
    root = Path(root)
    if dataset == "folder" and splits is None:
        idx = index_folder(root, test_fraction=test_fraction)
        return VideoSet(dataset, idx.root, idx.classes, tuple(sorted(idx.train + idx.test)), (), {1: _keys(idx)})
    if splits is None:
        raise ConfigError(f"{dataset} needs its split folder (--splits)")
    splits = _require_dir(Path(splits), "split folder")
    pattern = r"^.+_test_split(\d+)\.txt$" if dataset == "hmdb51" else r"^trainlist(\d+)\.txt$"
    numbers = split_numbers(splits, pattern)
    if not numbers:
        raise SplitFileError(splits, None, f"no {dataset} split files found")
    entries: dict[str, VideoEntry] = {}
    missing: dict[str, None] = {}
    classes: tuple[str, ...] = ()
    split_keys = {}
    for n in numbers:
        idx = build_index(dataset, root, splits, n)
        if classes and idx.classes != classes:
            raise SplitFileError(splits, None, f"split {n} has other classes than split {numbers[0]}")
        classes = idx.classes
        for e in idx.train + idx.test:
            entries.setdefault(e.key, e)
        missing.update(dict.fromkeys(idx.missing))
        split_keys[n] = idx.listed
    missing_keys = tuple(sorted(missing))
    if strict and missing_keys:
        raise MissingVideosError(describe_missing(missing_keys, root))
    return VideoSet(dataset, root, classes, tuple(entries[k] for k in sorted(entries)), missing_keys, split_keys)
