"""Which activations of a torchvision classification model are its three levels, and how they are pooled.

- CNNs: the outputs of the last three stages, found from the model itself: the children of the model
  (or, when they do not reach three resolutions, of its trunk: ``features``, ``trunk_output``, ...) run
  once on the ``meta`` device (shapes, no arithmetic), and for each of the three coarsest resolutions the last child at that
  resolution is a level, averaged over space. For ResNet-34 that is layer2 / layer3 / layer4, the paper's.
- ViT: the class token after three evenly spaced encoder blocks (a third, two thirds and all of them).
- Swin: the token mean of the last three stages.

The taps are taken with ``torchvision.models.feature_extraction.create_feature_extractor``; widths are
read from the model, never written down. Batch norms that follow a convolution are folded into it.
"""
from __future__ import annotations

import warnings
from typing import Iterator, NamedTuple

import torch
import torchvision
from torch import nn
from torch.fx.experimental.optimization import fuse as fold_conv_bn
from torch.overrides import TorchFunctionMode
from torchvision.models.feature_extraction import create_feature_extractor

from pipeline.errors import ConfigError, first_line
from pipeline.cache.identity import LevelSpec
from pipeline.config import LEVELS

_HEADS = (nn.Linear, nn.Dropout, nn.Flatten, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.AvgPool2d)
HEAD_NAMES = ("fc", "classifier", "head", "heads", "avgpool", "aux_logits", "AuxLogits", "aux1", "aux2", "dropout")


class Taps(NamedTuple):
    nodes: dict[str, str]  # graph node -> level name (low, mid, high)
    pooling: str  # "spatial" (N, C, H, W), "tokens" (N, H, W, C) or "class-token" (N, L, C)
    levels: tuple[LevelSpec, ...]  # name, node, width


def family(name: str) -> str:
    return "vit" if name.startswith("vit_") else "swin" if name.startswith("swin_") else "cnn"


def default_size(name: str) -> int:
    """The input size the model's default ImageNet weights were trained at (224 without weights)."""
    weights = torchvision.models.get_model_weights(name).DEFAULT
    return int(weights.transforms().crop_size[0]) if weights is not None else 224


def _output_shapes(model: nn.Module, names: list[str], size: int) -> dict[str, tuple[int, ...]]:
    """The output shape of each named submodule in one forward of a (1, 3, size, size) input on the model's
    device (meta: no arithmetic), in the order they ran; submodules that did not run are left out."""
    shapes: dict[str, tuple[int, ...]] = {}
    hooks = [model.get_submodule(n).register_forward_hook(
        lambda module, args, out, n=n: shapes.__setitem__(n, tuple(out.shape)) if isinstance(out, torch.Tensor) else None)
        for n in names]
    try:
        with torch.no_grad():
            model(torch.empty(1, 3, size, size, device=next(model.parameters()).device))
    finally:
        for hook in hooks:
            hook.remove()
    return shapes


def _is_head(name: str, module: nn.Module) -> bool:
    return isinstance(module, _HEADS) or name.split(".")[-1] in HEAD_NAMES


def _cnn_stages(model: nn.Module, size: int) -> list[tuple[str, tuple[int, ...]]]:
    """(node, output shape) of the last child at each of the three coarsest resolutions: among the model's
    children, else among the children of its first container child that has them (``features``, ...)."""
    containers = [""] + [n for n, m in model.named_children() if any(True for _ in m.children())]
    candidates = {prefix: [f"{prefix}.{n}" if prefix else n
                           for n, m in (model.get_submodule(prefix) if prefix else model).named_children()
                           if not _is_head(n, m)] for prefix in containers}
    ran = _output_shapes(model, sorted({n for nodes in candidates.values() for n in nodes}), size)
    for prefix in containers:
        shapes = {n: ran[n] for n in ran if n in candidates[prefix] and len(ran[n]) == 4}  # in the order they ran
        resolutions = sorted({s[2] * s[3] for s in shapes.values()})
        if len(resolutions) >= 3:
            last = {s[2] * s[3]: n for n, s in shapes.items()}  # dict order: the last node at each size
            return [(last[r], shapes[last[r]]) for r in sorted(resolutions[:3], reverse=True)]
    raise ConfigError("no three stages at different resolutions")


