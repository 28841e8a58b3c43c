"""--backbone timm:NAME: the levels match timm's own forward_intermediates (transformers) and features_only
(CNNs) on the same preprocessed frames, preprocessing comes from the model's pretrained_cfg, weights load
from a local file or fail in one line when they are not cached, and the cache trains, sweeps and predicts."""
from __future__ import annotations

import csv

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file

from pipeline.cache.reader import FeatureCache
from pipeline.extract.backbone import choose_backbone
from pipeline.extract.features import frame_chunks
from pipeline.extract.run import run_extract
from pipeline.extract.video import preprocess
from pipeline.predict import predict
from pipeline.train.loop import fit
from tests.conftest import QUIET, folder_dataset, one_line_error, run, small_extract_config, small_train_config

VIT, CNN = "timm:vit_tiny_patch16_224", "timm:resnet18"


def _frames(cache: FeatureCache, root, key: str) -> torch.Tensor:
    """The video's frames as extraction preprocessed them for this cache (N, 3, crop, crop)."""
    _, chunks = frame_chunks(root / key, cache.identity.frame_source(), 1000)
    return preprocess(torch.from_numpy(np.concatenate(list(chunks))), cache.identity.preprocess)


def _seeded(name: str, seed: int, **kwargs):
    torch.manual_seed(seed)
    return timm.create_model(name, pretrained=False, num_classes=0, **kwargs).eval()


def _assert_rows(cache: FeatureCache, key: str, want: dict[str, torch.Tensor]) -> None:
    """The cache's float16 rows of ``key`` equal ``want`` (N, C) within float16 storage."""
    for level, ref in want.items():
        got = torch.from_numpy(cache.video_features(key, level).astype(np.float32))
        torch.testing.assert_close(got, ref, rtol=2e-3, atol=2e-3 * float(ref.abs().max()))


def test_a_vit_cache_holds_timms_forward_intermediates_class_token_after_evenly_spaced_blocks(tmp_path):
    root = folder_dataset(tmp_path / "data", per_class=1, frames=6)
    out = tmp_path / "vit.h5"
    run_extract(small_extract_config(root, out, backbone=VIT, seed=5, precision="fp32"), **QUIET)  # timm's own: fp32
    with FeatureCache(out) as c:
        assert [(s.tap, s.width) for s in c.identity.levels] == [(f"blocks.{b}:class-token", 192) for b in (3, 7, 11)]
        assert c.identity.preprocess.resize.interpolation == "bicubic"  # from the model's pretrained_cfg
        key = c.videos[0].key
        x = _frames(c, root, key)
        model = _seeded("vit_tiny_patch16_224", 5, dynamic_img_size=True)
        with torch.no_grad():
            blocks = model.forward_intermediates(x, indices=[3, 7, 11], norm=True, output_fmt="NLC",
                                                 intermediates_only=True, return_prefix_tokens=True)
        _assert_rows(c, key, {level: prefix[:, 0] for level, (_, prefix) in zip(("low", "mid", "high"), blocks)})


def test_a_cnn_cache_holds_timms_features_only_last_three_stages_averaged(tmp_path):
    root = folder_dataset(tmp_path / "data", per_class=1, frames=6)
    out = tmp_path / "cnn.h5"
    run_extract(small_extract_config(root, out, backbone=CNN, seed=2, precision="fp32"), **QUIET)  # timm's own: fp32
    with FeatureCache(out) as c:
        assert [(s.tap, s.width) for s in c.identity.levels] == [
            ("layer2:spatial-mean", 128), ("layer3:spatial-mean", 256), ("layer4:spatial-mean", 512)]
        key = c.videos[1].key
        model = _seeded("resnet18", 2, features_only=True, out_indices=(2, 3, 4))
        with torch.no_grad():
            maps = model(_frames(c, root, key))
        _assert_rows(c, key, {level: m.mean(dim=(2, 3)) for level, m in zip(("low", "mid", "high"), maps)})


@pytest.mark.parametrize("name,pooling,width", [
    ("timm:vit_small_patch14_dinov2.lvd142m", "class-token+token-mean", 768),  # DINOv2's linear-probe features
    ("timm:vit_base_patch16_siglip_224", "token-mean", 768),  # no class token: SigLIP pools by attention
    ("timm:vit_base_patch16_clip_224.openai", "class-token", 768),
])
def test_each_family_is_pooled_as_it_is_probed_and_preprocessed_by_its_own_config(name, pooling, width):
    choice = choose_backbone(name, "random")
    assert {s.tap.split(":")[1] for s in choice.taps.levels} == {pooling}
    assert {s.width for s in choice.taps.levels} == {width}
    cfg = timm.data.resolve_data_config({}, pretrained_cfg=timm.models.get_pretrained_cfg(name[5:]).to_dict())
    assert choice.preprocess.crop == cfg["input_size"][-1]
    assert choice.preprocess.mean == pytest.approx(cfg["mean"]) and choice.preprocess.std == pytest.approx(cfg["std"])
    assert choice.preprocess.short_side == int(cfg["input_size"][-1] / cfg["crop_pct"])


