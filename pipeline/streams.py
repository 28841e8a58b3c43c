"""Which caches the runs of one command line read: the RGB cache, the flow cache, or both (twostream)."""
from __future__ import annotations

from typing import Sequence

from pipeline.errors import ConfigError


def caches_for_runs(runs: Sequence[tuple[str, str]], cache: str,
                    flow_cache: str | None) -> list[tuple[str, str | None]]:
    """Which caches each run of a command line reads: for each ``(model, modality)`` in ``runs``, its
    (``TrainConfig.cache``, ``TrainConfig.flow_cache``), given --cache (RGB, or flow when no run is RGB)
    and --flow-cache. Twostream reads both; a flow run reads --flow-cache when given, else --cache; an RGB
    run reads --cache. Refused: a --flow-cache that no run reads, and RGB and flow runs together without
    one (a twostream run without one: ``TrainConfig``)."""
    if flow_cache is not None and not any(model == "twostream" or modality == "flow" for model, modality in runs):
        raise ConfigError("--flow-cache is read by --model twostream, --modality flow or a sweep over "
                          "--modalities rgb,flow")
    single_stream = {modality for model, modality in runs if model != "twostream"}
    if flow_cache is None and {"rgb", "flow"} <= single_stream:
        raise ConfigError("--modalities rgb,flow needs --flow-cache beside the RGB --cache")

    def reads(model: str, modality: str) -> tuple[str, str | None]:
        if model == "twostream":
            return cache, flow_cache
        return (flow_cache or cache) if modality == "flow" else cache, None

    return [reads(model, modality) for model, modality in runs]
