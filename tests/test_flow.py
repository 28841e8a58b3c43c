"""The motion stream: flow images rendered right on a translation of known size, T frames -> T-1 images
whatever the chunking, and flow features extracted and trained like RGB ones."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from pipeline.cache.reader import FeatureCache
from pipeline.config import FlowSpec
from pipeline.extract.flow import flow_chunks, render_flow
from pipeline.errors import TrainError
from pipeline.train.loop import fit
from pipeline.extract.video import VideoDecodeError
from tests.conftest import QUIET
from tests.conftest import small_train_config as small


def test_render_flow_by_hand():
    flow = np.array([[[25.0, -5.0], [0.0, 0.0]]], dtype=np.float32)  # (1, 2, 2)
    image = render_flow(flow, bound=20.0)
    assert image.dtype == np.uint8 and image.shape == (1, 2, 3)
    assert image[0, 0].tolist() == [255, 96, 255]  # x clipped to +20; y -5 -> 15/40*255; |v| 25.5 -> 20
    assert image[0, 1].tolist() == [128, 128, 0]  # no motion


def translated(shift=(3, -2), frames=4):
    rng = np.random.default_rng(0)
    base = cv2.GaussianBlur(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8), (0, 0), 2)
    return np.stack([np.roll(np.roll(base, shift[0] * t, axis=1), shift[1] * t, axis=0) for t in range(frames)])


def test_a_known_translation_is_rendered_as_that_motion():
    frames = translated((3, -2))
    images = np.concatenate(list(flow_chunks(iter([frames]), FlowSpec(size=96))))
    assert images.shape == (3, 96, 128, 3)
    inner = images[:, 20:-20, 20:-20].reshape(-1, 3).astype(float).mean(0)
    expected = [(3 + 20) / 40 * 255, (-2 + 20) / 40 * 255, np.hypot(3, 2) / 20 * 255]
    np.testing.assert_allclose(inner, expected, atol=4.0)


def test_chunking_does_not_change_the_flow():
    frames = translated((2, 1), frames=6)
    whole = np.concatenate(list(flow_chunks(iter([frames]), FlowSpec(size=64))))
    pieces = np.concatenate(list(flow_chunks(iter([frames[:1], frames[1:4], frames[4:]]), FlowSpec(size=64))))
    np.testing.assert_array_equal(whole, pieces)


def test_a_single_frame_has_no_flow():
    with pytest.raises(VideoDecodeError, match="optical flow needs at least two"):
        list(flow_chunks(iter([translated(frames=1)]), FlowSpec()))


@pytest.mark.skipif(hasattr(cv2, "optflow"), reason="opencv-contrib is installed")
def test_tvl1_without_opencv_contrib_says_what_to_install():
    with pytest.raises(VideoDecodeError, match="opencv-contrib"):
        list(flow_chunks(iter([translated()]), FlowSpec(method="tvl1")))


def test_flow_features_of_the_sample_dataset(flow_cache, sample_cache):
    with FeatureCache(flow_cache) as flow, FeatureCache(sample_cache) as rgb:
        assert flow.identity.modality == "flow"
        assert flow.identity.flow == FlowSpec(method="farneback", bound=20.0, size=64)
        assert len(flow.videos) == 80 and flow.verify() == []
        assert {v.key: v.frames + 1 for v in flow.videos} == {v.key: v.frames for v in rgb.videos}


def test_flow_runs_train_refuse_the_wrong_modality_fuse_with_rgb_and_predict(flow_cache, sample_cache, sample_dir,
                                                                           tmp_path):
    from pipeline.evaluate.fuse import run_fuse
    from pipeline.predict import predict

    with pytest.raises(TrainError, match="a flow cache, but this run asks for --modality rgb"):
        fit(small(flow_cache, tmp_path / "x", epochs=1), **QUIET)
    flow_run = fit(small(flow_cache, tmp_path / "flow", modality="flow", epochs=10), **QUIET)
    rgb_run = fit(small(sample_cache, tmp_path / "rgb", epochs=10), **QUIET)
    s = run_fuse([flow_run.out, rgb_run.out], tmp_path / "two_stream", method="sum")
    assert [r["name"] for r in s.rows] == ["flow high", "high", "fused"]

    # predict computes flow for flow runs, exactly as their cache did: the run's own test scores agree
    key = "FillUp/v_FillUp_g01_c01.avi"
    result = predict([sample_dir / "videos" / key], [flow_run.out], top=8)[0]
    scores = np.load(tmp_path / "flow" / "scores_test.npz")
    row = list(scores["keys"]).index(key)
    expected = {str(c): float(p) for c, p in zip(scores["classes"], scores["scores"][row])}
    for cls, p in result.top:
        assert p == pytest.approx(expected[cls], abs=2e-3)
