"""Cached views (--views): where the crops land, a flip view through the real extraction, how a cache
stores and describes them, training that draws them under a seed, evaluation and predict that average
them, and a sweep over several caches."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from torchvision.transforms.v2 import functional as TF

from cli import main
from pipeline.cache.reader import ConfigMismatchError, FeatureCache
from pipeline.cache.inspect import inspect_cache
from pipeline.train.clips import clip_frames
from pipeline.config import VIEW_SETS, ExtractConfig, Preprocess
from pipeline.train.level_data import load_level_data
from pipeline.errors import ConfigError
from pipeline.extract.run import run_extract
from pipeline.train.heads import build_model
from pipeline.predict import predict
from pipeline.train.loop import StepContext, evaluate, fit
from pipeline.extract.video import preprocess
from tests.conftest import key_ordered, QUIET, folder_dataset, small_extract_config, small_train_config

TINY = dict(epochs=2, hidden=16, layers=1)


def write_lossless(path, frames: np.ndarray):
    """An FFV1 (lossless) .avi: decoding gives back exactly ``frames`` (T, H, W, 3) RGB."""
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"FFV1"), 25.0, (frames.shape[2], frames.shape[1]))
    for frame in frames:
        writer.write(np.ascontiguousarray(frame[..., ::-1]))
    writer.release()
    return path


@pytest.fixture(scope="module")
def view_caches(tmp_path_factory):
    """One folder dataset extracted twice: centre only, and centre + flip."""
    tmp = tmp_path_factory.mktemp("views")
    root = folder_dataset(tmp / "data", per_class=4, frames=20)
    caches = {}
    for views in ("center", "center,flip"):
        caches[views] = tmp / f"{views.replace(',', '_')}.h5"
        run_extract(small_extract_config(root, caches[views], views=views), **QUIET)
    return root, caches


def test_views_are_where_torchvisions_five_and_ten_crops_put_them():
    frames = torch.randint(0, 256, (2, 80, 100, 3), dtype=torch.uint8)  # (T, H, W, 3); short side 80: no resize
    pre = Preprocess(short_side=80, crop=64, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), views=VIEW_SETS["ten"])
    got = preprocess(frames, pre).reshape(2, 10, 3, 64, 64)  # (T, V, 3, crop, crop)
    x = frames.permute(0, 3, 1, 2).float() / 255  # (T, 3, H, W)
    tl, tr, bl, br, center, *flipped = TF.ten_crop(x, [64, 64])
    # the same ten images; ours: centre first, then the corners, then each mirrored ("top-left-flip" is the
    # top-left crop mirrored, which is the top-right crop of torchvision's mirrored frame)
    want = [center, tl, tr, bl, br, flipped[4], flipped[1], flipped[0], flipped[3], flipped[2]]
    for v, (name, crop) in enumerate(zip(pre.views, want)):
        torch.testing.assert_close(got[:, v], crop, msg=f"view {name}")
    assert torch.equal(tl, x[..., :64, :64]) and torch.equal(br, x[..., 16:, 36:])  # corners are corners


def test_a_flip_view_is_the_centre_view_of_the_mirrored_video(tmp_path):
    """Through the real extraction: decode, resize, crop, backbone, cache."""
    t = np.linspace(0, 1, 96)
    frames = np.stack([np.stack([np.outer(np.linspace(0, 1, 64), np.sin(6 * t + k) * 0.5 + 0.5) * 255] * 3, -1)
                       for k in range(12)]).astype(np.uint8)  # (T, 64, 96, 3), not symmetric left-right
    frames[:, :, :30, 0] = 200
    for cls in ("left", "right"):
        write_lossless(tmp_path / "data" / cls / "plain.avi", frames)
        write_lossless(tmp_path / "data" / cls / "mirrored.avi", frames[:, :, ::-1])
    out = tmp_path / "flip.h5"
    run_extract(small_extract_config(tmp_path / "data", out, views="center,flip"), **QUIET)
    with FeatureCache(out) as c:
        for level, width in c.identity.level_widths.items():
            plain = c.video_features("left/plain.avi", level).astype(np.float32).reshape(12, 2, width)  # (T, V, C)
            mirrored = c.video_features("left/mirrored.avi", level).astype(np.float32).reshape(12, 2, width)
            np.testing.assert_allclose(plain[:, 1], mirrored[:, 0], rtol=1e-2, atol=1e-2)
            np.testing.assert_allclose(plain[:, 0], mirrored[:, 1], rtol=1e-2, atol=1e-2)
            assert np.abs(plain[:, 0] - plain[:, 1]).max() > 0.1  # the two views do differ


def test_a_views_cache_stores_describes_and_guards_its_views(view_caches, tmp_path):
    root, caches = view_caches
    with FeatureCache(caches["center"]) as one, FeatureCache(caches["center,flip"]) as two:
        assert "views" not in json.loads(one.attrs["config"])["preprocess"]  # a default cache as before views
        assert two.identity.views == ("center", "flip")
        assert two.level_shape("high") == (two.total_frames, 2 * 512)
        # view 0 of the two-view cache is the centre-only cache's feature
        np.testing.assert_allclose(key_ordered(two, "mid")[:, :256].astype(np.float32),
                                   key_ordered(one, "mid").astype(np.float32), rtol=1e-2, atol=1e-2)
    report = "\n".join(inspect_cache(caches["center,flip"]).lines)
    assert "views       2 per frame (center, flip)" in report and "2x the size" in report
    assert "= 2 views x 512" in report
    with pytest.raises(ConfigMismatchError, match="preprocess.views"):
        run_extract(small_extract_config(root, caches["center,flip"], views="five"), **QUIET)
    with pytest.raises(ConfigError, match="--views applies to RGB caches"):
        ExtractConfig(dataset="folder", root=root, out=tmp_path / "f.h5", modality="flow", views="ten")


def test_training_draws_one_view_per_clip_under_its_seed(view_caches, tmp_path):
    _, caches = view_caches
    runs = {}
    for name, cache, settings in (("random", "center,flip", {}), ("again", "center,flip", {}),
                                  ("center", "center,flip", {"train_views": "center", "test_views": "center"}),
                                  ("plain", "center", {})):
        runs[name] = tmp_path / name
        fit(small_train_config(caches[cache], runs[name], **TINY, **settings), **QUIET)
    lines = {name: [json.loads(line) for line in open(run / "metrics.jsonl")] for name, run in runs.items()}
    losses = {name: [m["loss"] for m in ms] for name, ms in lines.items()}
    assert losses["random"] == losses["again"]  # the same seed draws the same views
    assert losses["random"] != losses["center"]  # and it does draw the flipped view
    # the centre view of a two-view cache is a centre-only cache (up to float16 storage of the features)
    assert losses["center"] == pytest.approx(losses["plain"], rel=1e-3)
    settings = json.loads((runs["center"] / "config.json").read_text())["train"]  # the run record's settings
    assert (settings["train_views"], settings["test_views"]) == ("center", "center")


def test_evaluation_averages_the_video_score_over_views(view_caches):
    _, caches = view_caches
    cfg = small_train_config(caches["center,flip"], "unused", **TINY)
    data = load_level_data(cfg, torch.device("cpu"), log=lambda m: None)
    torch.manual_seed(0)
    model = build_model(cfg, data.features.shape[-1], len(data.classes), data.mean, data.std).eval()
    scores = {views: evaluate(model, data.features, data.test, StepContext(torch.device("cpu")),
                              num_classes=len(data.classes), batch_size=5, views=views)["scores"]
              for views in ("all", "center")}
    with FeatureCache(caches["center,flip"]) as c:  # by hand, from the cache file
        for i, key in enumerate(data.test.keys):
            feats = torch.from_numpy(c.video_features(key, "high").astype(np.float32)).reshape(-1, 2, 512)
            clips = torch.from_numpy(clip_frames(len(feats), cfg.clip))  # (n, L)
            with torch.no_grad():
                per_view = [F.softmax(model(feats[:, v][clips]), dim=1).mean(0) for v in (0, 1)]  # (K,) each
            np.testing.assert_allclose(scores["all"][i], ((per_view[0] + per_view[1]) / 2).numpy(), atol=1e-5)
            np.testing.assert_allclose(scores["center"][i], per_view[0].numpy(), atol=1e-5)


def test_predict_averages_the_views_as_evaluation_did(view_caches, tmp_path):
    root, caches = view_caches
    run = tmp_path / "run"
    fit(small_train_config(caches["center,flip"], run, **TINY), **QUIET)
    stored = np.load(run / "scores_test.npz")
    for row in (0, len(stored["keys"]) - 1):
        [pred] = predict([root / str(stored["keys"][row])], [run], top=2, device="cpu")
        expected = dict(zip(map(str, stored["classes"]), stored["scores"][row]))
        for cls, p in pred.top:
            assert p == pytest.approx(expected[cls], abs=2e-3)


def test_a_sweep_over_several_caches_writes_one_table_with_a_cache_column(view_caches, tmp_path):
    root, caches = view_caches
    out = tmp_path / "sweep"
    args = ["sweep", "--caches", f"{caches['center']},{caches['center,flip']}", "--out", str(out), "--levels",
            "low,high", "--models", "meanpool", "--epochs", "1", "--normalize", "--lr", "1e-3", "--quiet"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [(r["cache"], r["backbone"], r["views"], r["level"]) for r in rows] == [
        ("center", "resnet34", "center", "low"), ("center", "resnet34", "center", "high"),
        ("center_flip", "resnet34", "center,flip", "low"), ("center_flip", "resnet34", "center,flip", "high")]
    assert (out / "center" / "high_meanpool" / "summary.json").is_file()
    table = (out / "results.md").read_text()
    assert "| cache | model | hidden | layers | pool | low | high |" in table
    for r in rows[::2]:
        assert f"| {r['cache']} ({r['backbone']}, {r['views']}) | meanpool |" in table

    other = tmp_path / "other"  # another dataset: refused, naming both caches
    for cls in ("run", "sit"):
        for i in range(2):
            (other / cls).mkdir(parents=True, exist_ok=True)
            (other / cls / f"{i}.avi").write_bytes((root / "jump" / "jump0.avi").read_bytes())
    run_extract(small_extract_config(other, tmp_path / "other.h5"), **QUIET)
    result = CliRunner().invoke(main, [*args[:2], f"{caches['center']},{tmp_path / 'other.h5'}", *args[3:]])
    assert result.exit_code != 0 and "different datasets" in result.output


def test_twostream_refuses_a_cache_of_several_views(view_caches):
    from pipeline.train.level_data import read_level_table
    from pipeline.train.two_streams import join_streams
    from pipeline.errors import TrainError

    _, caches = view_caches
    cfg = small_train_config(caches["center,flip"], "unused")
    table = read_level_table(str(caches["center,flip"]), "rgb", cfg)
    with pytest.raises(TrainError, match="twostream reads centre-only caches; this one holds 2 views"):
        join_streams(table, table)
