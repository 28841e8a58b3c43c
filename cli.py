"""mrrn command line: thin click commands, each building its inputs and calling one pipeline function."""
from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

import click

from pipeline import __version__
from pipeline import datasets

DATASET_CHOICE = click.Choice(datasets.DATASETS)


@contextlib.contextmanager
def user_errors():
    """Turn the pipeline's input errors into a one-line ``Error: ...`` and exit status 1."""
    try:
        yield
    except (datasets.SplitFileError, datasets.MissingVideosError, FileNotFoundError, ValueError) as err:
        raise click.ClickException(str(err)) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
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
    default=datasets.DEFAULT_TEST_FRACTION,
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


if __name__ == "__main__":
    sys.exit(main())
