"""Backbones from timm (``--backbone timm:NAME``): today's frozen image models, DINOv2, CLIP, SigLIP, EVA and
ConvNeXt-V2 among them, with the three levels taken by timm's own APIs.

- Transformers with one token grid (ViT, EVA, DINOv2, CLIP, SigLIP): ``forward_intermediates`` after three
  evenly spaced blocks (a third, two thirds and all of them), each through the model's final norm. Each
  level is pooled as the family is probed: DINOv2's class token beside the mean of its patch tokens (its
  linear-probe protocol), the class token where the model classifies from it (CLIP, EVA, DeiT), the mean of
  the patch tokens where it has none (SigLIP's attention-pool models).
- Everything else (CNNs, ConvNeXt, hierarchical transformers): ``features_only`` with the last three stages,
  each averaged over space.

The API and the pooling are recorded in the level's tap (``blocks.3:class-token+token-mean``,
``stages.2:spatial-mean``), so the cache identity says exactly what each level is. Preprocessing comes from
the model's ``pretrained_cfg`` (input size, crop_pct, interpolation, mean and std). Weights: ``pretrained``
from timm's local caches (never downloaded here), a local ``.safetensors`` or ``.pth`` file, or ``random``.
"""
from __future__ import annotations

import contextlib
import inspect
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from pipeline.cache.identity import LevelSpec
from pipeline.config import INTERPOLATIONS, LEVELS, Preprocess, Resize
from pipeline.errors import ConfigError, first_line

PREFIX = "timm:"
PRETRAINED = ("pretrained", "imagenet")  # --backbone-weights values meaning the tag's own weights
FORWARD_INTERMEDIATES, FEATURES_ONLY = "forward_intermediates", "features_only"


def is_timm(name: str) -> bool:
    return name.startswith(PREFIX)


def _timm():
    try:
        import timm
    except ImportError:
        raise ConfigError("--backbone timm:...: timm is not installed (`make install` installs it)") from None
    return timm


def model_name(backbone: str) -> str:
    """'timm:vit_small_patch14_dinov2.lvd142m' -> 'vit_small_patch14_dinov2.lvd142m', refused when timm has no
    such model or pretrained tag."""
    timm, name = _timm(), backbone.removeprefix(PREFIX)
    arch, _, tag = name.partition(".")
    if not timm.is_model(arch):
        raise ConfigError(f"--backbone {backbone}: timm has no model {arch!r} (see --list-backbones 'PATTERN')")
    if tag and name not in timm.list_pretrained(f"{arch}.*"):
        tags = ", ".join(t.partition(".")[2] for t in timm.list_pretrained(f"{arch}.*")) or "none"
        raise ConfigError(f"--backbone {backbone}: timm has no pretrained tag {tag!r} for {arch} (its tags: {tags})")
    return name


@dataclass(frozen=True)
class TimmTaps:
    """Where a timm model's levels come from, and how they are pooled."""

    api: str  # FORWARD_INTERMEDIATES or FEATURES_ONLY
    indices: tuple[int, ...]  # blocks, or feature stages, of the three levels
    pooling: str  # "class-token", "token-mean", "class-token+token-mean" or "spatial-mean"
    levels: tuple[LevelSpec, ...]
    dynamic_size: bool  # a transformer that takes any input size (its position embedding resampled)


def _skeleton(name: str) -> nn.Module:
    """The model without its numbers (meta device: instant), or built for real where that fails."""
    timm = _timm()
    try:
        with torch.device("meta"):
            return timm.create_model(name, pretrained=False, num_classes=0)
    except Exception:  # a model whose construction computes with tensors
        return timm.create_model(name, pretrained=False, num_classes=0)


def _token_pooling(name: str, model: nn.Module) -> str:
    if "dinov2" in name:
        return "class-token+token-mean"  # DINOv2's linear probe: the class token beside the patch-token mean
    has_class_token = getattr(model, "cls_token", None) is not None
    return "class-token" if has_class_token and getattr(model, "global_pool", "token") == "token" else "token-mean"


