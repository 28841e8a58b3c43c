"""mrrn command line: thin click commands, each building its inputs and calling one pipeline function."""
from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path

import click

from pipeline import __version__
from pipeline import datasets
from pipeline.config import (
    DEFAULT_TEST_FRACTION,
    FEATURE_DTYPES,
    FLOW_METHODS,
    FUSION_METHODS,
    MODALITIES,
    LEVELS,
    MODELS,
    POOLS,
    ClipSpec,
    TrainConfig,
    PAPER_CROP,
    PAPER_SHORT_SIDE,
    PRECISIONS,
    STREAM_FUSIONS,
    ExtractConfig,
    FlowSpec,
    Preprocess,
    default_workers,
)

DATASET_CHOICE = click.Choice(datasets.DATASETS)


def _user_error_types() -> tuple[type[BaseException], ...]:
    """Errors that mean bad input, not a bug. Heavy modules are only consulted once imported."""
    types: list[type[BaseException]] = [datasets.SplitFileError, datasets.MissingVideosError,
                                        FileNotFoundError, ValueError]
    for module, names in (("pipeline.cache", ("CacheError",)), ("pipeline.extract", ("ExtractError",)),
                          ("pipeline.video", ("VideoDecodeError",)),
                          ("pipeline.train", ("TrainError",)), ("pipeline.backbone", ("WeightsError",)),
                          ("pipeline.fuse", ("FuseError",)), ("pipeline.report", ("ReportError",))):
        if module in sys.modules:
            types += [getattr(sys.modules[module], n) for n in names]
    return tuple(types)


@contextlib.contextmanager
def user_errors():
    """Turn the pipeline's input errors into a one-line ``Error: ...`` and exit status 1."""
    try:
        yield
    except Exception as err:
        if isinstance(err, _user_error_types()):
            raise click.ClickException(str(err)) from None
        raise


def _nproc_option(f):
    return click.option(
        "--nproc", type=int, default=1, show_default=True,
        help="Processes on this machine (one per GPU), started with torchrun; for several machines run "
             "torchrun yourself (README).")(f)


def _relaunch_under_torchrun(nproc: int) -> None:
    """``--nproc N`` outside torchrun: run this same command line under torchrun with N processes and exit
    with its status. Under torchrun (WORLD_SIZE set) the option is ignored: torchrun decides."""
    if nproc < 1:
        raise click.BadParameter("must be >= 1", param_hint="--nproc")
    if nproc == 1 or "WORLD_SIZE" in os.environ:
        return
    from pipeline.distributed import launch

    args, skip = [], False
    for arg in sys.argv[1:]:  # the command line without --nproc
        if skip or arg.startswith("--nproc="):
            skip = False
            continue
        if arg == "--nproc":
            skip = True
            continue
        args.append(arg)
    sys.exit(launch(nproc, args))


@click.group(context_settings={"help_option_names": ["-h", "--help"], "terminal_width": 100, "max_content_width": 100})
@click.version_option(__version__, prog_name="mrrn")
def main():
    """MRRN: multi-level recurrent residual networks for action recognition.

    Stage 1 extracts frozen ResNet-34 features into an HDF5 cache; stage 2 trains SRU classifiers
    on the cache, per level, and fuses them.
    """


@main.command()
@click.option("--dataset", type=DATASET_CHOICE, required=True, help="Index format.")
@click.option("--root", type=click.Path(path_type=Path), required=True, help="Dataset root (class folders).")
@click.option("--splits", type=click.Path(path_type=Path), help="Split folder (required for ucf101/hmdb51).")
@click.option("--split", type=int, default=1, show_default=True, help="Split number.")
@click.option(
    "--test-fraction",
    type=float,
    default=DEFAULT_TEST_FRACTION,
    show_default=True,
    help="folder without --splits: share of each class held out for test (stable hash of the key).",
)
@click.option("--strict", is_flag=True, help="Fail if a split file names a video that is not on disk.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object {classes, train, test, missing}.")
def index(dataset, root, splits, split, test_fraction, strict, as_json):
    """Count the classes and train/test videos of one split (never opens a video)."""
    with user_errors():
        idx = datasets.build_index(dataset, root, splits, split, test_fraction=test_fraction, strict=strict)
    if idx.missing:
        click.echo(f"warning: {datasets.describe_missing(idx.missing, idx.root)}", err=True)
    if as_json:
        click.echo(json.dumps(idx.summary()))
    else:
        s = idx.summary()
        click.echo(
            f"{dataset} split {split}: {s['classes']} classes, {s['train']} train, "
            f"{s['test']} test, {s['missing']} missing"
        )


