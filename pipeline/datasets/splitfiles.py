"""Split and class-index files: UCF-101's ``classInd.txt`` / ``trainlist0N.txt`` / ``testlist0N.txt`` and
HMDB-51's per-class ``<class>_test_split<N>.txt``, read strictly.

A bad line, an unknown class, a duplicate entry or a video in both train and test raises
:class:`SplitFileError` naming the file and line. Keys are ``<Class>/<video>`` with ``/`` separators.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from pipeline.errors import MrrnError

HMDB_FLAGS = {"0": None, "1": "train", "2": "test"}  # 0 = not used in this split


class SplitFileError(MrrnError, ValueError):
    """A split or class-index file that cannot be trusted. The message is ``file:line: reason``."""

    def __init__(self, path: str | os.PathLike, line: int | None, reason: str):
        where = f"{path}:{line}" if line else str(path)
        super().__init__(f"{where}: {reason}")


def read_text(path: Path) -> str:
    """A split or annotation file's text, a leading BOM dropped; absent or not UTF-8 is a :class:`SplitFileError`."""
    if not path.is_file():
        raise SplitFileError(path, None, "file not found")
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise SplitFileError(path, None, f"not UTF-8 text ({err.reason} at byte {err.start})") from None


def read_lines(path: Path) -> list[tuple[int, str]]:
    """Non-blank lines of a text file as ``(line_number, stripped_text)``; CRLF and BOM tolerated."""
    return [(n, line.strip()) for n, line in enumerate(read_text(path).splitlines(), start=1) if line.strip()]


def _is_number(text: str) -> bool:
    """ASCII digits only ('²' and '١' are digits to str.isdigit, not to int's users)."""
    return text.isascii() and text.isdigit()


def _is_integer(text: str) -> bool:
    """An integer as a class id column holds one: ASCII digits, perhaps after a minus sign."""
    return _is_number(text.removeprefix("-"))


def normalise_key(key: str) -> str | None:
    """A key as split files may write it (``\\`` separators tolerated) -> ``<Class>/<video>``; None when it
    holds '.', '..' or empty components, which could name one file twice or leave its class folder."""
    key = key.replace("\\", "/")
    parts = key.split("/")
    if len(parts) < 2 or any(part in ("", ".", "..") for part in parts):
        return None
    return key


def _plain_name(name: str) -> bool:
    """A file name inside its class folder: no separators, not '.' or '..'."""
    return "/" not in name and "\\" not in name and name not in (".", "..")


def split_numbers(splits: Path, pattern: str) -> list[int]:
    """The split numbers of the files in ``splits`` whose names match ``pattern`` (group 1: the number);
    splits are numbered from 1, so a file of split 0 (``trainlist00.txt``) is refused by name."""
    found: dict[int, Path] = {}
    for path in sorted(splits.iterdir()):
        if m := re.match(pattern, path.name):
            found.setdefault(int(m[1]), path)
    if 0 in found:
        raise SplitFileError(found[0], None, "split numbers start at 1 (trainlist01.txt is split 1); rename it")
    return sorted(found)


def ucf_list_file(splits: Path, kind: str, split: int) -> Path:
    """The ``kind`` (trainlist or testlist) file of ``split``: ``trainlist01.txt`` as UCF-101 names it, or
    unpadded, ``trainlist1.txt``; both at once are refused, since either could be the one meant."""
    padded, unpadded = splits / f"{kind}{split:02d}.txt", splits / f"{kind}{split}.txt"
    if padded != unpadded and padded.is_file() and unpadded.is_file():
        raise SplitFileError(unpadded, None, f"two files for split {split}: {padded.name} and {unpadded.name}; "
                                             "keep one")
    return unpadded if unpadded.is_file() and not padded.is_file() else padded