def find_timm_taps(backbone: str) -> TimmTaps:
    name = model_name(backbone)
    model = _skeleton(name)
    blocks = getattr(model, "blocks", None)
    if hasattr(model, "forward_intermediates") and hasattr(model, "num_prefix_tokens") and blocks is not None:
        depth = len(blocks)
        indices = tuple(max(1, round(depth * k / 3)) - 1 for k in (1, 2, 3))
        pooling = _token_pooling(name, model)
        width = model.embed_dim * (2 if "+" in pooling else 1)
        levels = tuple(LevelSpec(level, f"blocks.{i}:{pooling}", width) for level, i in zip(LEVELS, indices))
        return TimmTaps(FORWARD_INTERMEDIATES, indices, pooling, levels, "dynamic_img_size" in _create_arguments(model))
    info = getattr(model, "feature_info", None)
    if info is None or len(info) < 3:
        raise ConfigError(f"--backbone {backbone}: timm gives neither intermediate blocks nor three feature stages")
    stages = info if isinstance(info, list) else list(info.info)
    indices = tuple(range(len(stages) - 3, len(stages)))
    levels = tuple(LevelSpec(level, f"{stages[i]['module']}:spatial-mean", int(stages[i]["num_chs"]))
                   for level, i in zip(LEVELS, indices))
    return TimmTaps(FEATURES_ONLY, indices, "spatial-mean", levels, False)


def _create_arguments(model: nn.Module) -> set[str]:
    return set(inspect.signature(type(model).__init__).parameters)


def timm_preprocess(backbone: str) -> tuple[Preprocess, int]:
    """The model's own preprocessing (``pretrained_cfg``: input size, crop_pct, interpolation, mean, std) and
    its input size. The short side is ``floor(size / crop_pct)``, as timm's eval transform resizes."""
    timm = _timm()
    cfg = timm.models.get_pretrained_cfg(model_name(backbone))
    config = timm.data.resolve_data_config({}, pretrained_cfg=cfg.to_dict() if cfg is not None else {})
    size = int(config["input_size"][-1])
    crop_pct = float(config.get("crop_pct") or 1.0)
    interpolation = config.get("interpolation", "bicubic")
    resize = Resize(interpolation=interpolation if interpolation in INTERPOLATIONS else "bicubic")
    pre = Preprocess(short_side=int(math.floor(size / crop_pct)), crop=size, mean=tuple(map(float, config["mean"])),
                     std=tuple(map(float, config["std"])), resize=resize)
    return pre, size


def cached_weights(backbone: str) -> Path:
    """The file of the tag's pretrained weights in timm's local caches (Hugging Face hub, or torch hub for
    weights served by URL); refused in one line, saying how to get it, when it is not there."""
    timm, name = _timm(), model_name(backbone)
    cfg = timm.models.get_pretrained_cfg(name)
    found = None
    if cfg is not None and cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        for filename in (cfg.hf_hub_filename, "model.safetensors", "open_clip_model.safetensors", "pytorch_model.bin",
                         "open_clip_pytorch_model.bin"):
            path = try_to_load_from_cache(cfg.hf_hub_id, filename) if filename else None
            if isinstance(path, str) and Path(path).is_file():
                found = Path(path)
                break
    elif cfg is not None and cfg.url:
        path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(cfg.url)
        found = path if path.is_file() else None
    if found is None:
        raise ConfigError(
            f"--backbone {backbone}: its pretrained weights are not in timm's local caches (Hugging Face hub: "
            f"$HF_HOME, torch hub: $TORCH_HOME); on a connected machine run python -c \"import timm; "
            f"timm.create_model('{name}', pretrained=True)\" and copy its cache here, or pass the file with "
            "--backbone-weights FILE.safetensors")
    return found


