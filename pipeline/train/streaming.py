"""A rank's videos read from the cache while it trains, for a level (or share) larger than its memory budget.

The videos are cut, in storage order, into groups of about ``group_bytes``; each group is one or a few
contiguous reads. An epoch visits the groups in a seeded order, ``SHUFFLE_GROUPS`` at a time: the clips of
those groups are shuffled together (a bounded shuffle buffer) and trained on in batches, while a background
thread reads the next groups, so compute does not wait for the disk. Every clip is still seen once an
epoch; only the order is more local than in memory (WebDataset's and tf.data's pattern). docs/training.md
("Memory") says more. Evaluation reads the groups in storage order.
"""
from __future__ import annotations

import ctypes
import queue
import threading
from dataclasses import dataclass

import numpy as np
import torch

from pipeline.cache.reader import FeatureCache
from pipeline.config import ClipSpec
from pipeline.errors import TrainError
from pipeline.train.clips import clip_frames
from pipeline.train.shares import all_finite, frame_sums

SHUFFLE_GROUPS = 2  # groups whose clips are shuffled together; one more window is read meanwhile


def release_freed_memory() -> None:
    """Give the memory freed since (windows read and dropped, HDF5's read buffers) back to the system: the C
    library keeps freed blocks for reuse otherwise, and a process that reads its data in pieces would hold on to
    more than it uses. glibc's ``malloc_trim``; a no-op elsewhere."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


@dataclass(frozen=True)
class Window:
    """Some videos' rows in memory with their clips: what one step of streaming holds."""

    features: torch.Tensor  # (frames, V, C) on the training device
    clip_rows: torch.Tensor  # (clips, L) rows of ``features``
    clip_video: torch.Tensor  # (clips,) index of each clip's video among the part's keys


class StreamedPart:
    """One part (train, test, validation) of this rank's videos, streamed from the cache at ``path``."""

    def __init__(self, path: str, level: str, videos: dict[str, tuple[int, int, int]], keys: list[str], *,
                 all_keys: list[str], clip: ClipSpec, views: int, group_bytes: int, row_bytes: int):
        self.path, self.level, self.clip, self.views = path, level, clip, views
        self.videos = videos  # key -> (first row in the cache, frames, label)
        index = {k: i for i, k in enumerate(all_keys)}  # the part's keys, on every rank
        stored = sorted(keys, key=lambda k: videos[k][0])
        self.groups: list[list[tuple[str, int]]] = [[]]  # (key, index in the part) in storage order
        size = 0
        for key in stored:
            frames = videos[key][1]
            if self.groups[-1] and size + frames * row_bytes > group_bytes:
                self.groups.append([])
                size = 0
            self.groups[-1].append((key, index[key]))
            size += frames * row_bytes
        self.groups = [g for g in self.groups if g]

    def clips_in(self, groups: list[list[tuple[str, int]]]) -> int:
        return sum(len(clip_frames(self.videos[k][1], self.clip)) for g in groups for k, _ in g)

    def windows(self, generator: torch.Generator | None, device: torch.device):
        """The part's windows: SHUFFLE_GROUPS groups each in a seeded order (``generator``), or one group each
        in storage order; read ahead by a background thread, one window at a time."""
        plan = self._plan(generator)
        return _read_ahead(lambda: FeatureCache(self.path), lambda cache, groups: self._window(cache, groups, device), plan)

    def window_clips(self, generator: torch.Generator | None) -> list[int]:
        """The number of clips of each window :meth:`windows` gives for a generator in this state (no read, and
        the generator left as it is)."""
        return [self.clips_in(groups) for groups in self._plan(None if generator is None else _copy(generator))]

    def _plan(self, generator: torch.Generator | None) -> list[list[list[tuple[str, int]]]]:
        """The groups of each window, in the order :meth:`windows` reads them (``generator`` drawn from)."""
        order = list(range(len(self.groups)))
        if generator is not None:
            order = torch.randperm(len(order), generator=generator).tolist()
        step = SHUFFLE_GROUPS if generator is not None else 1
        return [[self.groups[i] for i in order[at : at + step]] for at in range(0, len(order), step)]

    def _window(self, cache: FeatureCache, groups: list[list[tuple[str, int]]], device: torch.device) -> Window:
        videos = [kv for g in groups for kv in g]
        rows, packed = cache.read_videos(self.level, [self.videos[k][:2] for k, _ in videos])  # (frames, V * C)
        if not all_finite(rows):
            bad = [k for (k, _), at in zip(videos, packed) if not all_finite(rows[at : at + self.videos[k][1]])]
            raise TrainError(f"{self.path}: level {self.level} has non-finite features in {len(bad)} video(s): "
                             f"{', '.join(bad[:3])}; extract them again with `mrrn extract ... --redo-damaged`")
        clips = [clip_frames(self.videos[k][1], self.clip) + at for (k, _), at in zip(videos, packed)]
        owner = [np.full(len(c), i) for (_, i), c in zip(videos, clips)]
        return Window(features=torch.from_numpy(rows.reshape(len(rows), self.views, -1)).to(device),
                      clip_rows=torch.from_numpy(np.concatenate(clips)).to(device),
                      clip_video=torch.from_numpy(np.concatenate(owner)).to(device))


def _copy(generator: torch.Generator) -> torch.Generator:
    copy = torch.Generator()
    copy.set_state(generator.get_state())
    return copy


def _read_ahead(opened, read, plan: list):
    """``read(source, item)`` of every item of ``plan`` in order, on a background thread that holds ``source =
    opened()`` open meanwhile, each read while the previous result is in use; the first error is raised here."""
    results: queue.Queue = queue.Queue(maxsize=1)
    stop = threading.Event()

    def work():
        try:
            with opened() as source:
                for item in plan:
                    if stop.is_set():
                        return
                    results.put((read(source, item), None))
        except BaseException as err:  # handed to the consumer
            results.put((None, err))

    thread = threading.Thread(target=work, name="mrrn-stream", daemon=True)
    thread.start()
    try:
        for _ in plan:
            window, error = results.get()
            if error is not None:
                raise error
            yield window
            window = None  # not held while the next is awaited: a window in use, one queued, one being read
            release_freed_memory()
    finally:
        stop.set()
        while thread.is_alive():  # let a reader blocked on a full queue finish
            try:
                results.get_nowait()
            except queue.Empty:
                thread.join(0.05)


def statistics(part: StreamedPart, all_views: bool, width: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(sum, sum of squares, count) per dimension (``width`` of them) over every frame of the part's videos,
    through every view (``all_views``) or the centre one, read group by group; ranks add them up."""
    total, squares, count = np.zeros(width), np.zeros(width), 0
    for window in part.windows(None, torch.device("cpu")):
        seen = window.features if all_views else window.features[:, :1]  # (frames, V, C)
        t, sq, n = frame_sums(seen.numpy(), np.arange(len(seen)))
        total, squares, count = total + t, squares + sq, count + n
    return total, squares, count
