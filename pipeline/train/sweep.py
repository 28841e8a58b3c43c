"""Grids of training runs on one cache, or the same grid on several caches of one dataset (backbones,
views): one run directory each, finished runs skipped, a results table.

Tables come out shaped like the paper's: hidden units x layers (table 1) and pooling x level
(table 2), cells are video top-1 accuracy in percent; with several caches, also cache x level per head.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import itertools
from pathlib import Path

from pipeline.atomic import write_text
from pipeline.cache.reader import read_identity
from pipeline.config import LEVELS, TrainConfig, views_option
from pipeline.streams import caches_for_runs
from pipeline.errors import ConfigError
from pipeline.evaluate.layout import claimed, mark_made_by
from pipeline.evaluate.runfiles import DamagedRunFile
from pipeline.train.rundir import RunSummary
from pipeline.train.loop import fit

COLUMNS = ("cache", "backbone", "views", "streams", "level", "model", "stream_fusion", "hidden", "layers", "pool", "video_top1", "video_top5",
           "mean_class_acc", "clip_acc", "epochs", "parameters", "seconds_per_epoch", "run",
           "test_videos", "test_videos_listed", "computed_on",  # computed_on: said only when the split was incomplete
           "damaged")  # why a run's directory could not be used (blank for every good run)


def run_name(cfg: TrainConfig) -> str:
    prefix = "flow_" if cfg.modality == "flow" else ""
    if cfg.model == "meanpool":  # no temporal part: hidden, layers and pooling do not apply
        return f"{prefix}{cfg.level}_meanpool"
    if cfg.model == "reslstm":  # classifies from the last time step: no pooling
        return f"{prefix}{cfg.level}_reslstm_h{cfg.hidden}_l{cfg.layers}"
    if cfg.model == "attentive":  # pools by attention: no --pool; --no-positions named
        return f"{prefix}{cfg.level}_attentive_h{cfg.hidden}_l{cfg.layers}{'' if cfg.positions else '_nopos'}"
    model = f"twostream_{cfg.stream_fusion}" if cfg.model == "twostream" else cfg.model
    return f"{prefix}{cfg.level}_{model}_h{cfg.hidden}_l{cfg.layers}_{cfg.pool}"


@dataclasses.dataclass(frozen=True)
class SweepAxes:
    """What a sweep varies: every combination is one run. An empty axis holds the base settings' value."""

    levels: tuple[str, ...] = ()
    models: tuple[str, ...] = ()
    hiddens: tuple[int, ...] = ()
    layers: tuple[int, ...] = ()
    pools: tuple[str, ...] = ()
    modalities: tuple[str, ...] = ()  # single-stream heads run once per modality; twostream on RGB | flow
    stream_fusions: tuple[str, ...] = ()  # twostream only

    def combinations(self, base: TrainConfig) -> list[tuple]:
        """(modality, level, model, hidden, layers, pool, stream fusion) of every run, in the tables' order."""
        axes = [(self.modalities, base.modality), (self.levels, base.level), (self.models, base.model),
                (self.hiddens, base.hidden), (self.layers, base.layers), (self.pools, base.pool),
                (self.stream_fusions, base.stream_fusion)]
        return list(itertools.product(*(tuple(values) or (default,) for values, default in axes)))


def grid(base: TrainConfig, out: Path, axes: SweepAxes, *, flow_cache: str | Path | None = None) -> list[TrainConfig]:
    """Every combination of ``axes``, as settings with their own run directory under ``out`` (duplicates
    dropped). Single-stream heads run once per modality; twostream once per stream fusion, on RGB. Which
    caches each reads, ``base.cache`` and ``flow_cache``: ``streams.caches_for_runs``."""
    runs = [dict(modality="rgb" if model == "twostream" else modality, level=level, model=model, hidden=hidden,
                 layers=n_layers, pool=pool, stream_fusion=fusion if model == "twostream" else base.stream_fusion)
            for modality, level, model, hidden, n_layers, pool, fusion in axes.combinations(base)]
    reads = caches_for_runs([(run["model"], run["modality"]) for run in runs], base.cache,
                            None if flow_cache is None else str(flow_cache))
    configs: dict[str, TrainConfig] = {}
    for run, (cache, run_flow_cache) in zip(runs, reads):
        cfg = dataclasses.replace(base, cache=cache, flow_cache=run_flow_cache, **run)
        configs.setdefault(run_name(cfg), dataclasses.replace(cfg, out=str(out / run_name(cfg))))
    return sorted(configs.values(), key=lambda c: c.model == "twostream")  # single streams first


