"""Video decoding with OpenCV in bounded chunks, and the frame preprocessing of the paper.

Decoding never holds a whole video: :meth:`VideoReader.chunks` yields at most ``chunk_frames``
frames (and at most ``max_chunk_bytes``) at a time. Frame counts are the frames actually decoded,
never ``CAP_PROP_FRAME_COUNT``; that header value is kept only to notice truncated files.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # keep FFmpeg's own warnings off the progress bar
os.environ.setdefault("OPENCV_LOG_LEVEL", "SILENT")  # mrrn says itself, in one line, why a video cannot be read

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torchvision.transforms import InterpolationMode  # noqa: E402
from torchvision.transforms.v2 import functional as TF  # noqa: E402

from pipeline.config import Preprocess  # noqa: E402
from pipeline.errors import MrrnError  # noqa: E402

# A file that decodes to less than this share of the frames its header promises is called truncated.
MIN_DECODED_SHARE = 0.9
# Still images that FFmpeg would open as a one-frame "video": refused by their first bytes.
IMAGE_SIGNATURES = {b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG", b"GIF87a": "GIF", b"GIF89a": "GIF",
                    b"BM": "BMP", b"II*\x00": "TIFF", b"MM\x00*": "TIFF"}
MAX_FRAME_COUNT = 10**9  # a header claiming more (or none, or a negative count) is read as "unknown" (-1)
MAX_CHUNK_BYTES = 32 << 20  # raw RGB bytes per chunk: 1080p video -> 5 frames per chunk


class VideoDecodeError(MrrnError):
    """A video that cannot be used; ``str(err)`` is a one-line reason (the caller names the file)."""


@dataclass(frozen=True)
class VideoInfo:
    frames: int  # frames actually decoded
    fps: float  # container frame rate, 0.0 when unknown
    width: int  # original frame size
    height: int
    frames_reported: int  # CAP_PROP_FRAME_COUNT, for the record; -1 when unknown


class VideoReader:
    """Decode one video as RGB uint8 chunks ``(n, H, W, 3)``; :attr:`info` is set once decoding ends."""

    def __init__(self, path: str | os.PathLike, chunk_frames: int = 64, max_chunk_bytes: int = MAX_CHUNK_BYTES, *,
                 fps: float | None = None):
        self.path = Path(path)
        self.chunk_frames = chunk_frames
        self.max_chunk_bytes = max_chunk_bytes
        self.sampler = FrameSampler(fps) if fps else None  # None: every frame
        self.info: VideoInfo | None = None

    def _open(self) -> cv2.VideoCapture:
        if not self.path.exists():
            raise VideoDecodeError("file not found")
        if not self.path.is_file():
            raise VideoDecodeError("not a regular file")
        if not os.access(self.path, os.R_OK):
            raise VideoDecodeError("file is not readable (permission denied)")
        if self.path.stat().st_size == 0:
            raise VideoDecodeError("empty file (0 bytes)")
        with open(self.path, "rb") as f:
            head = f.read(12)
        image = next((kind for magic, kind in IMAGE_SIGNATURES.items() if head.startswith(magic)), None)
        if image is None and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
            image = "WebP"
        if image is not None:
            raise VideoDecodeError(f"a {image} image, not a video")
        # one FFmpeg thread: decoding runs beside the backbone's threads (in worker processes, or between
        # batches), and several workers decode at once on a GPU machine
        cap = cv2.VideoCapture(str(self.path), cv2.CAP_FFMPEG, [cv2.CAP_PROP_N_THREADS, 1])
        if not cap.isOpened():  # not something FFmpeg reads: let OpenCV try its other backends
            cap.release()
            cap = cv2.VideoCapture(str(self.path))
        if not cap.isOpened():
            cap.release()
            raise VideoDecodeError("OpenCV cannot open it as a video (not a video, damaged header or unknown codec)")
        return cap

    def chunks(self) -> Iterator[np.ndarray]:
        cap = self._open()
        try:
            fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
            reported = _frame_count(cap.get(cv2.CAP_PROP_FRAME_COUNT))
            decoded, kept, size, chunk = 0, 0, None, []
            limit = self.chunk_frames
            while True:
                ok, bgr = cap.read()
                if not ok or bgr is None:
                    break
                if size is None:
                    size = bgr.shape
                    limit = max(1, min(self.chunk_frames, self.max_chunk_bytes // bgr.nbytes))
                elif bgr.shape != size:
                    raise VideoDecodeError(f"frame {decoded} is {bgr.shape[1]}x{bgr.shape[0]}, "
                                           f"the first was {size[1]}x{size[0]}")
                decoded += 1
                if self.sampler is not None and not self.sampler.keep(cap, decoded - 1, fps):
                    continue  # decoded (the stream is sequential) but not sampled
                chunk.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
                kept += 1
                if len(chunk) == limit:
                    yield np.stack(chunk)
                    chunk = []
            if decoded == 0:
                raise VideoDecodeError("no frames could be decoded")
            if reported > 0 and decoded < MIN_DECODED_SHARE * reported:
                raise VideoDecodeError(f"truncated: decoded {decoded} of the {reported} frames its header lists")
            if chunk:
                yield np.stack(chunk)
            if not np.isfinite(fps) or fps < 0 or fps > 1000:  # unknown, or a damaged header
                fps = 0.0
            self.info = VideoInfo(kept, fps, size[1], size[0], reported)
        finally:
            cap.release()


class FrameSampler:
    """``fps`` frames per second of video, chosen by each frame's timestamp: a frame is kept when it is the
    first at or after the next sample time (0, 1/fps, 2/fps, ...). A video with fewer frames per second
    keeps every frame; none is ever repeated."""

    def __init__(self, fps: float):
        self.step, self.next = 1.0 / fps, 0.0

    def keep(self, cap: cv2.VideoCapture, index: int, fps: float) -> bool:
        """Whether frame ``index``, just read from ``cap`` (container frame rate ``fps``), is sampled."""
        msec = cap.get(cv2.CAP_PROP_POS_MSEC)  # the frame's own time, once read
        if index and not msec > 0:  # no timestamps: the frame rate says when the frame is
            if not fps > 0:
                raise VideoDecodeError("neither frame times nor a frame rate: it cannot be sampled at --fps")
            msec = 1000.0 * index / fps
        t = msec / 1000.0
        if t + 1e-6 < self.next:
            return False
        while self.next <= t + 1e-6:
            self.next += self.step
        return True


def _frame_count(value: float) -> int:
    """The container's frame count, or -1 where it is unknown or absurd (FFmpeg reports INT64_MIN for
    streams without one)."""
    if not np.isfinite(value) or value <= 0 or value > MAX_FRAME_COUNT:
        return -1
    return int(value)


def crop_view(x: torch.Tensor, crop: int, view: str) -> torch.Tensor:
    """One view of frames ``(..., H, W)``: the centre crop, a corner crop ('top-left', ...) as in
    torchvision's ``five_crop``, or either mirrored left-right ('flip' is the mirrored centre crop)."""
    base = view.removesuffix("-flip").removesuffix("flip") or "center"
    h, w = x.shape[-2:]
    if base == "center":
        out = TF.center_crop(x, [crop, crop])
    else:
        top = 0 if base.startswith("top") else h - crop
        left = 0 if base.endswith("left") else w - crop
        out = x[..., top : top + crop, left : left + crop]
    return out.flip(-1) if view.endswith("flip") else out