@main.command()
@click.option("--dataset", type=DATASET_CHOICE, required=True, help="Index format.")
@click.option("--root", type=click.Path(path_type=Path), required=True, help="Dataset root (class folders).")
@click.option("--splits", type=click.Path(path_type=Path), help="Split folder (required for ucf101/hmdb51).")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="The HDF5 cache to write or resume.")
@click.option("--weights", default="imagenet", show_default=True,
              help="'imagenet' (torchvision download/cache), 'random' (seeded; tests and the demo) or a state_dict path.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for --weights random.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--batch-size", type=int, default=64, show_default=True, help="Frames per backbone batch.")
@click.option("--workers", type=int, default=None, help="Decoding processes (default: CPU cores - 1, at most 8).")
@click.option("--short-side", type=int, default=PAPER_SHORT_SIDE, show_default=True, help="Resize shorter side to this.")
@click.option("--crop", type=int, default=PAPER_CROP, show_default=True, help="Centre crop size.")
@click.option("--dtype", type=click.Choice(FEATURE_DTYPES), default="float16", show_default=True,
              help="Storage type of the features.")
@click.option("--precision", type=click.Choice(PRECISIONS), default="auto", show_default=True,
              help="Inference precision: auto = bf16 on CUDA (fp16 without bf16), fp32 on CPU.")
@click.option("--test-fraction", type=float, default=DEFAULT_TEST_FRACTION, show_default=True,
              help="folder without --splits: share of each class recorded as split 1's test set.")
@click.option("--modality", type=click.Choice(MODALITIES), default="rgb", show_default=True,
              help="rgb frames, or flow: optical flow between consecutive frames rendered as images.")
@click.option("--flow-method", type=click.Choice(FLOW_METHODS), default="farneback", show_default=True,
              help="tvl1 needs opencv-contrib-python-headless.")
