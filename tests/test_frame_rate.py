"""extract --fps: frames sampled at a fixed rate by their timestamps; the backbone sees only those, the setting
is part of the cache's identity, and clips count sampled frames."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.cache.reader import ConfigMismatchError, FeatureCache
from pipeline.errors import ConfigError
from pipeline.extract.run import run_extract
from pipeline.extract.video import VideoReader
from tests.conftest import QUIET, small_extract_config, write_video


@pytest.fixture(scope="module")
def sampled(sample_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("fps") / "fps5.h5"
    cfg = small_extract_config(sample_dir / "videos", out, dataset="ucf101", splits=sample_dir / "ucfTrainTestlist", fps=5)
    run_extract(cfg, **QUIET)
    return out


def test_frames_are_chosen_by_timestamp(tmp_path):
    path = write_video(tmp_path / "v.avi", 50, fps=25.0)  # 2 s
    reader = VideoReader(path, fps=5)
    frames = np.concatenate(list(reader.chunks()))
    everything = np.concatenate(list(VideoReader(path).chunks()))
    assert reader.info.frames == len(frames) == 10  # 0, 0.2, ..., 1.8 s
    np.testing.assert_array_equal(frames, everything[::5])
    slow = VideoReader(path, fps=100)  # more than the video has: every frame once, none repeated
    assert sum(len(c) for c in slow.chunks()) == 50


def test_the_backbone_sees_only_sampled_frames_and_the_cache_says_so(sampled, sample_cache):
    with FeatureCache(sampled) as every5, FeatureCache(sample_cache) as every:
        assert every5.identity.preprocess.fps == 5 and every.identity.preprocess.fps is None
        assert "fps" not in every.identity.to_json()["preprocess"]  # caches without --fps read as before
        for rec in every5.videos[:6]:
            full = every.video_features(rec.key, "high")  # (T, C) every frame at 25 fps
            assert rec.frames == len(range(0, len(full), 5))
            np.testing.assert_allclose(every5.video_features(rec.key, "high").astype(np.float32),
                                       full[::5].astype(np.float32), rtol=1e-2, atol=1e-2)
        assert any("5 per second of video" in line for line in every5.identity.describe())


def test_another_rate_into_the_same_cache_is_refused(sampled, sample_dir):
    cfg = small_extract_config(sample_dir / "videos", sampled, dataset="ucf101", splits=sample_dir / "ucfTrainTestlist",
                               fps=10)
    with pytest.raises(ConfigMismatchError, match=r"preprocess.fps: cache 5, this run 10\)"):
        run_extract(cfg, **QUIET)


def test_fps_is_for_rgb_caches_and_must_be_positive(tmp_path):
    with pytest.raises(ConfigError, match="--fps applies to RGB caches"):
        small_extract_config(tmp_path, tmp_path / "c.h5", modality="flow", fps=5)
    with pytest.raises(ConfigError, match="--fps -1"):
        from pipeline.config import Preprocess

        Preprocess(fps=-1)