class _AllocateOnMeta(TorchFunctionMode):
    """``torch.empty``, which modules allocate their parameters with before initialising them, on the meta
    device; every other tensor where it was asked for. For the few models whose construction computes
    with tensors (RegNet's widths), which cannot be built entirely under ``torch.device('meta')``: their
    weights then take no memory and their initialisation no time. Like ``torch.device``, a torch function
    mode: it holds in the thread that entered it, and only there."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.empty and kwargs.get("device") is None:
            kwargs["device"] = "meta"
        return func(*args, **kwargs)


def _skeleton(name: str) -> nn.Module:
    """The model without its numbers (on the meta device: instant), for tracing shapes."""
    try:
        return build(name, device="meta")
    except NotImplementedError:
        with _AllocateOnMeta():
            return _constructed(name).to("meta")  # the few tensors made otherwise (batch-norm statistics) follow


def find_taps(name: str, size: int) -> Taps:
    """The level taps of torchvision model ``name`` at input size ``size``."""
    model = _skeleton(name)
    kind = family(name)
    if kind == "vit":
        depth = len(model.encoder.layers)
        blocks = [max(1, round(depth * k / 3)) - 1 for k in (1, 2, 3)]
        nodes = [f"encoder.layers.encoder_layer_{b}" for b in blocks]
        widths = [model.hidden_dim] * 3
        pooling = "class-token"
    elif kind == "swin":
        nodes = ["features.3", "features.5", "features.7"]
        widths = [s[-1] for s in _output_shapes(model, nodes, size).values()]
        pooling = "tokens"
    else:
        stages = _cnn_stages(model, size)
        nodes, widths, pooling = [n for n, _ in stages], [s[1] for _, s in stages], "spatial"
    levels = tuple(LevelSpec(level, node, int(w)) for level, node, w in zip(LEVELS, nodes, widths))
    return Taps(dict(zip(nodes, LEVELS)), pooling, levels)


def require_model(name: str) -> None:
    """Refuse a name that is not one of torchvision's classification models, in one line."""
    if name not in torchvision.models.list_models(module=torchvision.models):
        raise ConfigError(f"--backbone {name}: not a torchvision classification model (see --list-backbones)")


def build(name: str, weights=None, device: str | torch.device = "cpu") -> nn.Module:
    """torchvision's model ``name`` with ``weights`` (a weights enum, or None), refused when unknown."""
    with torch.device(device):
        return _constructed(name, weights)


def _constructed(name: str, weights=None) -> nn.Module:
    require_model(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision's notes on initialisation and tracing modes
        return torchvision.models.get_model(name, weights=weights).eval()


class MultiLevelNet(nn.Module):
    """A frozen classification trunk -> {level: (N, C) float32}: the taps, pooled, and nothing after them."""

    def __init__(self, model: nn.Module, taps: Taps):
        super().__init__()
        self.taps = taps
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            extractor = create_feature_extractor(model.eval(), return_nodes=taps.nodes)
        # conv + batch norm -> one conv (frozen: the statistics never change); in place, as a copy would
        # come back in training mode
        self.trunk = fold_conv_bn(extractor.eval(), inplace=True)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True):  # frozen: batch-norm statistics never update
        return super().train(False)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """x: (N, 3, H, W) normalised frames -> {"low": (N, C1), "mid": (N, C2), "high": (N, C3)}."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected frames (N, 3, H, W), got {tuple(x.shape)}")
        out = self.trunk(x)
        # in float32 even under reduced precision (mean is on no autocast list)
        if self.taps.pooling == "spatial":
            return {lvl: out[lvl].mean(dim=(2, 3), dtype=torch.float32) for lvl in LEVELS}
        if self.taps.pooling == "tokens":
            return {lvl: out[lvl].mean(dim=(1, 2), dtype=torch.float32) for lvl in LEVELS}
        return {lvl: out[lvl][:, 0].float() for lvl in LEVELS}


def describe_all(names: list[str] | None = None) -> Iterator[str]:
    """One line per supported backbone, as each is traced: name, level widths and taps, default input size."""
    for name in names or torchvision.models.list_models(module=torchvision.models):
        try:
            size = default_size(name)
            taps = find_taps(name, size)
        except Exception as err:  # a model whose stages cannot be told apart is left out, with why
            yield f"{name:<22} not supported ({type(err).__name__}: {first_line(err)})"
            continue
        dims = " / ".join(f"{s.width} ({s.tap})" for s in taps.levels)
        yield f"{name:<22} {dims}; {size} px; {taps.pooling}"
