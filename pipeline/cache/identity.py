"""A cache's identity: exactly how its features were made, as one typed value.

Every reader and writer of a cache, a journal, a run directory or a score file goes through
:class:`CacheIdentity`: it is parsed from JSON in one place (:meth:`CacheIdentity.from_json`, where
the defaults of older files are applied), compared in one place (:meth:`CacheIdentity.diff`, which
words the differences) and mapped back to what the backbone saw in one place
(:meth:`CacheIdentity.frame_source`). The JSON layout is the cache's ``config`` attribute
(``reader.IDENTITY_ATTR``; ``docs/cache-format.md``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import NamedTuple

from pipeline.config import LEVELS, FlowSpec, FrameSource, Preprocess, Resize, default
from pipeline.errors import MrrnError

# Files written before a field existed: what the field meant then.
LEGACY_DEFAULTS = {"modality": "rgb"}  # caches from before the motion stream hold RGB features
STREAM_FIELDS = ("modality", "flow")  # what RGB and flow caches of one dataset and backbone differ in


class IdentityError(MrrnError):
    """A stored identity that cannot be read."""


class LevelSpec(NamedTuple):
    name: str  # low, mid, high
    tap: str  # the graph node of the backbone whose output, pooled, is this level (layer2, ...)
    width: int  # feature dimension


def canonical_json(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class CacheIdentity:
    """What a cache must agree on to be resumed, extended, trained beside another or predicted with."""

    backbone: str
    backbone_weights: str  # "torchvision:<weights name>", "random:seed=N" or "sha256:<hex>" (JSON key "weights")
    preprocess: Preprocess
    levels: tuple[LevelSpec, ...]  # low, mid, high
    dtype: str  # storage type of the features
    precision: str  # arithmetic of the backbone forward
    dataset: str
    classes: tuple[str, ...]
    modality: str = "rgb"
    flow: FlowSpec | None = None  # set for flow caches only

    # -- JSON (the cache's ``config`` attribute, config.json of runs, score files)

    @classmethod
    def from_json(cls, data: dict | str) -> CacheIdentity:
        """Parse a stored identity; fields that older files lack take :data:`LEGACY_DEFAULTS`."""
        try:
            d = {**LEGACY_DEFAULTS, **(json.loads(data) if isinstance(data, str) else data)}
            pre = {k: tuple(v) if isinstance(v, list) else v for k, v in d["preprocess"].items()}
            if "resize" in pre:
                pre["resize"] = Resize.parse(pre["resize"])
            levels = sorted((LevelSpec(name, tap, int(width)) for name, (tap, width) in d["levels"].items()),
                            key=lambda spec: LEVELS.index(spec.name))  # by name: a ViT's widths are equal
            return cls(
                backbone=d["backbone"], backbone_weights=d["weights"], preprocess=Preprocess(**pre),
                levels=tuple(levels), dtype=d["dtype"], precision=d["precision"], dataset=d["dataset"],
                classes=tuple(d["classes"]), modality=d["modality"],
                flow=FlowSpec(**d["flow"]) if d.get("flow") is not None else None,
            )
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise IdentityError(f"not a cache identity ({type(err).__name__}: {err})") from None

    def to_json(self) -> dict:
        pre = self.preprocess
        d = {
            "backbone": self.backbone, "weights": self.backbone_weights,
            "preprocess": {"short_side": pre.short_side, "crop": pre.crop, "mean": list(pre.mean),
                           "std": list(pre.std), "resize": pre.resize.name},  # + "views" when not the centre only
            "levels": {spec.name: [spec.tap, spec.width] for spec in self.levels},
            "dtype": self.dtype, "precision": self.precision, "dataset": self.dataset,
            "classes": list(self.classes), "modality": self.modality,
        }
        if pre.views != default(Preprocess, "views"):  # absent: the centre crop only, as before views existed
            d["preprocess"]["views"] = list(pre.views)
        if pre.fps is not None:  # absent: every frame, as before --fps existed
            d["preprocess"]["fps"] = pre.fps
        if self.flow is not None:
            d["flow"] = {"method": self.flow.method, "bound": self.flow.bound, "size": self.flow.size}
        return d

    def canonical(self) -> str:
        """The identity as compact JSON with sorted keys, as stored in a cache file."""
        return canonical_json(self.to_json())

    # -- what the features are

    @property
    def level_widths(self) -> dict[str, int]:
        """Level -> feature width of one view."""
        return {spec.name: spec.width for spec in self.levels}

    @property
    def views(self) -> tuple[str, ...]:
        return self.preprocess.views

    @property
    def stored_widths(self) -> dict[str, int]:
        """Level -> columns stored per frame: the views side by side, view-major ``(V * C)``."""
        return {spec.name: spec.width * len(self.views) for spec in self.levels}

    def frame_source(self) -> FrameSource:
        """What the backbone saw: the preprocessing, and the flow rendering for a flow cache."""
        return FrameSource(self.preprocess, self.flow)

    def without_stream(self) -> CacheIdentity:
        """What the streams of one dataset and backbone share: RGB and flow caches fuse and train together
        when these agree."""
        return replace(self, modality="", flow=None)

    # -- comparing

    def diff(self, other: CacheIdentity, mine: str = "cache", theirs: str = "this run", ignore=()) -> str:
        """'weights: cache random:seed=0, this run sha256:...; preprocess.crop: cache 224, this run 64'."""
        return word_differences(_flat(self.to_json(), ignore), _flat(other.to_json(), ignore), mine, theirs)

    def differing_fields(self, other: CacheIdentity, ignore=()) -> list[str]:
        a, b = _flat(self.to_json(), ignore), _flat(other.to_json(), ignore)
        return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))

    def describe(self) -> list[str]:
        """The lines `mrrn inspect` prints about how the features were made."""
        pre = self.preprocess
        lines = [
            f"dataset     {self.dataset}, {len(self.classes)} classes, modality {self.modality}",
            f"backbone    {self.backbone}, weights {self.backbone_weights}, precision {self.precision}",
            f"preprocess  short side {pre.short_side}, crop {pre.crop}, resize {pre.resize.name}, "
            f"mean {list(pre.mean)}, std {list(pre.std)}",
        ]
        if pre.fps is not None:
            lines.append(f"frames      {pre.fps:g} per second of video, sampled by timestamp (extract --fps); clips "
                         "count sampled frames")
        if len(self.views) > 1:
            lines.append(f"views       {len(self.views)} per frame ({', '.join(self.views)}): the cache, and a level "
                         f"in memory, are {len(self.views)}x the size of a centre-only cache")
        if self.flow is not None:
            lines.append(f"flow        {self.flow.method}, bound {self.flow.bound:g} px, "
                         f"computed at a shorter side of {self.flow.size} px")
        return lines


def _flat(d: dict, ignore=(), prefix: str = "") -> dict:
    """Nested dicts as one level with dotted keys ({'preprocess.crop': 224, ...}), ``ignore``d keys left out."""
    out = {}
    for key, value in d.items():
        if key in ignore:
            continue
        if isinstance(value, dict) and key != "levels":
            out.update(_flat(value, (), f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _shown(name: str, value, other) -> str:
    if name.endswith("classes") and isinstance(value, list) and isinstance(other, list):
        return f"{len(value)} classes"
    if isinstance(value, (dict, list)):
        return canonical_json(value)
    return str(value)


def word_differences(have: dict, want: dict, mine: str = "cache", theirs: str = "this run") -> str:
    """The one place a difference of settings is worded: 'name: <mine> A, <theirs> B; ...' for every key
    whose values differ (flat dicts; see :func:`_flat`)."""
    parts = []
    for name in sorted(set(have) | set(want)):
        a, b = have.get(name, "(absent)"), want.get(name, "(absent)")
        if a == b:
            continue
        shown_a, shown_b = _shown(name, a, b), _shown(name, b, a)
        if shown_a == shown_b:  # e.g. as many classes, but others
            shown_b += " (others)"
        parts.append(f"{name}: {mine} {shown_a}, {theirs} {shown_b}")
    return "; ".join(parts)


def flat_settings(d: dict, prefix: str = "") -> dict:
    """A settings dict flattened for :func:`word_differences`, keys prefixed (e.g. 'cache ')."""
    return {f"{prefix}{k}": v for k, v in _flat(d).items()}
