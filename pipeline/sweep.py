"""Grids of training runs on one cache: one run directory each, finished runs skipped, a results table.

Tables come out shaped like the paper's: hidden units x layers (table 1) and pooling x level
(table 2), cells are video top-1 accuracy in percent.
"""
from __future__ import annotations

import csv
import io
import dataclasses
import itertools
from pathlib import Path

from pipeline.atomic import write_text
from pipeline.config import LEVELS, TrainConfig, caches_for_run
from pipeline.errors import ConfigError, writing
from pipeline.rundir import RunSummary
from pipeline.train import fit

COLUMNS = ("streams", "level", "model", "stream_fusion", "hidden", "layers", "pool", "video_top1", "video_top5",
           "mean_class_acc", "clip_acc", "epochs", "parameters", "seconds_per_epoch", "run")


def run_name(cfg: TrainConfig) -> str:
    prefix = "flow_" if cfg.modality == "flow" else ""
    if cfg.model == "meanpool":  # no temporal part: hidden, layers and pooling do not apply
        return f"{prefix}{cfg.level}_meanpool"
    if cfg.model == "reslstm":  # classifies from the last time step: no pooling
        return f"{prefix}{cfg.level}_reslstm_h{cfg.hidden}_l{cfg.layers}"
    model = f"twostream_{cfg.stream_fusion}" if cfg.model == "twostream" else cfg.model
    return f"{prefix}{cfg.level}_{model}_h{cfg.hidden}_l{cfg.layers}_{cfg.pool}"


def grid(base: TrainConfig, out: Path, levels, models, hiddens, layers, pools, modalities=None, flow_cache=None,
         stream_fusions=("sum",)) -> list[TrainConfig]:
    """Every combination, as configs with their own run directory under ``out`` (duplicates dropped).
    Single-stream heads run once per modality (flow runs read ``flow_cache`` when given, else
    ``base.cache``); twostream runs once per stream fusion, on ``base.cache`` (RGB) and ``flow_cache``."""
    modalities = modalities or [base.modality]
    if "twostream" in models and flow_cache is None:
        raise ConfigError("--models twostream needs --flow-cache beside the RGB --cache")
    if set(modalities) == {"rgb", "flow"} and flow_cache is None:
        raise ConfigError("--modalities rgb,flow needs --flow-cache beside the RGB --cache")
    configs: dict[str, TrainConfig] = {}
    for modality, level, model, hidden, n_layers, pool, fusion in itertools.product(
            modalities, levels, models, hiddens, layers, pools, stream_fusions):
        modality = "rgb" if model == "twostream" else modality
        cache, run_flow_cache = caches_for_run(model, modality, base.cache, None if flow_cache is None else str(flow_cache))
        cfg = dataclasses.replace(base, cache=cache, flow_cache=run_flow_cache, modality=modality, level=level,
                                  model=model, hidden=hidden, layers=n_layers, pool=pool,
                                  stream_fusion=fusion if model == "twostream" else base.stream_fusion)
        configs.setdefault(run_name(cfg), dataclasses.replace(cfg, out=str(out / run_name(cfg))))
    return sorted(configs.values(), key=lambda c: c.model == "twostream")  # single streams first


def row(cfg: TrainConfig, s: RunSummary) -> dict:
    f = s.final
    recurrent = cfg.model != "meanpool"
    return {
        "streams": cfg.streams, "level": cfg.level, "model": cfg.model,
        "stream_fusion": cfg.stream_fusion if cfg.model == "twostream" else "",
        "hidden": cfg.hidden if recurrent else "",
        "layers": cfg.layers if recurrent else "", "pool": cfg.pool if recurrent and cfg.model != "reslstm" else "",
        "video_top1": round(f["video_top1"], 4), "video_top5": round(f["video_top5"], 4),
        "mean_class_acc": round(f["mean_class_acc"], 4), "clip_acc": round(f["clip_acc"], 4),
        "epochs": s.epochs, "parameters": s.parameters, "seconds_per_epoch": round(s.seconds_per_epoch, 3),
        "run": Path(s.out).name,
    }


