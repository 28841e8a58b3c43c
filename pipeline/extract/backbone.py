"""The frozen backbone that turns frames into three feature levels: its weights, and the extractor.

By default the paper's: torchvision's ResNet-34, whose levels are the spatial means (eq. 7) of layer2,
layer3 and layer4: low (N, 128), mid (N, 256), high (N, 512). Any torchvision classification model
works (``--backbone``); ``taps.py`` finds its levels. The classifier is never computed.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision

from pipeline.extract.taps import HEAD_NAMES, MultiLevelNet, Taps, build, family, find_taps, require_model
from pipeline.extract.timm_backbones import (
    PRETRAINED,
    TimmMultiLevelNet,
    TimmTaps,
    cached_weights,
    create_timm,
    find_timm_taps,
    is_timm,
    model_name,
    timm_preprocess,
)
from pipeline.config import BACKBONE, PAPER_CROP, Preprocess, Resize
from pipeline.errors import ConfigError, MrrnError, first_line
from pipeline.cache.identity import LevelSpec
from pipeline.precision import compute_dtype


class WeightsError(MrrnError, ValueError):
    """Backbone weights that cannot be loaded; the message says which and why."""


@dataclass(frozen=True)
class BackboneChoice:
    """What a backbone and its weights mean for a cache, known without loading any weights."""

    name: str
    weights_id: str  # torchvision:<Weights.NAME>, timm:<name.tag>, random:seed=N or sha256:<hex>
    weights: object  # the torchvision weights enum, "random", or a Path (timm: a file of its caches, or the user's)
    taps: Taps | TimmTaps
    preprocess: Preprocess  # the weights' own preprocessing (the paper's for random or local weights)
    fixed_size: int | None = None  # the one input size the model takes (ViT: set by its weights), else None


@dataclass(frozen=True)
class LoadedBackbone:
    model: MultiLevelNet | TimmMultiLevelNet
    weights_id: str  # what the cache records: which weights, exactly
    levels: tuple[LevelSpec, ...]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _torchvision_weights(name: str, spec: str):
    """'imagenet' (the model's default weights) or a weights name such as ViT_B_16_Weights.IMAGENET1K_SWAG_E2E_V1."""
    available = torchvision.models.get_model_weights(name)
    if spec == "imagenet":
        return available.DEFAULT
    try:
        weights = torchvision.models.get_weight(spec)
    except (ValueError, KeyError, AttributeError):
        return None
    if weights not in list(available):
        raise WeightsError(f"--backbone-weights {spec}: weights of another model than {name} "
                           f"(its own: {', '.join(str(w) for w in available)})")
    return weights


def preprocess_of(weights) -> Preprocess:
    """The preprocessing torchvision's ``weights`` were trained with (sizes, interpolation, mean, std)."""
    tf = weights.transforms()
    return Preprocess(short_side=int(tf.resize_size[0]), crop=int(tf.crop_size[0]), mean=tuple(tf.mean),
                      std=tuple(tf.std), resize=Resize(interpolation=tf.interpolation.value))


def choose_backbone(name: str = BACKBONE, weights: str = "imagenet", seed: int = 0) -> BackboneChoice:
    """Backbone ``name`` with ``weights``: 'imagenet' (the model's default torchvision weights), a
    torchvision weights name, 'random' (seeded), or a path to a state_dict. Cheap: loads no weights,
    hashes a local file, finds the taps on the meta device. ``timm:NAME``: a timm model (``timm_backbones.py``),
    its weights 'pretrained' (or 'imagenet') from timm's local caches, 'random' or a local file."""
    if is_timm(name):
        return _choose_timm(name, weights, seed)
    require_model(name)
    vit_size = PAPER_CROP if family(name) == "vit" else None  # torchvision's ViTs without weights take 224 px
    if weights == "random":
        return BackboneChoice(name, f"random:seed={seed}", "random", find_taps(name, PAPER_CROP), Preprocess(), vit_size)
    path = Path(weights)
    if path.is_file():
        return BackboneChoice(name, f"sha256:{sha256_file(path)}", path, find_taps(name, PAPER_CROP), Preprocess(),
                              vit_size)
    enum = _torchvision_weights(name, weights)
    if enum is None:
        raise WeightsError(f"{weights}: weights file not found (use 'imagenet', 'random', a torchvision weights "
                           "name or a state_dict path)")
    pre = preprocess_of(enum)
    fixed = int(enum.meta["min_size"][0]) if vit_size else None  # the image size torchvision builds it for
    return BackboneChoice(name, f"torchvision:{enum}", enum, find_taps(name, pre.crop), pre, fixed)


def _choose_timm(name: str, weights: str, seed: int) -> BackboneChoice:
    taps = find_timm_taps(name)
    pre, size = timm_preprocess(name)
    fixed = None if taps.dynamic_size or taps.api != "forward_intermediates" else size
    if weights == "random":
        return BackboneChoice(name, f"random:seed={seed}", "random", taps, pre, fixed)
    if weights in PRETRAINED:
        return BackboneChoice(name, f"timm:{model_name(name)}", cached_weights(name), taps, pre, fixed)
    path = Path(weights)
    if not path.is_file():
        raise WeightsError(f"{weights}: weights file not found (use 'pretrained', 'random' or a .safetensors/.pth file)")
    return BackboneChoice(name, f"sha256:{sha256_file(path)}", path, taps, pre, fixed)


def weights_from_id(weights_id: str, local: Path | None) -> tuple[str, int]:
    """The inverse of a weights id: ``load_backbone`` arguments (weights, seed) that rebuild the
    backbone a cache was made with; ``local`` is the state_dict file for a ``sha256:`` weights id.
    Refused, naming what is missing, when those weights are not available."""
    if local is not None and not Path(local).is_file():
        raise WeightsError(f"{local}: weights file not found (--backbone-weights names the state_dict file the "
                           "runs' cache was made with)")
    kind, _, value = weights_id.partition(":")
    if kind == "torchvision":
        return value, 0
    if kind == "timm":
        return "pretrained", 0
    if kind == "random":
        return "random", int(value.removeprefix("seed="))
    if kind == "sha256":
        if local is None:
            raise WeightsError(f"the runs' cache was made with a local weights file (sha256 {value[:12]}...); "
                               "pass it with --backbone-weights PATH")
        if sha256_file(local) != value:
            raise WeightsError(f"{local}: sha256 differs from the weights the runs' cache was made with ({value[:12]}...)")
        return str(local), 0
    raise WeightsError(f"unknown weights {weights_id!r} in the runs' cache")


def _state_dict_from_file(path: Path) -> dict[str, torch.Tensor]:
    """The trunk's tensors of a local state_dict file (also nested as {"state_dict": ...} or {"model": ...},
    with DDP's "module." prefixes). The classifier's keys are dropped: it is never used for features, so
    a fine-tuned model with another number of classes is as good as any."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types, with many lines, for a bad file; report it as one line
        raise WeightsError(f"{path}: cannot read a state_dict ({type(err).__name__}: {first_line(err)})") from None
    for nested in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(nested), dict):
            obj = obj[nested]
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        got = type(obj).__name__ if not isinstance(obj, dict) else "a dict holding other things than named tensors"
        raise WeightsError(f"{path}: not a state_dict (a dict of named tensors, as model.state_dict() gives); got {got}")
    return {k.removeprefix("module."): v for k, v in obj.items()
            if k.removeprefix("module.").split(".")[0] not in HEAD_NAMES}


def _model(choice: BackboneChoice, seed: int):
    if isinstance(choice.taps, TimmTaps):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return create_timm(choice.name, choice.taps, None if choice.weights == "random" else choice.weights)
    if choice.weights == "random":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return build(choice.name)
    if isinstance(choice.weights, Path):
        model = build(choice.name)
        try:
            missing, unexpected = model.load_state_dict(_state_dict_from_file(choice.weights), strict=False)
        except RuntimeError as err:  # tensors of other shapes: torch lists each on a line of its own
            raise WeightsError(f"{choice.weights}: not a torchvision {choice.name} state_dict "
                               f"({first_line(err, skip='Error(s) in loading')})") from None
        missing = [k for k in missing if k.split(".")[0] not in HEAD_NAMES]  # the classifier is not loaded
        if missing or unexpected:
            raise WeightsError(
                f"{choice.weights}: not a torchvision {choice.name} state_dict "
                f"(missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
                f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''})")
        return model
    try:
        return build(choice.name, weights=choice.weights)
    except Exception as err:  # network errors come in many types
        raise WeightsError(f"cannot load torchvision's {choice.weights} ({type(err).__name__}: {first_line(err)}); without "
                           "internet, put the file in $TORCH_HOME/hub/checkpoints/ or pass --backbone-weights PATH"
                           ) from None


def load_backbone(weights: str = "imagenet", seed: int = 0, backbone: str = BACKBONE) -> LoadedBackbone:
    """The frozen multi-level ``backbone`` with ``weights`` (see :func:`choose_backbone`)."""
    return load_chosen(choose_backbone(backbone, weights, seed), seed)


def load_chosen(choice: BackboneChoice, seed: int = 0) -> LoadedBackbone:
    """The frozen multi-level backbone of a :func:`choose_backbone` result (its file hashed and its taps
    found already)."""
    net = TimmMultiLevelNet if isinstance(choice.taps, TimmTaps) else MultiLevelNet
    return LoadedBackbone(net(_model(choice, seed), choice.taps), choice.weights_id, choice.taps.levels)


def resolve_device(device: str) -> torch.device:
    """'auto' (CUDA when there is one), 'cpu', 'cuda' or 'cuda:N'; anything else is refused in one line."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"--device {device}: not a device (use auto, cpu, cuda or cuda:N)") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: CUDA is not available on this machine")
    if resolved.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device {device}: mrrn runs on cpu or cuda")
    return resolved


