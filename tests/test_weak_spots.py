"""Weak spots a user meets: one line naming the file or option and the reason, and exit status 1, whatever
OpenCV or click would print on their own; split files named with their line; a warning for a dataset that
cannot teach anything; an out under a file named; an inspect that knows an extraction is running."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from pipeline.datasets.index import build_index, list_videos
from pipeline.datasets.splitfiles import SplitFileError
from tests.conftest import folder_dataset, one_line_error, REPO, run, touch, write_lines


def test_opencvs_own_warnings_never_reach_the_user(level_runs, tmp_path):
    garbage = tmp_path / "garbage.avi"
    garbage.write_bytes(b"garbage")
    done = subprocess.run([sys.executable, str(REPO / "cli.py"), "predict", str(garbage), "--runs",
                           str(level_runs["high"]), "--device", "cpu"], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 1
    assert done.stderr == f"Error: {garbage}: OpenCV cannot open it as a video (not a video, damaged header or " \
                          "unknown codec)\n"


@pytest.mark.parametrize("args, message", [
    (["train", "--batch-size", "0"], "Error: --batch-size: 0 is not in the range x>=1"),
    (["train", "--hidden", "0"], "Error: --hidden: 0 is not in the range x>=1"),
    (["train", "--val-fraction", "1.0"], "Error: --val-fraction: 1.0 is not in the range 0<=x<1"),
    (["train", "--nproc", "0"], "Error: --nproc: 0 is not in the range x>=1"),
    (["sweep", "--hidden", "16,abc"], "Error: --hidden: 'abc' in '16,abc' is not an integer"),
    (["sweep", "--layers", "2,0"], "Error: --layers: 0 in '2,0' is not in the range x>=1"),
    (["extract", "--batch-size", "0"], "Error: --batch-size: 0 is not in the range x>=1"),
])
def test_option_values_out_of_range_are_one_line_naming_the_value(args, message, tmp_path):
    command, rest = args[0], args[1:]
    needed = {"train": ["--cache", "c.h5", "--level", "high", "--out", tmp_path / "r"],
              "sweep": ["--cache", "c.h5", "--out", tmp_path / "s"],
              "extract": ["--dataset", "folder", "--root", tmp_path, "--out", tmp_path / "c.h5"]}[command]
    result = run(command, *rest, *needed)
    assert result.exit_code == 1 and result.stderr == message + "\n", result.output


@pytest.fixture()
def two_classes(tmp_path):
    root, splits = tmp_path / "videos", tmp_path / "splits"
    touch(root, "A/a1.avi", "A/a two.avi", "B/b1.avi")
    write_lines(splits / "classInd.txt", ["1 A", "2 B"])
    return root, splits


def test_split_files_numbered_from_zero_are_refused_by_name(two_classes):
    root, splits = two_classes
    write_lines(splits / "trainlist00.txt", ["A/a1.avi 1"])
    write_lines(splits / "testlist00.txt", ["B/b1.avi"])
    with pytest.raises(SplitFileError, match=r"trainlist00.txt: split numbers start at 1"):
        list_videos("ucf101", root, splits)


def test_unpadded_split_file_names_are_read(two_classes):
    root, splits = two_classes
    write_lines(splits / "trainlist1.txt", ["A/a1.avi 1"])
    write_lines(splits / "testlist1.txt", ["B/b1.avi"])
    index = build_index("ucf101", root, splits, 1)
    assert [e.key for e in index.train] == ["A/a1.avi"] and [e.key for e in index.test] == ["B/b1.avi"]
    assert list(list_videos("ucf101", root, splits).splits) == [1]
    write_lines(splits / "trainlist01.txt", ["A/a1.avi 1"])  # and both spellings at once: which one is meant?
    with pytest.raises(SplitFileError, match=r"trainlist1.txt: two files for split 1"):
        build_index("ucf101", root, splits, 1)


def test_names_with_spaces_and_negative_class_ids_name_the_file_and_line(two_classes):
    root, splits = two_classes
    write_lines(splits / "testlist01.txt", ["B/b1.avi"])
    write_lines(splits / "trainlist01.txt", ["A/a1.avi 1", "A/a two.avi 1"])
    assert [e.key for e in build_index("ucf101", root, splits, 1).train] == ["A/a1.avi", "A/a two.avi"]
    write_lines(splits / "trainlist01.txt", ["A/a1.avi 1", "A/a two.avi 2"])
    with pytest.raises(SplitFileError, match=r"trainlist01.txt:2: class id 2 contradicts the folder 'A'"):
        build_index("ucf101", root, splits, 1)
    write_lines(splits / "trainlist01.txt", ["A/a1.avi 1", "A/a two.avi -1"])
    with pytest.raises(SplitFileError, match=r"trainlist01.txt:2: class id -1 is not one of the class index's ids"):
        build_index("ucf101", root, splits, 1)


def test_a_dataset_of_one_class_warns(tmp_path):
    root = tmp_path / "videos"
    touch(root, "jump/a.avi", "jump/b.avi", "jump/c.avi")
    result = run("index", "--dataset", "folder", "--root", root)
    assert result.exit_code == 0
    assert "warning: the dataset has one class (jump)" in result.stderr


def test_an_out_under_a_file_names_the_file(sample_cache, level_runs, tmp_path):
    a_file = tmp_path / "a.h5"
    a_file.write_text("x")
    videos = folder_dataset(tmp_path / "videos", per_class=1)
    for command in (["extract", "--dataset", "folder", "--root", videos, "--backbone-weights", "random", "--quiet",
                     "--out", a_file / "b.h5"],
                    ["train", "--cache", sample_cache, "--level", "high", "--epochs", "1", "--quiet", "--out", a_file / "r"],
                    ["fuse", level_runs["low"], level_runs["high"], "--method", "sum", "--out", a_file / "f"]):
        one_line_error(run(*command), f"{command[-1]}: cannot write ({a_file} is a file, not a directory)")


def test_inspect_during_a_running_extraction_says_so(tmp_path):
    videos = folder_dataset(tmp_path / "videos", per_class=3)
    out = tmp_path / "c.h5"
    proc = subprocess.Popen([sys.executable, str(REPO / "cli.py"), "extract", "--dataset", "folder", "--root",
                             str(videos), "--out", str(out), "--backbone-weights", "random", "--short-side", "64",
                             "--crop", "64", "--batch-size", "4", "--workers", "0", "--quiet"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    journal = tmp_path / "c.h5.journal"
    deadline = time.time() + 120
    while not list(journal.glob("*.npz")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    assert proc.poll() is None, proc.communicate()
    os.kill(proc.pid, signal.SIGSTOP)  # at work, holding the cache's lock
    try:
        result = run("inspect", out)
        assert result.exit_code == 0, result.output
        assert "running     an extraction is writing this cache now" in result.output
        assert "rerun the same `mrrn extract`" not in result.output  # it is running: no need
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    assert proc.wait(timeout=300) == 0
    assert "an extraction is writing this cache now" not in run("inspect", out).output  # done: no longer said
