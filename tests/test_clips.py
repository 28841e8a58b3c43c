"""Clip sampling, table-driven: 30 frames, stride 8, at most 20 per video, short videos looped."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.train.clips import clip_frames, clip_starts
from pipeline.config import ClipSpec


@pytest.mark.parametrize(
    "frames, starts",
    [
        (1, [0]),
        (20, [0]),  # shorter than a clip: one looped clip
        (30, [0]),
        (37, [0]),
        (38, [0, 8]),
        (54, [0, 8, 16, 24]),
        (182, list(range(0, 153, 8))),  # exactly 20 clips
    ],
)
def test_clip_starts(frames, starts):
    assert clip_starts(frames) == starts


def test_more_than_twenty_clips_are_spread_evenly_over_the_video():
    starts = clip_starts(1000)  # 122 possible clips
    assert len(starts) == 20
    assert starts[0] == 0 and starts[-1] == 968  # the first and the last possible clip
    gaps = np.diff(starts)
    assert gaps.min() >= 48 and gaps.max() <= 56


def test_short_videos_loop():
    frames = clip_frames(12)
    assert frames.shape == (1, 30)
    assert frames[0].tolist() == list(range(12)) + list(range(12)) + list(range(6))


def test_clip_frames_and_configurable_spec():
    spec = ClipSpec(length=4, stride=2, max_clips=3)
    assert clip_frames(9, spec).tolist() == [[0, 1, 2, 3], [2, 3, 4, 5], [4, 5, 6, 7]]
    assert clip_starts(100, spec) == [0, 48, 96]
    with pytest.raises(ValueError):
        ClipSpec(length=0)
    with pytest.raises(ValueError):
        clip_starts(0)
