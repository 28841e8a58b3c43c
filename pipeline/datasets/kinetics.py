"""Kinetics-400/600/700 from the official annotation CSVs in the split folder: ``train.csv`` and ``val.csv``
(``validate.csv`` in some releases).

Each row, ``label,youtube_id,time_start,time_end,split[,is_cc]`` under that header, names a clip of a
YouTube video: ``"air drumming",-0Bx3_dkFQ0,14,24,train``. Labels may hold spaces and commas (quoted);
YouTube ids may begin with ``-`` and hold ``_``. A clip's file is ``<youtube_id>_<start:06d>_<end:06d>``
with ``.mp4`` (the CVDF download's names) or another video extension (youtube-dl's output varies), and
each is looked for, in this order, in the layouts found in the wild:

- ``ROOT/train/<name>``, ``ROOT/val/<name>``: the CVDF download;
- ``ROOT/train/<label>/<name>``: class folders, the label as it is;
- ``ROOT/train/<label with _ for spaces>/<name>``: class folders without spaces.

A video's key is the path found; a missing one is listed as ``train/<name>.mp4`` (the flat layout).
Classes are the labels of train and val sorted alphabetically (the field's convention), label = index.
Split 1 is train against val (the val videos are ``SplitIndex.test``); there is no other. ``test.csv``
holds unlabelled videos: it is not a split and is not read (``mrrn predict`` serves unlabelled videos).
"""
from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import NamedTuple

from pipeline.datasets.splitfiles import SplitFileError, _is_number, read_lines
from pipeline.datasets.splitindex import FileLister, SplitIndex, index_listed, require_dir

COLUMNS = ("label", "youtube_id", "time_start", "time_end", "split")  # and is_cc in some releases: not used
PARTS = {"train": ("train",), "val": ("val", "validate")}  # part: its split column's values (and file names)
SPLIT_1 = "train.csv against val.csv"
VIDEO_EXTENSION = ".mp4"
_YOUTUBE_ID = re.compile(r"^[A-Za-z0-9_-]+$")


class Clip(NamedTuple):
    label: str
    youtube_id: str
    start: int  # seconds into the YouTube video
    end: int
    line: int  # in its annotation file

    @property
    def stem(self) -> str:
        """The file name without extension: ``<youtube_id>_<start:06d>_<end:06d>``."""
        return f"{self.youtube_id}_{self.start:06d}_{self.end:06d}"


def annotation_file(splits: Path, part: str) -> Path:
    """``<part>.csv`` in ``splits`` (for val also ``validate.csv``; both at once are refused)."""
    found = [splits / f"{name}.csv" for name in PARTS[part] if (splits / f"{name}.csv").is_file()]
    if len(found) > 1:
        raise SplitFileError(splits, None, f"two {part} annotation files, {found[0].name} and {found[1].name}; keep one")
    if not found:
        names = " or ".join(f"{name}.csv" for name in PARTS[part])
        raise SplitFileError(splits, None, f"no Kinetics {part} annotations ({names}) in this folder")
    return found[0]


def _fields(path: Path, n: int, line: str) -> list[str]:
    try:
        return [field.strip() for field in next(csv.reader([line], strict=True))]
    except csv.Error as err:
        raise SplitFileError(path, n, f"bad CSV line {line!r}: {err}") from None


def _header(path: Path, n: int, fields: list[str]) -> dict[str, int]:
    """The header's column name -> position, refusing a header without the columns Kinetics has."""
    lacking = [name for name in COLUMNS if name not in fields]
    if lacking or len(set(fields)) != len(fields):
        problem = f"no column {', '.join(lacking)}" if lacking else "a column named twice"
        raise SplitFileError(path, n, f"bad header {','.join(fields)!r} ({problem}): expected "
                                      f"{','.join(COLUMNS)}[,is_cc]")
    return {name: fields.index(name) for name in COLUMNS}


