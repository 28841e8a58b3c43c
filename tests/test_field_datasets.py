"""The field's datasets: Kinetics (official CSVs), Something-Something v2 (official JSON files) and
MMAction2-style video lists, each from small annotation files written here with the quirks of the real
ones; `mrrn index` counts (listed, found, missing); malformed files refused in one line naming file:line;
and each format extracted and trained end to end with a video missing."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from pipeline.cache.reader import FeatureCache
from pipeline.datasets.index import MissingVideosError, SplitFileError, build_index, list_videos
from pipeline.extract.run import run_extract
from tests.conftest import QUIET, one_line_error, run, small_extract_config, touch, write_lines, write_video

TINY = ["--hidden", "16", "--layers", "1", "--epochs", "1", "--lr", "1e-3", "--normalize", "--quiet"]


def real_video(path, seed: int = 0):
    """12 frames of 80x60 (MJPG in .avi: what OpenCV writes everywhere)."""
    write_video(path.with_suffix(".avi"), 12, seed=seed)


def extract_and_train(root, splits, dataset, tmp_path):
    """`extract` into a cache, then `train --allow-missing` on it: (the cache, the run directory, train's result)."""
    cache = tmp_path / f"{dataset}.h5"
    run_extract(small_extract_config(root, cache, dataset=dataset, splits=splits), **QUIET)
    result = run("train", "--cache", cache, "--out", tmp_path / "run", "--level", "high", *TINY, "--allow-missing")
    assert result.exit_code == 0, result.output
    return cache, tmp_path / "run", result


def assert_scored(run_dir, result, found: int, listed: int):
    """The run scored the ``found`` test videos and says how many of the ``listed`` ones were missing."""
    over = f"over {found} of {listed} test videos ({listed - found} missing)"
    assert over in result.stdout
    computed_on = json.loads((run_dir / "summary.json").read_text())["computed_on"]
    assert (computed_on["test_videos"], computed_on["test_videos_listed"]) == (found, listed)
    assert computed_on["statement"].startswith(over)
    with np.load(run_dir / "scores_test.npz") as scores:
        assert scores["scores"].shape[0] == found and int(scores["videos_listed"]) == listed


# ----------------------------------------------------------------------------------------------
# Kinetics

K_HEADER = "label,youtube_id,time_start,time_end,split,is_cc"
K_TRAIN = [K_HEADER,
           '"air drumming",-0Bx3_dkFQ0,14,24,train,0',
           '"air drumming",Ab_-9xY,0,10,train,0',
           "abseiling,--07WQ2iBlw,1,11,train,0",
           "abseiling,_x_Y-z,5,15,train,1",
           '"eating, drinking",Zz9_q,30,40,train,0',
           '"eating, drinking",-Q,2,12,train,0']
K_VAL = [K_HEADER,
         '"air drumming",v-1_a,3,13,val,0',
         "abseiling,v-2_b,0,10,val,0",
         '"eating, drinking",-v3_c,7,17,val,0']
K_TEST = ["youtube_id,time_start,time_end,split", "t-1_x,0,10,test"]  # unlabelled: not a split
K_CLASSES = ("abseiling", "air drumming", "eating, drinking")
K_GONE = {"Ab_-9xY_000000_000010", "-v3_c_000007_000017"}  # one train clip, one val clip not on disk


def k_clips(rows):
    """(label, file stem) of each annotation row."""
    return [(label, f"{yt}_{int(start):06d}_{int(end):06d}") for label, yt, start, end, *_ in csv.reader(rows[1:])]


def flat(part, label, stem):
    return f"{part}/{stem}.mp4"


def class_folders(part, label, stem):
    """'air drumming' keeps its space, 'eating, drinking' has '_' for it."""
    return f"{part}/{label if label == 'air drumming' else label.replace(' ', '_')}/{stem}.mp4"


def kinetics_tree(tmp_path, place, make=touch):
    root, splits = tmp_path / "k400", tmp_path / "k400" / "annotations"
    write_lines(splits / "train.csv", K_TRAIN, eol="\n")
    write_lines(splits / "val.csv", K_VAL)
    write_lines(splits / "test.csv", K_TEST)
    for seed, (part, (label, stem)) in enumerate([("train", c) for c in k_clips(K_TRAIN)] +
                                                 [("val", c) for c in k_clips(K_VAL)]):
        if stem not in K_GONE:
            make(root, place(part, label, stem)) if make is touch else make(root / place(part, label, stem), seed)
    return root, splits


def test_kinetics_flat_layout_classes_keys_and_counts(tmp_path):
    root, splits = kinetics_tree(tmp_path, flat)
    (root / "val" / "v-2_b_000000_000010.mp4").rename(root / "val" / "v-2_b_000000_000010.mkv")  # youtube-dl's choice
    idx = build_index("kinetics", root, splits)
    assert idx.classes == K_CLASSES  # alphabetical over train and val
    assert [(e.key, e.label) for e in idx.test] == [("val/v-1_a_000003_000013.mp4", 1),
                                                    ("val/v-2_b_000000_000010.mkv", 0)]
    assert ("train/-0Bx3_dkFQ0_000014_000024.mp4", 1) in [(e.key, e.label) for e in idx.train]
    assert idx.missing == ("train/Ab_-9xY_000000_000010.mp4", "val/-v3_c_000007_000017.mp4")
    assert idx.listed[1] == ("val/v-1_a_000003_000013.mp4", "val/v-2_b_000000_000010.mkv", "val/-v3_c_000007_000017.mp4")
    result = run("index", "--dataset", "kinetics", "--root", root, "--splits", splits)
    assert result.exit_code == 0, result.output
    assert result.stdout == ("kinetics split 1: 3 classes; train: 6 videos listed, 5 found, 1 missing; "
                             "test (val): 3 videos listed, 2 found, 1 missing\n")
    assert "2 video(s) named by the split files are missing" in result.stderr
    counts = json.loads(run("index", "--dataset", "kinetics", "--root", root, "--splits", splits, "--json").stdout)
    assert counts == {"dataset": "kinetics", "split": 1, "classes": 3, "train": {"listed": 6, "found": 5, "missing": 1},
                      "test": {"listed": 3, "found": 2, "missing": 1}, "test_name": "val"}


def test_kinetics_class_folders_with_spaces_kept_or_replaced(tmp_path):
    root, splits = kinetics_tree(tmp_path, class_folders)
    idx = build_index("kinetics", root, splits)
    keys = [e.key for e in idx.train]
    assert "train/air drumming/-0Bx3_dkFQ0_000014_000024.mp4" in keys
    assert "train/eating,_drinking/Zz9_q_000030_000040.mp4" in keys and "train/abseiling/--07WQ2iBlw_000001_000011.mp4" in keys
    assert idx.missing == ("train/Ab_-9xY_000000_000010.mp4", "val/-v3_c_000007_000017.mp4")  # the flat layout's keys
    result = run("index", "--dataset", "kinetics", "--root", root, "--splits", splits, "--json")
    assert json.loads(result.stdout)["train"] == {"listed": 6, "found": 5, "missing": 1}
    assert json.loads(result.stdout)["test"] == {"listed": 3, "found": 2, "missing": 1}
    with pytest.raises(MissingVideosError, match=r"2 video\(s\)"):
        build_index("kinetics", root, splits, strict=True)


def test_kinetics_has_one_split_and_no_test_csv_videos(tmp_path):
    root, splits = kinetics_tree(tmp_path, flat)
    one_line_error(run("index", "--dataset", "kinetics", "--root", root, "--splits", splits, "--split", 2),
                   "kinetics has one split, split 1 (train.csv against val.csv); there is no split 2")
    videos = list_videos("kinetics", root, splits)
    assert len(videos.videos) == 7 and not any("t-1_x" in e.key for e in videos.videos)
    assert videos.splits == {1: build_index("kinetics", root, splits).listed}
    (splits / "val.csv").rename(splits / "validate.csv")  # an older release's name
    assert build_index("kinetics", root, splits).summary()["test"] == 2
    write_lines(splits / "val.csv", K_VAL)
    with pytest.raises(SplitFileError, match="two val annotation files, val.csv and validate.csv"):
        build_index("kinetics", root, splits)


@pytest.mark.parametrize("name, rows, line, message", [
    ("train.csv", K_TRAIN[:2] + ['"air drumming",Ab_-9xY,0,x,train,0'], 3, "bad time_end 'x': expected whole seconds"),
    ("train.csv", K_TRAIN[:2] + ["abseiling,Ab_-9xY,10,10,train,0"], 3, "time_start 10 is not before time_end 10"),
    ("train.csv", K_TRAIN[:2] + ["abseiling,Ab_-9xY,0,10,val,0"], 3, "split 'val' in a train file: expected train"),
    ("train.csv", K_TRAIN[:3] + ["abseiling,Ab_-9xY,0,10,train,0"], 4, "clip Ab_-9xY 0-10 is listed twice (first line 3)"),
    ("val.csv", K_VAL[:2] + ["abseiling,-0Bx3_dkFQ0,14,24,validate,0"], 3,
     "clip -0Bx3_dkFQ0 14-24 is listed twice (first train.csv:2)"),
    ("train.csv", K_TRAIN[:2] + ["abseiling,Ab_-9xY,0,10"], 3, "4 fields, the header has 6"),
    ("train.csv", K_TRAIN[:2] + ["abseiling,Ab/9xY,0,10,train,0"], 3, "bad youtube_id 'Ab/9xY'"),
    ("train.csv", K_TRAIN[:2] + ['"air drumming,Ab_-9xY,0,10,train,0'], 3, "bad CSV line"),
    ("train.csv", ["label,youtube_id,time_start,split", K_TRAIN[1]], 1, "bad header"),
])
def test_kinetics_bad_rows_name_file_and_line(tmp_path, name, rows, line, message):
    root, splits = kinetics_tree(tmp_path, flat)
    write_lines(splits / name, rows)
    result = run("index", "--dataset", "kinetics", "--root", root, "--splits", splits)
    one_line_error(result, f"{splits / name}:{line}: ", message)


# ----------------------------------------------------------------------------------------------
# Something-Something v2

SSV2_LABELS = {"Approaching something with your camera": "0", "Holding something next to something": "1",
               "Pushing something from left to right": "2"}
HOLD, PUSH, APPROACH = ("Holding [something] next to [something]", "Pushing [something] from left to right",
                        "Approaching [something] with your camera")
SSV2_TRAIN = [(101, HOLD), (102, HOLD), (103, PUSH), (104, PUSH), (105, APPROACH), (106, APPROACH)]
SSV2_VALIDATION = [(201, HOLD), (202, PUSH), (203, APPROACH)]


def ssv2_entries(videos):
    return [{"id": str(i), "label": t.replace("[something]", "a cup").lower(), "template": t, "placeholders": ["a cup"]}
            for i, t in videos]


def ssv2_tree(tmp_path, make=touch):
    """The download's file names (something-something-v2-*.json); 102 is not on disk, 201 is an .mp4."""
    root, splits = tmp_path / "20bn-something-something-v2", tmp_path / "annotations"
    splits.mkdir()
    for name, value in (("labels", SSV2_LABELS), ("train", ssv2_entries(SSV2_TRAIN)),
                        ("validation", ssv2_entries(SSV2_VALIDATION))):
        (splits / f"something-something-v2-{name}.json").write_text(json.dumps(value, indent=1))
    for seed, (i, _) in enumerate(SSV2_TRAIN + SSV2_VALIDATION):
        name = f"{i}.mp4" if i == 201 else f"{i}.webm"
        if i != 102:
            make(root, name) if make is touch else make(root / name, seed)
    return root, splits


def test_ssv2_classes_in_label_order_keys_and_counts(tmp_path):
    root, splits = ssv2_tree(tmp_path)
    idx = build_index("ssv2", root, splits)
    assert idx.classes == tuple(SSV2_LABELS)
    assert [(e.key, e.label) for e in idx.test] == [("201.mp4", 1), ("202.webm", 2), ("203.webm", 0)]
    assert idx.missing == ("102.webm",) and "102.webm" in idx.listed[0]
    result = run("index", "--dataset", "ssv2", "--root", root, "--splits", splits)
    assert result.stdout == ("ssv2 split 1: 3 classes; train: 6 videos listed, 5 found, 1 missing; "
                             "test (validation): 3 videos listed, 3 found, 0 missing\n")


def _write_json(splits, name, text):
    (splits / f"something-something-v2-{name}.json").write_text(text)


@pytest.mark.parametrize("name, value, message", [
    ("train", ssv2_entries(SSV2_TRAIN[:2]) + [{"id": "9", "template": "Dropping [something]"}],
     "train.json: entry 2: template 'Dropping [something]' is not in labels.json"),
    ("train", ssv2_entries(SSV2_TRAIN[:3] + SSV2_TRAIN[1:2]), "train.json: entry 3: id '102' is listed twice (first entry 1)"),
    ("validation", ssv2_entries(SSV2_VALIDATION + SSV2_TRAIN[:1]),
     "validation.json: entry 3: id '101' is listed twice (first something-something-v2-train.json entry 0)"),
    ("validation", ssv2_entries(SSV2_VALIDATION[:1]) + ["203"], "validation.json: entry 1: expected an object"),
    ("labels", {**SSV2_LABELS, "Dropping something": "4"}, "labels.json: indexes must be 0..3 without gaps"),
])
def test_ssv2_bad_entries_are_one_line_errors(tmp_path, name, value, message):
    root, splits = ssv2_tree(tmp_path)
    _write_json(splits, name, json.dumps(value))
    one_line_error(run("index", "--dataset", "ssv2", "--root", root, "--splits", splits), message)


def test_ssv2_bad_json_names_line_and_column_and_plain_names_work(tmp_path):
    root, splits = ssv2_tree(tmp_path)
    _write_json(splits, "train", '[\n {"id": "101",\n  "template": "x" "y"}\n]')
    one_line_error(run("index", "--dataset", "ssv2", "--root", root, "--splits", splits),
                   f"{splits / 'something-something-v2-train.json'}:3: bad JSON at column 19: Expecting ',' delimiter")
    _write_json(splits, "labels", '{"Holding something next to something": "0", "Holding something next to something": "1"}')
    one_line_error(run("index", "--dataset", "ssv2", "--root", root, "--splits", splits), "is a key twice")
    for name in ("labels", "train", "validation"):
        (splits / f"something-something-v2-{name}.json").unlink()
    (splits / "labels.json").write_text(json.dumps(SSV2_LABELS))
    (splits / "train.json").write_text(json.dumps(ssv2_entries(SSV2_TRAIN)))
    (splits / "validation.json").write_text(json.dumps(ssv2_entries(SSV2_VALIDATION)))
    assert build_index("ssv2", root, splits).summary() == {"classes": 3, "train": 5, "test": 3, "missing": 1}


# ----------------------------------------------------------------------------------------------
# Video lists

MM_TRAIN = ["jump/a.mp4 0", "jump/b.mp4 0", "walk/c.mp4 1", "walk/d.mp4 1"]
MM_VAL = ["jump/e.mp4 0", "walk/f.mp4 1", "walk/g.mp4 1"]  # walk/g.mp4 is not on disk


def mmaction_tree(tmp_path):
    root, splits = tmp_path / "videos", tmp_path / "lists"
    write_lines(splits / "kinetics400_train_list_videos.txt", MM_TRAIN, eol="\n")
    write_lines(splits / "kinetics400_val_list_videos.txt", MM_VAL, eol="\n")
    write_lines(splits / "label_map_k400.txt", ["jump", "walk"], eol="\n")
    touch(root, *(line.split()[0] for line in MM_TRAIN + MM_VAL[:2]))
    return root, splits


def test_mmaction_lists_with_a_label_map(tmp_path):
    root, splits = mmaction_tree(tmp_path)
    idx = build_index("list", root, splits)
    assert idx.classes == ("jump", "walk") and idx.missing == ("walk/g.mp4",)
    assert [(e.key, e.label) for e in idx.test] == [("jump/e.mp4", 0), ("walk/f.mp4", 1)]
    result = run("index", "--dataset", "list", "--root", root, "--splits", splits)
    assert result.stdout == ("list split 1: 2 classes; train: 4 videos listed, 4 found, 0 missing; "
                             "test (val): 3 videos listed, 2 found, 1 missing\n")


def test_csv_lists_with_spaces_and_commas_in_paths_and_no_class_file(tmp_path):
    root, splits = tmp_path / "videos", tmp_path / "lists"
    write_lines(splits / "train.csv", ["path,label", '"walk/my clip, 2.mp4",1', "jump/a.mp4,0", r"jump\b.mp4,0"])
    write_lines(splits / "test.csv", ["jump/e.mp4,0", "walk/f.mp4,2"])
    touch(root, "walk/my clip, 2.mp4", "jump/a.mp4", "jump/b.mp4", "jump/e.mp4")
    idx = build_index("list", root, splits)
    assert idx.classes == ("0", "1", "2") and idx.test_name == "test"  # no class file: the labels up to the largest
    assert [(e.key, e.label) for e in idx.train] == [("walk/my clip, 2.mp4", 1), ("jump/a.mp4", 0), ("jump/b.mp4", 0)]
    assert idx.counts() == {"train": {"listed": 3, "found": 3, "missing": 0}, "test": {"listed": 2, "found": 1, "missing": 1}}


@pytest.mark.parametrize("lines, line, message", [
    (MM_TRAIN[:1] + ["jump/b.mp4 0 1"], 2, "a multi-label line (2 labels, 0 1): each video takes one label"),
    (MM_TRAIN[:1] + ["jump/b.mp4 x"], 2, "bad label 'x': expected a non-negative integer"),
    (MM_TRAIN[:1] + ["jump/my clip.mp4 1"], 2, "bad line 'jump/my clip.mp4 1'"),
    (MM_TRAIN[:1] + ["../b.mp4 1"], 2, "bad path '../b.mp4'"),
    (MM_TRAIN[:1] + ["jump/b.mp4 2"], 2, "label 2 is beyond the 2 classes of label_map_k400.txt (labels 0 to 1)"),
    (MM_TRAIN + MM_TRAIN[1:2], 5, "duplicate entry 'jump/b.mp4' (first on line 2)"),
])
def test_bad_list_lines_name_file_and_line(tmp_path, lines, line, message):
    root, splits = mmaction_tree(tmp_path)
    write_lines(splits / "kinetics400_train_list_videos.txt", lines)
    one_line_error(run("index", "--dataset", "list", "--root", root, "--splits", splits),
                   f"{splits / 'kinetics400_train_list_videos.txt'}:{line}: {message}")


def test_list_files_that_cannot_be_told_apart_are_refused(tmp_path):
    root, splits = mmaction_tree(tmp_path)
    write_lines(splits / "val.txt", MM_VAL)
    one_line_error(run("index", "--dataset", "list", "--root", root, "--splits", splits),
                   "2 test files (kinetics400_val_list_videos.txt, val.txt); keep one")
    (splits / "val.txt").unlink()
    write_lines(splits / "label_map_k400.txt", ["jump", "", "walk"])
    one_line_error(run("index", "--dataset", "list", "--root", root, "--splits", splits),
                   "label_map_k400.txt:2: blank line between class names")
    write_lines(splits / "kinetics400_val_list_videos.txt", ["jump/a.mp4 0"])
    (splits / "label_map_k400.txt").unlink()
    one_line_error(run("index", "--dataset", "list", "--root", root, "--splits", splits),
                   "kinetics400_val_list_videos.txt:1: 'jump/a.mp4' is also in the training list "
                   "(kinetics400_train_list_videos.txt:1)")


# ----------------------------------------------------------------------------------------------
# End to end: extract, then train --allow-missing, with a video missing


def test_kinetics_extracts_and_trains_without_its_missing_videos(tmp_path):
    root, splits = kinetics_tree(tmp_path, class_folders, make=real_video)
    cache, run_dir, result = extract_and_train(root, splits, "kinetics", tmp_path)
    with FeatureCache(cache) as c:
        assert c.classes == K_CLASSES and len(c.videos) == 7 and c.missing == ("train/Ab_-9xY_000000_000010.mp4",
                                                                                 "val/-v3_c_000007_000017.mp4")
        assert "val/air drumming/v-1_a_000003_000013.avi" in c.splits[1][1] and len(c.splits[1][0]) == 6
    assert_scored(run_dir, result, found=2, listed=3)


def test_ssv2_extracts_and_trains_without_its_missing_videos(tmp_path):
    root, splits = ssv2_tree(tmp_path, make=real_video)
    (splits / "something-something-v2-validation.json").write_text(json.dumps(ssv2_entries(SSV2_VALIDATION +
                                                                                            [(204, HOLD)])))
    cache, run_dir, result = extract_and_train(root, splits, "ssv2", tmp_path)
    with FeatureCache(cache) as c:
        assert c.classes == tuple(SSV2_LABELS) and c.missing == ("102.webm", "204.webm")
    assert_scored(run_dir, result, found=3, listed=4)


def test_video_lists_extract_and_train_without_their_missing_videos(tmp_path):
    root, splits = tmp_path / "videos", tmp_path / "lists"
    train = ["jump/a.avi,0", "jump/b.avi,0", "walk/my c.avi,1", "walk/d.avi,1"]
    val = ["jump/e.avi,0", "walk/f.avi,1", "walk/g.avi,1"]
    write_lines(splits / "train.csv", train)
    write_lines(splits / "val.csv", val)
    for seed, line in enumerate(train + val[:2]):
        real_video(root / line.split(",")[0], seed)
    cache, run_dir, result = extract_and_train(root, splits, "list", tmp_path)
    with FeatureCache(cache) as c:
        assert c.classes == ("0", "1") and c.missing == ("walk/g.avi",) and len(c.videos) == 6
    assert_scored(run_dir, result, found=2, listed=3)
