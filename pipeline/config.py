"""Configuration: the paper's defaults live here, once (MRRN sections 4.2 and 5.2).

The command line takes every option's default from these dataclasses (``default(TrainConfig, "epochs")``);
``tests/test_cli.py`` fails if the two ever disagree.
"""
from __future__ import annotations

import math
import os
from dataclasses import MISSING, asdict, dataclass, field, replace
from pathlib import Path
from typing import NamedTuple

from pipeline.errors import ConfigError

# ImageNet normalisation used by torchvision's ResNet-34 weights and by the paper.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# The three levels of every backbone, coarsest last: for the paper's ResNet-34, the spatial means (eq. 7) of
# layer2 / layer3 / layer4 (128 / 256 / 512 values); extract/taps.py finds them in any model.
LEVELS = ("low", "mid", "high")
BACKBONE = "resnet34"

# Preprocessing (paper: shorter side -> 256, centre crop 224 at test time).
PAPER_SHORT_SIDE = 256
PAPER_CROP = 224

# Index formats (datasets/index.py dispatches; kinetics, ssv2 and list each have a module of their own there)
DATASET_CHOICES = ("ucf101", "hmdb51", "folder", "kinetics", "ssv2", "list")
FEATURE_DTYPES = ("float16", "float32")
DEFAULT_TEST_FRACTION = 0.3  # folder datasets without split files: share of each class held out for test
PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # extract --precision; what each computes in: precision.py
MODALITIES = ("rgb", "flow")
FLOW_METHODS = ("farneback", "tvl1")


def default(cls, name: str):
    """The default of dataclass ``cls``'s field ``name``: where the CLI's option defaults come from."""
    f = cls.__dataclass_fields__[name]
    return f.default_factory() if f.default_factory is not MISSING else f.default


def default_workers(device_type: str) -> int:
    """Decoding processes when --workers is not given. On a GPU: every core but one, which feeds the
    backbone (at least one); they run at a lower priority. On the CPU: none. There the backbone's
    threads use every core already, and a decoding process competing with them costs more than decoding
    between batches in the command itself (`benchmarks/bench_extract.py --workers 0|1` measures both)."""
    return max(1, (os.cpu_count() or 2) - 1) if device_type == "cuda" else 0


def _require_choice(what: str, value, choices) -> None:
    if value not in choices:
        raise ConfigError(f"{what} must be one of {', '.join(map(str, choices))}, got {value!r}")


def _require_fraction(what: str, value: float) -> None:
    if not (math.isfinite(value) and 0.0 <= value < 1.0):
        raise ConfigError(f"{what} must be in [0, 1), got {value}")


INTERPOLATIONS = ("bilinear", "bicubic")  # bicubic for backbones whose weights were trained with it
# The resizing implementations a cache may record: torchvision's native uint8 kernel (what runs on the
# CPU), and resizing in float32 rounded back to whole grey levels (what runs on a GPU). They differ by a
# grey level on about a fifth of the pixels, so a cache records which one made it.
RESIZE_KINDS = ("uint8", "float-rounded")


@dataclass(frozen=True)
class Resize:
    """How frames are resized (always antialiased): the interpolation and the implementation. Caches
    record it by :attr:`name`, e.g. ``bilinear-antialias-uint8``; :meth:`parse` reads that back."""

    interpolation: str = "bilinear"  # one of INTERPOLATIONS (torchvision's InterpolationMode values)
    kind: str = "uint8"  # one of RESIZE_KINDS

    def __post_init__(self):
        _require_choice("resize interpolation", self.interpolation, INTERPOLATIONS)
        _require_choice("resize kind", self.kind, RESIZE_KINDS)

    @property
    def name(self) -> str:
        return f"{self.interpolation}-antialias-{self.kind}"

    @classmethod
    def parse(cls, name: str) -> Resize:
        interpolation, antialias, kind = name.partition("-antialias-")
        if not antialias:
            raise ConfigError(f"resize must look like bilinear-antialias-uint8, got {name!r}")
        return cls(interpolation, kind)

    @property
    def uint8(self) -> bool:
        """Whether it is torchvision's uint8 kernel (which runs on the CPU only)."""
        return self.kind == "uint8"

    def on_gpu(self) -> Resize:
        """The resize a GPU runs for this one: the same interpolation, in float32 rounded back."""
        return replace(self, kind="float-rounded")