def preprocess(frames: torch.Tensor, pre: Preprocess) -> torch.Tensor:
    """RGB uint8 frames ``(T, H, W, 3)`` on any device -> normalised float32 ``(T * V, 3, crop, crop)``,
    the ``V = len(pre.views)`` views of each frame next to each other (frame-major).

    Shorter side resized to ``pre.short_side`` (antialiased, with ``pre.resize``'s interpolation: bilinear,
    or bicubic for weights trained with it), the views cropped (the centre crop ``pre.crop`` by default),
    scaled to [0, 1], normalised with ``pre.mean`` / ``pre.std``. The resize runs as ``pre.resize`` says:
    torchvision's native uint8 kernel (CPU only; 10-30x faster there than resizing float frames) or
    float32 rounded back to whole grey levels (what a GPU runs, and the CPU too when a cache says so).
    The result is channels-last in memory, the layout the backbone runs fastest in.
    """
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != torch.uint8:
        raise ValueError(f"expected uint8 frames (T, H, W, 3), got {tuple(frames.shape)} {frames.dtype}")
    x = frames.permute(0, 3, 1, 2)  # (T, 3, H, W) uint8, channels-last in memory: torch's fast path
    mode = InterpolationMode(pre.resize.interpolation)
    if not pre.resize.uint8 or x.is_cuda:
        x = TF.resize(x.float(), [pre.short_side], interpolation=mode, antialias=True).round_().clamp_(0, 255)
    else:
        x = TF.resize(x, [pre.short_side], interpolation=mode, antialias=True)
    if len(pre.views) == 1:
        x = crop_view(x, pre.crop, pre.views[0])  # (T, 3, crop, crop)
    else:
        x = torch.stack([crop_view(x, pre.crop, view) for view in pre.views], dim=1).flatten(0, 1)  # (T * V, 3, crop, crop)
    x = TF.normalize(x.float().div_(255.0), list(pre.mean), list(pre.std))
    return x.contiguous(memory_format=torch.channels_last)  # (T * V, 3, crop, crop)
