"""The bundled sample dataset: real videos, deterministic, order-only class pairs, short videos."""
from __future__ import annotations

import cv2
import numpy as np

from pipeline.config import ClipSpec, default
from pipeline.datasets.index import index_ucf101
from pipeline.datasets.sample import CLASSES, HEIGHT, WIDTH, write_sample_dataset
from tests.conftest import REPO


def decode_all(path) -> np.ndarray:
    cap = cv2.VideoCapture(str(path))
    frames = []
    ok, frame = cap.read()
    while ok:
        frames.append(frame)
        ok, frame = cap.read()
    cap.release()
    return np.stack(frames)  # (T, H, W, 3) BGR


def test_sample_is_a_ucf101_layout_with_a_train_test_split(sample_dir):
    idx = index_ucf101(sample_dir / "videos", sample_dir / "ucfTrainTestlist", 1, strict=True)
    assert idx.classes == tuple(c.name for c in CLASSES)
    assert 6 <= len(idx.classes) <= 8
    assert idx.summary() == {"classes": 8, "train": 48, "test": 32, "missing": 0}
    for label in range(len(idx.classes)):  # every class on both sides of the split
        assert any(e.label == label for e in idx.train) and any(e.label == label for e in idx.test)
    assert (sample_dir / "ucfTrainTestlist" / "classInd.txt").read_bytes().startswith(b"1 CircleGrow\r\n")


def test_sample_videos_are_real_small_and_include_short_ones(sample_dir):
    lengths = []
    for path in sorted((sample_dir / "videos").rglob("*.avi")):
        frames = decode_all(path)
        assert frames.shape[1:] == (HEIGHT, WIDTH, 3)
        lengths.append(len(frames))
    assert len(lengths) == 80
    assert all(16 <= n <= 90 for n in lengths)
    assert sum(n < 30 for n in lengths) >= 4  # the paper loops videos shorter than a clip


def test_order_only_pairs_hold_the_same_frames_reversed(sample_dir):
    videos = sample_dir / "videos"
    for forward, backward in [("CircleGrow", "CircleShrink"), ("FadeRedToBlue", "FadeBlueToRed"), ("FillUp", "FillDown")]:
        a = decode_all(videos / forward / f"v_{forward}_g03_c01.avi")
        b = decode_all(videos / backward / f"v_{backward}_g03_c01.avi")
        np.testing.assert_array_equal(a, b[::-1])
        assert np.abs(a[0].astype(int) - a[-1].astype(int)).mean() > 20  # and the order is visible


def test_generation_is_deterministic(tmp_path, sample_dir):
    write_sample_dataset(tmp_path, seed=0)
    for name in ("classInd.txt", "trainlist01.txt", "testlist01.txt"):
        assert (tmp_path / "ucfTrainTestlist" / name).read_bytes() == (sample_dir / "ucfTrainTestlist" / name).read_bytes()
    for path in sorted((sample_dir / "videos").rglob("*.avi")):
        other = tmp_path / path.relative_to(sample_dir)
        a, b = decode_all(path), decode_all(other)
        assert a.shape == b.shape, path.name  # same frame counts
        np.testing.assert_array_equal(a, b)


def test_another_seed_gives_other_videos(tmp_path, sample_dir):
    write_sample_dataset(tmp_path, seed=1)
    key = "Checkerboard/v_Checkerboard_g01_c01.avi"
    a, b = decode_all(sample_dir / "videos" / key), decode_all(tmp_path / "videos" / key)
    assert a.shape != b.shape or not np.array_equal(a, b)


WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight", 9: "nine"}


def test_what_the_docs_say_of_the_sample_dataset_is_true(sample_dir):
    """docs/datasets.md describes the sample dataset in numbers: each of them is measured here."""
    lengths, per_class_short, rates = [], {}, set()
    for path in sorted((sample_dir / "videos").rglob("*.avi")):
        cap = cv2.VideoCapture(str(path))
        rates.add(cap.get(cv2.CAP_PROP_FPS))
        cap.release()
        lengths.append(len(decode_all(path)))
        per_class_short[path.parent.name] = per_class_short.get(path.parent.name, 0) + (lengths[-1] < 30)
    clip = default(ClipSpec, "length")
    short = sum(n < clip for n in lengths)
    assert len(rates) == 1 and len(set(per_class_short.values())) == 1
    idx = index_ucf101(sample_dir / "videos", sample_dir / "ucfTrainTestlist", 1, strict=True)
    doc = " ".join((REPO / "docs" / "datasets.md").read_text().split())
    assert (f"writes {len(lengths)} short, seeded `.avi` files (MJPG, {WIDTH}x{HEIGHT}, {rates.pop():g} fps, "
            f"{min(lengths)}-{max(lengths)} frames; {short} of them shorter than {clip} frames, "
            f"{WORDS[short // len(CLASSES)]} per class)") in doc
    assert f"groups 3-5 train = {len(idx.train)} videos, groups 1-2 test = {len(idx.test)})" in doc
    assert f"{WORDS[len(CLASSES)].capitalize()} classes:" in doc