# Cached views of each frame (--views): the centre crop alone (the paper's test-time input), or fixed
# crops and flips for augmentation that survives a frozen cache. The centre crop is always view 0.
CORNERS = ("top-left", "top-right", "bottom-left", "bottom-right")
VIEW_SETS = {
    "center": ("center",),
    "center,flip": ("center", "flip"),
    "five": ("center", *CORNERS),
    "ten": ("center", *CORNERS, "flip", *(f"{corner}-flip" for corner in CORNERS)),
}
TRAIN_VIEWS = ("random", "center")  # training: one view per clip drawn at random, or the centre crop only
TEST_VIEWS = ("all", "center")  # evaluation and prediction: video scores averaged over every view, or centre only


def views_option(views: tuple[str, ...]) -> str:
    """The --views value that names ``views`` (e.g. 'five')."""
    return next(name for name, names in VIEW_SETS.items() if names == views)


@dataclass(frozen=True)
class Preprocess:
    """How frames become backbone inputs: resize shorter side, centre crop, [0,1], normalise."""

    short_side: int = PAPER_SHORT_SIDE
    crop: int = PAPER_CROP
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    resize: Resize = Resize()  # bilinear, by torchvision's uint8 kernel
    views: tuple[str, ...] = VIEW_SETS["center"]  # the crops kept of each frame: one of VIEW_SETS' values
    fps: float | None = None  # frames kept per second of video, by timestamp (extract --fps); None: every frame

    def __post_init__(self):
        _require_choice("views", self.views, VIEW_SETS.values())
        if self.fps is not None and not (math.isfinite(self.fps) and self.fps > 0):
            raise ConfigError(f"--fps {self.fps}: must be a number of frames per second > 0")
        if self.crop < 32 or self.short_side < self.crop:
            raise ConfigError(
                f"need 32 <= crop <= short side, got crop {self.crop} and short side {self.short_side}"
            )


@dataclass(frozen=True)
class FlowSpec:
    """Dense optical flow between consecutive frames, rendered as a 3-channel image: x and y clipped
    to +-``bound`` pixels and magnitude (clipped to ``bound``), each scaled to 0-255 (the usual
    two-stream recipe). Flow is computed on frames whose shorter side is ``size`` pixels."""

    method: str = "farneback"  # "tvl1" needs opencv-contrib (cv2.optflow)
    bound: float = 20.0
    size: int = 256

    def __post_init__(self):
        _require_choice("flow method", self.method, FLOW_METHODS)
        if not (math.isfinite(self.bound) and self.bound > 0) or self.size < 16:
            raise ConfigError(f"need a flow bound > 0 and a flow size >= 16, got {self.bound} and {self.size}")


class FrameSource(NamedTuple):
    """What the backbone sees of a video: its frames preprocessed, or (``flow`` set) optical flow
    between consecutive frames rendered as images and then preprocessed the same way."""

    preprocess: Preprocess
    flow: FlowSpec | None = None


