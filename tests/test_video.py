"""Decoding in bounded chunks, real frame counts, one-line failure reasons, preprocessing."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from pipeline.config import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from pipeline.extract.video import VideoDecodeError, VideoReader, preprocess
from tests.conftest import write_video


def test_chunks_are_bounded_and_count_every_decoded_frame(tmp_path):
    path = write_video(tmp_path / "v.avi", 50, size=(80, 60), fps=30)
    reader = VideoReader(path, chunk_frames=16)
    sizes = [len(c) for c in reader.chunks()]
    assert sizes == [16, 16, 16, 2]
    assert reader.info.frames == 50 and reader.info.frames_reported == 50
    assert (reader.info.width, reader.info.height) == (80, 60)
    assert reader.info.fps == pytest.approx(30)


def test_chunk_bytes_bound_a_large_frame_video(tmp_path):
    path = write_video(tmp_path / "big.avi", 12, size=(640, 480))
    frame_bytes = 640 * 480 * 3
    sizes = [len(c) for c in VideoReader(path, chunk_frames=64, max_chunk_bytes=3 * frame_bytes).chunks()]
    assert sizes == [3, 3, 3, 3]


def test_frames_come_out_rgb(tmp_path):
    path = tmp_path / "red.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25, (32, 32))
    for _ in range(3):
        writer.write(np.full((32, 32, 3), (0, 0, 255), np.uint8))  # pure red, in OpenCV's BGR
    writer.release()
    frame = next(VideoReader(path).chunks())[0]
    r, g, b = frame.reshape(-1, 3).mean(axis=0)
    assert r > 200 and g < 40 and b < 40


def _reason(path) -> str:
    with pytest.raises(VideoDecodeError) as err:
        list(VideoReader(path).chunks())
    assert "\n" not in str(err.value)
    return str(err.value)


def test_each_kind_of_bad_file_gives_a_one_line_reason(tmp_path):
    (tmp_path / "zero.avi").write_bytes(b"")
    assert _reason(tmp_path / "zero.avi") == "empty file (0 bytes)"
    (tmp_path / "text.avi").write_text("this is not a video\n" * 50)
    assert "cannot open it as a video" in _reason(tmp_path / "text.avi")
    good = write_video(tmp_path / "good.avi", 40).read_bytes()
    (tmp_path / "trunc.avi").write_bytes(good[: len(good) // 2])
    assert _reason(tmp_path / "trunc.avi").startswith("truncated: decoded ")
    assert _reason(tmp_path / "gone.avi") == "file not found"
    (tmp_path / "dir.avi").mkdir()
    assert _reason(tmp_path / "dir.avi") == "not a regular file"


def test_a_container_without_frames_is_refused(tmp_path):
    path = tmp_path / "empty.avi"
    cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25, (32, 32)).release()
    reason = _reason(path)
    assert reason in ("no frames could be decoded", "empty file (0 bytes)") or "cannot open" in reason


def test_preprocess_resizes_shorter_side_crops_centre_and_normalises():
    frames = torch.full((2, 96, 128, 3), 128, dtype=torch.uint8)  # (T, H, W, 3)
    x = preprocess(frames, Preprocess(short_side=64, crop=48))
    assert x.shape == (2, 3, 48, 48) and x.dtype == torch.float32
    expected = [(128 / 255 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)]
    torch.testing.assert_close(x.mean(dim=(0, 2, 3)), torch.tensor(expected), atol=1e-5, rtol=0)


def test_preprocess_takes_the_centre():
    frames = torch.zeros((1, 64, 192, 3), dtype=torch.uint8)
    frames[:, :, 64:128] = 255  # a white centre third
    x = preprocess(frames, Preprocess(short_side=64, crop=64))
    white = (1 - IMAGENET_MEAN[0]) / IMAGENET_STD[0]
    assert torch.allclose(x[0, 0, :, 8:56], torch.tensor(white), atol=1e-4)


def test_preprocess_rejects_wrong_layout():
    with pytest.raises(ValueError, match=r"expected uint8 frames \(T, H, W, 3\)"):
        preprocess(torch.zeros((2, 3, 32, 32), dtype=torch.uint8), Preprocess(short_side=32, crop=32))
    with pytest.raises(ValueError, match="crop"):
        Preprocess(short_side=32, crop=64)