def test_weights_from_a_safetensors_or_pth_file_give_that_models_features(tmp_path):
    root = folder_dataset(tmp_path / "data", per_class=1, frames=4)
    state = _seeded("resnet18", 9).state_dict()
    files = {"safetensors": tmp_path / "w.safetensors", "pth": tmp_path / "w.pth"}
    save_file({k: v.contiguous() for k, v in state.items()}, str(files["safetensors"]))
    torch.save(state, files["pth"])
    rows = {}
    for kind, path in [("random", "random"), *files.items()]:
        out = tmp_path / f"{kind}.h5"
        run_extract(small_extract_config(root, out, backbone=CNN, backbone_weights=str(path), seed=9), **QUIET)
        with FeatureCache(out) as c:
            rows[kind] = c.load_level("high")
            assert c.identity.backbone_weights.startswith("random" if kind == "random" else "sha256:")
    np.testing.assert_array_equal(rows["safetensors"], rows["random"])
    np.testing.assert_array_equal(rows["pth"], rows["random"])


def test_weights_of_another_model_and_pretrained_weights_not_cached_are_one_line(tmp_path, monkeypatch):
    root = folder_dataset(tmp_path / "data", per_class=1, frames=4)
    other = tmp_path / "other.safetensors"
    save_file({"conv.weight": torch.zeros(3, 3, 3, 3)}, str(other))
    result = run("extract", "--dataset", "folder", "--root", root, "--out", tmp_path / "a.h5", "--backbone", CNN,
                 "--backbone-weights", other, "--short-side", 64, "--crop", 64)
    one_line_error(result, str(other), "cannot load timm resnet18 weights")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch"))
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-hf"))
    result = run("extract", "--dataset", "folder", "--root", root, "--out", tmp_path / "b.h5", "--backbone", CNN,
                 "--backbone-weights", "pretrained", "--short-side", 64, "--crop", 64)
    one_line_error(result, "not in timm's local caches", "timm.create_model('resnet18", "--backbone-weights FILE")
    for bad, says in (("timm:no_such_net", "timm has no model 'no_such_net'"),
                      ("timm:resnet18.no_such_tag", "no pretrained tag 'no_such_tag'")):
        one_line_error(run("extract", "--dataset", "folder", "--root", root, "--out", tmp_path / "c.h5",
                           "--backbone", bad, "--backbone-weights", "random"), says)
    assert not any((tmp_path / n).exists() for n in ("a.h5", "b.h5", "c.h5"))


@pytest.mark.parametrize("backbone", [VIT, CNN])
def test_a_timm_cache_trains_sweeps_and_predicts(tmp_path, backbone):
    root = folder_dataset(tmp_path / "data", per_class=3, frames=16)
    out = tmp_path / "timm.h5"
    run_extract(small_extract_config(root, out, backbone=backbone), **QUIET)
    run_dir = tmp_path / "run"
    fit(small_train_config(out, run_dir, epochs=2, hidden=16, layers=1, level="mid"), **QUIET)
    stored = np.load(run_dir / "scores_test.npz")
    [pred] = predict([root / str(stored["keys"][0])], [run_dir], top=2, device="cpu")
    assert pred.error is None
    k = int(np.argmax(stored["scores"][0]))
    assert dict(pred.top)[stored["classes"][k]] == pytest.approx(float(stored["scores"][0, k]), abs=2e-3)
    swept = run("sweep", "--cache", out, "--levels", "low,high", "--models", "rrn,attentive", "--hidden", "64",
                "--layers", "1", "--epochs", "1", "--normalize", "--quiet", "--out", tmp_path / "sweep")
    assert swept.exit_code == 0, swept.output
    rows = list(csv.DictReader(open(tmp_path / "sweep" / "results.csv")))
    assert sorted((r["level"], r["model"]) for r in rows) == [("high", "attentive"), ("high", "rrn"),
                                                              ("low", "attentive"), ("low", "rrn")]
    assert all(0 <= float(r["video_top1"]) <= 1 and r["backbone"] == backbone for r in rows)


def test_list_backbones_filters_timm_by_a_pattern():
    result = run("extract", "--list-backbones", "*dinov2*")
    assert result.exit_code == 0, result.output
    assert "timm:vit_small_patch14_dinov2.lvd142m" in result.output and "resnet34" not in result.output