@dataclass(frozen=True)
class ExtractConfig:
    """Everything `mrrn extract` needs."""

    dataset: str
    root: Path
    out: Path
    splits: Path | None = None
    backbone: str = BACKBONE  # any torchvision classification model, or timm:NAME (mrrn extract --list-backbones)
    # "imagenet", a torchvision weights name, "random" or a state_dict path (timm: "pretrained", "random" or a file)
    backbone_weights: str = "imagenet"
    seed: int = 0  # seeds --backbone-weights random
    # --short-side and --crop: each, when set, overrides the weights' own preprocessing (the paper's for
    # random or local weights) and nothing else (extract/run.py merges them)
    short_side: int | None = None
    crop: int | None = None
    dtype: str = "float16"  # how features are stored
    precision: str = "auto"  # inference precision; auto: bf16 where computed natively, see precision.py
    device: str = "auto"
    batch_size: int = 64
    workers: int | None = None  # decoding processes; None: default_workers(the device), shared among the ranks
    chunk_frames: int = 64  # decoded frames per piece handed from a worker (bounds memory per video)
    strict: bool = False
    test_fraction: float = DEFAULT_TEST_FRACTION
    modality: str = "rgb"  # "flow": the backbone sees rendered optical flow between consecutive frames
    flow: FlowSpec = field(default_factory=FlowSpec)
    redo: tuple[str, ...] = ()  # keys to extract again although the cache holds them
    redo_damaged: bool = False  # extract again every video that `inspect --verify` flags
    views: str = "center"  # which crops of each frame to keep: a key of VIEW_SETS
    fps: float | None = None  # frames sampled per second of video (by timestamp); None: every frame, the paper
    # finished videos are committed into the cache every this many videos or seconds, whichever comes first
    # (docs/extraction.md, "Commits as extraction goes"): a resume reads at most one interval of journal
    commit_every: int = 256
    commit_seconds: float = 300.0

    def __post_init__(self):
        _require_choice("dtype", self.dtype, FEATURE_DTYPES)
        _require_choice("views", self.views, VIEW_SETS)
        if self.modality == "flow" and self.views != "center":
            raise ConfigError("--views applies to RGB caches (a flipped flow image would need its x motion negated)")
        if self.modality == "flow" and self.fps is not None:
            raise ConfigError("--fps applies to RGB caches (flow is the motion between consecutive frames)")
        _require_choice("precision", self.precision, PRECISIONS)
        _require_choice("modality", self.modality, MODALITIES)
        _require_fraction("test fraction", self.test_fraction)
        if self.batch_size < 1 or (self.workers is not None and self.workers < 0) or self.chunk_frames < 1:
            raise ConfigError("batch size and chunk frames must be >= 1 and workers >= 0")
        if self.commit_every < 1 or not self.commit_seconds > 0:
            raise ConfigError("--commit-every must be at least 1 video, and the commit interval positive")
        for option, size in (("--short-side", self.short_side), ("--crop", self.crop)):
            if size is not None and size < 32:
                raise ConfigError(f"{option} {size}: must be at least 32")


# ----------------------------------------------------------------------------------------------
# Stage 2 (MRRN section 4.2 and 5.2)

MODELS = ("rrn", "lstm", "reslstm", "tresnet", "attentive", "meanpool", "twostream")
ATTENTION_HEAD_WIDTH = 64  # attentive: its attention heads are this wide (ViT / V-JEPA); one head below it
STREAM_FUSIONS = ("sum", "product")  # twostream: how the top appearance and motion states are combined
POOLS = ("mean", "max")  # eq. 8 and eq. 9
PAPER_LR = {"low": 1e-4, "mid": 1e-4, "high": 1e-5}  # initial learning rate per level (section 5.2)
PAPER_FUSION_WEIGHTS = {"high": 0.7, "mid": 0.2, "low": 0.1}  # eq. 10
FUSION_METHODS = ("weighted", "sum", "product")
TRAIN_PRECISIONS = ("auto", "fp32", "tf32", "bf16")  # train --precision; what each computes in: precision.py


@dataclass(frozen=True)
class ClipSpec:
    """Clips of ``length`` frames every ``stride`` frames, at most ``max_clips`` per video (spread
    evenly when a video has more); videos shorter than ``length`` are looped."""

    length: int = 30
    stride: int = 8
    max_clips: int = 20

    def __post_init__(self):
        if min(self.length, self.stride, self.max_clips) < 1:
            raise ConfigError(f"clip length, stride and max clips must be >= 1, got {self}")


ADAM_BETA1 = 0.9  # torch's default, which training uses: Adam's first step divides the rate by 1 - beta1
FLOAT32_MAX = 3.4028234663852886e38  # the optimiser computes its steps in float32


