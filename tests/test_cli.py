"""End-to-end CLI behaviour through click's CliRunner (and once as `python cli.py`)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from cli import main
from tests.conftest import touch, write_lines

REPO = Path(__file__).resolve().parents[1]


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
    assert json.loads(result.output) == {"classes": 2, "train": 3, "test": 2, "missing": 0}


def test_index_text_and_missing_warning(tmp_path):
    root, splits = ucf_tree(tmp_path)
    (root / "Run" / "e.avi").unlink()
    result = run("index", "--dataset", "ucf101", "--root", root, "--splits", splits)
    assert result.exit_code == 0
    assert "ucf101 split 1: 2 classes, 3 train, 1 test, 1 missing" in result.stdout
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
    assert json.loads(result.output) == {"classes": 3, "train": 24, "test": 6, "missing": 0}


def test_sample_data_command_writes_an_indexable_dataset(tmp_path):
    result = run("sample-data", "--out", tmp_path / "s")
    assert result.exit_code == 0
    assert "wrote 80 videos (8 classes, 48 train / 32 test" in result.output
    index = run("index", "--dataset", "ucf101", "--root", tmp_path / "s" / "videos",
                "--splits", tmp_path / "s" / "ucfTrainTestlist", "--json", "--strict")
    assert json.loads(index.output) == {"classes": 8, "train": 48, "test": 32, "missing": 0}


def test_cli_runs_as_a_script():
    out = subprocess.run([sys.executable, "cli.py", "--help"], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0
    assert "index" in out.stdout and "sample-data" in out.stdout


def test_readme_cli_reference_matches_the_commands():
    from cli import reference_markdown

    readme = (REPO / "README.md").read_text()
    assert reference_markdown() in readme, "README's CLI reference is stale: python cli.py cli-reference --write README.md"
