"""End-to-end CLI behaviour through click's CliRunner (and once as `python cli.py`)."""
from __future__ import annotations

import json
import subprocess
import sys

import click
from click.testing import CliRunner

from cli import main
from tests.conftest import REPO, touch, write_lines


def ucf_tree(tmp_path):
    root, splits = tmp_path / "videos", tmp_path / "splits"
    write_lines(splits / "classInd.txt", ["1 Walk", "2 Run"])
    write_lines(splits / "trainlist01.txt", ["Walk/a.avi 1", "Run/b.avi 2", "Run/c.avi 2"])
    write_lines(splits / "testlist01.txt", ["Walk/d.avi", "Run/e.avi"])
    touch(root, "Walk/a.avi", "Run/b.avi", "Run/c.avi", "Walk/d.avi", "Run/e.avi")
    return root, splits


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_index_json(tmp_path):
    root, splits = ucf_tree(tmp_path)
    result = run("index", "--dataset", "ucf101", "--root", root, "--splits", splits, "--split", 1, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {"dataset": "ucf101", "split": 1, "classes": 2,
                                         "train": {"listed": 3, "found": 3, "missing": 0},
                                         "test": {"listed": 2, "found": 2, "missing": 0}, "test_name": "test"}


def test_index_text_and_missing_warning(tmp_path):
    root, splits = ucf_tree(tmp_path)
    (root / "Run" / "e.avi").unlink()
    result = run("index", "--dataset", "ucf101", "--root", root, "--splits", splits)
    assert result.exit_code == 0
    assert result.stdout == ("ucf101 split 1: 2 classes; train: 3 videos listed, 3 found, 0 missing; "
                             "test: 2 videos listed, 1 found, 1 missing\n")
    assert "1 video(s) named by the split files are missing" in result.stderr
    assert "Run/e.avi" in result.stderr


def test_index_strict_fails_on_missing(tmp_path):
    root, splits = ucf_tree(tmp_path)
    (root / "Run" / "e.avi").unlink()
    result = run("index", "--dataset", "ucf101", "--root", root, "--splits", splits, "--strict")
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: 1 video(s) named by the split files are missing")


def test_index_malformed_file_is_a_one_line_error(tmp_path):
    root, splits = ucf_tree(tmp_path)
    write_lines(splits / "testlist01.txt", ["Walk/d.avi", "Swim/x.avi"])
    result = run("index", "--dataset", "ucf101", "--root", root, "--splits", splits)
    assert result.exit_code == 1
    assert result.stderr == f"Error: {splits / 'testlist01.txt'}:2: unknown class 'Swim' (not in the class index)\n"


def test_index_folder_dataset(tmp_path):
    touch(tmp_path, *(f"cls{c}/v{i}.avi" for c in range(3) for i in range(10)))
    result = run("index", "--dataset", "folder", "--root", tmp_path, "--test-fraction", 0.2, "--json")
    counts = json.loads(result.output)
    assert (counts["classes"], counts["train"], counts["test"]) == (3, {"listed": 24, "found": 24, "missing": 0},
                                                                    {"listed": 6, "found": 6, "missing": 0})


def test_sample_data_command_writes_an_indexable_dataset(tmp_path):
    result = run("sample-data", "--out", tmp_path / "s")
    assert result.exit_code == 0
    assert "wrote 80 videos (8 classes, 48 train / 32 test" in result.output
    index = run("index", "--dataset", "ucf101", "--root", tmp_path / "s" / "videos",
                "--splits", tmp_path / "s" / "ucfTrainTestlist", "--json", "--strict")
    counts = json.loads(index.output)
    assert (counts["classes"], counts["train"], counts["test"]) == (8, {"listed": 48, "found": 48, "missing": 0},
                                                                    {"listed": 32, "found": 32, "missing": 0})


def test_cli_runs_as_a_script():
    out = subprocess.run([sys.executable, "cli.py", "--help"], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0
    assert "index" in out.stdout and "sample-data" in out.stdout


def test_the_command_list_shows_each_summary_as_a_whole_sentence():
    text = run("--help").output
    listed = text[text.index("Commands:"):].splitlines()[1:]
    names = sorted(n for n, c in main.commands.items() if not c.hidden)
    assert [line.split()[0] for line in listed if line.strip()] == names
    for line in listed:
        if line.strip():
            assert line.rstrip().endswith(".") and not line.rstrip().endswith("..."), line
            assert "(eq." not in line and line.count("(") == line.count(")"), line


def test_cli_reference_matches_the_commands():
    from cli import reference_markdown

    doc = (REPO / "docs" / "cli.md").read_text()
    assert reference_markdown() in doc, "docs/cli.md is stale: python cli.py cli-reference --write docs/cli.md"


# option name -> (config class, field) where the two names differ
RENAMED = {"lr_step_epochs": ("TrainConfig", "lr_step_epochs"), "length": ("ClipSpec", "length"),
           "stride": ("ClipSpec", "stride"), "max_clips": ("ClipSpec", "max_clips"),
           "short_side": ("Preprocess", "short_side"), "crop": ("Preprocess", "crop"),
           "flow_method": ("FlowSpec", "method"), "flow_bound": ("FlowSpec", "bound"), "flow_size": ("FlowSpec", "size")}


def test_every_option_default_is_its_config_default():
    """The CLI repeats no default: each option that sets a configuration field has that field's default."""
    from pipeline import config

    owners = {"extract": [config.ExtractConfig], "train": [config.TrainConfig], "sweep": [config.TrainConfig]}
    checked = 0
    for command, classes in owners.items():
        for param in main.commands[command].params:
            if param.name in RENAMED:
                cls_name, field = RENAMED[param.name]
                cls = getattr(config, cls_name)
            else:
                cls, field = next(((c, param.name) for c in classes if param.name in c.__dataclass_fields__), (None, None))
            if cls is None or param.required or param.name == "workers":  # workers: cores / ranks, at run time
                continue
            want = config.default(cls, field)
            got = None if param.default is click.core.UNSET else param.default  # no default given: None
            if command == "sweep" and param.name in ("hidden", "layers", "pool"):  # comma-separated lists
                got = type(want)(got)
            if param.name == "cache":  # required by `train`; `sweep` takes it or --caches
                continue
            if field == "backbone_weights":  # shown in the help; None means "not given"
                assert got is None and f"[default: {want}]" in param.help
            elif field in ("short_side", "crop"):  # not given: the backbone weights' own preprocessing
                assert got is None and f"{want} for random or local weights" in param.help
            else:
                assert got == want, f"{command} --{param.name}: {got!r}, config says {want!r}"
            checked += 1
    assert checked >= 35


def test_a_bug_is_not_shown_as_a_user_error(tmp_path, monkeypatch):
    """Only the project's own errors become one-line messages; a bug keeps its traceback."""
    import pipeline.datasets.index

    def broken(*args, **kwargs):
        raise ValueError("operands could not be broadcast together")  # what a numpy bug raises

    monkeypatch.setattr(pipeline.datasets.index, "build_index", broken)
    result = run("index", "--dataset", "folder", "--root", tmp_path)
    assert isinstance(result.exception, ValueError) and "Error:" not in result.output
