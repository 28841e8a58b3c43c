"""Shared test helpers: small split files and placeholder videos written inside tmp_path."""
from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.sample_data import write_sample_dataset


def write_lines(path: Path, lines: list[str], eol: str = "\r\n") -> Path:
    """Write a split file; CRLF by default, like the official UCF-101 files."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes("".join(line + eol for line in lines).encode("utf-8"))
    return path


def touch(root: Path, *keys: str) -> None:
    """Placeholder video files (indexing never opens them)."""
    for key in keys:
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        (root / key).write_bytes(b"")


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory) -> Path:
    """The bundled sample dataset, generated once per test session."""
    out = tmp_path_factory.mktemp("sample")
    write_sample_dataset(out, seed=0)
    return out
