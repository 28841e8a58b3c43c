"""What every dataset format builds: :class:`VideoEntry` and :class:`SplitIndex`, and the lookups that
find the videos the annotations list on disk without opening one.

A video's *key* is its path relative to the dataset root with ``/`` separators. Videos the
annotations name but that are not on disk stay in ``SplitIndex.listed`` and go to
``SplitIndex.missing``; they are never dropped silently, and ``strict`` refuses them.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from pipeline.datasets.splitfiles import SplitFileError
from pipeline.errors import MrrnError

VIDEO_EXTENSIONS = frozenset(
    {".avi", ".mp4", ".mkv", ".mov", ".webm", ".mpg", ".mpeg", ".m4v", ".wmv", ".flv", ".3gp", ".ogv"}
)
PARTS = ("train", "test")


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
    test_name: str = "test"  # what the dataset's own files call the test part (Kinetics: val)

    def summary(self) -> dict[str, int]:
        return {
            "classes": len(self.classes),
            "train": len(self.train),
            "test": len(self.test),
            "missing": len(self.missing),
        }

    def counts(self) -> dict[str, dict[str, int]]:
        """Per part (train, test): videos the split files list, those found on disk, those missing."""
        missing = set(self.missing)
        return {part: {"listed": len(keys), "found": len(found), "missing": sum(key in missing for key in keys)}
                for part, keys, found in zip(PARTS, self.listed, (self.train, self.test))}


def describe_missing(missing: tuple[str, ...] | list[str], root: Path, limit: int = 5) -> str:
    """One line: how many videos are missing under ``root`` and the first few of their keys."""
    shown = ", ".join(missing[:limit])
    more = f", ... (+{len(missing) - limit} more)" if len(missing) > limit else ""
    return f"{len(missing)} video(s) named by the split files are missing under {root}: {shown}{more}"


def is_file(entry: os.DirEntry) -> bool:
    """A directory entry that is (or links to) a regular file; a symlink loop or an entry that cannot be
    examined counts as absent, like a dangling link."""
    try:
        return entry.is_file()
    except OSError:
        return False


class FileLister:
    """Answers 'is this key a file under root?' from one directory listing per folder."""

    def __init__(self, root: Path):
        self.root = root
        self._dirs: dict[str, frozenset[str]] = {}
        self._videos: dict[str, dict[str, list[str]]] = {}  # folder -> file stem -> its video file names

    def _names(self, folder: str) -> frozenset[str]:
        if folder not in self._dirs:
            try:
                with os.scandir(self.root / folder) as it:
                    self._dirs[folder] = frozenset(e.name for e in it if is_file(e))
            except OSError:  # absent, not a folder, a loop or unreadable: its videos are missing
                self._dirs[folder] = frozenset()
        return self._dirs[folder]

    def exists(self, key: str) -> bool:
        folder, _, name = key.rpartition("/")
        return name in self._names(folder)

    def video(self, folder: str, stem: str, preferred: str) -> str | None:
        """The key of the video ``folder/stem.<ext>`` on disk: ``stem + preferred`` when there, else
        ``stem`` with another video extension (the first in sorted order); None when there is none."""
        prefix = f"{folder}/" if folder else ""
        if self.exists(prefix + stem + preferred):
            return prefix + stem + preferred
        if folder not in self._videos:
            by_stem: dict[str, list[str]] = {}
            for name in sorted(self._names(folder)):
                stem_of, ext = os.path.splitext(name)
                if ext.lower() in VIDEO_EXTENSIONS:
                    by_stem.setdefault(stem_of, []).append(name)
            self._videos[folder] = by_stem
        names = self._videos[folder].get(stem)
        return prefix + names[0] if names else None


def require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DatasetError(f"{path}: {what} not found (or not a directory)")
    return path


def split_present(root: Path, entries: dict[str, tuple[int, int]], lister: FileLister):
    """``entries`` ({key: (label, line)}) as (the entries on disk, the keys missing)."""
    present, missing = [], []
    for key, (label, _) in entries.items():
        if lister.exists(key):
            present.append(VideoEntry(key, root / key, label))
        else:
            missing.append(key)
    return present, missing


def refuse_one_file_under_two_keys(root: Path, located: list[tuple[str, Path, int]]) -> None:
    """``located``: (key, split file, line) of every video present. A file reached by two keys (through a
    symbolic or hard link) would be one video counted twice, perhaps in train and test: refused."""
    seen: dict[tuple[int, int], tuple[str, Path, int]] = {}
    for key, file, line in located:
        try:
            st = os.stat(os.path.join(root, key))  # joined as a string: cheaper than Path at Kinetics' size
        except OSError:
            continue
        first = seen.setdefault((st.st_dev, st.st_ino), (key, file, line))
        if first[0] != key:
            raise SplitFileError(file, line, f"{key!r} is the same file as {first[0]!r} ({first[1].name}:{first[2]})")


def make_split_index(dataset, split, root, classes, train, test, *, missing, strict: bool, listed=None,
                     test_name: str = "test") -> SplitIndex:
    """The index of one split; under ``strict``, refused when split files name videos not on disk.
    ``listed``: (train, test) keys as the split files list them, missing ones included (default: those on disk)."""
    if strict and missing:
        raise MissingVideosError(describe_missing(missing, root))
    listed = listed or (tuple(e.key for e in train), tuple(e.key for e in test))
    return SplitIndex(dataset, split, root, tuple(classes), tuple(train), tuple(test), tuple(missing),
                      (tuple(listed[0]), tuple(listed[1])), test_name)


def index_listed(dataset: str, root: Path, classes, lists, *, split: int = 1, strict: bool = False,
                 test_name: str = "test", lister: FileLister | None = None) -> SplitIndex:
    """The index of a split given as ``lists``: ((train file, {key: (label, line)}), (test file, {...})),
    the keys as the files list them, each checked on disk (with ``lister``, which may have looked already)."""
    lister = lister or FileLister(root)
    (train_file, train_entries), (test_file, test_entries) = lists
    train, missing_train = split_present(root, train_entries, lister)
    test, missing_test = split_present(root, test_entries, lister)
    refuse_one_file_under_two_keys(root, [(e.key, train_file, train_entries[e.key][1]) for e in train] +
                                   [(e.key, test_file, test_entries[e.key][1]) for e in test])
    return make_split_index(dataset, split, root, classes, train, test, missing=missing_train + missing_test,
                            strict=strict, listed=(tuple(train_entries), tuple(test_entries)), test_name=test_name)
