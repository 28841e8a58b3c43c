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


def write_video(path: Path, n_frames: int, size: tuple[int, int] = (80, 60), seed: int = 0, fps: float = 25.0) -> Path:
    """A real MJPG .avi of ``n_frames`` random-ish RGB frames of ``size`` (width, height)."""
    import cv2
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    base = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    for t in range(n_frames):
        writer.write(np.roll(base, 3 * t, axis=1))
    writer.release()
    return path


def small_extract_config(root: Path, out: Path, **overrides):
    """Extraction settings small enough for two CPU cores: 64 px crops, seeded random weights."""
    from pipeline.config import ExtractConfig, Preprocess

    settings = dict(dataset="folder", root=root, out=out, weights="random", seed=0, batch_size=16, workers=1,
                    preprocess=Preprocess(short_side=64, crop=64))
    settings.update(overrides)
    return ExtractConfig(**settings)


@pytest.fixture(scope="session")
def sample_cache(sample_dir, tmp_path_factory) -> Path:
    """The sample dataset extracted once per session (64 px crops, random weights seed 0)."""
    from pipeline.extract import run_extract

    out = tmp_path_factory.mktemp("cache") / "sample.h5"
    cfg = small_extract_config(sample_dir / "videos", out, dataset="ucf101", splits=sample_dir / "ucfTrainTestlist")
    run_extract(cfg, progress=False, log=lambda m: None)
    return out


@pytest.fixture(scope="session")
def flow_cache(sample_dir, tmp_path_factory) -> Path:
    """The sample dataset's flow features, once per session (flow at 64 px, 64 px crops, random weights seed 0)."""
    from pipeline.config import FlowSpec
    from pipeline.extract import run_extract

    out = tmp_path_factory.mktemp("flow") / "flow.h5"
    cfg = small_extract_config(sample_dir / "videos", out, dataset="ucf101", splits=sample_dir / "ucfTrainTestlist",
                               modality="flow", flow=FlowSpec(size=64))
    run_extract(cfg, progress=False, log=lambda m: None)
    return out


@pytest.fixture(scope="session")
def level_runs(sample_cache, tmp_path_factory) -> dict[str, Path]:
    """RRN runs on the low, mid and high levels of the sample cache, trained as the demo trains them."""
    from pipeline.config import TrainConfig
    from pipeline.train import fit

    runs = tmp_path_factory.mktemp("level_runs")
    out = {}
    for level in ("low", "mid", "high"):
        cfg = TrainConfig(cache=str(sample_cache), out=str(runs / level), level=level, hidden=128, layers=2,
                          epochs=30, lr=1e-3, lr_step_epochs=100, normalize=True)
        fit(cfg, progress=False, log=lambda m: None)
        out[level] = runs / level
    return out