def create_timm(backbone: str, taps: TimmTaps, weights_file: Path | None) -> nn.Module:
    """The model of ``taps``' API, with the weights of ``weights_file`` (timm's own loader: its key remapping for
    the family's original checkpoints) or as initialised (the caller seeds the generator)."""
    timm, name = _timm(), model_name(backbone)
    kwargs: dict = {"num_classes": 0}
    if taps.api == FEATURES_ONLY:
        kwargs.update(features_only=True, out_indices=taps.indices)
    elif taps.dynamic_size:
        kwargs["dynamic_img_size"] = True
    if weights_file is not None:
        kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": str(weights_file)})
    where = weights_file or backbone
    try:
        with _missing_keys() as missing:
            model = timm.create_model(name, **kwargs).eval()
    except Exception as err:  # a file of another model, or not a checkpoint at all
        raise ConfigError(f"{where}: cannot load timm {name} weights ({type(err).__name__}: {first_line(err)})") from None
    if missing:  # timm loads leniently (its models adapt to other heads); a trunk tensor absent is refused
        raise ConfigError(f"{where}: cannot load timm {name} weights (the file lacks {missing[0]})")
    return model


@contextlib.contextmanager
def _missing_keys():
    """The trunk tensors timm's loader reports missing from a weights file (it logs them rather than failing)."""
    found: list[str] = []

    class Listen(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            text = record.getMessage()
            if text.startswith("Missing keys ("):
                found.append(text[len("Missing keys ("):].split(")")[0])

    logger, handler = logging.getLogger("timm.models._builder"), Listen(logging.INFO)
    level, propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # timm's notes on adapting a model are not the user's concern here
    try:
        yield found
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


class TimmMultiLevelNet(nn.Module):
    """A frozen timm model -> {level: (N, C) float32}, by ``taps``' API and pooling."""

    def __init__(self, model: nn.Module, taps: TimmTaps):
        super().__init__()
        self.model, self.taps = model, taps
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True):  # frozen
        return super().train(False)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """x: (N, 3, H, W) normalised frames -> {"low": (N, C1), "mid": (N, C2), "high": (N, C3)}."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected frames (N, 3, H, W), got {tuple(x.shape)}")
        if self.taps.api == FEATURES_ONLY:
            maps = self.model(x)  # three (N, C, h, w), or (N, h, w, C) for models that keep channels last
            return {lvl: _spatial_mean(m, spec.width) for lvl, m, spec in zip(LEVELS, maps, self.taps.levels)}
        outs = self.model.forward_intermediates(x, indices=list(self.taps.indices), norm=True, output_fmt="NLC",
                                                intermediates_only=True, return_prefix_tokens=True)
        return {lvl: _pooled(out, self.taps.pooling) for lvl, out in zip(LEVELS, outs)}


def _spatial_mean(feature_map: torch.Tensor, width: int) -> torch.Tensor:
    dims = (2, 3) if feature_map.shape[1] == width else (1, 2)
    return feature_map.mean(dim=dims, dtype=torch.float32)  # (N, C)


def _pooled(out, pooling: str) -> torch.Tensor:
    """One block's tokens -> (N, C) float32: ``out`` is the patch tokens (N, L, C), with the prefix tokens
    (N, P, C) beside them in a pair when the model has some (class, register or distillation tokens)."""
    patches, prefix = out if isinstance(out, tuple) else (out, None)
    mean = patches.mean(dim=1, dtype=torch.float32)  # (N, C)
    if pooling == "token-mean":
        return mean
    token = prefix[:, 0].float()  # (N, C) the class token
    return token if pooling == "class-token" else torch.cat([token, mean], dim=1)  # (N, 2C)


DESCRIBED = 24  # timm models matching a pattern whose levels --list-backbones traces; more are listed by name


def describe_timm(pattern: str):
    """One line per timm model with pretrained weights matching ``pattern`` (fnmatch, as timm lists them): its
    levels, input size and pooling, for the first DESCRIBED; then the count of the others."""
    timm = _timm()
    names = timm.list_pretrained(pattern)
    for i, name in enumerate(names):
        backbone = f"{PREFIX}{name}"
        if i >= DESCRIBED:
            yield backbone
            continue
        try:
            taps, (_, size) = find_timm_taps(backbone), timm_preprocess(backbone)
        except Exception as err:  # a model timm cannot build here is listed, with why
            yield f"{backbone:<22} not supported ({type(err).__name__}: {first_line(err)})"
            continue
        dims = " / ".join(f"{s.width} ({s.tap.split(':')[0]})" for s in taps.levels)
        yield f"{backbone:<22} {dims}; {size} px; {taps.api}, {taps.pooling}"
