"""mrrn command line: thin click commands, each building its inputs and calling one pipeline function.

Every default comes from the configuration dataclasses in ``pipeline/config.py`` (``default(...)``);
``tests/test_cli.py`` checks that each option agrees with its field. Errors derived from
``pipeline.errors.MrrnError`` are shown as one ``Error:`` line with exit status 1; anything else is a bug
and keeps its traceback.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import shlex
import sys
from pathlib import Path

import click

from pipeline import __version__
from pipeline.config import (
    DATASET_CHOICES,
    FEATURE_DTYPES,
    FLOW_METHODS,
    FUSION_METHODS,
    LEVELS,
    MODALITIES,
    MODELS,
    PAPER_FUSION_WEIGHTS,
    POOLS,
    PRECISIONS,
    STREAM_FUSIONS,
    TEST_VIEWS,
    TRAIN_PRECISIONS,
    TRAIN_VIEWS,
    VIEW_SETS,
    ClipSpec,
    ExtractConfig,
    FlowSpec,
    TrainConfig,
    default,
    default_workers,
)
from pipeline.errors import MrrnError, first_line
from pipeline.streams import caches_for_runs


class _Number(click.FloatRange):
    """A finite number within a range (click's FloatRange lets nan and inf through)."""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


POSITIVE = _Number(min=0, min_open=True)
FRACTION = _Number(min=0, max=1, max_open=True)  # [0, 1)
COUNT = click.IntRange(min=1)


@contextlib.contextmanager
def user_errors():
    """Turn the pipeline's errors about the user's input and world into ``Error: ...`` and exit status 1."""
    try:
        yield
    except MrrnError as err:  # one line, even where a library's text of many lines slipped into the message
        raise click.ClickException(first_line(err)) from None


INTERRUPTED = 130  # the exit status after Ctrl-C: 128 + SIGINT, as a shell gives


@contextlib.contextmanager
def interrupted(kept, *, resume: bool = False):
    """Ctrl-C during a long command: once the pipeline has put its finished work on disk, say how much
    ``kept()`` holds and the command that continues (this one, with --resume when ``resume``), and exit
    with status :data:`INTERRUPTED`."""
    try:
        yield
    except KeyboardInterrupt:
        if "WORLD_SIZE" not in os.environ:  # not a rank under torchrun (whose command line is not the user's)
            args = sys.argv[1:] + (["--resume"] if resume and "--resume" not in sys.argv else [])
            program = sys.argv[0] if Path(sys.argv[0]).name == "mrrn" else "mrrn"
            with contextlib.suppress(MrrnError, OSError):
                _log(f"interrupted: {kept()}")
            _log(f"continue with: {shlex.join([program, *args])}")
        raise click.exceptions.Exit(INTERRUPTED) from None


def _nproc_option(f):
    return click.option(
        "--nproc", type=int, default=1, show_default=True,
        help="Processes on this machine (one per GPU), started with torchrun; for several machines run "
             "torchrun yourself (docs/distributed.md).")(f)


def _relaunch_under_torchrun(nproc: int, device: str) -> None:
    """``--nproc N`` outside torchrun: run this same command line under torchrun with N processes and exit
    with its status. Under torchrun (WORLD_SIZE set) the option is ignored: torchrun decides."""
    if nproc < 1:
        raise click.BadParameter(f"{nproc} is not in the range x>=1", param_hint="--nproc")
    if nproc == 1 or "WORLD_SIZE" in os.environ:
        return
    from pipeline.distributed import check_gpus, launch

    with user_errors():
        check_gpus(nproc, device)

    args, skip = [], False
    for arg in sys.argv[1:]:  # the command line without --nproc
        if skip or arg.startswith("--nproc="):
            skip = False
            continue
        if arg == "--nproc":
            skip = True
            continue
        args.append(arg)
    sys.exit(launch(nproc, Path(__file__).resolve(), args))


def _workers_likely(workers: int | None, device: str) -> bool:
    """Whether extraction will start decoding workers, guessed before torch is imported (so that their
    server can start first): when asked for, or by default (``default_workers``) on the device it will
    likely run on. A wrong guess costs start-up time only: extraction starts the server itself once it knows."""
    if workers is not None:
        return workers > 0
    from pipeline.distributed import gpus_listed  # imports no torch

    on_gpu = device != "cpu" and (device != "auto" or gpus_listed() > 0)
    return default_workers("cuda" if on_gpu else "cpu") > 0


def _log(message: str) -> None:
    click.echo(message, err=True)


def _count(n: int, noun: str) -> str:
    """``1 video``, ``2 videos``."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _videos_in(cache: str) -> str:
    """What an interrupted extraction kept."""
    from pipeline.cache.reader import FeatureCache

    if not Path(cache).is_file():
        return "no video was finished; nothing was written"
    with FeatureCache(cache) as done:
        return f"{_count(len(done.videos), 'finished video')} kept in {cache}"


def _epochs_in(run: str) -> str:
    """What an interrupted training run kept."""
    from pipeline.train.rundir import RunDir

    epochs = RunDir(run).checkpoint_epoch() if Path(run).is_dir() else 0
    return f"{_count(epochs, 'finished epoch')} kept in {run}" if epochs else "no epoch was finished; nothing was kept"


def _runs_in(out: Path) -> str:
    """What an interrupted sweep kept: its finished runs (the unfinished one keeps its finished epochs)."""
    from pipeline.evaluate.layout import RunFiles

    finished = sum(RunFiles(d).is_finished() for d in [*out.glob("*"), *out.glob("*/*")] if d.is_dir())
    return f"{_count(finished, 'finished run')} kept in {out} (an unfinished run keeps its finished epochs)"


def _old_weights_option(ctx, param, value):
    if value is not None:
        _log("warning: --weights is now --backbone-weights; the old spelling still works for now "
             "(fusion weights keep --weights in `mrrn fuse`)")
    return value


class _Commands(click.Group):
    """The command group; an option value out of range or of the wrong kind is a user error like any other:
    one line, ``Error: --option: reason`` naming the value, and exit status 1."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except click.MissingParameter:
            raise  # a usage error, shown with the usage
        except click.BadParameter as err:
            param = err.param
            name = err.param_hint or (param.opts[0] if isinstance(param, click.Option) else
                                      param.human_readable_name if param is not None else "value")
            raise click.ClickException(f"{name}: {err.message.rstrip('.')}") from None


@click.group(cls=_Commands,
             context_settings={"help_option_names": ["-h", "--help"], "terminal_width": 100, "max_content_width": 100})
@click.version_option(__version__, prog_name="mrrn")
def main():
    """MRRN: multi-level recurrent residual networks for action recognition.

    Stage 1 extracts frozen ResNet-34 features into an HDF5 cache; stage 2 trains SRU classifiers
    on the cache, per level, and fuses them.
    """


@main.command()
@click.option("--dataset", type=click.Choice(DATASET_CHOICES), required=True, help="Index format.")
@click.option("--root", type=click.Path(path_type=Path), required=True, help="Dataset root: the videos (class folders for folder; docs/datasets.md for each layout).")
@click.option("--splits", type=click.Path(path_type=Path),
              help="Split or annotation folder (required but for folder): ucf101/hmdb51 split files, kinetics "
                   "CSVs, ssv2 JSON files, list video lists (docs/datasets.md).")
@click.option("--split", type=COUNT, default=1, show_default=True, help="Split number.")
@click.option("--test-fraction", type=FRACTION, default=default(ExtractConfig, "test_fraction"), show_default=True,
              help="folder without --splits: share of each class held out for test (stable hash of the key).")
@click.option("--strict", is_flag=True, help="Fail if a split file names a video that is not on disk.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the counts as a JSON object: {dataset, split, classes, train: {listed, found, missing}, "
                   "test: {listed, found, missing}, test_name} (test_name: what the dataset calls its test part).")
def index(dataset, root, splits, split, test_fraction, strict, as_json):
    """Count a split's classes and its train/test videos: listed, found, missing. The videos listed by the split
    files are looked for on disk; none is opened."""
    from pipeline.datasets import index as datasets

    with user_errors():
        idx = datasets.build_index(dataset, root, splits, split, test_fraction=test_fraction, strict=strict)
    if idx.missing:
        _log(f"warning: {datasets.describe_missing(idx.missing, idx.root)}")
    if datasets.one_class_warning(idx.classes):
        _log(f"warning: {datasets.one_class_warning(idx.classes)}")
    counts = idx.counts()
    if as_json:
        click.echo(json.dumps({"dataset": dataset, "split": split, "classes": len(idx.classes), **counts,
                               "test_name": idx.test_name}))
        return
    test = "test" if idx.test_name == "test" else f"test ({idx.test_name})"
    parts = "; ".join(f"{name}: {c['listed']:,} videos listed, {c['found']:,} found, {c['missing']:,} missing"
                      for name, c in zip(("train", test), counts.values()))
    click.echo(f"{dataset} split {split}: {len(idx.classes):,} classes; {parts}")


def _choice(values):
    return click.Choice(list(values))


def _list_backbones(ctx, param, value):
    """--list-backbones: torchvision's models; --list-backbones PATTERN: those and timm's pretrained models whose
    names match (fnmatch: '*dinov2*'), timm having over a thousand."""
    if value is None or ctx.resilient_parsing:
        return
    import fnmatch

    import torchvision

    from pipeline.extract.taps import describe_all

    click.echo("backbone               levels: low / mid / high width (tap); input size; pooling")
    names = [n for n in torchvision.models.list_models(module=torchvision.models) if fnmatch.fnmatch(n, value or "*")]
    for line in describe_all(names) if names else ():
        click.echo(line)
    if not value:
        click.echo("timm:NAME               timm's models: --list-backbones 'PATTERN' lists those matching, e.g. '*dinov2*'")
        ctx.exit(0)
    from pipeline.extract.timm_backbones import DESCRIBED, describe_timm

    with user_errors():
        lines = list(describe_timm(value))
    for line in lines:
        click.echo(line)
    if len(lines) > DESCRIBED:
        click.echo(f"({len(lines)} timm models match {value!r}; the levels of the first {DESCRIBED} are shown)")
    ctx.exit(0)


@main.command()
@click.option("--dataset", type=_choice(DATASET_CHOICES), required=True, help="Index format.")
@click.option("--root", type=click.Path(path_type=Path), required=True, help="Dataset root: the videos (class folders for folder; docs/datasets.md for each layout).")
@click.option("--splits", type=click.Path(path_type=Path),
              help="Split or annotation folder (required but for folder): ucf101/hmdb51 split files, kinetics "
                   "CSVs, ssv2 JSON files, list video lists (docs/datasets.md).")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="The HDF5 cache to write or resume.")
