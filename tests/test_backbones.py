"""--backbone: the levels of other torchvision models, found from the model, recorded in the cache, and
used by every later stage unchanged."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from click.testing import CliRunner

from cli import main
from pipeline.extract.backbone import FeatureExtractor, choose_backbone, load_backbone
from pipeline.extract.taps import find_taps
from pipeline.cache.reader import ConfigMismatchError, FeatureCache
from pipeline.extract.run import run_extract
from pipeline.predict import predict
from pipeline.train.loop import fit
from tests.conftest import QUIET, folder_dataset, small_extract_config, small_train_config

CPU = torch.device("cpu")


def _seeded(name: str, seed: int = 3):
    torch.manual_seed(seed)
    return torchvision.models.get_model(name, weights=None).eval()


def _features(name: str, x: torch.Tensor, seed: int = 3) -> dict[str, torch.Tensor]:
    return FeatureExtractor(load_backbone("random", seed, name), CPU)(x)


def test_cnn_levels_are_the_last_three_stages_as_a_plain_forward_computes_them():
    x = torch.randn(2, 3, 64, 64)
    # resnet18: layer2 / layer3 / layer4, averaged over space
    model, out = _seeded("resnet18"), _features("resnet18", x)
    with torch.no_grad():
        h = model.layer1(model.maxpool(model.relu(model.bn1(model.conv1(x)))))
        want = {}
        for level, layer in (("low", model.layer2), ("mid", model.layer3), ("high", model.layer4)):
            h = layer(h)
            want[level] = h.mean(dim=(2, 3))
    for level in want:
        torch.testing.assert_close(out[level], want[level], rtol=1e-4, atol=1e-4)
    # mobilenet_v3_small: the last block at each of the three coarsest resolutions of `features`
    taps = find_taps("mobilenet_v3_small", 224)
    assert [(s.tap, s.width) for s in taps.levels] == [("features.3", 24), ("features.8", 48), ("features.12", 576)]
    model, out = _seeded("mobilenet_v3_small"), _features("mobilenet_v3_small", x)
    with torch.no_grad():
        for level, end in (("low", 4), ("mid", 9), ("high", 13)):
            torch.testing.assert_close(out[level], model.features[:end](x).mean(dim=(2, 3)), rtol=1e-4, atol=1e-4)


def test_vit_levels_are_the_class_token_after_evenly_spaced_blocks():
    taps = find_taps("vit_b_32", 224)
    assert taps.pooling == "class-token"
    assert [(s.tap, s.width) for s in taps.levels] == [(f"encoder.layers.encoder_layer_{b}", 768) for b in (3, 7, 11)]
    x = torch.randn(2, 3, 224, 224)
    model, out = _seeded("vit_b_32"), _features("vit_b_32", x)
    with torch.no_grad():  # torchvision's VisionTransformer.forward, block by block
        h = model._process_input(x)
        h = torch.cat([model.class_token.expand(len(x), -1, -1), h], dim=1) + model.encoder.pos_embedding
        tokens = []
        for block in model.encoder.layers:
            h = block(h)
            tokens.append(h[:, 0])
    for level, block in (("low", 3), ("mid", 7), ("high", 11)):
        assert out[level].shape == (2, 768)
        torch.testing.assert_close(out[level], tokens[block], rtol=1e-4, atol=1e-4)


def test_swin_levels_are_the_token_mean_of_its_last_three_stages():
    taps = find_taps("swin_t", 224)
    assert taps.pooling == "tokens"
    assert [(s.tap, s.width) for s in taps.levels] == [("features.3", 192), ("features.5", 384), ("features.7", 768)]
    x = torch.randn(1, 3, 64, 64)
    model, out = _seeded("swin_t"), _features("swin_t", x)
    with torch.no_grad():
        for level, end in (("low", 4), ("mid", 6), ("high", 8)):
            torch.testing.assert_close(out[level], model.features[:end](x).mean(dim=(1, 2)), rtol=1e-4, atol=1e-4)


def test_imagenet_weights_bring_their_own_preprocessing():
    vit = choose_backbone("vit_b_16", "imagenet")  # no weights are loaded: only their metadata
    assert vit.weights_id == "torchvision:ViT_B_16_Weights.IMAGENET1K_V1"
    assert (vit.preprocess.short_side, vit.preprocess.crop, vit.preprocess.mean) == (256, 224, (0.485, 0.456, 0.406))
    v2 = choose_backbone("efficientnet_v2_s", "imagenet")
    assert (v2.preprocess.short_side, v2.preprocess.crop, v2.preprocess.resize.name) == (384, 384, "bilinear-antialias-uint8")
    assert (v2.preprocess.mean, v2.preprocess.std) == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    swag = choose_backbone("vit_b_16", "ViT_B_16_Weights.IMAGENET1K_SWAG_E2E_V1")
    assert (swag.preprocess.crop, swag.preprocess.resize.name) == (384, "bicubic-antialias-uint8")
    with pytest.raises(Exception, match="weights of another model"):
        choose_backbone("resnet18", "ViT_B_16_Weights.IMAGENET1K_V1")
    with pytest.raises(Exception, match="not a torchvision classification model"):
        choose_backbone("resnet35", "imagenet")


def test_another_backbones_cache_records_its_levels_trains_and_predicts(tmp_path):
    """mobilenet_v3_small: its widths in the cache, a different backbone refused on the same cache, and
    the heads and predict working from the cache's sizes alone."""
    root = folder_dataset(tmp_path / "data", per_class=3, frames=20)
    out = tmp_path / "mobilenet.h5"
    run_extract(small_extract_config(root, out, backbone="mobilenet_v3_small"), **QUIET)
    with FeatureCache(out) as c:
        assert c.identity.backbone == "mobilenet_v3_small"
        assert c.identity.level_widths == {"low": 24, "mid": 48, "high": 576}
        assert c.level_shape("high") == (c.total_frames, 576) and c.verify() == []
    with pytest.raises(ConfigMismatchError, match="backbone: cache mobilenet_v3_small, this run resnet18"):
        run_extract(small_extract_config(root, out, backbone="resnet18"), **QUIET)

    run = tmp_path / "run"
    fit(small_train_config(out, run, epochs=2, hidden=16, layers=1, level="mid"), **QUIET)
    stored = np.load(run / "scores_test.npz")
    key = str(stored["keys"][0])
    [pred] = predict([root / key], [run], top=2, device="cpu")
    assert pred.error is None
    k = int(np.argmax(stored["scores"][0]))
    assert dict(pred.top)[stored["classes"][k]] == pytest.approx(float(stored["scores"][0, k]), abs=2e-3)


