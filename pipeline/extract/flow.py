"""The motion stream's input: dense optical flow between consecutive frames, rendered as an image.

A video of T frames gives T - 1 flow images (flow from frame t-1 to frame t), each a uint8 RGB-like
image: channel 0 = x flow, channel 1 = y flow, both clipped to +-bound pixels and mapped to 0-255
(128 = no motion), channel 2 = magnitude clipped to bound, mapped to 0-255. The frozen backbone
then treats these images exactly like RGB frames.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

from pipeline.config import FlowSpec
from pipeline.errors import ConfigError
from pipeline.extract.video import VideoDecodeError, cv2  # OpenCV as video.py sets it up: its own log lines off


def render_flow(flow: np.ndarray, bound: float) -> np.ndarray:
    """flow (H, W, 2) float pixels -> (H, W, 3) uint8: x, y in [-bound, bound] and magnitude in [0, bound]."""
    xy = np.clip(flow, -bound, bound)
    magnitude = np.minimum(np.sqrt((flow.astype(np.float64) ** 2).sum(-1)), bound)
    image = np.empty(flow.shape[:2] + (3,), dtype=np.float64)
    image[..., :2] = (xy + bound) / (2 * bound) * 255.0
    image[..., 2] = magnitude / bound * 255.0
    return np.rint(image).astype(np.uint8)


TVL1_NEEDS = "TV-L1 flow needs OpenCV's contrib build (pip install opencv-contrib-python-headless)"


def require_method(method: str) -> None:
    """Refuse, before any video is read, a flow method this OpenCV build lacks."""
    if method == "tvl1" and not hasattr(cv2, "optflow"):
        raise ConfigError(f"--flow-method tvl1: {TVL1_NEEDS}, which is not installed; or use --flow-method farneback")


def _engine(method: str):
    if method == "farneback":
        return lambda prev, nxt: cv2.calcOpticalFlowFarneback(prev, nxt, None, 0.5, 3, 15, 3, 5, 1.2, 0)
    if not hasattr(cv2, "optflow"):
        raise VideoDecodeError(TVL1_NEEDS)
    tvl1 = cv2.optflow.DualTVL1OpticalFlow_create()
    return lambda prev, nxt: tvl1.calc(prev, nxt, None)


def _gray(frame: np.ndarray, size: int) -> np.ndarray:
    h, w = frame.shape[:2]
    scale = size / min(h, w)
    gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
    if scale != 1.0:
        gray = cv2.resize(gray, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    return gray


def flow_chunks(chunks: Iterator[np.ndarray], spec: FlowSpec) -> Iterator[np.ndarray]:
    """RGB chunks (n, H, W, 3) of one video -> rendered flow chunks (n', h, w, 3); T frames give T - 1
    images in all. The last frame of each chunk is carried over to the next, so chunking changes nothing."""
    flow = _engine(spec.method)
    previous = None
    produced = 0
    for chunk in chunks:
        images = []
        for frame in chunk:
            gray = _gray(frame, spec.size)
            if previous is not None:
                images.append(render_flow(flow(previous, gray), spec.bound))
            previous = gray
        if images:
            produced += len(images)
            yield np.stack(images)
    if produced == 0:
        raise VideoDecodeError("a single frame: optical flow needs at least two")