@click.option("--backbone", default=default(ExtractConfig, "backbone"), show_default=True,
              help="Any torchvision classification model, or timm:NAME for a timm model with its pretrained tag "
                   "(timm:vit_small_patch14_dinov2.lvd142m); --list-backbones shows them with their levels.")
@click.option("--list-backbones", is_flag=False, flag_value="", default=None, metavar="[PATTERN]", is_eager=True,
              expose_value=False, callback=_list_backbones,
              help="Print the supported backbones with their level widths and input size, and exit; with a PATTERN "
                   "('*dinov2*'), the torchvision and timm models matching it.")
@click.option("--backbone-weights", default=None,
              help="'imagenet' (the backbone's default torchvision weights, download/cache), a torchvision weights "
                   "name (e.g. ViT_B_16_Weights.IMAGENET1K_SWAG_E2E_V1), 'random' (seeded; tests and the demo) or a "
                   "state_dict path; for timm:NAME, 'pretrained' (from timm's local caches, offline), 'random' or a "
                   f".safetensors/.pth file [default: {default(ExtractConfig, 'backbone_weights')}].")
@click.option("--weights", "legacy_weights", default=None, hidden=True, callback=_old_weights_option)
@click.option("--seed", type=int, default=default(ExtractConfig, "seed"), show_default=True,
              help="Seed for --backbone-weights random.")
