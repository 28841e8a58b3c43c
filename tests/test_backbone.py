"""The frozen multi-level ResNet-34: equal to torchvision's own layers, and every way of loading weights."""
from __future__ import annotations

import pytest
import torch
import torchvision

from pipeline.extract.backbone import FeatureExtractor, WeightsError, load_backbone, sha256_file, weights_from_id
from tests.conftest import seeded_resnet, torchvision_levels


def test_levels_equal_a_direct_torchvision_forward():
    x = torch.randn(3, 3, 64, 64)
    out = FeatureExtractor(load_backbone("random", seed=7), torch.device("cpu"))(x)
    ref = torchvision_levels(seeded_resnet(7), x)
    assert {k: tuple(v.shape) for k, v in out.items()} == {"low": (3, 128), "mid": (3, 256), "high": (3, 512)}
    for level in ("low", "mid", "high"):
        torch.testing.assert_close(out[level], ref[level], rtol=1e-4, atol=1e-4)  # batch norm folded: fp32 rounding


def test_backbone_is_frozen_and_stays_in_eval_mode():
    model = load_backbone("random", seed=0).model
    model.train()
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())


def test_random_weights_are_seeded_and_leave_the_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    a, b, c = load_backbone("random", 1), load_backbone("random", 1), load_backbone("random", 2)
    torch.manual_seed(123)
    assert torch.equal(torch.rand(1), before)
    assert a.weights_id == "random:seed=1" and c.weights_id == "random:seed=2"
    x = torch.randn(2, 3, 64, 64)
    fa, fb, fc = (FeatureExtractor(m, torch.device("cpu"))(x)["high"] for m in (a, b, c))
    assert torch.equal(fa, fb) and not torch.allclose(fa, fc)


def test_weights_path_round_trip(tmp_path):
    state = seeded_resnet(3).state_dict()
    path = tmp_path / "resnet34.pth"
    torch.save(state, path)
    loaded = load_backbone(str(path))
    assert loaded.weights_id == f"sha256:{sha256_file(path)}"
    x = torch.randn(2, 3, 64, 64)
    cpu = torch.device("cpu")
    torch.testing.assert_close(FeatureExtractor(loaded, cpu)(x)["high"], FeatureExtractor(load_backbone("random", 3), cpu)(x)["high"])
    # the classifier is not needed; a checkpoint wrapped as {"state_dict": ...} with "module." prefixes is fine
    trunk = {f"module.{k}": v for k, v in state.items() if not k.startswith("fc.")}
    torch.save({"state_dict": trunk}, tmp_path / "wrapped.pth")
    wrapped = FeatureExtractor(load_backbone(str(tmp_path / "wrapped.pth")), cpu)(x)["high"]
    torch.testing.assert_close(wrapped, torchvision_levels(seeded_resnet(3), x)["high"], rtol=1e-4, atol=1e-4)


def test_bad_weights_files_are_refused_with_the_reason(tmp_path):
    with pytest.raises(WeightsError, match="weights file not found"):
        load_backbone(str(tmp_path / "nope.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="junk.pth: cannot read a state_dict"):
        load_backbone(str(tmp_path / "junk.pth"))
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "r18.pth")
    with pytest.raises(WeightsError, match=r"r18.pth: not a torchvision resnet34 state_dict"):
        load_backbone(str(tmp_path / "r18.pth"))


def test_imagenet_weights_load_the_standard_torchvision_way_from_its_cache(tmp_path, monkeypatch):
    """No download here: a file placed where torchvision caches IMAGENET1K_V1 is what gets loaded."""
    weights = torchvision.models.ResNet34_Weights.IMAGENET1K_V1
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    state = seeded_resnet(11).state_dict()
    torch.save(state, checkpoints / weights.url.rsplit("/", 1)[1])
    loaded = load_backbone("imagenet")
    assert loaded.weights_id == "torchvision:ResNet34_Weights.IMAGENET1K_V1"
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(FeatureExtractor(loaded, torch.device("cpu"))(x)["high"],
                               torchvision_levels(seeded_resnet(11), x)["high"], rtol=1e-4, atol=1e-4)


def test_a_caches_weights_id_maps_back_to_the_weights_or_is_refused(tmp_path):
    assert weights_from_id("random:seed=3", None) == ("random", 3)
    # the exact torchvision weights, even if a later torchvision changes the model's default
    assert weights_from_id("torchvision:ResNet34_Weights.IMAGENET1K_V1", None) == ("ResNet34_Weights.IMAGENET1K_V1", 0)
    with pytest.raises(WeightsError, match="pass it with --backbone-weights PATH"):
        weights_from_id("sha256:" + "ab" * 32, None)
    other = tmp_path / "other.pth"
    other.write_bytes(b"something else")
    with pytest.raises(WeightsError, match="sha256 differs"):
        weights_from_id("sha256:" + "ab" * 32, other)
    assert weights_from_id(f"sha256:{sha256_file(other)}", other) == (str(other), 0)


def test_folding_batch_norm_keeps_the_features_within_fp32_rounding(tmp_path):
    """The frozen trunk with batch norm folded into its convolutions computes what torchvision's computes,
    to 1e-4 in float32, with non-trivial batch-norm statistics (random weights have mean 0, var 1)."""
    resnet = seeded_resnet(5)
    with torch.no_grad():
        for module in resnet.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    torch.save(resnet.state_dict(), tmp_path / "r.pth")
    folded = load_backbone(str(tmp_path / "r.pth"))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.model.modules())
    x = torch.randn(4, 3, 64, 64)
    out, ref = FeatureExtractor(folded, torch.device("cpu"))(x), torchvision_levels(resnet, x)
    for level in ("low", "mid", "high"):
        torch.testing.assert_close(out[level], ref[level], rtol=1e-4, atol=1e-4)
