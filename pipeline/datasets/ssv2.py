"""Something-Something v2 from its official JSON files in the split folder, the videos ``ROOT/<id>.webm``.

- ``labels.json``: each class's template -> its index as a string,
  ``{"Approaching something with your camera": "0", ...}`` (174 classes); the class order.
- ``train.json``, ``validation.json``: lists of videos, ``{"id": "78687", "label": "holding potato next to
  vicks vaporub bottle", "template": "Holding [something] next to [something]", "placeholders": [...]}``;
  a video's class is its template without the brackets (``Holding something next to something``).

Each file may also carry the download's prefix, ``something-something-v2-labels.json`` and so on. A video's
key is ``<id>.webm``, or the same id with another video extension when that is what is on disk; a missing
one is listed as ``<id>.webm``. Split 1 is train against validation (the validation videos are
``SplitIndex.test``); there is no other. ``test.json`` holds unlabelled videos: not a split, not read.
Errors name the file and the JSON line, or the list entry by its position (``train.json: entry 12: ...``).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from pipeline.datasets.splitfiles import SplitFileError, _is_number, read_text
from pipeline.datasets.splitindex import FileLister, SplitIndex, index_listed, require_dir

PREFIX = "something-something-v2-"  # the downloaded files' names begin with it, or not
PARTS = ("train", "validation")  # the lists of split 1, train against test
SPLIT_1 = "train.json against validation.json"
VIDEO_EXTENSION = ".webm"
_VIDEO_ID = re.compile(r"^[A-Za-z0-9_-]+$")


def json_file(splits: Path, name: str) -> Path:
    """``<name>.json`` in ``splits``, with or without :data:`PREFIX` (both at once are refused)."""
    plain, prefixed = splits / f"{name}.json", splits / f"{PREFIX}{name}.json"
    if plain.is_file() and prefixed.is_file():
        raise SplitFileError(splits, None, f"two {name} files, {plain.name} and {prefixed.name}; keep one")
    if not plain.is_file() and not prefixed.is_file():
        raise SplitFileError(splits, None, f"no Something-Something v2 {plain.name} (or {prefixed.name}) in this folder")
    return plain if plain.is_file() else prefixed


def _refuse_repeated_keys(pairs: list[tuple[str, object]]) -> dict:
    """A JSON object whose keys are unique (``json`` would keep the last of a repeated one)."""
    seen = set()
    for key, _ in pairs:
        if key in seen:
            raise ValueError(f"{key!r} is a key twice in one object")
        seen.add(key)
    return dict(pairs)


def load_json(path: Path):
    """The JSON value of ``path``; bad JSON is a :class:`SplitFileError` naming its line and column."""
    text = read_text(path)
    try:
        return json.loads(text, object_pairs_hook=_refuse_repeated_keys)
    except json.JSONDecodeError as err:
        raise SplitFileError(path, err.lineno, f"bad JSON at column {err.colno}: {err.msg}") from None
    except ValueError as err:  # a repeated key
        raise SplitFileError(path, None, f"bad JSON: {err}") from None


def read_labels(path: Path) -> tuple[str, ...]:
    """``labels.json``: template -> index (a string or a number), indexes 0..K-1 -> templates in index order."""
    labels = load_json(path)
    if not isinstance(labels, dict) or not labels:
        raise SplitFileError(path, None, "expected a JSON object of templates and their indexes")
    by_index: dict[int, str] = {}
    for template, index in labels.items():
        text = str(index) if isinstance(index, int) and not isinstance(index, bool) else index
        if not isinstance(text, str) or not _is_number(text):
            raise SplitFileError(path, None, f"{template!r}: index {index!r} is not a whole number")
        if int(text) in by_index:
            raise SplitFileError(path, None, f"{template!r}: index {text} is also {by_index[int(text)]!r}'s")
        by_index[int(text)] = template
    if sorted(by_index) != list(range(len(by_index))):
        raise SplitFileError(path, None, f"indexes must be 0..{len(by_index) - 1} without gaps")
    return tuple(by_index[i] for i in range(len(by_index)))


def class_of(template: str) -> str:
    """A video's class: its template without the brackets (``Holding [something]`` -> ``Holding something``)."""
    return template.replace("[", "").replace("]", "")


def _video_id(path: Path, i: int, entry) -> str:
    if not isinstance(entry, dict):
        raise SplitFileError(path, None, f"entry {i}: expected an object with id and template, got {entry!r:.60}")
    for field in ("id", "template"):
        if field not in entry:
            raise SplitFileError(path, None, f"entry {i}: no {field!r}")
    video_id = entry["id"]
    video_id = str(video_id) if isinstance(video_id, int) and not isinstance(video_id, bool) else video_id
    if not isinstance(video_id, str) or not _VIDEO_ID.match(video_id):
        raise SplitFileError(path, None, f"entry {i}: bad id {entry['id']!r}: expected letters, digits, '-' or '_'")
    return video_id


def read_videos(path: Path, label_of: dict[str, int], seen: dict[str, tuple[Path, int]]) -> dict[str, tuple[int, int]]:
    """``train.json`` or ``validation.json`` -> {video id: (label, entry)}; ``seen``: id -> (file, entry) of the
    videos read so far, here and in the other list, where a video listed twice is refused."""
    videos = load_json(path)
    if not isinstance(videos, list):
        raise SplitFileError(path, None, "expected a JSON list of videos")
    entries = {}
    for i, entry in enumerate(videos):
        video_id = _video_id(path, i, entry)
        template = entry["template"]
        if not isinstance(template, str) or class_of(template) not in label_of:
            raise SplitFileError(path, None, f"entry {i}: template {template!r} is not in labels.json")
        first = seen.setdefault(video_id, (path, i))
        if first != (path, i):
            where = f"entry {first[1]}" if first[0] == path else f"{first[0].name} entry {first[1]}"
            raise SplitFileError(path, None, f"entry {i}: id {video_id!r} is listed twice (first {where})")
        entries[video_id] = (label_of[class_of(template)], i)
    return entries


def index_ssv2(root: Path, splits: Path, *, strict: bool = False) -> SplitIndex:
    """Split 1 of Something-Something v2: the videos of ``train.json`` against those of ``validation.json``."""
    root, splits = require_dir(Path(root), "dataset root"), require_dir(Path(splits), "annotation folder")
    classes = read_labels(json_file(splits, "labels"))
    label_of = {template: i for i, template in enumerate(classes)}
    seen: dict[str, tuple[Path, int]] = {}
    lister = FileLister(root)
    lists = []
    for part in PARTS:
        path = json_file(splits, part)
        videos = read_videos(path, label_of, seen)
        lists.append((path, {lister.video("", video_id, VIDEO_EXTENSION) or f"{video_id}{VIDEO_EXTENSION}": where
                             for video_id, where in videos.items()}))
    return index_listed("ssv2", root, classes, lists, strict=strict, test_name="validation", lister=lister)