def _model(r: dict, mark_flow: bool = True) -> str:
    """A row's head as the tables name it: twostream with its fusion, flow runs marked."""
    name = f"{r['model']} ({r['stream_fusion']})" if r.get("stream_fusion") else r["model"]
    return f"flow {name}" if mark_flow and r.get("streams") == "flow" else name


def _pct(value) -> str:
    return f"{100 * value:.2f}" if value != "" else ""


def markdown(rows: list[dict]) -> str:
    """All runs, then the paper-shaped grids wherever the sweep varies their axes."""
    out = ["| streams | level | model | hidden | layers | pool | video top-1 | top-5 | mean class | clip | params "
           "| s/epoch |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r.get('streams', 'rgb')} | {r['level']} | {_model(r, mark_flow=False)} | {r['hidden']} | {r['layers']} | {r['pool']} | "
                   f"{_pct(r['video_top1'])} | {_pct(r['video_top5'])} | {_pct(r['mean_class_acc'])} | "
                   f"{_pct(r['clip_acc'])} | {r['parameters']:,} | {r['seconds_per_epoch']} |")
    recurrent = [r for r in rows if r["model"] != "meanpool"]
    # Table 1 shape: hidden x layers, per (model, level, pool)
    for key in sorted({(_model(r), r["level"], r["pool"]) for r in recurrent}):
        cells = {(r["hidden"], r["layers"]): r["video_top1"] for r in recurrent if (_model(r), r["level"], r["pool"]) == key}
        hiddens, layers = sorted({h for h, _ in cells}), sorted({n for _, n in cells})
        if len(hiddens) > 1 or len(layers) > 1:
            out += ["", f"Video top-1 (%), {key[0]}, {key[1]} level, {key[2]} pooling (paper table 1 shape):", "",
                    "| setting | " + " | ".join(f"{n} layers" for n in layers) + " |",
                    "|---|" + "---|" * len(layers)]
            out += [f"| {h} hidden units | " + " | ".join(_pct(cells.get((h, n), "")) for n in layers) + " |"
                    for h in hiddens]
    # Table 2 shape: (model, pooling) x level, per (hidden, layers)
    levels = [lvl for lvl in LEVELS if any(r["level"] == lvl for r in rows)]
    shapes = sorted({(r["hidden"], r["layers"]) for r in recurrent}) or [("", "")]
    for hidden, n_layers in shapes:
        group = [r for r in rows if r["model"] == "meanpool" or (r["hidden"], r["layers"]) == (hidden, n_layers)]
        lines = sorted({(_model(r), r["pool"]) for r in group}, key=lambda mp: (mp[0].endswith("meanpool"), mp))
        if len(levels) > 1:  # with one level the table above already says it all
            title = f"{hidden} hidden x {n_layers} layers" if hidden != "" else "meanpool"
            out += ["", f"Video top-1 (%) per level, {title} (paper table 2 shape):", "",
                    "| model | pooling | " + " | ".join(levels) + " |", "|---|---|" + "---|" * len(levels)]
            for model, pool in lines:
                cells = {r["level"]: r["video_top1"] for r in group if (_model(r), r["pool"]) == (model, pool)}
                out.append(f"| {model} | {pool or '-'} | " + " | ".join(_pct(cells.get(lvl, "")) for lvl in levels) + " |")
    return "\n".join(out) + "\n"


def run_sweep(base: TrainConfig, out: Path, levels, models, hiddens, layers, pools, modalities=None, flow_cache=None,
              stream_fusions=("sum",), progress=True, log=print):
    """Train every configuration of the grid (resuming unfinished runs, skipping finished ones), then
    write ``results.csv`` and ``results.md`` in ``out``. Returns the rows."""
    out = Path(out)
    configs = grid(base, out, levels, models, hiddens, layers, pools, modalities, flow_cache, stream_fusions)
    with writing(out):
        out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, cfg in enumerate(configs, start=1):
        summary = fit(cfg, resume=True, progress=progress, log=log, epoch_lines=progress)
        rows.append(row(cfg, summary))
        log(f"run {i}/{len(configs)} {run_name(cfg)}: video top-1 {summary.final['video_top1']:.1%}"
            f"{' (already complete)' if summary.already_complete else ''}")
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    write_text(out / "results.csv", table.getvalue())
    write_text(out / "results.md", markdown(rows))
    return rows
