"""The one path from video files to per-frame features, used by extraction and by prediction.

Worker processes (a torch DataLoader over an IterableDataset) decode videos in bounded chunks, render
optical flow for a flow source, and on CPU preprocess the frames too; the main process gathers frames
of several videos into full batches, runs the backbone, and hands out each video's features as soon
as all of its frames are back. A video that fails to decode is handed out with its reason.
"""
from __future__ import annotations

import functools
import os
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from pipeline.config import FrameSource
from pipeline.errors import MrrnError, first_line
from pipeline.extract.flow import flow_chunks
from pipeline.extract.video import VideoDecodeError, VideoReader, preprocess
from pipeline.extract.workers import exit_with, worker_context

if TYPE_CHECKING:  # the decoding workers import this module: they need no backbone code
    from pipeline.extract.backbone import FeatureExtractor

WORKER_NICENESS = 10


@dataclass
class VideoFeatures:
    """One video's result: its features, or why it failed."""

    index: int  # position in the list of paths
    features: dict[str, np.ndarray] | None = None  # {level: (T, V * C)} float32, the views view-major
    info: dict | None = None  # VideoInfo fields: frames (= T), fps, width, height, frames_reported
    error: str | None = None


def frame_chunks(path: Path, source: FrameSource, chunk_frames: int) -> tuple[VideoReader, Iterator[np.ndarray]]:
    """The reader of ``path`` and what the backbone will see of it, as uint8 chunks ``(n, H, W, 3)``:
    decoded RGB frames, or for a flow source the rendered flow between consecutive frames."""
    reader = VideoReader(path, chunk_frames, fps=source.preprocess.fps)
    chunks = reader.chunks() if source.flow is None else flow_chunks(reader.chunks(), source.flow)
    return reader, chunks


class DecodeStream(IterableDataset):
    """Yields, per video, its chunks and then one final item with its info or its failure reason.

    Items: ``{"index", "frames": Tensor or None, "info": dict or None, "error": str or None}``.
    Frames are uint8 ``(n, H, W, 3)`` unless ``preprocess_here`` (CPU inference), then the preprocessed
    float ``(n, 3, crop, crop)``. Worker w of W takes videos w, w+W, ...
    """

    def __init__(self, paths: list[Path], source: FrameSource, chunk_frames: int, preprocess_here: bool):
        self.paths, self.source, self.chunk_frames = paths, source, chunk_frames
        self.preprocess_here = preprocess_here

    def __iter__(self):
        import cv2

        cv2.setNumThreads(1)
        w = get_worker_info()
        if w is not None:
            # Below the backbone's threads in priority: on a machine short of cores, inference keeps its
            # CPU and decoding fills the gaps (the prefetch queue keeps the backbone fed meanwhile).
            os.nice(WORKER_NICENESS)
        indices = range(len(self.paths)) if w is None else range(w.id, len(self.paths), w.num_workers)
        for index in indices:
            yield from self._video(index)

    def _video(self, index: int):
        reader, chunks = frame_chunks(self.paths[index], self.source, self.chunk_frames)
        try:
            for chunk in chunks:
                frames = torch.from_numpy(chunk)
                if self.preprocess_here:
                    frames = preprocess(frames, self.source.preprocess)
                yield {"index": index, "frames": frames, "info": None, "error": None}
        except VideoDecodeError as err:
            yield {"index": index, "frames": None, "info": None, "error": str(err)}
            return
        except Exception as err:  # an unexpected decoder failure must not end the whole run
            yield {"index": index, "frames": None, "info": None, "error": f"{type(err).__name__}: {first_line(err)}"}
            return
        info = dict(reader.info.__dict__)
        if self.source.flow is not None:  # T frames give T - 1 flow images
            info["frames"] -= 1
        yield {"index": index, "frames": None, "info": info, "error": None}


class Batcher:
    """Gathers frames from consecutive chunks (of any videos) into batches of exactly ``batch_size``,
    runs the backbone on each, and passes every video's share of the output to ``on_features``. A
    batch's features are read one batch later, so that on a GPU the host never waits for a transfer
    while there is work to queue."""

    def __init__(self, extractor: FeatureExtractor, batch_size: int, on_features):
        self.extractor, self.batch_size, self.on_features = extractor, batch_size, on_features
        self.pieces: deque[tuple[int, torch.Tensor]] = deque()  # (video index, frames (n, 3, h, w))
        self.count = 0
        self.in_flight = None  # (PendingFeatures, [(video index, frames)]) of the previous batch

    def add(self, index: int, frames: torch.Tensor) -> None:
        self.pieces.append((index, frames))
        self.count += len(frames)
        while self.count >= self.batch_size:
            self._run(self.batch_size)

    def flush(self) -> None:
        if self.count:
            self._run(self.count)
        self._deliver()

    def _run(self, n: int) -> None:
        take, owners, left = [], [], n
        while left:
            index, frames = self.pieces[0]
            k = min(left, len(frames))
            take.append(frames[:k])
            owners.append((index, k))
            if k == len(frames):
                self.pieces.popleft()
            else:
                self.pieces[0] = (index, frames[k:])
            left -= k
        self.count -= n
        pending = self.extractor.submit(torch.cat(take))
        self._deliver()
        self.in_flight = (pending, owners)

    def _deliver(self) -> None:
        if self.in_flight is None:
            return
        pending, owners = self.in_flight
        self.in_flight = None
        out, row = pending.result(), 0  # {level: (n, C)}
        for index, k in owners:
            self.on_features(index, {lvl: feats[row : row + k].numpy() for lvl, feats in out.items()})
            row += k