@click.option("--flow-bound", type=float, default=20.0, show_default=True, help="Flow clipped to +-this many pixels.")
@click.option("--flow-size", type=int, default=256, show_default=True, help="Shorter side of the frames flow is computed on.")
@click.option("--strict", is_flag=True, help="Stop at the first video that fails, or a split file naming a missing video.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@_nproc_option
def extract(dataset, root, splits, out, weights, seed, device, batch_size, workers, short_side, crop, dtype,
            precision, test_fraction, modality, flow_method, flow_bound, flow_size, strict, quiet, nproc):
    """Stage 1: frozen ResNet-34 features of every video into an HDF5 cache (resumable)."""
    _relaunch_under_torchrun(nproc)
    from pipeline import distributed
    from pipeline.extract import run_extract

    rank = distributed.current()
    with user_errors():
        cfg = ExtractConfig(
            dataset=dataset, root=root, splits=splits, out=out, weights=weights, seed=seed, device=device,
            batch_size=batch_size, workers=max(1, default_workers() // rank.world) if workers is None else workers,
            preprocess=Preprocess(short_side=short_side, crop=crop), dtype=dtype, precision=precision,
            strict=strict, test_fraction=test_fraction, modality=modality,
            flow=FlowSpec(method=flow_method, bound=flow_bound, size=flow_size),
        )
        s = run_extract(cfg, progress=not quiet, log=lambda m: click.echo(m, err=True))
    click.echo(
        (f"rank {rank.rank}/{rank.world}: " if rank.distributed else "") +
        f"extracted {s.extracted} videos ({s.frames} frames) in {s.seconds:.1f} s, {s.frames_per_second:.1f} frames/s "
        f"on {s.device}; {s.already_done} were already done, {len(s.failed)} failed, {s.missing} missing; "
        f"weights {s.weights} -> {s.out}"
    )
    for key, reason in s.failed:
        click.echo(f"  failed: {key}: {reason}")


@main.command()
@click.argument("cache_file", type=click.Path(path_type=Path))
@click.option("--verify", is_flag=True, help="Check every entry; exit 1 if anything is wrong.")
def inspect(cache_file, verify):
    """Print a cache's configuration, counts, size and level shapes."""
    from pipeline import cache as cache_mod

    shards = sorted(cache_mod.shard_dir(cache_file).glob("*.h5"))
    unjoined = (f"{len(shards)} shard(s) of a multi-process extraction in {cache_mod.shard_dir(cache_file)} "
                "not yet joined; rerun the same `mrrn extract` to finish and join them")
    if shards and not cache_file.exists():
        raise click.ClickException(f"{cache_file}: no cache yet; {unjoined}")
    with user_errors(), cache_mod.FeatureCache(cache_file) as c:
        ident = c.identity
        pre = ident["preprocess"]
        size = cache_file.stat().st_size
        click.echo(f"cache       {cache_file} ({size / 2**20:.1f} MiB, schema {c.attrs['schema_version']}, "
                   f"mrrn {c.attrs['mrrn_version']}, updated {c.attrs['updated_utc']})")
        click.echo(f"dataset     {ident['dataset']}, {len(c.classes)} classes, modality {ident.get('modality', 'rgb')}"
                   + (f" ({ident['flow']})" if "flow" in ident else ""))
        click.echo(f"backbone    {ident['backbone']}, weights {ident['weights']}, precision {ident['precision']}")
        click.echo(f"preprocess  short side {pre['short_side']}, crop {pre['crop']}, resize {pre['resize']}, "
                   f"mean {pre['mean']}, std {pre['std']}")
        click.echo(f"videos      {len(c.videos)} ok, {len(c.failed)} failed, {c.total_frames} frames")
        for level in c.levels:
            click.echo(f"level       {level:<4} {ident['levels'][level][0]}: {c.level_shape(level)} {ident['dtype']}")
        for n, (train, test) in sorted(c.splits.items()):
            click.echo(f"split       {n}: {len(train)} train, {len(test)} test")
        for f in c.failed:
            click.echo(f"failed      {f.key}: {f.reason}")
        pending = cache_mod.pending_journal(cache_file)
        if pending:
            click.echo(f"pending     {pending} finished video(s) in {cache_mod.journal_dir(cache_file)} not yet merged; "
                       "rerun the same `mrrn extract` to merge them")
        if shards:
            click.echo(f"pending     {unjoined}")
        if verify:
            problems = c.verify()
            for p in problems:
                click.echo(f"problem     {p}")
            if problems:
                raise click.ClickException(f"{cache_file}: {len(problems)} problem(s) found")
            click.echo("verify      ok: every entry has consistent offsets, frame counts, shapes and finite values")


def _train_options(f):
    """Options shared by `train` and `sweep` (paper defaults from pipeline.config.TrainConfig)."""
    options = [
        click.option("--cache", type=click.Path(path_type=Path), required=True, help="Feature cache (mrrn extract)."),
        click.option("--split", type=int, default=1, show_default=True, help="Split recorded in the cache."),
        click.option("--modality", type=click.Choice(MODALITIES), default="rgb", show_default=True,
                     help="The cache's modality (mrrn extract --modality); a mismatch is refused."),
        click.option("--flow-cache", type=click.Path(path_type=Path), default=None,
                     help="A flow cache (extract --modality flow) beside the RGB --cache: for --model twostream, "
                          "for flow runs of a sweep over --modalities rgb,flow, and for --modality flow."),
        click.option("--epochs", type=int, default=12, show_default=True),
        click.option("--batch-size", type=int, default=28, show_default=True),
        click.option("--lr", type=float, default=None,
                     help="Initial learning rate [default: the paper's, 1e-5 high, 1e-4 low/mid]."),
        click.option("--lr-step", type=int, default=8, show_default=True,
                     help="Epochs before the learning rate drops 10x."),
        click.option("--dropout", type=float, default=0.5, show_default=True, help="Before the per-step linear layer."),
        click.option("--window", type=int, default=5, show_default=True,
                     help="tresnet: frames each temporal residual block sees."),
        click.option("--normalize/--no-normalize", default=False, show_default=True,
                     help="Standardise each feature dimension with training-set statistics (not in the paper; "
                          "needed for untrained-backbone features, whose scale is far from ImageNet's)."),
        click.option("--clip-length", type=int, default=30, show_default=True),
        click.option("--clip-stride", type=int, default=8, show_default=True),
        click.option("--max-clips", type=int, default=20, show_default=True),
        click.option("--seed", type=int, default=0, show_default=True),
        click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N."),
        click.option("--allow-missing", is_flag=True, help="Train even if some split videos are not in the cache."),
        click.option("--val-fraction", type=float, default=0.0, show_default=True,
                     help="Hold out this share of each class's training videos for validation (fusion --search)."),
        click.option("--quiet", is_flag=True, help="No progress bars."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _train_config(out, level, model, hidden, layers, pool, cache, split, modality, flow_cache, epochs, batch_size, lr,
                  lr_step, dropout, window, normalize, clip_length, clip_stride, max_clips, seed, device, allow_missing,
                  val_fraction, stream_fusion="sum") -> TrainConfig:
    if model != "twostream" and flow_cache is not None:
        if modality != "flow":
            raise click.UsageError("--flow-cache is read by --model twostream, --modality flow or a sweep over "
                                   "--modalities rgb,flow")
        cache, flow_cache = flow_cache, None  # a flow run reads the flow cache
    return TrainConfig(
        cache=str(cache), out=str(out), split=split, modality=modality, level=level, model=model,
        flow_cache=None if flow_cache is None else str(flow_cache), stream_fusion=stream_fusion, hidden=hidden,
        layers=layers, pool=pool, dropout=dropout, window=window, normalize=normalize, epochs=epochs,
        batch_size=batch_size, lr=lr, lr_step_epochs=lr_step,
        clip=ClipSpec(clip_length, clip_stride, max_clips), seed=seed, device=device, allow_missing=allow_missing,
        val_fraction=val_fraction,
    )


@main.command()
@_train_options
@click.option("--level", type=click.Choice(list(LEVELS)), required=True, help="Feature level to train on.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Run directory.")
@click.option("--model", type=click.Choice(MODELS), default="rrn", show_default=True,
              help="rrn (stacked SRU, the paper), lstm, reslstm (residual LSTM), tresnet (temporal residual "
                   "blocks), meanpool (the order-blind control) or twostream (RGB and flow, needs --flow-cache).")
@click.option("--stream-fusion", type=click.Choice(STREAM_FUSIONS), default="sum", show_default=True,
              help="twostream: fuse the top appearance and motion states by sum or element-wise product.")
@click.option("--hidden", type=int, default=1024, show_default=True, help="SRU hidden units.")
@click.option("--layers", type=int, default=3, show_default=True, help="Stacked SRU layers.")
@click.option("--pool", type=click.Choice(POOLS), default="mean", show_default=True,
              help="Temporal pooling of the per-step scores: mean (eq. 8) or max (eq. 9).")
@click.option("--resume", is_flag=True, help="Continue the unfinished run in --out from its last checkpoint.")
@_nproc_option
def train(level, out, model, stream_fusion, hidden, layers, pool, resume, quiet, nproc, **kw):
    """Stage 2: train one level's classifier on the cache; writes metrics, checkpoints and test scores."""
    _relaunch_under_torchrun(nproc)
    from pipeline import distributed
    from pipeline.train import fit

    with user_errors():
        cfg = _train_config(out, level, model, hidden, layers, pool, stream_fusion=stream_fusion, **kw)
        s = fit(cfg, resume=resume, progress=not quiet, log=lambda m: click.echo(m, err=True))
    if not distributed.current().is_main:
        return
    f = s.final
    click.echo(f"{cfg.model} {cfg.streams} {cfg.level}: video top-1 {f['video_top1']:.1%}, top-5 {f['video_top5']:.1%}, "
               f"mean class {f['mean_class_acc']:.1%}, clip {f['clip_acc']:.1%} after {s.epochs} epochs "
               f"({s.parameters:,} parameters, {s.seconds_per_epoch:.1f} s/epoch) -> {s.out}")


def _csv(kind, choices=None):
    """A click callback turning 'a,b,c' into a list of ``kind``, checked against ``choices``."""

    def parse(ctx, param, value):
        try:
            items = [kind(v.strip()) for v in value.split(",") if v.strip()]
        except ValueError:
            raise click.BadParameter(f"expected a comma-separated list, got {value!r}") from None
        bad = [v for v in items if choices is not None and v not in choices]
        if bad or not items:
            raise click.BadParameter(f"{', '.join(map(str, bad)) or 'nothing'} not in {', '.join(choices or [])}")
        return items

    return parse


def _optional_csv(choices):
    parse = _csv(str, choices)
    return lambda ctx, param, value: None if value is None else parse(ctx, param, value)


@main.command()
@_train_options
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Sweep directory (one run each).")
@click.option("--levels", "--level", "levels", default="high", show_default=True, callback=_csv(str, list(LEVELS)),
              help="Comma-separated levels.")
@click.option("--models", "--model", "models", default="rrn", show_default=True, callback=_csv(str, list(MODELS)),
              help="Comma-separated heads.")
@click.option("--hidden", default="1024", show_default=True, callback=_csv(int), help="Comma-separated hidden sizes.")
@click.option("--layers", default="3", show_default=True, callback=_csv(int), help="Comma-separated depths.")
@click.option("--pool", default="mean", show_default=True, callback=_csv(str, list(POOLS)),
              help="Comma-separated temporal poolings.")
@click.option("--modalities", default=None, callback=_optional_csv(list(MODALITIES)),
              help="Comma-separated streams for the single-stream heads, e.g. rgb,flow (flow runs read "
                   "--flow-cache) [default: --modality].")
@click.option("--stream-fusion", default="sum", show_default=True, callback=_csv(str, list(STREAM_FUSIONS)),
              help="twostream: comma-separated fusions of the top states (sum, product).")
def sweep(out, levels, models, hidden, layers, pool, modalities, stream_fusion, quiet, flow_cache, **kw):
    """Train a grid of runs on one cache, or RGB and flow caches (finished runs are skipped), and write
    results.csv and results.md: one comparison table."""
    from pipeline.sweep import run_sweep

    with user_errors():
        base = _train_config(out / "_", levels[0], "rrn", hidden[0], layers[0], pool[0], flow_cache=None, **kw)
        run_sweep(base, out, levels, models, hidden, layers, pool, modalities=modalities or [base.modality],
                  flow_cache=flow_cache, stream_fusions=stream_fusion, progress=not quiet,
                  log=lambda m: click.echo(m, err=True))
    click.echo((out / "results.md").read_text(), nl=False)
    click.echo(f"-> {out / 'results.csv'}, {out / 'results.md'}")


@main.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Fuse directory.")
@click.option("--method", type=click.Choice(FUSION_METHODS), default="weighted", show_default=True)
@click.option("--weights", default=None,
              help="Weights by level, 'high=0.7,mid=0.2,low=0.1' or '0.7,0.2,0.1' (high, mid, low as in eq. 10), "
                   "by modality ('rgb=1,flow=1.5') or both ('rgb:high=0.5,flow:high=0.5') [default: the paper's].")
@click.option("--search", is_flag=True, help="Choose the weights on the runs' validation videos (--val-fraction).")
def fuse(runs, out, method, weights, search):
    """Fuse several runs' video scores (eq. 10, or sum / product) and write the summary and report."""
    from pipeline.fuse import run_fuse, summary_markdown

    with user_errors():
        s = run_fuse(runs, out, method, _level_weights(weights), search)
        click.echo(summary_markdown(s), nl=False)
        report = _report(out)
    click.echo(f"-> {out / 'summary.md'}" + (f", {report}" if report else ""))


def _level_weights(text):
    if text is None:
        return None
    items = [t.strip() for t in text.split(",") if t.strip()]
    try:
        if all("=" in t for t in items):
            return {k.strip(): float(v) for k, v in (t.split("=", 1) for t in items)}
        return dict(zip(("high", "mid", "low"), (float(t) for t in items), strict=True))
    except ValueError:
        raise click.BadParameter(f"expected 'high=0.7,mid=0.2,low=0.1', 'rgb:high=0.5,flow:high=0.5' or up to "
                                 f"three numbers, got {text!r}",
                                 param_hint="--weights") from None


def _report(directory: Path):
    """Write the report; without matplotlib say so and go on (the fusion itself is done)."""
    from pipeline.report import ReportError, write_report

    try:
        return write_report(directory)
    except ReportError as err:
        click.echo(f"warning: no report: {err}", err=True)
        return None


@main.command()
@click.argument("directory", type=click.Path(path_type=Path))
def report(directory):
    """Write confusion matrix, per-class accuracy and training-curve PNGs and report.md for a run or fuse directory."""
    from pipeline.report import write_report

    with user_errors():
        path = write_report(directory)
    click.echo(f"-> {path}")


@main.command()
@click.argument("videos", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--runs", "run_dirs", multiple=True, required=True, type=click.Path(path_type=Path),
              help="Trained run directory; repeat for each level to fuse (e.g. --runs runs/low --runs runs/high).")
@click.option("--top", type=int, default=5, show_default=True)
@click.option("--method", type=click.Choice(FUSION_METHODS), default=None,
              help="Fusion [default: weighted by level when the runs are one per level of one stream, else sum].")
@click.option("--backbone-weights", type=click.Path(path_type=Path), default=None,
              help="The local state_dict the cache was made with, when it was made with --weights PATH.")
@click.option("--device", default="auto", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON list of {video, top: [{class, probability}], error}.")
def predict(videos, run_dirs, top, method, backbone_weights, device, as_json):
    """Classify new videos with trained runs (the backbone is rebuilt exactly as the runs' cache was made)."""
    from pipeline.predict import predict as run_predict

    with user_errors():
        results = run_predict(list(videos), list(run_dirs), top, method, backbone_weights, device)
    if as_json:
        click.echo(json.dumps([{"video": r.video, "top": [{"class": c, "probability": round(p, 6)} for c, p in r.top],
                                "error": r.error} for r in results], indent=2))
    else:
        for r in results:
            if r.error:
                click.echo(f"Error: {r.video}: {r.error}", err=True)
                continue
            click.echo(f"{r.video}")
            for rank, (cls, p) in enumerate(r.top, start=1):
                click.echo(f"  {rank}. {cls:<24} {p:.3f}")
    if any(r.error for r in results):
        sys.exit(1)


@main.command("sample-data")
@click.option("--out", type=click.Path(path_type=Path), default=Path("data/sample"), show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
def sample_data(out, seed):
    """Write the small synthetic sample dataset (real .avi files, UCF-101 layout)."""
    from pipeline.sample_data import write_sample_dataset

    s = write_sample_dataset(out, seed=seed)
    click.echo(
        f"wrote {s.videos} videos ({s.classes} classes, {s.train} train / {s.test} test, "
        f"{s.frames} frames) to {out}"
    )


REFERENCE_START = "<!-- cli-reference:start (generated by `python cli.py cli-reference --write README.md`) -->"
REFERENCE_END = "<!-- cli-reference:end -->"


def reference_markdown() -> str:
    """Every command's --help, as the README's CLI reference (a test keeps the two equal)."""
    from click.testing import CliRunner

    parts = [REFERENCE_START, ""]
    for name in ["", *sorted(n for n, c in main.commands.items() if not c.hidden)]:
        args = [name, "--help"] if name else ["--help"]
        text = CliRunner().invoke(main, args, prog_name="mrrn").output.rstrip()
        parts += [f"#### `mrrn{' ' + name if name else ''}`", "", "```text", text, "```", ""]
    parts.append(REFERENCE_END)
    return "\n".join(parts)


@main.command("cli-reference", hidden=True)
@click.option("--write", type=click.Path(path_type=Path), default=None, help="Replace the reference in this file.")
def cli_reference(write):
    """Print (or write into the README) the CLI reference."""
    text = reference_markdown()
    if write is None:
        click.echo(text)
        return
    doc = write.read_text()
    start, end = doc.index(REFERENCE_START), doc.index(REFERENCE_END) + len(REFERENCE_END)
    write.write_text(doc[:start] + text + doc[end:])


if __name__ == "__main__":
    sys.exit(main())
