"""MMAction2-style video lists: one video per line, its path relative to ``--root`` and its label.

The form is decided by the file's extension: a ``.txt`` list holds ``<path> <label>`` separated by
whitespace (so its paths cannot hold spaces); a ``.csv`` list holds ``<path>,<label>`` (quote a path that
holds a comma), after an optional ``path,label`` header. Labels are non-negative integers, one per video: a
multi-label line (``path 3 7``) is refused. ``\\`` separators are read as ``/``.

The split folder holds one train list and one val (or test) list, ``.txt`` or ``.csv``, told apart by their
names: one holding ``train`` (``train.txt``, ``kinetics400_train_list_videos.txt``), one holding ``val``
or ``test`` (``val.csv``, ``kinetics400_val_list_videos.txt``); two candidates for one part are refused.
An optional class-name file, ``classes.txt`` or ``label_map*.txt``, names the classes, one per line,
0-based by line order (line 1 is label 0, as MMAction2's label maps); without it the classes are the labels
as strings, ``0`` to the largest label. Split 1 is the train list against the other; there is no other.
"""
from __future__ import annotations

import csv
from pathlib import Path

from pipeline.datasets.splitfiles import SplitFileError, _is_number, check_disjoint, read_lines
from pipeline.datasets.splitindex import SplitIndex, index_listed, require_dir

LIST_SUFFIXES = (".txt", ".csv")
PART_WORDS = {"train": ("train",), "test": ("val", "test")}  # a list's part: words its file name holds
SPLIT_1 = "the train list against the val or test list"


def is_class_file(path: Path) -> bool:
    """``classes.txt`` or ``label_map*.txt``: the class names, not a list of videos."""
    name = path.name.lower()
    return name == "classes.txt" or (name.startswith("label_map") and name.endswith(".txt"))


def _part_of(path: Path) -> str | None:
    """Which list a file of the split folder is by its name: train, test (val or test) or neither."""
    name = path.name.lower()
    if name.startswith(".") or path.suffix.lower() not in LIST_SUFFIXES or is_class_file(path) or not path.is_file():
        return None
    parts = [part for part, words in PART_WORDS.items() if any(word in name for word in words)]
    if len(parts) > 1:
        raise SplitFileError(path, None, "its name holds both 'train' and 'val' or 'test': rename it to say "
                                         "which list it is, or move it out of the split folder")
    return parts[0] if parts else None


def list_files(splits: Path) -> tuple[Path, Path, Path | None]:
    """(the train list, the val or test list, the class-name file or None) of the split folder."""
    found: dict[str, list[Path]] = {part: [] for part in PART_WORDS}
    files = sorted(splits.iterdir())
    for path in files:
        part = _part_of(path)
        if part:
            found[part].append(path)
    class_files = [path for path in files if is_class_file(path) and path.is_file()]
    for part, paths in [*found.items(), ("class-name", class_files)]:
        if len(paths) > 1:
            raise SplitFileError(splits, None, f"{len(paths)} {part} files ({', '.join(p.name for p in paths)}); "
                                               "keep one")
    for part, paths in found.items():
        if not paths:
            words = " or ".join(repr(w) for w in PART_WORDS[part])
            raise SplitFileError(splits, None, f"no {part} list: a .txt or .csv file whose name holds {words}")
    return found["train"][0], found["test"][0], class_files[0] if class_files else None


def _relative_key(text: str) -> str | None:
    """A path relative to the root, ``/``-separated; None when it is absolute or holds '.', '..' or empty
    components, which could name one file twice or leave the root."""
    key = text.replace("\\", "/")
    return None if any(part in ("", ".", "..") for part in key.split("/")) else key


def _fields(path: Path, n: int, line: str) -> list[str]:
    """A line's fields: whitespace-separated in a .txt list, comma-separated in a .csv list."""
    if path.suffix.lower() != ".csv":
        return line.split()
    try:
        return [field.strip() for field in next(csv.reader([line], strict=True))]
    except csv.Error as err:
        raise SplitFileError(path, n, f"bad CSV line {line!r}: {err}") from None


def read_video_list(path: Path) -> dict[str, tuple[int, int]]:
    """A video list -> {key: (label, line)}, each line checked."""
    form = "'<path>,<label>'" if path.suffix.lower() == ".csv" else "'<path> <label>' (a path with spaces needs a .csv list)"
    entries: dict[str, tuple[int, int]] = {}
    for i, (n, line) in enumerate(read_lines(path)):
        fields = _fields(path, n, line)
        if i == 0 and path.suffix.lower() == ".csv" and fields[-1].lower() == "label":
            continue  # the header
        if len(fields) > 2 and all(_is_number(field) for field in fields[1:]):
            raise SplitFileError(path, n, f"a multi-label line ({len(fields) - 1} labels, {' '.join(fields[1:])}): "
                                          "each video takes one label")
        if len(fields) != 2:
            raise SplitFileError(path, n, f"bad line {line!r}: expected {form}")
        key, label = _relative_key(fields[0]), fields[1]
        if key is None:
            raise SplitFileError(path, n, f"bad path {fields[0]!r}: expected a path relative to the root, without "
                                          "'.', '..' or empty components")
        if not _is_number(label):
            raise SplitFileError(path, n, f"bad label {label!r}: expected a non-negative integer")
        if key in entries:
            raise SplitFileError(path, n, f"duplicate entry {key!r} (first on line {entries[key][1]})")
        entries[key] = (int(label), n)
    if not entries:
        raise SplitFileError(path, None, "no videos")
    return entries


def read_class_names(path: Path) -> tuple[str, ...]:
    """A class-name file: one name per line, line 1 naming label 0; a blank line between two names, which
    would shift every later label, is refused."""
    names: dict[str, int] = {}
    for expected, (n, name) in enumerate(read_lines(path), start=1):
        if n != expected:
            raise SplitFileError(path, expected, "blank line between class names: every later label would shift "
                                                 "by one; remove it")
        if name in names:
            raise SplitFileError(path, n, f"duplicate class name {name!r} (also line {names[name]})")
        names[name] = n
    if not names:
        raise SplitFileError(path, None, "no classes")
    return tuple(names)


def _classes(lists: list[tuple[Path, dict[str, tuple[int, int]]]], class_file: Path | None) -> tuple[str, ...]:
    """The class names of the file, every label checked against them; without one, ``0`` to the largest label."""
    if class_file is None:
        return tuple(str(i) for i in range(1 + max(label for _, entries in lists for label, _ in entries.values())))
    classes = read_class_names(class_file)
    for path, entries in lists:
        for label, n in entries.values():
            if label >= len(classes):
                raise SplitFileError(path, n, f"label {label} is beyond the {len(classes)} classes of {class_file.name} "
                                              f"(labels 0 to {len(classes) - 1})")
    return classes


def index_video_lists(root: Path, splits: Path, *, strict: bool = False) -> SplitIndex:
    """Split 1 of a dataset given as video lists: the train list against the val or test list."""
    root, splits = require_dir(Path(root), "dataset root"), require_dir(Path(splits), "list folder")
    train_file, test_file, class_file = list_files(splits)
    lists = [(train_file, read_video_list(train_file)), (test_file, read_video_list(test_file))]
    check_disjoint(train_file, lists[0][1], test_file, lists[1][1])
    test_name = "val" if "val" in test_file.name.lower() else "test"
    return index_listed("list", root, _classes(lists, class_file), lists, strict=strict, test_name=test_name)
