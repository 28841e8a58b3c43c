"""The split lists inside a cache are verified: no key in both train and test, none listed twice, each in the
video table or listed as missing or failed. `inspect --verify` names every violation, `train` refuses in one
line, and the same extraction run again writes the lists back from the split files."""
from __future__ import annotations

from click.testing import CliRunner

from cli import main
from pipeline.cache.reader import FeatureCache
from pipeline.cache.writer import CacheWriter
from pipeline.extract.run import run_extract
from tests.conftest import QUIET, folder_dataset, small_extract_config


def test_damaged_split_lists_are_named_by_verify_and_refused_by_train_until_extraction_rewrites_them(tmp_path):
    root = folder_dataset(tmp_path / "data", per_class=3)
    cache = tmp_path / "c.h5"
    cfg = small_extract_config(root, cache, test_fraction=0.34)
    run_extract(cfg, **QUIET)
    with FeatureCache(cache) as c:
        identity, (train, test) = c.identity, c.splits[1]
    damaged = {1: (train + (train[0], test[0]), test + ("jump/gone.avi",))}
    with CacheWriter(cache, identity, damaged) as writer:  # lists as other code might have written them
        writer.finish()

    verify = CliRunner().invoke(main, ["inspect", str(cache), "--verify"])
    assert verify.exit_code == 1
    assert [line for line in verify.stdout.splitlines() if line.startswith("problem")] == [
        f"problem     split 1: {test[0]!r} is in both train and test",
        f"problem     split 1 train: {train[0]!r} is listed 2 times",
        "problem     split 1 test: 'jump/gone.avi' is neither in the video table nor listed as missing or failed "
        "(an unfinished extraction: rerun the same `mrrn extract`)",
    ]
    args = ["train", "--cache", str(cache), "--level", "low", "--hidden", "16", "--layers", "1", "--epochs", "1",
            "--quiet", "--out", str(tmp_path / "run")]
    refused = CliRunner().invoke(main, args)
    assert refused.exit_code == 1
    assert refused.stderr == (f"Error: {cache}: damaged split lists (split 1: {test[0]!r} is in both train and test and "
                              "1 more); run the same `mrrn extract` again to write them from the split files\n")

    run_extract(cfg, **QUIET)  # the cause removed: the lists come from the split files again
    with FeatureCache(cache) as c:
        assert c.splits[1] == (train, test) and c.verify() == []
    assert CliRunner().invoke(main, args).exit_code == 0