def cache_labels(caches: list[str]) -> list[str]:
    """What the tables and run folders call each cache: its file name without .h5, its path where two
    names collide."""
    stems = [Path(c).stem for c in caches]
    return [stem if stems.count(stem) == 1 else str(Path(c).with_suffix("")).strip("/").replace("/", "_")
            for stem, c in zip(stems, caches)]


def check_caches(caches: list[str]) -> dict[str, dict]:
    """The caches of a multi-cache sweep, checked to be of one dataset and class list: label -> {path,
    backbone, views}."""
    identities = [read_identity(Path(c)) for c in caches]
    for cache, identity in zip(caches[1:], identities[1:]):
        if (identity.dataset, identity.classes) != (identities[0].dataset, identities[0].classes):
            raise ConfigError(f"{cache} and {caches[0]} are caches of different datasets or class lists; "
                              "a sweep over --caches compares backbones and views of one dataset")
    return {label: {"path": c, "backbone": i.backbone, "views": views_option(i.views)}
            for label, c, i in zip(cache_labels(caches), caches, identities)}


def row(cfg: TrainConfig, s: RunSummary, cache: dict) -> dict:
    f = s.final
    recurrent = cfg.model != "meanpool"
    return {
        "cache": cache["label"], "backbone": cache["backbone"], "views": cache["views"],
        "streams": cfg.streams, "level": cfg.level, "model": cfg.model,
        "stream_fusion": cfg.stream_fusion if cfg.model == "twostream" else "",
        "hidden": cfg.hidden if recurrent else "",
        "layers": cfg.layers if recurrent else "", "pool": _pool(cfg),
        "video_top1": round(f["video_top1"], 4), "video_top5": round(f["video_top5"], 4),
        "mean_class_acc": round(f["mean_class_acc"], 4), "clip_acc": round(f["clip_acc"], 4),
        "epochs": s.epochs, "parameters": s.parameters, "seconds_per_epoch": round(s.seconds_per_epoch, 3),
        "run": Path(s.out).name,
        **_computed_on(s),
    }


def _pool(cfg: TrainConfig) -> str:
    """A run's temporal pooling as the tables name it: none for meanpool and reslstm, attention for attentive."""
    if cfg.model == "attentive":
        return "attention" if cfg.positions else "attention (no positions)"
    return "" if cfg.model in ("meanpool", "reslstm") else cfg.pool


def damaged_row(cfg: TrainConfig, cache: dict, reason: str) -> dict:
    """The row of a run whose directory cannot be used (a damaged file): its settings, no numbers, the reason."""
    numbers = ("video_top1", "video_top5", "mean_class_acc", "clip_acc", "parameters", "seconds_per_epoch")
    good = row(cfg, RunSummary(out=cfg.out, epochs=cfg.epochs, final={n: 0.0 for n in numbers}, parameters=0,
                               seconds_per_epoch=0.0, resumed_from=0), cache)
    return {**good, **{n: "" for n in numbers}, "damaged": reason}


def _computed_on(s: RunSummary) -> dict:
    """The columns saying what a run's numbers are over (blank for runs of older versions)."""
    on = s.computed_on
    if not on:
        return {"test_videos": "", "test_videos_listed": "", "computed_on": ""}
    return {"test_videos": on["test_videos"], "test_videos_listed": on["test_videos_listed"],
            "computed_on": "" if on["complete"] else on["statement"]}


def _notes(rows: list[dict]) -> str:
    """A line under the tables for each statement of what incomplete runs' numbers are over."""
    by_statement: dict[str, list[str]] = {}
    for r in rows:
        if r.get("computed_on"):
            by_statement.setdefault(r["computed_on"], []).append(r["run"])
    damaged = "".join(f"\nRun {r['run']} is damaged and has no numbers: {r['damaged']}.\n" for r in rows if r.get("damaged"))
    return "".join(f"\nNumbers of {', '.join(runs)}: {text}.\n" for text, runs in by_statement.items()) + damaged


