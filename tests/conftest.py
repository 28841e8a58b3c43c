"""Shared test helpers and fixtures: small split files, real videos written inside tmp_path, the sample
dataset extracted once per session, and settings small enough for two CPU cores."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from pipeline.datasets.sample import write_sample_dataset

REPO = Path(__file__).resolve().parents[1]
QUIET = dict(progress=False, log=lambda m: None)
ORDER_PAIRS = 6  # sample labels 0..5: CircleGrow/Shrink, FadeRedToBlue/BlueToRed, FillUp/Down


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


def write_video(path: Path, n_frames: int, size: tuple[int, int] = (80, 60), seed: int = 0, fps: float = 25.0) -> Path:
    """A real MJPG .avi of ``n_frames`` random-ish RGB frames of ``size`` (width, height)."""
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    base = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    for t in range(n_frames):
        writer.write(np.roll(base, 3 * t, axis=1))
    writer.release()
    return path


def folder_dataset(root: Path, per_class: int = 2, frames: int = 20) -> Path:
    """A folder dataset of real videos: classes jump and walk, ``per_class`` videos each."""
    for c, cls in enumerate(("jump", "walk")):
        for i in range(per_class):
            write_video(root / cls / f"{cls}{i}.avi", frames + 3 * i, seed=10 * c + i)
    return root


def small_extract_config(root: Path, out: Path, **overrides):
    """Extraction settings small enough for two CPU cores: 64 px crops, seeded random weights."""
    from pipeline.config import ExtractConfig

    settings = dict(dataset="folder", root=root, out=out, backbone_weights="random", seed=0, batch_size=16, workers=1,
                    short_side=64, crop=64)
    settings.update(overrides)
    return ExtractConfig(**settings)


def small_train_config(cache, out, **overrides):
    """Training settings for two CPU cores and untrained-backbone features (hence normalize and a higher lr)."""
    from pipeline.config import TrainConfig

    settings = dict(cache=str(cache), out=str(out), level="high", hidden=128, layers=2, epochs=30, lr=1e-3,
                    lr_step_epochs=100, normalize=True)
    settings.update(overrides)
    return TrainConfig(**settings)


def accuracy(run: Path, order_only: bool) -> float:
    """Video top-1 of a run's test scores, on every class or on the order-only pairs alone."""
    d = np.load(run / "scores_test.npz")
    pred, labels = d["scores"].argmax(1), d["labels"]
    keep = labels < ORDER_PAIRS if order_only else np.ones_like(labels, bool)
    return float((pred[keep] == labels[keep]).mean())


def make_identity(classes=("a", "b"), **changes):
    """A cache identity for caches that tests fill with features of their own."""
    from pipeline.config import Preprocess
    from pipeline.cache.identity import CacheIdentity, LevelSpec

    settings = dict(backbone="resnet34", backbone_weights="random:seed=0", preprocess=Preprocess(short_side=64, crop=64),
                    levels=(LevelSpec("low", "layer2", 128), LevelSpec("mid", "layer3", 256),
                            LevelSpec("high", "layer4", 512)),
                    dtype="float16", precision="fp32", dataset="folder", classes=tuple(classes))
    settings.update(changes)
    return CacheIdentity(**settings)


def seeded_resnet(seed: int):
    """torchvision's ResNet-34, randomly initialised after ``torch.manual_seed(seed)``."""
    import torch
    import torchvision

    torch.manual_seed(seed)
    return torchvision.models.resnet34(weights=None)


def torchvision_levels(model, x):
    """The reference: a plain torchvision forward, layer2/3/4 outputs taken by hooks, averaged over space."""
    import torch

    seen = {}
    hooks = [getattr(model, layer).register_forward_hook(lambda m, i, o, name=name: seen.__setitem__(name, o))
             for layer, name in (("layer2", "low"), ("layer3", "mid"), ("layer4", "high"))]
    with torch.no_grad():
        model.eval()(x)
    for h in hooks:
        h.remove()
    return {name: out.mean(dim=(2, 3)) for name, out in seen.items()}