class FeatureExtractor:
    """The backbone placed on a device: frames (N, 3, H, W) -> {level: (N, C) float32 on the CPU}."""

    def __init__(self, backbone: LoadedBackbone, device: torch.device, precision: str = "fp32"):
        self.device = device
        self.precision = precision
        self.levels = {spec.name: spec.width for spec in backbone.levels}  # level -> width
        # weights cast once to the inference dtype (autocast would cast frozen weights at every call)
        self.dtype = compute_dtype(precision)
        # channels-last: the faster layout for these convolutions on CPU (oneDNN) and GPU (cuDNN) alike
        self.model = backbone.model.to(device=device, dtype=self.dtype, memory_format=torch.channels_last)
        # the process-wide TF32 and cuDNN flags its precision needs are set around the work by the caller
        # (precision.precision_flags), and put back after it

    @torch.inference_mode()
    def __call__(self, frames: torch.Tensor) -> dict[str, torch.Tensor]:
        """frames (N, 3, H, W) -> {level: (N, C) float32 on the CPU}, waiting for the result."""
        return self.submit(frames).result()

    @torch.inference_mode()
    def submit(self, frames: torch.Tensor) -> PendingFeatures:
        """Start the backbone on frames (N, 3, H, W); on a GPU the features come back to pinned host
        memory without blocking, as one (N, sum of C) transfer, and ``result()`` waits for them."""
        x = frames.to(self.device, non_blocking=True).to(self.dtype).contiguous(memory_format=torch.channels_last)
        out = self.model(x)
        if self.device.type != "cuda":
            return PendingFeatures(out)
        joined = torch.cat([out[level] for level in self.levels], dim=1)  # (N, sum of widths) float32
        host = torch.empty(joined.shape, dtype=joined.dtype, pin_memory=True)
        host.copy_(joined, non_blocking=True)
        done = torch.cuda.Event()
        done.record()
        return PendingFeatures(host, done, self.levels)


class PendingFeatures:
    """Features on their way to host memory: ``result()`` -> {level: (N, C) float32 CPU tensors}."""

    def __init__(self, features: dict[str, torch.Tensor] | torch.Tensor, done: torch.cuda.Event | None = None,
                 levels: dict[str, int] | None = None):
        self.features, self.done, self.levels = features, done, levels

    def result(self) -> dict[str, torch.Tensor]:
        if self.done is None:
            return self.features
        self.done.synchronize()
        return dict(zip(self.levels, self.features.split(list(self.levels.values()), dim=1)))
