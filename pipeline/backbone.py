"""The frozen torchvision ResNet-34 that turns frames into the paper's three feature levels.

``MultiLevelResNet`` returns the spatial mean (eq. 7) of layer2, layer3 and layer4:
low (N, 128), mid (N, 256), high (N, 512). The classifier (avgpool + fc) is never computed.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from pipeline.config import BACKBONE, IMAGENET_WEIGHTS, LEVELS
from pipeline.errors import ConfigError, MrrnError


class WeightsError(MrrnError, ValueError):
    """Backbone weights that cannot be loaded; the message says which and why."""


def fold_batch_norm(resnet: torchvision.models.ResNet) -> torchvision.models.ResNet:
    """The frozen trunk with every batch norm folded into the convolution before it (eval-mode statistics
    never change, so conv + bn is one conv with a bias): the same function in fewer operations."""
    resnet = resnet.eval()
    resnet.conv1, resnet.bn1 = fuse_conv_bn_eval(resnet.conv1, resnet.bn1), nn.Identity()
    for stage in (resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4):
        for block in stage:
            block.conv1, block.bn1 = fuse_conv_bn_eval(block.conv1, block.bn1), nn.Identity()
            block.conv2, block.bn2 = fuse_conv_bn_eval(block.conv2, block.bn2), nn.Identity()
            if block.downsample is not None:
                block.downsample = nn.Sequential(fuse_conv_bn_eval(block.downsample[0], block.downsample[1]))
    return resnet


class MultiLevelResNet(nn.Module):
    """Frozen ResNet trunk -> {level: (N, C)} pooled activations, levels as in ``config.LEVELS``."""

    def __init__(self, resnet: torchvision.models.ResNet):
        super().__init__()
        resnet = fold_batch_norm(resnet)
        self.stem = nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool)
        self.layer1, self.layer2 = resnet.layer1, resnet.layer2
        self.layer3, self.layer4 = resnet.layer3, resnet.layer4
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True):  # frozen: batch-norm statistics never update
        return super().train(False)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """x: (N, 3, H, W) normalised frames -> {"low": (N, 128), "mid": (N, 256), "high": (N, 512)}."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected frames (N, 3, H, W), got {tuple(x.shape)}")
        l2 = self.layer2(self.layer1(self.stem(x)))
        l3 = self.layer3(l2)
        l4 = self.layer4(l3)
        # the spatial means in float32 even under bf16/fp16 autocast (mean is on no autocast list)
        return {"low": l2.mean(dim=(2, 3), dtype=torch.float32), "mid": l3.mean(dim=(2, 3), dtype=torch.float32),
                "high": l4.mean(dim=(2, 3), dtype=torch.float32)}


@dataclass(frozen=True)
class LoadedBackbone:
    model: MultiLevelResNet
    identity: str  # what the cache records: which weights, exactly


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_identity(weights: str, seed: int) -> str:
    """The identity string a cache records for ``--backbone-weights`` (cheap: hashes a local file, loads
    nothing): ``torchvision:<name>``, ``random:seed=<seed>`` or ``sha256:<hex>``."""
    if weights == "imagenet":
        return f"torchvision:{IMAGENET_WEIGHTS}"
    if weights == "random":
        return f"random:seed={seed}"
    path = Path(weights)
    if not path.is_file():
        raise WeightsError(f"{weights}: weights file not found (use 'imagenet', 'random' or a state_dict path)")
    return f"sha256:{sha256_file(path)}"


def weights_from_identity(identity: str, local: Path | None) -> tuple[str, int]:
    """The inverse of :func:`weights_identity`: ``load_backbone`` arguments (weights, seed) that rebuild
    the backbone a cache was made with; ``local`` is the state_dict file for a ``sha256:`` identity.
    Refused, naming what is missing, when those weights are not available."""
    kind, _, value = identity.partition(":")
    if kind == "torchvision":
        return "imagenet", 0
    if kind == "random":
        return "random", int(value.removeprefix("seed="))
    if kind == "sha256":
        if local is None:
            raise WeightsError(f"the runs' cache was made with a local weights file (sha256 {value[:12]}...); "
                               "pass it with --backbone-weights PATH")
        if sha256_file(local) != value:
            raise WeightsError(f"{local}: sha256 differs from the weights the runs' cache was made with ({value[:12]}...)")
        return str(local), 0
    raise WeightsError(f"unknown weights identity {identity!r} in the runs' cache")


