"""Heads on cached feature sequences: clip (B, T, C) -> class logits (B, K)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.config import STREAM_FUSIONS, TrainConfig
from pipeline.sru.modules import SRU, SRULayer


class RRNHead(nn.Module):
    """The paper's recurrent residual network head: stacked SRU -> tanh -> dropout -> linear at every
    time step -> mean (eq. 8) or max (eq. 9) over time. Softmax is left to the loss / evaluation."""

    def __init__(self, input_size: int, num_classes: int, *, hidden: int = 1024, layers: int = 3,
                 pool: str = "mean", dropout: float = 0.5, sru_dropout: float = 0.0):
        super().__init__()
        if pool not in ("mean", "max"):
            raise ValueError(f"pool must be 'mean' or 'max', got {pool!r}")
        self.pool = pool
        self.sru = SRU(input_size, hidden, layers, dropout=sru_dropout)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _pool(self.classifier(self.dropout(torch.tanh(self.sru(x)))), self.pool)  # (B, T, K) -> (B, K)


def _pool(steps: torch.Tensor, pool: str) -> torch.Tensor:
    """Per-step scores (B, T, K) -> (B, K): mean (eq. 8) or max (eq. 9) over time."""
    return steps.mean(dim=1) if pool == "mean" else steps.amax(dim=1)


class LSTMHead(nn.Module):
    """The cLSTM / LRCN-style baseline (paper table 3): stacked LSTM with the RRN's per-step head."""

    def __init__(self, input_size: int, num_classes: int, *, hidden: int = 1024, layers: int = 3,
                 pool: str = "mean", dropout: float = 0.5):
        super().__init__()
        self.pool = pool
        self.lstm = nn.LSTM(input_size, hidden, layers, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.lstm(x)  # (B, T, H)
        return _pool(self.classifier(self.dropout(torch.tanh(h))), self.pool)  # (B, K)


class ResLSTMHead(nn.Module):
    """Residual stacked LSTM (Lakhal et al.): each layer's output is added to its input (through a
    learned projection where the sizes differ); the class comes from the top layer's last time step."""

    def __init__(self, input_size: int, num_classes: int, *, hidden: int = 1024, layers: int = 3,
                 dropout: float = 0.5):
        super().__init__()
        self.layers = nn.ModuleList(nn.LSTM(input_size if i == 0 else hidden, hidden, batch_first=True)
                                    for i in range(layers))
        self.project = nn.Linear(input_size, hidden, bias=False) if input_size != hidden else nn.Identity()
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            out, _ = layer(x)  # (B, T, H)
            x = out + (self.project(x) if i == 0 else x)
        return self.classifier(self.dropout(x[:, -1]))  # (B, K)


class TemporalResidualBlock(nn.Module):
    """y_t = x_t + F(x_{t-k+1..t}): F is a causal temporal convolution over the k preceding frames
    (Iqbal et al.'s limited temporal range), its last layer initialised to zero so the block starts
    as the identity (Feichtenhofer et al.'s residual initialisation)."""

    def __init__(self, channels: int, hidden: int, window: int):
        super().__init__()
        self.window = window
        self.temporal = nn.Conv1d(channels, hidden, kernel_size=window)
        self.out = nn.Conv1d(hidden, channels, kernel_size=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = nn.functional.pad(x.transpose(1, 2), (self.window - 1, 0))  # (B, C, k-1+T): causal, past only
        return x + self.out(torch.relu(self.temporal(z))).transpose(1, 2)  # (B, T, C)


class TResNetHead(nn.Module):
    """A stack of causal temporal residual blocks on the features, then the RRN's per-step head."""

    def __init__(self, input_size: int, num_classes: int, *, hidden: int = 1024, layers: int = 3, pool: str = "mean",
                 dropout: float = 0.5, window: int = 5):
        super().__init__()
        self.pool = pool
        self.blocks = nn.Sequential(*(TemporalResidualBlock(input_size, hidden, window) for _ in range(layers)))
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(input_size, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _pool(self.classifier(self.dropout(self.blocks(x))), self.pool)  # (B, K)


class TwoStreamHead(nn.Module):
    """Appearance and motion SRU stacks side by side on (B, T, 2C) = RGB features | flow features.

    Before each appearance layer the motion stream's current state is added to the appearance input of
    the layer's gates, while the layer's highway (skip) path carries appearance alone: ST-ResNet's
    residual connection from the motion stream into the appearance stream. The two top states are
    fused by sum or element-wise product (Res-LSTM's mid-level fusion), then the RRN's per-step head."""

    def __init__(self, stream_size: int, num_classes: int, *, hidden: int = 1024, layers: int = 3, pool: str = "mean",
                 dropout: float = 0.5, fusion: str = "sum"):
        super().__init__()
        if fusion not in STREAM_FUSIONS:
            raise ValueError(f"fusion must be one of {', '.join(STREAM_FUSIONS)}, got {fusion!r}")
        self.stream_size, self.pool, self.fusion = stream_size, pool, fusion
        sizes = [stream_size] + [hidden] * (layers - 1)
        self.appearance = nn.ModuleList(SRULayer(size, hidden) for size in sizes)
        self.motion = nn.ModuleList(SRULayer(size, hidden) for size in sizes)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden, num_classes)

    def streams(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, 2C) -> the top appearance and motion states, (T, B, H) each."""
        if x.ndim != 3 or x.shape[-1] != 2 * self.stream_size:
            raise ValueError(f"expected (B, T, {2 * self.stream_size}) = RGB | flow, got {tuple(x.shape)}")
        a, m = x.transpose(0, 1).split(self.stream_size, dim=-1)  # (T, B, C) each
        for appearance, motion in zip(self.appearance, self.motion):
            a, m = appearance(a + m, skip_input=a)[0], motion(m)[0]  # (T, B, H): motion -> appearance
        return a, m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, m = self.streams(x)
        top = a + m if self.fusion == "sum" else a * m  # (T, B, H)
        steps = self.classifier(self.dropout(torch.tanh(top))).transpose(0, 1)  # (B, T, K)
        return _pool(steps, self.pool)  # (B, K)


def sinusoids(length: int, width: int) -> torch.Tensor:
    """The transformer's sinusoidal encoding, (length, width): sin and cos of each position at width / 2
    frequencies from 1 down to 1/10000 (Vaswani et al.)."""
    angles = torch.arange(length, dtype=torch.float32)[:, None] * torch.exp(
        torch.arange(0, width, 2, dtype=torch.float32) * (-math.log(10000.0) / width))  # (L, ceil(H / 2))
    return torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(1)[:, :width]  # (L, H)


class TemporalPositions(nn.Module):
    """A learned position per frame of the training clip (``length`` rows), added to the frames; it starts as
    the sinusoidal encoding, of the features' scale, so order is visible from the first step. A clip of
    another length T reads the table linearly interpolated to T rows (the first and last frames keep the
    first and last positions): a position says where in the clip a frame is, as in training."""

    def __init__(self, length: int, width: int):
        super().__init__()
        self.table = nn.Parameter(sinusoids(length, width))  # (L, H)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        table = self.table  # (L, H)
        if x.shape[1] != len(table):
            table = F.interpolate(table.T[None], size=x.shape[1], mode="linear", align_corners=True)[0].T  # (T, H)
        return x + table  # (B, T, H)


class CrossAttentionBlock(nn.Module):
    """The queries attend over the frames (multi-head scaled dot-product attention), then a GELU MLP of
    4x the width; pre-LayerNorm, each with a residual connection on the queries (V-JEPA's probe block)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"{heads} attention heads do not divide the width {width}")
        self.heads = heads
        self.norm_q, self.norm_x, self.norm_mlp = nn.LayerNorm(width), nn.LayerNorm(width), nn.LayerNorm(width)
        self.q, self.kv, self.out = nn.Linear(width, width), nn.Linear(width, 2 * width), nn.Linear(width, width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def _split(self, t: torch.Tensor) -> torch.Tensor:
        return t.unflatten(-1, (self.heads, -1)).transpose(1, 2)  # (B, N, H) -> (B, heads, N, H / heads)

    def forward(self, q: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        k, v = self.kv(self.norm_x(x)).chunk(2, dim=-1)  # (B, T, H) each
        att = F.scaled_dot_product_attention(self._split(self.q(self.norm_q(q))), self._split(k), self._split(v))
        q = q + self.out(att.transpose(1, 2).flatten(2))  # (B, heads, Q, H / heads) -> (B, Q, H)
        return q + self.mlp(self.norm_mlp(q))  # (B, Q, H)


class AttentiveProbeHead(nn.Module):
    """The attentive probe (V-JEPA's frozen evaluation): the frames projected to the width ``hidden``, a
    learned temporal position added to each (``positions=False``: none, and the head is blind to frame
    order), ``layers`` cross-attention blocks of ``queries`` learned queries over them, the queries'
    mean, then LayerNorm, dropout and a linear classifier."""

    def __init__(self, input_size: int, num_classes: int, *, hidden: int = 1024, layers: int = 1, heads: int = 16,
                 length: int = 30, positions: bool = True, queries: int = 1, dropout: float = 0.5):
        super().__init__()
        self.project = nn.Linear(input_size, hidden) if input_size != hidden else nn.Identity()
        self.positions = TemporalPositions(length, hidden) if positions else None
        self.queries = nn.Parameter(torch.empty(1, queries, hidden))  # (1, Q, H)
        nn.init.trunc_normal_(self.queries, std=0.02)
        self.blocks = nn.ModuleList(CrossAttentionBlock(hidden, heads) for _ in range(layers))
        self.norm, self.dropout = nn.LayerNorm(hidden), nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 3:
            raise ValueError(f"expected clips (B, T, C), got {tuple(x.shape)}")
        frames = self.project(x)  # (B, T, H)
        if self.positions is not None:
            frames = self.positions(frames)  # (B, T, H)
        q = self.queries.expand(len(x), -1, -1)  # (B, Q, H)
        for block in self.blocks:
            q = block(q, frames)  # (B, Q, H)
        return self.classifier(self.dropout(self.norm(q.mean(dim=1))))  # (B, K)


class MeanPoolHead(nn.Module):
    """The order-blind control: the average of the clip's features -> dropout -> linear."""

    def __init__(self, input_size: int, num_classes: int, *, dropout: float = 0.5):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(input_size, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 3:
            raise ValueError(f"expected clips (B, T, C), got {tuple(x.shape)}")
        return self.classifier(self.dropout(x.mean(dim=1)))  # (B, K)


class FeatureNorm(nn.Module):
    """(x - mean) / std per feature dimension, with statistics of the training set kept as buffers so
    that a checkpoint carries them. Identity when built without statistics."""

    def __init__(self, input_size: int, mean: torch.Tensor | None = None, std: torch.Tensor | None = None):
        super().__init__()
        self.register_buffer("mean", torch.zeros(input_size) if mean is None else mean.float().clone())
        self.register_buffer("std", torch.ones(input_size) if std is None else std.float().clamp_min(1e-6).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std  # (B, T, C)


class NormalizedHead(nn.Module):
    """The model a run trains: feature normalisation followed by a head; what training, checkpoints and
    prediction use. Its state_dict keys (``norm.*``, ``head.*``) are the checkpoints' format."""

    def __init__(self, norm: FeatureNorm, head: nn.Module):
        super().__init__()
        self.norm, self.head = norm, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(x))  # (B, T, C) -> (B, K)


def build_model(cfg: TrainConfig, input_size: int, num_classes: int,
                mean: torch.Tensor | None = None, std: torch.Tensor | None = None) -> NormalizedHead:
    """The head of ``cfg.model``; ``mean``/``std`` (C,), when given, standardise its inputs (--normalize).
    For twostream, ``input_size`` is both streams' width together (RGB | flow)."""
    shape = dict(hidden=cfg.hidden, layers=cfg.layers)
    if cfg.model == "rrn":
        head = RRNHead(input_size, num_classes, **shape, pool=cfg.pool, dropout=cfg.dropout,
                       sru_dropout=cfg.sru_dropout)
    elif cfg.model == "lstm":
        head = LSTMHead(input_size, num_classes, **shape, pool=cfg.pool, dropout=cfg.dropout)
    elif cfg.model == "reslstm":
        head = ResLSTMHead(input_size, num_classes, **shape, dropout=cfg.dropout)
    elif cfg.model == "tresnet":
        head = TResNetHead(input_size, num_classes, **shape, pool=cfg.pool, dropout=cfg.dropout, window=cfg.window)
    elif cfg.model == "attentive":
        head = AttentiveProbeHead(input_size, num_classes, **shape, heads=cfg.attention_heads, length=cfg.clip.length,
                                  positions=cfg.positions, dropout=cfg.dropout)
    elif cfg.model == "meanpool":
        head = MeanPoolHead(input_size, num_classes, dropout=cfg.dropout)
    elif cfg.model == "twostream":  # input: RGB and flow features side by side
        head = TwoStreamHead(input_size // 2, num_classes, **shape, pool=cfg.pool, dropout=cfg.dropout,
                             fusion=cfg.stream_fusion)
    else:
        raise ValueError(f"unknown model {cfg.model!r}")
    return NormalizedHead(FeatureNorm(input_size, mean, std), head)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
