"""Dataset indexes: each format's annotations and folders -> ``(key, path, label)`` per split.

This module dispatches: UCF-101, HMDB-51 and plain class folders are read here (their split files by
``splitfiles.py``), Kinetics by ``kinetics.py``, Something-Something v2 by ``ssv2.py`` and MMAction2-style
video lists by ``videolists.py``. Indexing reads the annotations and lists the dataset folders; it never
opens a video. A video's *key* is its path relative to the dataset root with ``/`` separators
(``ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi``), so names repeated across classes stay apart.

Annotations are checked strictly: a bad line, an unknown class, a duplicate entry or a video in both
train and test raises :class:`SplitFileError` naming the file and line. Videos the annotations name but
that are not on disk are left out of ``train``/``test`` and listed in ``SplitIndex.missing``.
"""
from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from pipeline.config import DATASET_CHOICES, DEFAULT_TEST_FRACTION
from pipeline.datasets import kinetics, ssv2, videolists
# Some names are imported for those who import them from here (VIDEO_EXTENSIONS, SplitIndex, the errors ...)
from pipeline.datasets.splitfiles import (SplitFileError, check_disjoint, read_class_index, read_hmdb_lists,  # noqa: F401
                                          read_ucf_list, split_numbers, ucf_list_file)
from pipeline.datasets.splitindex import (VIDEO_EXTENSIONS, DatasetError, FileLister, MissingVideosError,  # noqa: F401
                                          SplitIndex, VideoEntry, describe_missing, index_listed, is_file,
                                          make_split_index, refuse_one_file_under_two_keys, require_dir,
                                          split_present)
from pipeline.errors import ConfigError

DATASETS = DATASET_CHOICES
# The formats of one split, train against val (or test): their index function and what their split 1 is
ONE_SPLIT = {"kinetics": (kinetics.index_kinetics, kinetics.SPLIT_1), "ssv2": (ssv2.index_ssv2, ssv2.SPLIT_1),
             "list": (videolists.index_video_lists, videolists.SPLIT_1)}


def one_class_warning(classes: tuple[str, ...]) -> str | None:
    """The warning for a dataset of one class, which a classifier cannot learn anything from; else None."""
    return (f"the dataset has one class ({classes[0]}): every video is of it, so every accuracy is 100% and "
            "means nothing; a classifier needs two classes or more") if len(classes) == 1 else None


# ----------------------------------------------------------------------------------------------
# UCF-101, HMDB-51 and plain class folders


def index_ucf101(root: Path, splits: Path, split: int = 1, *, strict: bool = False) -> SplitIndex:
    """UCF-101 as distributed: ``classInd.txt``, ``trainlist0N.txt``, ``testlist0N.txt`` in ``splits``."""
    root, splits = require_dir(Path(root), "dataset root"), require_dir(Path(splits), "split folder")
    classes = read_class_index(splits / "classInd.txt")
    return _index_from_ucf_lists("ucf101", root, splits, split, classes, strict)


def _index_from_ucf_lists(dataset, root, splits, split, classes, strict) -> SplitIndex:
    train_file, test_file = ucf_list_file(splits, "trainlist", split), ucf_list_file(splits, "testlist", split)
    train_entries = read_ucf_list(train_file, classes)
    test_entries = read_ucf_list(test_file, classes)
    check_disjoint(train_file, train_entries, test_file, test_entries)
    return index_listed(dataset, root, classes, ((train_file, train_entries), (test_file, test_entries)),
                        split=split, strict=strict)


_HMDB_FILE = re.compile(r"^(?P<cls>.+)_test_split(?P<split>\d+)\.txt$")


def index_hmdb51(root: Path, splits: Path, split: int = 1, *, strict: bool = False) -> SplitIndex:
    """HMDB-51: one file per class and split, ``<class>_test_split<N>.txt``, lines ``<name>.avi <0|1|2>``.

    Labels follow the plain sort of the class names (``kick`` before ``kick_ball``). Published
    HMDB-51 label lists number some classes differently, so compare with them by class name.
    """
    root, splits = require_dir(Path(root), "dataset root"), require_dir(Path(splits), "split folder")
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
    lister = FileLister(root)
    train, missing_train = split_present(root, parts["train"], lister)
    test, missing_test = split_present(root, parts["test"], lister)
    refuse_one_file_under_two_keys(root, [(e.key, files[e.label], parts[part][e.key][1])
                                          for part, present in (("train", train), ("test", test)) for e in present])
    return make_split_index("hmdb51", split, root, classes, train, test, missing=missing_train + missing_test,
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
    root = require_dir(Path(root), "dataset root")
    if not 0.0 <= test_fraction < 1.0:
        raise ConfigError(f"test fraction must be in [0, 1), got {test_fraction}")
    skip = Path(splits).resolve() if splits is not None else None
    videos = {}  # class folder -> its video file names, for folders holding at least one video
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if folder.resolve() == skip:
            continue
        with os.scandir(folder) as it:
            names = [e.name for e in it if Path(e.name).suffix.lower() in VIDEO_EXTENSIONS and is_file(e)]
        if names:
            videos[folder.name] = names
    if splits is not None:
        splits = require_dir(Path(splits), "split folder")
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
    return make_split_index("folder", split, root, classes, train, test, missing=[], strict=strict)


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
    if dataset not in DATASETS:
        raise ConfigError(f"unknown dataset {dataset!r}; expected one of {', '.join(DATASETS)}")
    if splits is None:
        raise ConfigError(f"{dataset} needs its split folder (--splits)")
    if dataset in ONE_SPLIT:
        index_one_split, split_1 = ONE_SPLIT[dataset]
        if split != 1:
            raise ConfigError(f"{dataset} has one split, split 1 ({split_1}); there is no split {split}")
        return index_one_split(Path(root), Path(splits), strict=strict)
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
    every video in the class folders and one split made by :func:`index_folder`; for the formats of
    one split (:data:`ONE_SPLIT`), its train and val/test videos (Kinetics' unlabelled test.csv is not a split)."""
    root = Path(root)
    if dataset == "folder" and splits is None:
        idx = index_folder(root, test_fraction=test_fraction)
        return VideoSet(dataset, idx.root, idx.classes, tuple(sorted(idx.train + idx.test)), (), {1: _keys(idx)})
    if dataset in ONE_SPLIT:
        idx = build_index(dataset, root, splits, 1, strict=strict)
        return VideoSet(dataset, idx.root, idx.classes, tuple(sorted(idx.train + idx.test)), tuple(sorted(idx.missing)),
                        {1: idx.listed})
    if splits is None:
        raise ConfigError(f"{dataset} needs its split folder (--splits)")
    splits = require_dir(Path(splits), "split folder")
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