@dataclass
class _Parts:
    chunks: list[dict[str, np.ndarray]] = field(default_factory=list)
    done: int = 0  # frames whose features came back
    info: dict | None = None  # set when the video's last item arrived


class _Assembly:
    """Puts each video's features back together and queues the videos that are complete or failed.
    Each frame comes back as ``views`` rows (frame-major), which become one row of ``views * C``."""

    def __init__(self, views: int = 1):
        self.views = views
        self.parts: dict[int, _Parts] = {}
        self.finished: deque[VideoFeatures] = deque()

    def expect(self, index: int) -> None:
        """Frames of video ``index`` are on their way to the backbone."""
        self.parts.setdefault(index, _Parts())

    def fail(self, index: int, reason: str) -> None:
        self.parts.pop(index, None)  # features of its frames still in the batcher are dropped
        self.finished.append(VideoFeatures(index, error=reason))

    def add_features(self, index: int, feats: dict[str, np.ndarray]) -> None:
        parts = self.parts.get(index)
        if parts is None:  # the video failed while its earlier frames were queued
            return
        parts.chunks.append(feats)
        parts.done += len(next(iter(feats.values())))
        self._finish_if_complete(index)

    def set_info(self, index: int, info: dict) -> None:
        self.parts.setdefault(index, _Parts()).info = info
        self._finish_if_complete(index)

    def _finish_if_complete(self, index: int) -> None:
        parts = self.parts[index]
        if parts.info is None or parts.done != parts.info["frames"] * self.views:
            return
        del self.parts[index]
        levels = parts.chunks[0].keys()
        frames = parts.info["frames"]
        # (T * V, C) frame-major -> (T, V * C) view-major
        features = {lvl: np.concatenate([c[lvl] for c in parts.chunks]).reshape(frames, -1) for lvl in levels}
        self.finished.append(VideoFeatures(index, features, parts.info))


class DecodeWorkerDied(MrrnError):
    """A decoding worker process ended without finishing (killed by the OS, typically out of memory)."""


def _guarded(loader, workers: int):
    """The loader's items; a worker that dies becomes one line instead of a chain of tracebacks."""
    try:
        yield from loader
    except (ConnectionError, EOFError) as err:
        raise DecodeWorkerDied(_worker_died(f"{type(err).__name__}: {err}")) from None
    except RuntimeError as err:
        if not workers or "worker" not in str(err).lower():
            raise
        raise DecodeWorkerDied(_worker_died(first_line(err))) from None


def _worker_died(detail: str) -> str:
    return (f"a decoding worker died ({detail}), most likely killed by the system for lack of memory; "
            "finished videos are kept: run the same command again, with fewer --workers if it recurs")


class _Uploader:
    """uint8 frames to the GPU and through preprocessing on a side stream, so that copies and resizing
    overlap the backbone's work on the main stream."""

    def __init__(self, device: torch.device, source: FrameSource):
        self.device, self.source = device, source
        self.stream = torch.cuda.Stream(device)

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        with torch.cuda.stream(self.stream):
            x = preprocess(frames.to(self.device, non_blocking=True), self.source.preprocess)
        main = torch.cuda.current_stream(self.device)
        main.wait_stream(self.stream)  # the backbone uses x only once it is ready
        x.record_stream(main)  # and its memory is not reused before the main stream is done with it
        return x


def video_features(paths: list[Path], source: FrameSource, extractor: FeatureExtractor, *, batch_size: int,
                   workers: int = 0, chunk_frames: int = 64) -> Iterator[VideoFeatures]:
    """Each video's features (or failure) as soon as it is complete, in the order they complete.
    ``workers`` decoding processes (0: decode in this process)."""
    on_gpu = extractor.device.type == "cuda"
    # a GPU resizes in float32; frames whose cache was made with the CPU's uint8 kernel are preprocessed
    # on the CPU, in the workers, even when the backbone runs on a GPU (prediction with such a cache)
    preprocess_here = not on_gpu or source.preprocess.resize.uint8
    stream = DecodeStream(paths, source, chunk_frames, preprocess_here=preprocess_here)
    loader = DataLoader(
        stream, batch_size=None, num_workers=workers, pin_memory=on_gpu,
        prefetch_factor=4 if workers else None, multiprocessing_context=worker_context() if workers else None,
        worker_init_fn=functools.partial(exit_with, os.getpid()) if workers else None,
    )
    assembly = _Assembly(len(source.preprocess.views))
    batcher = Batcher(extractor, batch_size, assembly.add_features)
    upload = _Uploader(extractor.device, source) if not preprocess_here else None
    for item in _guarded(loader, workers):
        index = item["index"]
        if item["error"] is not None:
            assembly.fail(index, item["error"])
        elif item["frames"] is not None:
            frames = item["frames"]
            if upload is not None:
                frames = upload(frames)
            assembly.expect(index)
            batcher.add(index, frames)
        else:
            assembly.set_info(index, item["info"])
        while assembly.finished:
            yield assembly.finished.popleft()
    batcher.flush()
    while assembly.finished:
        yield assembly.finished.popleft()