@click.option("--device", default=default(ExtractConfig, "device"), show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--batch-size", type=COUNT, default=default(ExtractConfig, "batch_size"), show_default=True,
              help="Frames per backbone batch.")
@click.option("--workers", type=click.IntRange(min=0), default=None,
              help="Decoding processes [default: none on the CPU, where decoding runs between batches; on GPUs the "
                   "CPU cores but one, shared among the ranks].")
@click.option("--short-side", type=click.IntRange(min=32), default=None,
              help="Resize shorter side to this [default: the weights' own; 256 for random or local weights].")
@click.option("--crop", type=click.IntRange(min=32), default=None,
              help="Centre crop size [default: the weights' own; 224 for random or local weights].")
@click.option("--views", type=_choice(VIEW_SETS), default=default(ExtractConfig, "views"), show_default=True,
              help="Crops cached of each frame: center; center,flip; five (corners and centre); ten (five and their "
                   "flips). The cache grows with their number; training draws one per clip, testing averages them.")
@click.option("--dtype", type=_choice(FEATURE_DTYPES), default=default(ExtractConfig, "dtype"), show_default=True,
              help="Storage type of the features.")
@click.option("--fps", type=POSITIVE, default=None,
              help="Frames kept per second of video, chosen by timestamp (every frame is still decoded; the backbone "
                   "sees the kept ones) [default: every frame, as in the paper]. RGB caches only.")
@click.option("--precision", type=_choice(PRECISIONS), default=default(ExtractConfig, "precision"), show_default=True,
              help="Inference precision: auto = bf16 where the processor computes it natively (CUDA GPUs from "
                   "Ampere on, CPUs with AVX-512 BF16 or AMX), else fp16 on GPUs and fp32 on CPUs; an existing "
                   "cache keeps the precision it records.")
@click.option("--test-fraction", type=FRACTION, default=default(ExtractConfig, "test_fraction"), show_default=True,
              help="folder without --splits: share of each class recorded as split 1's test set.")
@click.option("--modality", type=_choice(MODALITIES), default=default(ExtractConfig, "modality"), show_default=True,
              help="rgb frames, or flow: optical flow between consecutive frames rendered as images.")
@click.option("--flow-method", type=_choice(FLOW_METHODS), default=default(FlowSpec, "method"), show_default=True,
              help="tvl1 needs opencv-contrib-python-headless.")
@click.option("--flow-bound", type=POSITIVE, default=default(FlowSpec, "bound"), show_default=True,
              help="Flow clipped to +-this many pixels.")
@click.option("--flow-size", type=click.IntRange(min=16), default=default(FlowSpec, "size"), show_default=True,
              help="Shorter side of the frames flow is computed on.")
@click.option("--strict", is_flag=True, default=default(ExtractConfig, "strict"),
              help="Stop at the first video that fails, or a split file naming a missing video.")
@click.option("--redo", multiple=True, default=default(ExtractConfig, "redo"), metavar="KEY",
              help="Extract this video again although the cache holds it (repeat for several; keys are Class/video).")
@click.option("--redo-damaged", is_flag=True, default=default(ExtractConfig, "redo_damaged"),
              help="Extract again every video whose features `inspect --verify` finds damaged or not finite.")