def test_list_backbones_prints_names_widths_and_input_size():
    from pipeline.extract.taps import describe_all

    lines = list(describe_all(["resnet34", "efficientnet_v2_s", "vit_b_16"]))
    assert lines[0].split() == ["resnet34", "128", "(layer2)", "/", "256", "(layer3)", "/", "512", "(layer4);", "224",
                                "px;", "spatial"]
    assert "384 px" in lines[1] and "768 (encoder.layers.encoder_layer_11)" in lines[2]
    result = CliRunner().invoke(main, ["extract", "--list-backbones"])
    assert result.exit_code == 0, result.output
    names = [line.split()[0] for line in result.output.splitlines()[1:]]
    assert {"resnet34", "convnext_tiny", "vit_b_16", "swin_t", "regnet_y_400mf"} <= set(names)
    assert "not supported" not in result.output


def test_a_vit_refuses_another_crop_than_its_input_size_before_writing_anything(tmp_path):
    from pipeline.errors import ConfigError

    root = folder_dataset(tmp_path / "data")
    with pytest.raises(ConfigError, match="vit_b_16 with these weights takes 224 px frames only, not --crop 64"):
        run_extract(small_extract_config(root, tmp_path / "vit.h5", backbone="vit_b_16"), **QUIET)
    assert not (tmp_path / "vit.h5").exists()


def test_finding_a_backbones_taps_leaves_models_built_meanwhile_in_other_threads_alone():
    """RegNets cannot be built on the meta device outright; finding their taps must not put the parameters
    of models built at the same time elsewhere in the program (or afterwards) on the meta device."""
    import threading

    finding = threading.Thread(target=lambda: [find_taps("regnet_x_400mf", 64) for _ in range(3)])
    built = []
    finding.start()
    while finding.is_alive():
        built.append(torch.nn.Conv2d(3, 8, 3))
    finding.join()
    built.append(torch.nn.Conv2d(3, 8, 3))
    assert len(built) > 10
    assert {m.weight.device.type for m in built} == {"cpu"}
    assert all(torch.isfinite(m.weight).all() and m.weight.abs().sum() > 0 for m in built)