def _clip(path: Path, n: int, row: dict[str, str], part: str) -> Clip:
    """One row, checked: a label, a YouTube id, whole seconds start < end, the split of its file."""
    if not row["label"]:
        raise SplitFileError(path, n, "empty label")
    if not _YOUTUBE_ID.match(row["youtube_id"]):
        raise SplitFileError(path, n, f"bad youtube_id {row['youtube_id']!r}: expected letters, digits, '-' or '_'")
    for column in ("time_start", "time_end"):
        if not _is_number(row[column]):
            raise SplitFileError(path, n, f"bad {column} {row[column]!r}: expected whole seconds")
    start, end = int(row["time_start"]), int(row["time_end"])
    if start >= end:
        raise SplitFileError(path, n, f"time_start {start} is not before time_end {end}")
    if row["split"] not in PARTS[part]:
        raise SplitFileError(path, n, f"split {row['split']!r} in a {part} file: expected {' or '.join(PARTS[part])}")
    return Clip(row["label"], row["youtube_id"], start, end, n)


def read_annotations(path: Path, part: str, seen: dict[tuple[str, int, int], tuple[Path, int]]) -> list[Clip]:
    """The clips of one annotation CSV, checked row by row; ``seen``: (youtube_id, start, end) -> (file, line)
    of the clips read so far, here and in the other part, where a clip listed twice is refused."""
    lines = read_lines(path)
    if not lines:
        raise SplitFileError(path, None, "empty file: expected a header and clips")
    header = _fields(path, *lines[0])
    columns, width = _header(path, lines[0][0], header), len(header)
    clips = []
    for n, line in lines[1:]:
        fields = _fields(path, n, line)
        if len(fields) != width:
            raise SplitFileError(path, n, f"{len(fields)} fields, the header has {width}: {line!r}")
        clip = _clip(path, n, {name: fields[i] for name, i in columns.items()}, part)
        first = seen.setdefault((clip.youtube_id, clip.start, clip.end), (path, n))
        if first != (path, n):
            where = f"line {first[1]}" if first[0] == path else f"{first[0].name}:{first[1]}"
            raise SplitFileError(path, n, f"clip {clip.youtube_id} {clip.start}-{clip.end} is listed twice "
                                          f"(first {where})")
        clips.append(clip)
    if not clips:
        raise SplitFileError(path, None, "no clips, only a header")
    return clips


def _label_folders(label: str) -> list[str]:
    """The class folder names a label may have on disk: as it is, and with '_' for spaces."""
    names = dict.fromkeys((label, label.replace(" ", "_")))
    return [name for name in names if "/" not in name and "\\" not in name and name not in (".", "..")]


def locate(lister: FileLister, part: str, clip: Clip) -> str:
    """The clip's key: the first of the layouts that holds it, else the flat layout's ``<part>/<stem>.mp4``."""
    for folder in [part, *(f"{part}/{name}" for name in _label_folders(clip.label))]:
        key = lister.video(folder, clip.stem, VIDEO_EXTENSION)
        if key is not None:
            return key
    return f"{part}/{clip.stem}{VIDEO_EXTENSION}"


def index_kinetics(root: Path, splits: Path, *, strict: bool = False) -> SplitIndex:
    """Split 1 of a Kinetics dataset: the clips of ``train.csv`` against those of ``val.csv``."""
    root, splits = require_dir(Path(root), "dataset root"), require_dir(Path(splits), "annotation folder")
    files = {part: annotation_file(splits, part) for part in PARTS}
    seen: dict[tuple[str, int, int], tuple[Path, int]] = {}
    clips = {part: read_annotations(files[part], part, seen) for part in PARTS}
    classes = tuple(sorted({clip.label for part in PARTS for clip in clips[part]}))
    label_of = {name: i for i, name in enumerate(classes)}
    lister = FileLister(root)
    lists = [(files[part], {locate(lister, part, clip): (label_of[clip.label], clip.line) for clip in clips[part]})
             for part in PARTS]
    return index_listed("kinetics", root, classes, lists, strict=strict, test_name="val", lister=lister)