@click.option("--commit-every", type=COUNT, default=default(ExtractConfig, "commit_every"), show_default=True,
              metavar="VIDEOS", help="Commit finished videos into the cache every this many videos (or every "
                                     f"{default(ExtractConfig, 'commit_seconds'):g} s), each commit a new part.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@_nproc_option
def extract(*, backbone_weights, legacy_weights, flow_method, flow_bound, flow_size, quiet, nproc, **settings):
    """Stage 1: extract every video's backbone features into an HDF5 cache.

    The backbone is a frozen ResNet-34 by default. Extraction is resumable: the same command continues an
    interrupted run."""
    _relaunch_under_torchrun(nproc, settings["device"])
    if _workers_likely(settings["workers"], settings["device"]):
        from pipeline.extract.workers import start_early

        start_early()  # the decoding workers' server imports torch while this process does
    from pipeline import distributed
    from pipeline.extract.run import run_extract

    rank = distributed.current()
    with user_errors():
        settings["redo"] = tuple(settings["redo"])
        cfg = ExtractConfig(
            **settings, backbone_weights=backbone_weights or legacy_weights or default(ExtractConfig, "backbone_weights"),
            flow=FlowSpec(method=flow_method, bound=flow_bound, size=flow_size),
        )
        with interrupted(lambda: _videos_in(cfg.out)):
            s = run_extract(cfg, progress=not quiet, log=_log)
    click.echo(
        (f"rank {rank.rank}/{rank.world}: " if rank.distributed else "") +
        f"extracted {_count(s.extracted, 'video')} ({_count(s.frames, 'frame')}) in {s.seconds:.1f} s, "
        f"{s.frames_per_second:.1f} frames/s on {s.device}; {s.already_done} {'was' if s.already_done == 1 else 'were'} "
        f"already done, {len(s.failed)} failed, {s.missing} missing; "
        f"weights {s.weights} -> {s.out}"
    )
    for key, reason in s.failed:
        click.echo(f"  failed: {key}: {reason}")


@main.command()
@click.argument("cache_file", type=click.Path(path_type=Path))
@click.option("--verify", is_flag=True, help="Check every entry; exit 1 if anything is wrong.")
def inspect(cache_file, verify):
    """Print how a cache was made (its identity), its counts, size and level shapes."""
    from pipeline.cache.inspect import inspect_cache

    with user_errors():
        report = inspect_cache(cache_file, verify)
    for line in report.lines:
        click.echo(line)
    if verify:
        for problem in report.problems:
            click.echo(f"problem     {problem}")
        if report.problems:
            raise click.ClickException(f"{cache_file}: {len(report.problems)} problem(s) found")
        click.echo("verify      ok: every entry has consistent offsets, frame counts, shapes and finite values, "
                   "and rows equal to those committed")


@main.command()
@click.argument("cache_file", metavar="CACHE", type=click.Path(path_type=Path))
def compact(cache_file):
    """Merge a cache's parts into one file.

    CACHE then holds every level itself, and its parts folder goes. Each commit of `mrrn extract` adds a part; one file is easier to copy or share. Run it while no other mrrn
    command reads the cache."""
    from pipeline.cache.writer import compact as compact_cache

    with user_errors():
        parts, unused = compact_cache(cache_file)
    if not parts:
        click.echo(f"{cache_file} is one file already; nothing to do")
        return
    dropped = f"; {_count(unused, 'row')} no video used any more dropped" if unused else ""
    click.echo(f"compacted {_count(parts, 'part')} into {cache_file} "
               f"({cache_file.stat().st_size / 2**20:.1f} MiB){dropped}")


def _train_options(f):
    """Options shared by `train` and `sweep`; their names are TrainConfig's (or ClipSpec's) fields."""
    options = [
        click.option("--cache", type=click.Path(path_type=Path), default=None,
                     help="Feature cache (mrrn extract); required (`sweep` also takes several with --caches)."),
        click.option("--split", type=COUNT, default=default(TrainConfig, "split"), show_default=True,
                     help="Split recorded in the cache."),
        click.option("--modality", type=_choice(MODALITIES), default=default(TrainConfig, "modality"), show_default=True,
                     help="The cache's modality (mrrn extract --modality); a mismatch is refused."),
        click.option("--flow-cache", type=click.Path(path_type=Path), default=None,
                     help="A flow cache (extract --modality flow) beside the RGB --cache: for --model twostream, "
                          "for flow runs of a sweep over --modalities rgb,flow, and for --modality flow."),
        click.option("--epochs", type=COUNT, default=default(TrainConfig, "epochs"), show_default=True),
        click.option("--batch-size", type=COUNT, default=default(TrainConfig, "batch_size"), show_default=True),
        click.option("--lr", type=POSITIVE, default=None,
                     help="Initial learning rate [default: the paper's, 1e-5 high, 1e-4 low/mid]."),
        click.option("--lr-step", "lr_step_epochs", type=COUNT, default=default(TrainConfig, "lr_step_epochs"),
                     show_default=True, help="Epochs before the learning rate drops 10x."),
        click.option("--dropout", type=FRACTION, default=default(TrainConfig, "dropout"), show_default=True,
                     help="Before the per-step linear layer."),
        click.option("--window", type=COUNT, default=default(TrainConfig, "window"), show_default=True,
                     help="tresnet: frames each temporal residual block sees."),
        click.option("--positions/--no-positions", default=default(TrainConfig, "positions"), show_default=True,
                     help="attentive: add a learned temporal position to each frame; without, the probe is blind "
                          "to frame order (a reversed clip gets the same scores)."),
        click.option("--normalize/--no-normalize", default=default(TrainConfig, "normalize"), show_default=True,
                     help="Standardise each feature dimension with training-set statistics (not in the paper; "
                          "needed for untrained-backbone features, whose scale is far from ImageNet's)."),
        click.option("--clip-length", "length", type=COUNT, default=default(ClipSpec, "length"), show_default=True),
        click.option("--clip-stride", "stride", type=COUNT, default=default(ClipSpec, "stride"), show_default=True),
        click.option("--max-clips", type=COUNT, default=default(ClipSpec, "max_clips"), show_default=True),
        click.option("--seed", type=int, default=default(TrainConfig, "seed"), show_default=True),
        click.option("--device", default=default(TrainConfig, "device"), show_default=True, help="auto, cpu, cuda or cuda:N."),
        click.option("--precision", type=_choice(TRAIN_PRECISIONS), default=default(TrainConfig, "precision"),
                     show_default=True, help="Arithmetic of the projections: auto = tf32 on CUDA, bf16 on CPUs that "
                                             "compute it natively (AVX-512 BF16, AMX), else fp32; bf16 autocasts them, the "
                                             "recurrence and loss stay float32; tf32 is CUDA only. config.json records "
                                             "what was used, and --resume keeps it."),
        click.option("--allow-missing", is_flag=True, default=default(TrainConfig, "allow_missing"),
                     help="Train even if some split videos are not in the cache (missing on disk, failed to "
                          "decode); every number then says what it is over ('over 31 of 32 test videos')."),
        click.option("--val-fraction", type=FRACTION, default=default(TrainConfig, "val_fraction"), show_default=True,
                     help="Hold out this share of each class's training videos for validation (fusion --search)."),
        click.option("--train-views", type=_choice(TRAIN_VIEWS), default=default(TrainConfig, "train_views"),
                     show_default=True, help="A cache with several views (extract --views): each training clip is read "
                                             "through one drawn at random (seeded), or through the centre crop only."),
        click.option("--test-views", type=_choice(TEST_VIEWS), default=default(TrainConfig, "test_views"),
                     show_default=True, help="A cache with several views: video scores are averaged over all of them "
                                             "(ten-crop testing with --views ten), or read from the centre crop only."),
        click.option("--max-memory", type=str, default=None, callback=_size_option, metavar="SIZE",
                     help="Memory budget for the level's data per rank (e.g. 3G, 512M) [default: half the available "
                          "memory, shared by the ranks of a machine]. Over it each rank holds only its share of the "
                          "videos, or streams them from the cache (docs/training.md, Memory)."),
        click.option("--quiet", is_flag=True, help="No progress bars."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _size_option(ctx, param, value):
    """--max-memory SIZE as bytes; a size that is not one is a usage error."""
    if value is None:
        return None
    from pipeline.errors import ConfigError
    from pipeline.train.shares import parse_size

    try:
        return parse_size(value)
    except ConfigError as err:  # '--max-memory X: why' -> 'X: why'
        raise click.BadParameter(str(err).removeprefix("--max-memory ")) from None


def _not_a_directory(option: str, path) -> None:
    """A cache option naming a directory is refused saying what the directory is (a run, sweep or fusion)."""
    if path is None or not Path(path).is_dir():
        return
    from pipeline.evaluate.layout import KIND_COMMANDS, directory_kind

    kind = directory_kind(path)
    what = f"a {kind} directory (made by `mrrn {KIND_COMMANDS[kind]}`)" if kind else "a directory"
    raise click.ClickException(f"{path}: {what}, not a cache; {option} names the .h5 file `mrrn extract` wrote")


def _train_config(settings: dict) -> TrainConfig:
    """A TrainConfig from train/sweep options named after its fields, reading the caches
    ``streams.caches_for_runs`` gives the run."""
    if settings["cache"] is None:
        raise click.UsageError("Missing option '--cache'.")
    for option in ("--cache", "--flow-cache"):
        _not_a_directory(option, settings[option[2:].replace("-", "_")])
    clip = ClipSpec(settings.pop("length"), settings.pop("stride"), settings.pop("max_clips"))
    flow_cache = None if settings["flow_cache"] is None else str(settings["flow_cache"])
    [(cache, flow_cache)] = caches_for_runs([(settings["model"], settings["modality"])], str(settings["cache"]),
                                            flow_cache)
    return TrainConfig(**{**settings, "cache": cache, "flow_cache": flow_cache, "out": str(settings["out"]),
                          "clip": clip})


@main.command()
@_train_options
@click.option("--level", type=_choice(LEVELS), required=True, help="Feature level to train on.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Run directory.")
@click.option("--model", type=_choice(MODELS), default=default(TrainConfig, "model"), show_default=True,
              help="rrn (stacked SRU, the paper), lstm, reslstm (residual LSTM), tresnet (temporal residual "
                   "blocks), attentive (the attentive probe: a learned query cross-attends over the frames; --layers "
                   "blocks of --hidden/64 heads), meanpool (the order-blind control) or twostream (RGB and flow, needs --flow-cache).")
@click.option("--stream-fusion", type=_choice(STREAM_FUSIONS), default=default(TrainConfig, "stream_fusion"),
              show_default=True, help="twostream: fuse the top appearance and motion states by sum or element-wise product.")
@click.option("--hidden", type=COUNT, default=default(TrainConfig, "hidden"), show_default=True, help="SRU hidden units.")
@click.option("--layers", type=COUNT, default=default(TrainConfig, "layers"), show_default=True, help="Stacked SRU layers.")
@click.option("--pool", type=_choice(POOLS), default=default(TrainConfig, "pool"), show_default=True,
              help="Temporal pooling of the per-step scores: mean (eq. 8) or max (eq. 9).")
@click.option("--resume", is_flag=True, help="Continue the unfinished run in --out from its last checkpoint.")
@_nproc_option
def train(resume, quiet, nproc, **settings):
    """Stage 2: train one level's classifier on a cache.

    The run directory gets the metrics, checkpoints and the test videos' scores."""
    _relaunch_under_torchrun(nproc, settings["device"])
    from pipeline import distributed
    from pipeline.train.loop import fit

    with user_errors():
        cfg = _train_config(settings)
        with interrupted(lambda: _epochs_in(cfg.out), resume=True):
            s = fit(cfg, resume=resume, progress=not quiet, log=_log)
    if not distributed.current().is_main:
        return
    f = s.final
    click.echo(f"{cfg.model} {cfg.streams} {cfg.level}: video top-1 {f['video_top1']:.1%}, top-5 {f['video_top5']:.1%}, "
               f"mean class {f['mean_class_acc']:.1%}, clip {f['clip_acc']:.1%}"
               + (f" {s.computed_on['statement']}" if s.computed_on and not s.computed_on["complete"] else "")
               + f" after {_count(s.epochs, 'epoch')} "
               f"({s.parameters:,} parameters, {s.seconds_per_epoch:.1f} s/epoch) -> {s.out}")


def _csv(kind, choices=None, minimum=None):
    """A click callback turning 'a,b,c' into a list of ``kind``, checked against ``choices`` (None passes) and
    ``minimum``; a refusal names the value that is wrong."""

    def parse(ctx, param, value):
        if value is None:
            return None
        items = []
        for text in (v.strip() for v in value.split(",")):
            try:
                item = kind(text) if text else None
            except ValueError:
                raise click.BadParameter(f"{text!r} in {value!r} is not {'an integer' if kind is int else 'valid'}") from None
            if item is not None and minimum is not None and item < minimum:
                raise click.BadParameter(f"{item} in {value!r} is not in the range x>={minimum}")
            items += [] if item is None else [item]
        bad = [v for v in items if choices is not None and v not in choices]
        if bad or not items:
            raise click.BadParameter(f"{', '.join(map(str, bad)) or 'nothing'} not in {', '.join(choices or [])}")
        return items

    return parse


@main.command()
@_train_options
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Sweep directory (one run each).")
@click.option("--levels", "--level", "levels", default=default(TrainConfig, "level"), show_default=True,
              callback=_csv(str, list(LEVELS)), help="Comma-separated levels.")
@click.option("--models", "--model", "models", default=default(TrainConfig, "model"), show_default=True,
              callback=_csv(str, list(MODELS)), help="Comma-separated heads.")
@click.option("--hidden", default=str(default(TrainConfig, "hidden")), show_default=True, callback=_csv(int, minimum=1),
              help="Comma-separated hidden sizes.")
@click.option("--layers", default=str(default(TrainConfig, "layers")), show_default=True, callback=_csv(int, minimum=1),
              help="Comma-separated depths.")
@click.option("--pool", default=default(TrainConfig, "pool"), show_default=True, callback=_csv(str, list(POOLS)),
              help="Comma-separated temporal poolings.")
@click.option("--modalities", default=None, callback=_csv(str, list(MODALITIES)),
              help="Comma-separated streams for the single-stream heads, e.g. rgb,flow (flow runs read "
                   "--flow-cache) [default: --modality].")
@click.option("--stream-fusion", default=default(TrainConfig, "stream_fusion"), show_default=True,
              callback=_csv(str, list(STREAM_FUSIONS)),
              help="twostream: comma-separated fusions of the top states (sum, product).")
@click.option("--caches", default=None, callback=_csv(str),
              help="Comma-separated caches of one dataset (backbones, views): the same grid on each, one table "
                   "with a column for the cache. Instead of --cache.")
def sweep(*, out, levels, models, hidden, layers, pool, modalities, stream_fusion, quiet, flow_cache, caches,
          **settings):
    """Train a grid of runs and write one comparison table.

    The grid runs on one cache, on RGB and flow caches, or on several caches; finished runs are skipped.
    The table is written to results.csv and results.md."""
    from pipeline.train.sweep import SweepAxes, run_sweep

    if caches and settings["cache"] is not None:
        raise click.UsageError("give either --cache or --caches")
    for cache in caches or ():
        _not_a_directory("--caches", cache)
    axes = SweepAxes(levels=tuple(levels), models=tuple(models), hiddens=tuple(hidden), layers=tuple(layers),
                     pools=tuple(pool), modalities=tuple(modalities or ()), stream_fusions=tuple(stream_fusion))
    with user_errors():
        base = _train_config({**settings, "cache": caches[0] if caches else settings["cache"], "out": out / "_",
                              "level": levels[0], "model": "rrn", "hidden": hidden[0], "layers": layers[0],
                              "pool": pool[0], "flow_cache": None})
        with interrupted(lambda: _runs_in(out)):
            run_sweep(base, out, axes, flow_cache=flow_cache, caches=caches, progress=not quiet, log=_log)
    click.echo((out / "results.md").read_text(), nl=False)
    click.echo(f"-> {out / 'results.csv'}, {out / 'results.md'}")


def _range(ctx, param, value):
    """A click callback turning 'LOW,HIGH' (or one number, which fixes the setting) into (low, high)."""
    if value is None:
        return None
    try:
        numbers = [float(v) for v in value.split(",")]
    except ValueError:
        raise click.BadParameter(f"{value!r} is not LOW,HIGH (two numbers) or one number") from None
    if len(numbers) not in (1, 2) or not all(math.isfinite(n) for n in numbers):
        raise click.BadParameter(f"{value!r} is not LOW,HIGH (two finite numbers) or one number")
    return (numbers[0], numbers[-1])


def _tune_space_options(f):
    """The search space of `tune`: choices (comma-separated) and ranges; defaults around the paper's values
    (pipeline/tune/space.py)."""
    from pipeline.tune import space

    def shown(values):
        return ",".join(map(str, values))

    options = [
        click.option("--models", default=shown(space.DEFAULT_MODELS), show_default=True, callback=_csv(str, list(MODELS)),
                     help="Heads to search (any of " + ", ".join(MODELS) + "; twostream needs --flow-cache)."),
        click.option("--hidden", "hiddens", default=shown(space.DEFAULT_HIDDENS), show_default=True,
                     callback=_csv(int, minimum=1), help="Hidden sizes to search."),
        click.option("--layers", default=shown(space.DEFAULT_LAYERS), show_default=True, callback=_csv(int, minimum=1),
                     help="Depths to search."),
        click.option("--lr-range", default=None, callback=_range, metavar="LOW,HIGH",
                     help="Learning rates, searched on a log scale [default: a tenth to 100 times the level's paper "
                          "rate: 1e-6,1e-3 for high, 1e-5,1e-2 for low and mid]. One number fixes it."),
        click.option("--dropout-range", default=shown(space.DEFAULT_DROPOUT_RANGE), show_default=True, callback=_range,
                     metavar="LOW,HIGH", help="Dropout before the per-step linear layer. One number fixes it."),
        click.option("--pool", "pools", default=shown(space.POOLS), show_default=True, callback=_csv(str, list(POOLS)),
                     help="Temporal poolings to search (heads that pool)."),
        click.option("--batch-size", "batch_sizes", default=shown(space.DEFAULT_BATCH_SIZES), show_default=True,
                     callback=_csv(int, minimum=1), help="Batch sizes to search."),
        click.option("--epochs", default=shown(space.DEFAULT_EPOCHS), show_default=True, callback=_csv(int, minimum=1),
                     help="Epoch counts to search (the rate drops 10x after two thirds of them, as the paper's 8 of 12)."),
        click.option("--train-views", default=None, callback=_csv(str, list(TRAIN_VIEWS)),
                     help="A cache with several views: training views to search [default: random,center]."),
        click.option("--test-views", default=None, callback=_csv(str, list(TEST_VIEWS)),
                     help="A cache with several views: test views to search [default: all,center]."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


@main.command()
@click.option("--cache", type=click.Path(path_type=Path), default=None, help="Feature cache (mrrn extract).")
@click.option("--caches", default=None, callback=_csv(str),
              help="Comma-separated caches of one dataset (backbones, views): a study each, into OUT/<cache name>/, "
                   "and a table of each one's chosen configuration. Instead of --cache.")
@click.option("--flow-cache", type=click.Path(path_type=Path), default=None,
              help="A flow cache beside the RGB --cache, for --models twostream.")
@click.option("--split", type=COUNT, default=default(TrainConfig, "split"), show_default=True,
              help="Split recorded in the cache.")
@click.option("--level", type=_choice(LEVELS), required=True, help="Feature level to train on.")
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Tune folder: one run directory per trial under trials/, trials.csv, results.md, plots, and the "
                   "study's journal file (without --storage).")
@click.option("--trials", type=COUNT, default=20, show_default=True,
              help="Trials this command runs (per cache); commands sharing a study add theirs up.")
@click.option("--workers", type=COUNT, default=1, show_default=True,
              help="Trials at once on this machine: one process each, one per GPU (round robin) or with its share "
                   "of the CPU cores; each reads the level once.")
@click.option("--storage", default=None, metavar="URL",
              help="Optuna storage: a journal file (also on a file system several machines share), sqlite:///FILE, "
                   "or postgresql://USER:PASSWORD@HOST:PORT/DATABASE [default: OUT/study.journal].")
@click.option("--study-name", default=None,
              help="The study's name [default: from the cache, level, space and fixed settings, so the same command "
                   "continues its study].")
@click.option("--pruner", type=_choice(("median", "hyperband", "none")), default="median", show_default=True,
              help="What stops hopeless trials, judged on each epoch's validation video top-1 (docs/tuning.md).")
@click.option("--val-fraction", type=FRACTION, default=0.2, show_default=True,
              help="Share of each class's training videos held out for validation: what trials are compared on "
                   "(the test split never is); must be > 0.")
@click.option("--timeout", type=POSITIVE, default=None, metavar="SECONDS",
              help="Start no trial after this many seconds (running trials finish).")
@_tune_space_options
@click.option("--modality", type=_choice(MODALITIES), default=default(TrainConfig, "modality"), show_default=True,
              help="The cache's modality (mrrn extract --modality).")
@click.option("--normalize/--no-normalize", default=default(TrainConfig, "normalize"), show_default=True,
              help="Standardise each feature dimension with training-set statistics (not in the paper).")
@click.option("--clip-length", "length", type=COUNT, default=default(ClipSpec, "length"), show_default=True)
@click.option("--clip-stride", "stride", type=COUNT, default=default(ClipSpec, "stride"), show_default=True)
@click.option("--max-clips", type=COUNT, default=default(ClipSpec, "max_clips"), show_default=True)
@click.option("--seed", type=int, default=default(TrainConfig, "seed"), show_default=True,
              help="Seeds every trial's training and, with the trial's number, what its sampler proposes.")
@click.option("--device", default=default(TrainConfig, "device"), show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--precision", type=_choice(TRAIN_PRECISIONS), default=default(TrainConfig, "precision"),
              show_default=True, help="Arithmetic of the projections (as `train --precision`).")
@click.option("--allow-missing", is_flag=True, default=default(TrainConfig, "allow_missing"),
              help="Train even if some split videos are not in the cache.")
@click.option("--max-memory", type=str, default=None, callback=_size_option, metavar="SIZE",
              help="Memory budget for the level's data per worker (e.g. 3G) [default: half the available memory].")
def tune(*, cache, caches, flow_cache, out, trials, workers, storage, study_name, pruner, timeout, models, hiddens,
         layers, lr_range, dropout_range, pools, batch_sizes, epochs, train_views, test_views, length, stride,
         max_clips, **settings):
    """Search training settings with Optuna, stopping hopeless trials early.

    Each trial is a run directory under OUT/trials/, scored on validation videos; killed or shared by
    several commands (--storage), the study goes on. Writes trials.csv, results.md and plots."""
    from pipeline.tune.run import TuneRequest, run_tune
    from pipeline.tune.space import SearchSpace, default_lr_range

    if bool(caches) == (cache is not None):
        raise click.UsageError("give either --cache or --caches")
    for path in [*(caches or [cache]), flow_cache]:
        _not_a_directory("--flow-cache" if path is flow_cache else "--cache", path)
    with user_errors():
        space = SearchSpace(models=tuple(models), hiddens=tuple(hiddens), layers=tuple(layers),
                            lr_range=lr_range or default_lr_range(settings["level"]), dropout_range=dropout_range,
                            pools=tuple(pools), batch_sizes=tuple(batch_sizes), epochs=tuple(epochs),
                            train_views=tuple(train_views or ()), test_views=tuple(test_views or ()))
        base = TrainConfig(cache=str(caches[0] if caches else cache), out=str(out),
                           clip=ClipSpec(length, stride, max_clips), **settings)
        request = TuneRequest(base=base, caches=tuple(str(c) for c in caches or [cache]), space=space, out=out,
                              trials=trials, workers=workers, storage=storage, study_name=study_name, pruner=pruner,
                              timeout=timeout, flow_cache=None if flow_cache is None else str(flow_cache))
        with interrupted(lambda: f"every finished trial is kept in the study, the trial that was running is queued "
                                 f"again; the tables so far are in {out / 'results.md'}"):
            run_tune(request, log=_log)
    click.echo((out / "results.md").read_text(), nl=False)
    click.echo(f"-> {out / 'trials.csv'}, {out / 'results.md'}")


@main.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Fuse directory.")
@click.option("--method", type=_choice(FUSION_METHODS), default=FUSION_METHODS[0], show_default=True)
@click.option("--weights", default=None,
              help="Fusion weights by level ('high=0.7,mid=0.2,low=0.1'), by modality ('rgb=1,flow=1.5') or both "
                   "('rgb:high=0.5,flow:high=0.5'); or one to three bare numbers for high, mid and low in that "
                   "order (eq. 10's), e.g. '0.7,0.3': a level without a number has no weight, and a run of that "
                   "level is refused [default: the paper's, "
                   f"{','.join(f'{k}={v:g}' for k, v in PAPER_FUSION_WEIGHTS.items())}].")
@click.option("--search", is_flag=True, help="Choose the weights on the runs' validation videos (--val-fraction).")
def fuse(runs, out, method, weights, search):
    """Fuse the video scores of several runs and write a summary and a report.

    By default the paper's weighted average of the levels (eq. 10); or --method sum or product."""
    from pipeline.evaluate.fuse import parse_weights, run_fuse, summary_markdown
    from pipeline.evaluate.layout import FusionFiles

    with user_errors():
        s = run_fuse(runs, out, method, parse_weights(weights), search)
        click.echo(summary_markdown(s), nl=False)
        report = _report(out)
    click.echo(f"-> {FusionFiles(out).table_file}" + (f", {report}" if report else ""))


def _report(directory: Path):
    """Write the report; without matplotlib say so and go on (the fusion itself is done)."""
    from pipeline.evaluate.report import ReportError, write_report

    try:
        return write_report(directory)
    except ReportError as err:
        _log(f"warning: no report: {err}")
        return None


@main.command()
@click.argument("directory", type=click.Path(path_type=Path))
def report(directory):
    """Write the report of a run or fusion directory.

    The confusion matrix, per-class accuracy and training curves as PNGs, and report.md."""
    from pipeline.evaluate.report import write_report

    with user_errors():
        path = write_report(directory)
    click.echo(f"-> {path}")


@main.command()
@click.argument("videos", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--runs", "run_dirs", multiple=True, required=True, type=click.Path(path_type=Path),
              help="Trained run directory; repeat for each level to fuse (e.g. --runs runs/low --runs runs/high).")
@click.option("--top", type=COUNT, default=5, show_default=True, help="How many classes to list per video.")
@click.option("--method", type=_choice(FUSION_METHODS), default=None,
              help="Fusion [default: weighted by level when the runs are one per level of one stream, else sum].")
@click.option("--backbone-weights", type=click.Path(path_type=Path), default=None,
              help="The local state_dict the cache was made with, when it was made with --backbone-weights PATH.")
@click.option("--device", default="auto", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON list of {video, top: [{class, probability}], error}.")
def predict(videos, run_dirs, top, method, backbone_weights, device, as_json):
    """Classify new videos with trained runs.

    The backbone is rebuilt exactly as the runs' cache was made."""
    from pipeline.predict import predict as run_predict

    with user_errors():
        results = run_predict(list(videos), list(run_dirs), top=top, method=method, backbone_file=backbone_weights,
                              device=device)
    if as_json:
        click.echo(json.dumps([{"video": r.video, "top": [{"class": c, "probability": round(p, 6)} for c, p in r.top],
                                "error": r.error} for r in results], indent=2))
    else:
        for r in results:
            if r.error:
                _log(f"Error: {r.video}: {r.error}")
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
    from pipeline.datasets.sample import write_sample_dataset

    with user_errors():
        s = write_sample_dataset(out, seed=seed)
    click.echo(
        f"wrote {s.videos} videos ({s.classes} classes, {s.train} train / {s.test} test, "
        f"{s.frames} frames) to {out}"
    )


REFERENCE_START = "<!-- cli-reference:start (generated by `python cli.py cli-reference --write docs/cli.md`) -->"
REFERENCE_END = "<!-- cli-reference:end -->"


def reference_markdown() -> str:
    """Every command's --help, as docs/cli.md's reference (a test keeps the two equal)."""
    from click.testing import CliRunner

    parts = [REFERENCE_START, ""]
    for name in ["", *sorted(n for n, c in main.commands.items() if not c.hidden)]:
        args = [name, "--help"] if name else ["--help"]
        text = CliRunner().invoke(main, args, prog_name="mrrn").output.rstrip()
        parts += [f"## `mrrn{' ' + name if name else ''}`", "", "```text", text, "```", ""]
    parts.append(REFERENCE_END)
    return "\n".join(parts)


@main.command("cli-reference", hidden=True)
@click.option("--write", type=click.Path(path_type=Path), default=None, help="Replace the reference in this file.")
def cli_reference(write):
    """Print (or write into docs/cli.md) the CLI reference."""
    text = reference_markdown()
    if write is None:
        click.echo(text)
        return
    doc = write.read_text()
    start, end = doc.index(REFERENCE_START), doc.index(REFERENCE_END) + len(REFERENCE_END)
    write.write_text(doc[:start] + text + doc[end:])


def run() -> None:
    """The program's entry point (`mrrn`, `python cli.py`): the command, then, when it succeeded, an exit
    that skips the interpreter's teardown once output is flushed. Every file is closed by then, and
    torch's teardown alone takes over a second, which a short extraction or training run would pay
    every time. A failure leaves the usual way, so that every clean-up handler runs."""
    status = 0
    try:
        main()
    except SystemExit as done:
        if done.code not in (None, 0, INTERRUPTED):  # after Ctrl-C the work is on disk and said: leave as fast
            raise
        status = done.code or 0
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


if __name__ == "__main__":
    run()
