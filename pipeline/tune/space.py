"""`mrrn tune`'s search space: what a trial may choose, its defaults around the paper's settings, and a
trial's choice turned into training settings.

The paper's values live in ``pipeline/config.py`` (``TrainConfig``, ``PAPER_LR``); every default here is
taken from them: hidden units and batch size at a quarter, half and the whole (or half, whole and double)
of the paper's, one layer fewer or more, the paper's epochs from two thirds to four thirds, and a learning
rate from a tenth to a hundred times the paper's rate for the level (log scale). A choice given once on
the command line fixes that setting (a one-value axis: Optuna leaves it out of the importances).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math

from pipeline.config import (
    ATTENTION_HEAD_WIDTH,
    MODELS,
    PAPER_LR,
    POOLS,
    TEST_VIEWS,
    TRAIN_VIEWS,
    TrainConfig,
    default,
)
from pipeline.errors import ConfigError

PAPER_HIDDEN = default(TrainConfig, "hidden")
PAPER_LAYERS = default(TrainConfig, "layers")
PAPER_BATCH = default(TrainConfig, "batch_size")
PAPER_EPOCHS = default(TrainConfig, "epochs")
PAPER_DROPOUT = default(TrainConfig, "dropout")
PAPER_LR_STEP = default(TrainConfig, "lr_step_epochs")  # the rate drops after 8 of the paper's 12 epochs

TUNED_MODELS = tuple(m for m in MODELS if m != "twostream")  # twostream also needs a flow cache: asked for by name
DEFAULT_MODELS = ("rrn",)  # the paper's head; --models names others (any head)
DEFAULT_HIDDENS = (PAPER_HIDDEN // 4, PAPER_HIDDEN // 2, PAPER_HIDDEN)
DEFAULT_LAYERS = (max(1, PAPER_LAYERS - 1), PAPER_LAYERS, PAPER_LAYERS + 1)
DEFAULT_BATCH_SIZES = (PAPER_BATCH // 2, PAPER_BATCH, PAPER_BATCH * 2)
DEFAULT_EPOCHS = (PAPER_EPOCHS * 2 // 3, PAPER_EPOCHS, PAPER_EPOCHS * 4 // 3)
DEFAULT_DROPOUT_RANGE = (0.0, min(0.9, PAPER_DROPOUT + 0.2))
LR_RANGE_FACTORS = (0.1, 100.0)  # the learning rate's range, as factors of the level's paper rate


def default_lr_range(level: str) -> tuple[float, float]:
    low, high = LR_RANGE_FACTORS
    return (PAPER_LR[level] * low, PAPER_LR[level] * high)


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """Each axis a trial chooses from: choices (tuples) or a closed range (low, high) of numbers.
    ``train_views`` and ``test_views`` are empty for a cache with one view (there is nothing to choose)."""

    models: tuple[str, ...] = DEFAULT_MODELS
    hiddens: tuple[int, ...] = DEFAULT_HIDDENS
    layers: tuple[int, ...] = DEFAULT_LAYERS
    lr_range: tuple[float, float] = default_lr_range("high")
    dropout_range: tuple[float, float] = DEFAULT_DROPOUT_RANGE
    pools: tuple[str, ...] = POOLS
    batch_sizes: tuple[int, ...] = DEFAULT_BATCH_SIZES
    epochs: tuple[int, ...] = DEFAULT_EPOCHS
    train_views: tuple[str, ...] = ()
    test_views: tuple[str, ...] = ()

    def __post_init__(self):
        for name, values, choices in (("--models", self.models, MODELS), ("--pool", self.pools, POOLS),
                                      ("--train-views", self.train_views, TRAIN_VIEWS),
                                      ("--test-views", self.test_views, TEST_VIEWS)):
            bad = [v for v in values if v not in choices]
            if bad:
                raise ConfigError(f"{name}: {', '.join(map(str, bad))} not in {', '.join(choices)}")
        for name, values in (("--models", self.models), ("--hidden", self.hiddens), ("--layers", self.layers),
                             ("--pool", self.pools), ("--batch-size", self.batch_sizes), ("--epochs", self.epochs)):
            if not values:
                raise ConfigError(f"{name}: the search space needs at least one value")
            if isinstance(values[0], int) and min(values) < 1:
                raise ConfigError(f"{name}: {min(values)} is not in the range x>=1")
        _require_range("--lr-range", self.lr_range, 0.0, math.inf, low_open=True)
        _require_range("--dropout-range", self.dropout_range, 0.0, 1.0, high_open=True)
        width = ATTENTION_HEAD_WIDTH
        unfit = [h for h in self.hiddens if h > width and h % width]
        if "attentive" in self.models and unfit:
            raise ConfigError(f"--hidden {unfit[0]}: attentive splits hidden units into {width}-wide attention heads; "
                              f"search multiples of {width} (or sizes under {width}) when --models holds attentive")

    def to_json(self) -> dict:
        return {k: list(v) for k, v in dataclasses.asdict(self).items()}

    def digest(self, **context) -> str:
        """A short hash of this space and ``context`` (the cache, level and fixed settings): what names a study,
        so that the same command continues its study and another search starts its own."""
        text = json.dumps({"space": self.to_json(), **context}, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:10]


def _require_range(option: str, pair: tuple[float, float], lowest: float, highest: float, *, low_open: bool = False,
                   high_open: bool = False) -> None:
    low, high = pair
    if not (math.isfinite(low) and math.isfinite(high)) or low > high:
        raise ConfigError(f"{option} {low:g},{high:g}: needs two finite numbers, the lower first")
    if low < lowest or (low_open and low == lowest) or high > highest or (high_open and high == highest):
        bounds = f"{'(' if low_open else '['}{lowest:g}, {highest:g}{')' if high_open else ']'}"
        raise ConfigError(f"{option} {low:g},{high:g}: must lie in {bounds}")


def suggest(trial, space: SearchSpace) -> dict:
    """A trial's choice (Optuna's ``trial.suggest_*``, define-by-run: hidden and layers only for heads that
    have them, pooling only for heads that pool), as TrainConfig fields."""
    model = trial.suggest_categorical("model", space.models)
    epochs = trial.suggest_categorical("epochs", space.epochs)
    chosen = {
        "model": model,
        "lr": trial.suggest_float("lr", *space.lr_range, log=True),
        "dropout": trial.suggest_float("dropout", *space.dropout_range),
        "batch_size": trial.suggest_categorical("batch_size", space.batch_sizes),
        "epochs": epochs,
        "lr_step_epochs": max(1, round(epochs * PAPER_LR_STEP / PAPER_EPOCHS)),  # the drop at the paper's 2/3
    }
    if model != "meanpool":
        chosen["hidden"] = trial.suggest_categorical("hidden", space.hiddens)
        chosen["layers"] = trial.suggest_categorical("layers", space.layers)
    if model not in ("meanpool", "reslstm", "attentive"):
        chosen["pool"] = trial.suggest_categorical("pool", space.pools)
    if space.train_views:
        chosen["train_views"] = trial.suggest_categorical("train_views", space.train_views)
    if space.test_views:
        chosen["test_views"] = trial.suggest_categorical("test_views", space.test_views)
    return chosen


def trial_settings(base: TrainConfig, chosen: dict, out: str, flow_cache: str | None = None) -> TrainConfig:
    """The training settings of one trial: ``base`` with the trial's choices, into the run directory ``out``;
    a twostream trial reads ``flow_cache`` beside the RGB cache."""
    two = chosen["model"] == "twostream"
    return dataclasses.replace(base, **chosen, out=out, flow_cache=flow_cache if two else None,
                               modality="rgb" if two else base.modality)


def for_cache(space: SearchSpace, views: int, *, flow_cache: str | None) -> SearchSpace:
    """The space as it applies to a cache of ``views`` views: the views' axes (every choice, unless given)
    only when there are several; twostream only with a flow cache."""
    if "twostream" in space.models and flow_cache is None:
        raise ConfigError("--models twostream: needs --flow-cache (the flow cache beside the RGB --cache)")
    if views < 2:
        return dataclasses.replace(space, train_views=(), test_views=())
    return dataclasses.replace(space, train_views=space.train_views or TRAIN_VIEWS,
                               test_views=space.test_views or TEST_VIEWS)