def read_class_index(path: Path) -> tuple[str, ...]:
    """``classInd.txt``: lines ``<id> <ClassName>``, ids 1..N (1-based) -> class names in id order."""
    by_id: dict[int, str] = {}
    seen_names: dict[str, int] = {}
    for n, line in read_lines(path):
        parts = line.split()
        if len(parts) != 2 or not _is_number(parts[0]):
            raise SplitFileError(path, n, f"bad line {line!r}: expected '<id> <ClassName>'")
        class_id, name = int(parts[0]), parts[1]
        if class_id in by_id:
            raise SplitFileError(path, n, f"duplicate class id {class_id}")
        if name in seen_names:
            raise SplitFileError(path, n, f"duplicate class name {name!r} (also line {seen_names[name]})")
        by_id[class_id] = name
        seen_names[name] = n
    if not by_id:
        raise SplitFileError(path, None, "no classes")
    if sorted(by_id) != list(range(1, len(by_id) + 1)):
        raise SplitFileError(path, None, f"class ids must be 1..{len(by_id)} without gaps")
    return tuple(by_id[i] for i in range(1, len(by_id) + 1))


def read_ucf_list(path: Path, classes: tuple[str, ...]) -> dict[str, tuple[int, int]]:
    """A UCF-101-format list: ``<Class>/<video> [<1-based id>]`` -> {key: (label, line)}.

    The label is the class folder's id in ``classes``; an explicit id must agree with it.
    """
    class_ids = {name: i for i, name in enumerate(classes)}
    entries: dict[str, tuple[int, int]] = {}
    for n, line in read_lines(path):
        parts = line.rsplit(maxsplit=1)  # a video's name may hold spaces: 'Class/v_my video.avi 3'
        if len(parts) == 2 and not _is_integer(parts[1]):
            if "." in parts[1]:  # no class id: the whole line names the video
                parts = [line]
            elif " " not in parts[0]:
                raise SplitFileError(path, n, f"bad class id {parts[1]!r}: expected an integer")
            else:
                raise SplitFileError(path, n, f"bad line {line!r}: expected '<Class>/<video> [<class id>]'")
        key = normalise_key(parts[0])
        if key is None:
            raise SplitFileError(path, n, f"bad line {line!r}: the video must be given as <Class>/<video>, "
                                          "without '.', '..' or empty path components")
        folder = key.partition("/")[0]
        if folder not in class_ids:
            raise SplitFileError(path, n, f"unknown class {folder!r} (not in the class index)")
        label = class_ids[folder]
        if len(parts) == 2:
            if not 1 <= int(parts[1]) <= len(classes):
                raise SplitFileError(path, n, f"class id {parts[1]} is not one of the class index's ids "
                                              f"(1 to {len(classes)})")
            if int(parts[1]) - 1 != label:
                raise SplitFileError(
                    path, n, f"class id {parts[1]} contradicts the folder {folder!r} (id {label + 1})"
                )
        if key in entries:
            raise SplitFileError(path, n, f"duplicate entry {key!r} (first on line {entries[key][1]})")
        entries[key] = (label, n)
    return entries


def check_disjoint(train_file: Path, train: dict, test_file: Path, test: dict) -> None:
    for key, (_, n) in test.items():
        if key in train:
            raise SplitFileError(
                test_file, n, f"{key!r} is also in the training list ({train_file.name}:{train[key][1]})"
            )


def read_hmdb_lists(files: list[Path], classes: tuple[str, ...]) -> dict[str, dict[str, tuple[int, int]]]:
    """HMDB-51's files of one split, one per class in ``classes`` order, lines ``<name>.avi <0|1|2>``
    -> {"train": {key: (label, line)}, "test": {...}} (flag 0: not used in this split)."""
    parts: dict[str, dict[str, tuple[int, int]]] = {"train": {}, "test": {}}
    for label, path in enumerate(files):
        seen: dict[str, int] = {}
        for n, line in read_lines(path):
            tokens = line.split()
            if len(tokens) != 2 or tokens[1] not in HMDB_FLAGS or not _plain_name(tokens[0]):
                raise SplitFileError(path, n, f"bad line {line!r}: expected '<name>.avi <0|1|2>'")
            name, flag = tokens
            if name in seen:
                raise SplitFileError(path, n, f"duplicate entry {name!r} (first on line {seen[name]})")
            seen[name] = n
            if HMDB_FLAGS[flag] is not None:
                parts[HMDB_FLAGS[flag]][f"{classes[label]}/{name}"] = (label, n)
    return parts
