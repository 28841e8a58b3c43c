"""The structure every cache file must have before anything in it is read: which groups, datasets and
attributes, of which kind and shape (docs/cache-format.md). Checked from HDF5's metadata alone, so a
cache of any size is checked in milliseconds; the values themselves are checked by ``reader.verify``.
"""
from __future__ import annotations

import h5py
import numpy as np

# group -> {dataset: kind}; every dataset of a group is one column of the same length
TABLES = {
    "videos": {"key": "string", "class_name": "string", "label": "integer", "frames": "integer", "offset": "integer",
               "fps": "number", "width": "integer", "height": "integer", "frames_reported": "integer"},
    "failed": {"key": "string", "class_name": "string", "label": "integer", "reason": "string"},
}
OPTIONAL_COLUMNS = {"videos": {"digest": "string"}, "missing": {"key": "string"}}  # written by newer versions only
PARTS = {"name": "string", "rows": "integer", "size": "integer", "uid": "string"}  # an index over parts (schema 2)
SPLIT_PARTS = ("train", "test")


def _kind_problem(ds, kind: str) -> str | None:
    """Why ``ds`` is not a one-dimensional dataset of ``kind``; None when it is."""
    if not isinstance(ds, h5py.Dataset):
        return f"a {type(ds).__name__.lower()} where a dataset belongs"
    if ds.ndim != 1:
        return f"shape {ds.shape}, expected one column"
    dtype = ds.dtype
    is_string = h5py.check_string_dtype(dtype) is not None
    fits = {"string": is_string, "integer": np.issubdtype(dtype, np.integer),
            "number": np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)}[kind]
    return None if fits else f"of type {'string' if is_string else dtype}, expected {kind}s"


def _group(f: h5py.File, name: str) -> str | None:
    if name not in f:
        return f"{name}: missing"
    if not isinstance(f[name], h5py.Group):
        return f"{name}: a dataset where a group belongs"
    return None


def _columns_problem(f: h5py.File, group: str, columns: dict[str, str], required: bool) -> str | None:
    """The first problem of one table's columns: missing (when ``required``), of another kind, or short."""
    lengths = {}
    for column, kind in columns.items():
        name = f"{group}/{column}"
        if name not in f:
            if required:
                return f"{name}: missing"
            continue
        problem = _kind_problem(f[name], kind)
        if problem:
            return f"{name}: {problem}"
        lengths[name] = f[name].shape[0]
    if len(set(lengths.values())) > 1:
        (longest, n), (short, m) = max(lengths.items(), key=lambda x: x[1]), min(lengths.items(), key=lambda x: x[1])
        return f"{short}: {m} rows, but {longest} has {n}"
    return None


def version_problem(f: h5py.File) -> str | None:
    """Why the file's schema_version or config attribute is not of its kind; None when both are."""
    version = f.attrs["schema_version"]
    if isinstance(version, np.ndarray) and version.shape == (1,):
        version = version[0]
    if not isinstance(version, (int, np.integer)) or isinstance(version, bool):
        return f"attribute schema_version {version!r} is not a whole number"
    if not isinstance(f.attrs["config"], (str, bytes)):
        return "attribute config is not a string"
    return None


def schema_problem(f: h5py.File) -> str | None:
    """The first way the open cache ``f`` departs from the schema, as ``where: what``; None when it holds
    every group, column and attribute it must, each of the right kind and length. A level missing from
    ``features`` is not a problem here (``--redo-damaged`` extracts it again); a level of the wrong kind is.
    The attributes are checked first, by :func:`version_problem`."""
    problem = None
    for group in ("videos", "failed", "splits", "features"):
        problem = problem or _group(f, group)
    for group, columns in TABLES.items():
        problem = problem or _columns_problem(f, group, columns, required=True)
    problem = problem or _columns_problem(f, "videos", {**TABLES["videos"], **OPTIONAL_COLUMNS["videos"]}, required=False)
    if problem is None and "missing" in f:
        problem = _group(f, "missing") or _columns_problem(f, "missing", OPTIONAL_COLUMNS["missing"], required=True)
    if problem is None and int(f.attrs["schema_version"]) == 2:
        problem = _group(f, "parts") or _columns_problem(f, "parts", PARTS, required=True)
    return problem or _splits_problem(f["splits"]) or _levels_problem(f["features"])


def _splits_problem(splits: h5py.Group) -> str | None:
    for name, group in splits.items():
        where = f"splits/{name}"
        if not name.isdigit():
            return f"{where}: not a split number"
        if not isinstance(group, h5py.Group):
            return f"{where}: a dataset where a group belongs"
        for part in SPLIT_PARTS:
            if part not in group:
                return f"{where}/{part}: missing"
            problem = _kind_problem(group[part], "string")
            if problem:
                return f"{where}/{part}: {problem}"
    return None


def _levels_problem(features: h5py.Group) -> str | None:
    for name, ds in features.items():
        where = f"features/{name}"
        if not isinstance(ds, h5py.Dataset):
            return f"{where}: a group where a dataset belongs"
        if ds.ndim != 2:
            return f"{where}: shape {ds.shape}, expected (frames, width)"
        if not np.issubdtype(ds.dtype, np.floating):
            kind = "strings" if h5py.check_string_dtype(ds.dtype) is not None else str(ds.dtype)
            return f"{where}: {kind}, expected floating-point features"
    return None
