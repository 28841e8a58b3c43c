"""The bundled sample dataset: small, seeded, real ``.avi`` files in the UCF-101 layout.

Eight classes. Six of them come in *order-only pairs*: each video of the second class of a pair is the
matching video of the first class played backwards (same seed, same frames, reversed), e.g.
``CircleShrink/v_CircleShrink_g01_c01.avi`` is ``CircleGrow/v_CircleGrow_g01_c01.avi`` reversed.
A model that ignores frame order (mean pooling) cannot tell a pair apart; a recurrent one can.
The other two classes (``Checkerboard``, ``Stripes``) differ in appearance alone.

Lengths are 30 + 8k frames (so a reversed video yields exactly the reversed set of 30-frame, stride-8
clips) and a few videos are shorter than 30 frames (the paper loops those).

Layout written under ``out``::

    videos/<Class>/v_<Class>_g<GG>_c<CC>.avi      MJPG, 25 fps, 128x96
    ucfTrainTestlist/classInd.txt                 "1 CircleGrow" ... (CRLF, like the official files)
    ucfTrainTestlist/trainlist01.txt              groups 3-5
    ucfTrainTestlist/testlist01.txt               groups 1-2 (no labels, like the official files)
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from pipeline.errors import WriteError, writing

WIDTH, HEIGHT, FPS = 128, 96, 25.0
GROUPS, CLIPS_PER_GROUP, TEST_GROUPS = 5, 2, (1, 2)
LENGTHS = (30, 38, 46, 54, 62, 70)  # 30 + 8k: clip windows map onto themselves when reversed
SHORT_LENGTHS = (16, 20, 24, 28)
SHORT_VIDEOS = {(2, 2), (5, 2)}  # (group, clip): one short video in test, one in train, per class


@dataclass(frozen=True)
class SampleClass:
    name: str
    kind: str  # which renderer draws the base sequence
    reverse: bool  # True: the base sequence played backwards


CLASSES = (
    SampleClass("CircleGrow", "circle", False),
    SampleClass("CircleShrink", "circle", True),
    SampleClass("FadeRedToBlue", "fade", False),
    SampleClass("FadeBlueToRed", "fade", True),
    SampleClass("FillUp", "fill", False),
    SampleClass("FillDown", "fill", True),
    SampleClass("Checkerboard", "checker", False),
    SampleClass("Stripes", "stripes", False),
)
KINDS = ("circle", "fade", "fill", "checker", "stripes")


def _ramp(length: int) -> np.ndarray:
    return np.linspace(0.0, 1.0, length)


def _render(kind: str, length: int, rng: np.random.Generator) -> list[np.ndarray]:
    """The base sequence of ``length`` RGB uint8 frames (H, W, 3) for one video of ``kind``."""
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    frames = []
    if kind == "circle":
        bg = rng.uniform(10, 50, 3)
        fg = np.array([rng.uniform(20, 80), rng.uniform(170, 240), rng.uniform(20, 90)])
        cx, cy = rng.uniform(50, 78), rng.uniform(38, 58)
        r0, r1 = rng.uniform(4, 10), rng.uniform(34, 44)
        for a in _ramp(length):
            inside = (xx - cx) ** 2 + (yy - cy) ** 2 <= (r0 + a * (r1 - r0)) ** 2
            frames.append(np.where(inside[..., None], fg, bg))
    elif kind == "fade":
        red = np.array([rng.uniform(180, 240), rng.uniform(20, 60), rng.uniform(20, 60)])
        blue = np.array([rng.uniform(20, 60), rng.uniform(30, 80), rng.uniform(180, 240)])
        texture = rng.normal(0, 12, (HEIGHT, WIDTH, 1))
        for a in _ramp(length):
            frames.append((1 - a) * red + a * blue + texture)
    elif kind == "fill":
        bg = rng.uniform(90, 140) * np.ones(3)
        fg = np.array([rng.uniform(200, 250), rng.uniform(180, 230), rng.uniform(10, 60)])
        lo, hi = rng.uniform(0.05, 0.15), rng.uniform(0.85, 0.95)
        for a in _ramp(length):
            level = HEIGHT * (1 - (lo + a * (hi - lo)))
            frames.append(np.where((yy >= level)[..., None], fg, bg))
    elif kind == "checker":
        cell = int(rng.integers(8, 17))
        light, dark = rng.uniform(170, 230, 3), rng.uniform(20, 70, 3)
        for _ in range(length):
            dx, dy = rng.integers(0, 3, 2)
            board = ((xx + dx) // cell + (yy + dy) // cell) % 2 == 0
            frames.append(np.where(board[..., None], light, dark))
    elif kind == "stripes":
        period, speed = rng.uniform(10, 20), rng.uniform(0.5, 2.0)
        c0 = np.array([rng.uniform(180, 240), rng.uniform(20, 80), rng.uniform(180, 240)])
        c1 = np.array([rng.uniform(20, 80), rng.uniform(180, 240), rng.uniform(180, 240)])
        for t in range(length):
            wave = 0.5 + 0.5 * np.sin(2 * np.pi * (xx + yy + speed * t) / period)
            frames.append(wave[..., None] * c0 + (1 - wave[..., None]) * c1)
    else:
        raise ValueError(f"unknown sample kind {kind!r}")
    noisy = [f + rng.normal(0, 4, f.shape) for f in frames]
    return [np.clip(f, 0, 255).astype(np.uint8) for f in noisy]


def video_key(cls: SampleClass, group: int, clip: int) -> str:
    return f"{cls.name}/v_{cls.name}_g{group:02d}_c{clip:02d}.avi"


def _write_avi(path: Path, frames_rgb: list[np.ndarray]) -> None:
    with writing(path.parent):
        path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (WIDTH, HEIGHT))
    if not writer.isOpened():
        raise WriteError(f"{path}: cannot write (OpenCV cannot open an MJPG .avi writer there)")
    try:
        for frame in frames_rgb:
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    finally:
        writer.release()


def _write_crlf(path: Path, lines: list[str]) -> None:
    with writing(path):
        path.write_bytes("".join(f"{line}\r\n" for line in lines).encode("utf-8"))


@dataclass(frozen=True)
class SampleSummary:
    videos: int
    frames: int
    train: int
    test: int
    classes: int


def write_sample_dataset(out: Path, seed: int = 0, *, clips_per_group: int = CLIPS_PER_GROUP) -> SampleSummary:
    """Write the sample dataset under ``out`` (see the module docstring). Deterministic in ``seed``.
    ``clips_per_group`` above the default adds videos ``c03``, ``c04``, ... to every group (a larger dataset
    of the same classes, for benchmarks); the default's videos are the same at any value."""
    out = Path(out)
    video_dir, split_dir = out / "videos", out / "ucfTrainTestlist"
    with writing(split_dir):
        split_dir.mkdir(parents=True, exist_ok=True)
    train_lines, test_lines, frames_total = [], [], 0
    for label, cls in enumerate(CLASSES, start=1):
        for group in range(1, GROUPS + 1):
            for clip in range(1, clips_per_group + 1):
                # The seed names the kind, not the class: the two classes of a pair share videos.
                rng = np.random.default_rng([seed, KINDS.index(cls.kind), group, clip])
                lengths = SHORT_LENGTHS if (group, clip) in SHORT_VIDEOS else LENGTHS
                frames = _render(cls.kind, int(rng.choice(lengths)), rng)
                if cls.reverse:
                    frames.reverse()
                key = video_key(cls, group, clip)
                _write_avi(video_dir / key, frames)
                frames_total += len(frames)
                if group in TEST_GROUPS:
                    test_lines.append(key)
                else:
                    train_lines.append(f"{key} {label}")
    _write_crlf(split_dir / "classInd.txt", [f"{i} {c.name}" for i, c in enumerate(CLASSES, start=1)])
    _write_crlf(split_dir / "trainlist01.txt", train_lines)
    _write_crlf(split_dir / "testlist01.txt", test_lines)
    return SampleSummary(
        videos=len(train_lines) + len(test_lines),
        frames=frames_total,
        train=len(train_lines),
        test=len(test_lines),
        classes=len(CLASSES),
    )