def _state_dict_from_file(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a bad file; report it as one line
        raise WeightsError(f"{path}: cannot read a state_dict ({type(err).__name__}: {err})") from None
    for nested in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(nested), dict):
            obj = obj[nested]
    if not isinstance(obj, dict):
        raise WeightsError(f"{path}: expected a state_dict (dict of tensors), got {type(obj).__name__}")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_backbone(weights: str = "imagenet", seed: int = 0) -> LoadedBackbone:
    """ResNet-34 with ``weights``: 'imagenet' (torchvision's download and cache), 'random' (seeded), or a
    path to a state_dict in torchvision's key layout (the classifier keys ``fc.*`` may be absent)."""
    identity = weights_identity(weights, seed)
    if weights == "imagenet":
        try:
            resnet = torchvision.models.resnet34(weights=torchvision.models.ResNet34_Weights.IMAGENET1K_V1)
        except Exception as err:  # network errors come in many types
            raise WeightsError(
                f"cannot load torchvision's {IMAGENET_WEIGHTS} ({type(err).__name__}: {err}); without internet, "
                "put the file in $TORCH_HOME/hub/checkpoints/ or pass --weights PATH"
            ) from None
    elif weights == "random":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            resnet = torchvision.models.resnet34(weights=None)
    else:
        resnet = torchvision.models.resnet34(weights=None)
        state = _state_dict_from_file(Path(weights))
        missing, unexpected = resnet.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("fc.")]
        if missing or unexpected:
            raise WeightsError(
                f"{weights}: not a torchvision {BACKBONE} state_dict "
                f"(missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
                f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''})"
            )
    return LoadedBackbone(MultiLevelResNet(resnet), identity)


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


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' -> bf16 on CUDA GPUs that support it, fp16 on older ones, fp32 on CPU."""
    if precision != "auto":
        return precision
    if device.type == "cuda":  # bf16 where the GPU computes it natively (Ampere and later), not emulated
        with torch.cuda.device(device):
            return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
    return "fp32"


class FeatureExtractor:
    """The backbone placed on a device: frames (N, 3, H, W) -> {level: (N, C) float32 on the CPU}."""

    def __init__(self, backbone: LoadedBackbone, device: torch.device, precision: str = "fp32"):
        self.device = device
        self.precision = precision
        # weights cast once to the inference dtype (autocast would cast frozen weights at every call)
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
        # channels-last: the faster layout for these convolutions on CPU (oneDNN) and GPU (cuDNN) alike
        self.model = backbone.model.to(device=device, dtype=self.dtype, memory_format=torch.channels_last)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest algorithms
            if precision == "fp32":  # fp32 means fp32: no TF32 in the convolutions the cache says are fp32
                torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False

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
        joined = torch.cat([out[level] for level in LEVELS], dim=1)  # (N, 896) float32
        host = torch.empty(joined.shape, dtype=joined.dtype, pin_memory=True)
        host.copy_(joined, non_blocking=True)
        done = torch.cuda.Event()
        done.record()
        return PendingFeatures(host, done)


class PendingFeatures:
    """Features on their way to host memory: ``result()`` -> {level: (N, C) float32 CPU tensors}."""

    def __init__(self, features: dict[str, torch.Tensor] | torch.Tensor, done: torch.cuda.Event | None = None):
        self.features, self.done = features, done

    def result(self) -> dict[str, torch.Tensor]:
        if self.done is None:
            return self.features
        self.done.synchronize()
        return dict(zip(LEVELS, self.features.split([dim for _, dim in LEVELS.values()], dim=1)))