def _model(r: dict, mark_flow: bool = True) -> str:
    """A row's head as the tables name it: twostream with its fusion, flow runs marked."""
    name = f"{r['model']} ({r['stream_fusion']})" if r.get("stream_fusion") else r["model"]
    return f"flow {name}" if mark_flow and r.get("streams") == "flow" else name


def _count(n, noun: str) -> str:
    """``1 layer``, ``2 layers`` (``n`` as a number or as read back from results.csv)."""
    return f"{n} {noun}{'' if str(n) == '1' else 's'}"


def percent(value) -> str:
    """A fraction as the tables print it (``0.9375`` -> ``93.75``); an empty cell stays empty."""
    return f"{100 * value:.2f}" if value != "" else ""


def csv_table(rows: list[dict], columns) -> str:
    """``rows`` as CSV text with a header of ``columns`` (results.csv, trials.csv)."""
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    return table.getvalue()


def _cache_name(r: dict) -> str:
    return f"{r['cache']} ({r['backbone']}, {r['views']})" if r.get("backbone") else r.get("cache", "")


def markdown(rows: list[dict]) -> str:
    """All runs, then the paper-shaped grids wherever the sweep varies their axes; with several caches
    a cache column, and cache x level per head."""
    caches = list(dict.fromkeys(_cache_name(r) for r in rows))
    if len(caches) > 1:
        return _by_cache(rows, caches) + "\n" + "\n".join(
            f"\n## {name}\n\n" + _one_cache([r for r in rows if _cache_name(r) == name]) for name in caches) + _notes(rows)
    return _one_cache(rows) + _notes(rows)


def _by_cache(rows: list[dict], caches: list[str]) -> str:
    """Video top-1 (%) with a row per cache and head and a column per level (backbone x level x head)."""
    levels = [lvl for lvl in LEVELS if any(r["level"] == lvl for r in rows)]
    heads = list(dict.fromkeys((_model(r), r["hidden"], r["layers"], r["pool"]) for r in rows))
    out = ["Video top-1 (%) per cache, head and level:", "",
           "| cache | model | hidden | layers | pool | " + " | ".join(levels) + " |",
           "|---|---|---|---|---|" + "---|" * len(levels)]
    for name in caches:
        for model, hidden, n_layers, pool in heads:
            cells = {r["level"]: r["video_top1"] for r in rows
                     if _cache_name(r) == name and (_model(r), r["hidden"], r["layers"], r["pool"]) == (model, hidden, n_layers, pool)}
            if cells:
                out.append(f"| {name} | {model} | {hidden} | {n_layers} | {pool or '-'} | "
                           + " | ".join(percent(cells.get(lvl, "")) for lvl in levels) + " |")
    return "\n".join(out) + "\n"