@dataclass(frozen=True)
class TrainConfig:
    """`mrrn train`: the paper's defaults, all overridable. ``lr=None`` means the level's paper rate."""

    cache: str
    out: str
    split: int = 1
    level: str = "high"
    modality: str = "rgb"  # must match the cache's (mrrn extract --modality)
    model: str = "rrn"
    flow_cache: str | None = None  # twostream: the flow cache beside ``cache`` (the RGB one)
    stream_fusion: str = "sum"  # twostream: sum or product of the top appearance and motion states
    hidden: int = 1024
    layers: int = 3
    pool: str = "mean"
    dropout: float = 0.5  # before the per-step linear layer
    window: int = 5  # tresnet: frames each temporal residual block sees (the current and k-1 before it)
    positions: bool = True  # attentive: a learned temporal position added to each frame; False: blind to order
    sru_dropout: float = 0.0  # between SRU layers
    epochs: int = 12
    batch_size: int = 28
    lr: float | None = None
    lr_step_epochs: int = 8  # the rate is multiplied by lr_gamma after this many epochs
    lr_gamma: float = 0.1
    weight_decay: float = 0.0
    normalize: bool = False  # standardise each feature dimension with training-set statistics (not in the paper)
    clip: ClipSpec = field(default_factory=ClipSpec)
    seed: int = 0
    device: str = "auto"
    allow_missing: bool = False
    eval_batch_size: int = 256
    val_fraction: float = 0.0  # share of each class's training videos held out for validation (0: none)
    precision: str = "auto"  # the projections' arithmetic; auto: tf32 on CUDA, bf16 on native-bf16 CPUs
    train_views: str = "random"  # a cache with several views: one drawn per clip, or the centre crop only
    test_views: str = "all"  # a cache with several views: video scores averaged over all, or the centre only
    max_memory: int | None = None  # bytes of level data each rank may hold; None: train/shares.py's default budget

    def __post_init__(self):
        _require_choice("level", self.level, LEVELS)
        _require_choice("training views", self.train_views, TRAIN_VIEWS)
        _require_choice("test views", self.test_views, TEST_VIEWS)
        _require_choice("precision", self.precision, TRAIN_PRECISIONS)
        _require_choice("modality", self.modality, MODALITIES)
        _require_choice("model", self.model, MODELS)
        _require_choice("stream fusion", self.stream_fusion, STREAM_FUSIONS)
        _require_choice("pool", self.pool, POOLS)
        if self.model == "twostream" and (self.flow_cache is None or self.modality != "rgb"):
            raise ConfigError("--model twostream trains on an RGB cache (--cache) and a flow cache (--flow-cache)")
        if self.model != "twostream" and self.flow_cache is not None:
            raise ConfigError("a flow cache beside the RGB cache is only for --model twostream")
        if min(self.hidden, self.layers, self.epochs, self.batch_size, self.lr_step_epochs, self.window,
               self.eval_batch_size) < 1:
            raise ConfigError("hidden, layers, epochs, batch sizes, lr step and window must be >= 1")
        width = ATTENTION_HEAD_WIDTH
        if self.model == "attentive" and self.hidden > width and self.hidden % width:
            raise ConfigError(f"--model attentive: --hidden {self.hidden} does not split into {width}-wide attention heads; "
                              f"use a multiple of {width} such as {self.hidden // width * width}, or under {width} (one head)")
        _require_fraction("validation fraction", self.val_fraction)
        _require_fraction("dropout", self.dropout)
        _require_fraction("SRU dropout", self.sru_dropout)
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"the learning rate must be a finite number > 0, got {self.lr}")
        if self.lr is not None and self.lr / (1 - ADAM_BETA1) > FLOAT32_MAX:  # Adam's first step, in float32
            raise ConfigError(f"--lr {self.lr:g}: too large: Adam's first step is {1 / (1 - ADAM_BETA1):g} times the "
                              f"rate, beyond float32's range ({FLOAT32_MAX:.1e}); rates that train are far below 1")
        if not (math.isfinite(self.lr_gamma) and self.lr_gamma > 0):
            raise ConfigError(f"the learning-rate factor must be a finite number > 0, got {self.lr_gamma}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ConfigError(f"weight decay must be a finite number >= 0, got {self.weight_decay}")

    @property
    def learning_rate(self) -> float:
        return PAPER_LR[self.level] if self.lr is None else self.lr

    @property
    def attention_heads(self) -> int:
        """attentive: hidden / 64 heads, 64 wide each; one head for a width under 64."""
        return max(1, self.hidden // ATTENTION_HEAD_WIDTH)

    @property
    def streams(self) -> str:
        """What the run sees: rgb, flow, or rgb+flow (twostream)."""
        return "rgb+flow" if self.model == "twostream" else self.modality

    def lr_at(self, epoch: int) -> float:
        """Learning rate for 0-based ``epoch``: step decay (paper: 1e-5 for 8 epochs, then 1e-6)."""
        return self.learning_rate * self.lr_gamma ** (epoch // self.lr_step_epochs)

    def to_json(self) -> dict:
        d = asdict(self)
        d["lr"] = self.learning_rate
        return d

    @classmethod
    def from_json(cls, d: dict) -> "TrainConfig":
        """Settings added after a run was written take their defaults."""
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**{**known, "clip": ClipSpec(**d.get("clip", {}))})