def run(*args):
    """An mrrn command line run in this process (click's runner), its arguments turned into strings."""
    from click.testing import CliRunner

    from cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


def one_line_error(result, *fragments):
    """Exit status 1 and exactly one line on stderr, 'Error: ...', holding every fragment."""
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 1, result.output
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory) -> Path:
    """The bundled sample dataset, generated once per test session."""
    out = tmp_path_factory.mktemp("sample")
    write_sample_dataset(out, seed=0)
    return out


@pytest.fixture(scope="session")
def sample_cache(sample_dir, tmp_path_factory) -> Path:
    """The sample dataset extracted once per session (64 px crops, random weights seed 0)."""
    from pipeline.extract.run import run_extract

    out = tmp_path_factory.mktemp("cache") / "sample.h5"
    cfg = small_extract_config(sample_dir / "videos", out, dataset="ucf101", splits=sample_dir / "ucfTrainTestlist")
    run_extract(cfg, **QUIET)
    return out


@pytest.fixture(scope="session")
def flow_cache(sample_dir, tmp_path_factory) -> Path:
    """The sample dataset's flow features, once per session (flow at 64 px, 64 px crops, random weights seed 0)."""
    from pipeline.config import FlowSpec
    from pipeline.extract.run import run_extract

    out = tmp_path_factory.mktemp("flow") / "flow.h5"
    cfg = small_extract_config(sample_dir / "videos", out, dataset="ucf101", splits=sample_dir / "ucfTrainTestlist",
                               modality="flow", flow=FlowSpec(size=64))
    run_extract(cfg, **QUIET)
    return out


@pytest.fixture(scope="session")
def level_runs(sample_cache, tmp_path_factory) -> dict[str, Path]:
    """RRN runs on the low, mid and high levels of the sample cache, trained as the demo trains them."""
    from pipeline.train.loop import fit

    runs = tmp_path_factory.mktemp("level_runs")
    out = {}
    for level in ("low", "mid", "high"):
        fit(small_train_config(sample_cache, runs / level, level=level), **QUIET)
        out[level] = runs / level
    return out


def copy_cache(src: Path, dst: Path) -> Path:
    """A copy of the cache ``src`` at ``dst``: the index and its parts folder, as a user copies it."""
    shutil.copy(src, dst)
    parts = Path(f"{src}.parts")
    if parts.is_dir():
        shutil.copytree(parts, Path(dst).parent / parts.name, dirs_exist_ok=True)
    return Path(dst)


def feature_file(cache: Path) -> Path:
    """The file that holds the first rows of ``cache``'s levels: its first part, or the cache itself."""
    from pipeline.cache.reader import FeatureCache

    with FeatureCache(cache) as c:
        return c.parts[0].path(Path(cache)) if c.parts else Path(cache)


def key_ordered(cache, level: str) -> np.ndarray:
    """Every video's rows of one level, video after video in key order, ``(frames, C)``: what two caches of the
    same videos agree on however their parts were committed (``load_level`` gives the rows as stored)."""
    return np.concatenate([cache.video_features(rec.key, level) for rec in cache.videos]) if cache.videos else \
        cache.load_level(level)


def assert_same_cache(a: Path, b: Path, *, exact: bool) -> None:
    """The caches at ``a`` and ``b`` hold the same videos and failures, ``b`` verifies clean, and every video's
    rows are equal (``exact``) or equal to float16 rounding (1e-2)."""
    from pipeline.cache.reader import FeatureCache

    with FeatureCache(a) as one, FeatureCache(b) as two:
        assert [(v.key, v.frames) for v in one.videos] == [(v.key, v.frames) for v in two.videos]
        assert [f.key for f in one.failed] == [f.key for f in two.failed] and two.verify() == []
        for level in one.levels:
            if exact:
                np.testing.assert_array_equal(key_ordered(one, level), key_ordered(two, level))
            else:
                np.testing.assert_allclose(key_ordered(one, level).astype(np.float32),
                                           key_ordered(two, level).astype(np.float32), rtol=1e-2, atol=1e-2)