def _one_cache(rows: list[dict]) -> str:
    """The runs of one cache, then the paper-shaped grids wherever the sweep varies their axes."""
    out = ["| streams | level | model | hidden | layers | pool | video top-1 | top-5 | mean class | clip | params "
           "| s/epoch |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r.get('streams', 'rgb')} | {r['level']} | {_model(r, mark_flow=False)} | {r['hidden']} | {r['layers']} | {r['pool']} | "
                   + ("damaged | | | | | |" if r.get("damaged") else
                      f"{percent(r['video_top1'])} | {percent(r['video_top5'])} | {percent(r['mean_class_acc'])} | "
                      f"{percent(r['clip_acc'])} | {r['parameters']:,} | {r['seconds_per_epoch']} |"))
    recurrent = [r for r in rows if r["model"] != "meanpool"]
    # Table 1 shape: hidden x layers, per (model, level, pool)
    for key in sorted({(_model(r), r["level"], r["pool"]) for r in recurrent}):
        cells = {(r["hidden"], r["layers"]): r["video_top1"] for r in recurrent if (_model(r), r["level"], r["pool"]) == key}
        hiddens, layers = sorted({h for h, _ in cells}), sorted({n for _, n in cells})
        if len(hiddens) > 1 or len(layers) > 1:
            out += ["", f"Video top-1 (%), {key[0]}, {key[1]} level, {key[2]} pooling (paper table 1 shape):", "",
                    "| setting | " + " | ".join(_count(n, "layer") for n in layers) + " |",
                    "|---|" + "---|" * len(layers)]
            out += [f"| {_count(h, 'hidden unit')} | " + " | ".join(percent(cells.get((h, n), "")) for n in layers) + " |"
                    for h in hiddens]
    # Table 2 shape: (model, pooling) x level, per (hidden, layers)
    levels = [lvl for lvl in LEVELS if any(r["level"] == lvl for r in rows)]
    shapes = sorted({(r["hidden"], r["layers"]) for r in recurrent}) or [("", "")]
    for hidden, n_layers in shapes:
        group = [r for r in rows if r["model"] == "meanpool" or (r["hidden"], r["layers"]) == (hidden, n_layers)]
        lines = sorted({(_model(r), r["pool"]) for r in group}, key=lambda mp: (mp[0].endswith("meanpool"), mp))
        if len(levels) > 1:  # with one level the table above already says it all
            title = f"{hidden} hidden x {_count(n_layers, 'layer')}" if hidden != "" else "meanpool"
            out += ["", f"Video top-1 (%) per level, {title} (paper table 2 shape):", "",
                    "| model | pooling | " + " | ".join(levels) + " |", "|---|---|" + "---|" * len(levels)]
            for model, pool in lines:
                cells = {r["level"]: r["video_top1"] for r in group if (_model(r), r["pool"]) == (model, pool)}
                out.append(f"| {model} | {pool or '-'} | " + " | ".join(percent(cells.get(lvl, "")) for lvl in levels) + " |")
    return "\n".join(out) + "\n"


def run_sweep(base: TrainConfig, out: Path, axes: SweepAxes, **options) -> list[dict]:
    """:func:`sweep_into` with ``out`` claimed for the whole sweep: a second sweep into it at once, or an
    ``out`` that holds a run or a fusion, is refused before anything is written."""
    with claimed(Path(out), "sweep"):
        return sweep_into(base, Path(out), axes, **options)


def sweep_into(base: TrainConfig, out: Path, axes: SweepAxes, *, flow_cache: str | Path | None = None,
               caches: list[str] | None = None, progress: bool = True, log=print) -> list[dict]:
    """Train every configuration of the grid (resuming unfinished runs, skipping finished ones), then
    write ``results.csv`` and ``results.md`` in ``out``. With several ``caches`` (of one dataset) the grid
    runs on each, in ``out/<cache name>/``. Returns the rows."""
    out = Path(out)
    caches = caches or [base.cache]
    if len(caches) > 1 and (flow_cache is not None or "twostream" in axes.models):
        raise ConfigError("--caches compares RGB caches; sweep flow and twostream runs with --cache and --flow-cache")
    described = check_caches(caches)
    configs = []
    for label, cache in described.items():
        where = out / label if len(caches) > 1 else out
        configs += [(cache | {"label": label}, cfg)
                    for cfg in grid(dataclasses.replace(base, cache=cache["path"]), where, axes, flow_cache=flow_cache)]
    mark_made_by(out, "sweep")
    rows = []
    for i, (cache, cfg) in enumerate(configs, start=1):
        name = f"{cache['label']}/{run_name(cfg)}" if len(caches) > 1 else run_name(cfg)
        try:
            summary = fit(cfg, resume=True, progress=progress, log=log, epoch_lines=progress)
        except DamagedRunFile as err:  # one run's damaged directory does not stop the others
            rows.append(damaged_row(cfg, cache, str(err)))
            log(f"run {i}/{len(configs)} {name}: damaged, left out of the numbers ({err})")
            continue
        rows.append(row(cfg, summary, cache))
        on = rows[-1]["computed_on"]
        log(f"run {i}/{len(configs)} {name}: video top-1 {summary.final['video_top1']:.1%}{' ' + on if on else ''}"
            f"{' (already complete)' if summary.already_complete else ''}")
    write_text(out / "results.csv", csv_table(rows, COLUMNS))
    write_text(out / "results.md", markdown(rows))
    return rows
