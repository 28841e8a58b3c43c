"""Dataset indexes: each format from small files written here, each malformed-file error, missing videos."""
from __future__ import annotations

import pytest

from pipeline.datasets.index import (
    MissingVideosError,
    SplitFileError,
    build_index,
    index_folder,
    index_hmdb51,
    index_ucf101,
    read_class_index,
)
from tests.conftest import touch, write_lines

UCF_CLASSES = ["1 ApplyEyeMakeup", "2 Archery", "3 HandstandPushups"]
UCF_TRAIN = [
    "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1",
    "Archery/v_Archery_g08_c01.avi 2",
    "HandstandPushups/v_HandStandPushups_g08_c01.avi 3",
    "HandstandPushups/v_HandStandPushups_g09_c01.avi 3",
]
UCF_TEST = [
    "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi",
    "Archery/v_Archery_g01_c01.avi",
]


@pytest.fixture
def ucf(tmp_path):
    root, splits = tmp_path / "UCF-101", tmp_path / "ucfTrainTestlist"
    write_lines(splits / "classInd.txt", UCF_CLASSES)
    write_lines(splits / "trainlist01.txt", UCF_TRAIN)
    write_lines(splits / "testlist01.txt", UCF_TEST)
    touch(root, *(line.split()[0] for line in UCF_TRAIN + UCF_TEST))
    return root, splits


def test_ucf101_crlf_lists_give_keys_zero_based_labels_and_paths(ucf):
    root, splits = ucf
    idx = index_ucf101(root, splits, 1)
    assert idx.classes == ("ApplyEyeMakeup", "Archery", "HandstandPushups")
    assert [(e.key, e.label) for e in idx.train] == [
        ("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi", 0),
        ("Archery/v_Archery_g08_c01.avi", 1),
        ("HandstandPushups/v_HandStandPushups_g08_c01.avi", 2),
        ("HandstandPushups/v_HandStandPushups_g09_c01.avi", 2),
    ]
    # the test list carries no labels: they come from the class folder via classInd
    assert [(e.key, e.label) for e in idx.test] == [
        ("ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi", 0),
        ("Archery/v_Archery_g01_c01.avi", 1),
    ]
    assert idx.train[0].path == root / "ApplyEyeMakeup" / "v_ApplyEyeMakeup_g08_c01.avi"
    assert idx.summary() == {"classes": 3, "train": 4, "test": 2, "missing": 0}


def test_ucf101_tolerates_bom_trailing_spaces_blank_lines_and_lf(ucf, tmp_path):
    root, splits = ucf
    write_lines(splits / "classInd.txt", ["\ufeff1 ApplyEyeMakeup  ", "2 Archery", "", "3 HandstandPushups", ""])
    write_lines(splits / "trainlist01.txt", [line + " " for line in UCF_TRAIN] + ["", "  "], eol="\n")
    idx = index_ucf101(root, splits, 1)
    assert idx.summary() == {"classes": 3, "train": 4, "test": 2, "missing": 0}


def test_ucf101_missing_videos_are_reported_not_dropped_silently(ucf):
    root, splits = ucf
    (root / "Archery" / "v_Archery_g08_c01.avi").unlink()
    (root / "Archery" / "v_Archery_g01_c01.avi").unlink()
    idx = index_ucf101(root, splits, 1)
    assert idx.missing == ("Archery/v_Archery_g08_c01.avi", "Archery/v_Archery_g01_c01.avi")
    assert idx.summary() == {"classes": 3, "train": 3, "test": 1, "missing": 2}
    with pytest.raises(MissingVideosError, match=r"2 video\(s\).*Archery/v_Archery_g08_c01.avi"):
        index_ucf101(root, splits, 1, strict=True)


@pytest.mark.parametrize(
    "train_lines, line_no, message",
    [
        (UCF_TRAIN[:1] + ["Bowling/v_Bowling_g01_c01.avi 2"], 2, "unknown class 'Bowling'"),
        (UCF_TRAIN[:1] + ["Archery/v_Archery_g08_c01.avi 2 extra"], 2, "bad line"),
        (UCF_TRAIN[:1] + ["v_Archery_g08_c01.avi 2"], 2, "<Class>/<video>"),
        (UCF_TRAIN[:1] + ["Archery/v_Archery_g08_c01.avi two"], 2, "bad class id 'two'"),
        (UCF_TRAIN[:1] + ["Archery/v_Archery_g08_c01.avi 3"], 2, "contradicts the folder 'Archery'"),
        (UCF_TRAIN + [UCF_TRAIN[1]], 5, "duplicate entry 'Archery/v_Archery_g08_c01.avi' (first on line 2)"),
    ],
)
def test_ucf101_malformed_train_list_names_file_and_line(ucf, train_lines, line_no, message):
    root, splits = ucf
    write_lines(splits / "trainlist01.txt", train_lines)
    with pytest.raises(SplitFileError) as err:
        index_ucf101(root, splits, 1)
    assert str(err.value).startswith(f"{splits / 'trainlist01.txt'}:{line_no}: ")
    assert message in str(err.value)


def test_ucf101_video_in_both_train_and_test_is_refused(ucf):
    root, splits = ucf
    write_lines(splits / "testlist01.txt", UCF_TEST + ["Archery/v_Archery_g08_c01.avi"])
    with pytest.raises(SplitFileError) as err:
        index_ucf101(root, splits, 1)
    assert str(err.value) == (
        f"{splits / 'testlist01.txt'}:3: 'Archery/v_Archery_g08_c01.avi' is also in the training list "
        "(trainlist01.txt:2)"
    )


@pytest.mark.parametrize(
    "lines, message",
    [
        (["1 ApplyEyeMakeup", "1 Archery"], ":2: duplicate class id 1"),
        (["1 ApplyEyeMakeup", "2 ApplyEyeMakeup"], ":2: duplicate class name 'ApplyEyeMakeup'"),
        (["1 ApplyEyeMakeup", "Archery"], ":2: bad line 'Archery'"),
        (["1 ApplyEyeMakeup", "3 Archery"], ": class ids must be 1..2 without gaps"),
        ([], ": no classes"),
    ],
)
def test_class_index_errors(tmp_path, lines, message):
    path = write_lines(tmp_path / "classInd.txt", lines)
    with pytest.raises(SplitFileError, match=message):
        read_class_index(path)


def test_ucf101_missing_split_file_names_it(ucf):
    root, splits = ucf
    with pytest.raises(SplitFileError, match=r"trainlist02.txt: file not found"):
        index_ucf101(root, splits, 2)


def test_ucf101_needs_a_split_folder(ucf):
    root, _ = ucf
    with pytest.raises(ValueError, match="needs its split folder"):
        build_index("ucf101", root, None, 1)


# ----------------------------------------------------------------------------------------------
# HMDB-51


def hmdb_tree(tmp_path, files: dict[str, list[str]]):
    root, splits = tmp_path / "hmdb51", tmp_path / "testTrainMulti_7030_splits"
    for name, lines in files.items():
        write_lines(splits / name, lines, eol="\n")
        cls = name.split("_test_split")[0]
        touch(root, *(f"{cls}/{line.split()[0]}" for line in lines if line.split()))
    return root, splits


def test_hmdb51_per_class_files_with_trailing_spaces(tmp_path):
    root, splits = hmdb_tree(
        tmp_path,
        {
            "kick_ball_test_split1.txt": ["a_kick_ball_f.avi 1 ", "b_kick_ball_f.avi 2 ", "c_kick_ball_f.avi 0 "],
            "kick_test_split1.txt": ["a_kick_f.avi 2 ", "b_kick_f.avi 1 "],
            "brush_hair_test_split1.txt": ["a_brush.avi 1 "],
            "brush_hair_test_split2.txt": ["a_brush.avi 2 "],  # another split: ignored for split 1
        },
    )
    idx = index_hmdb51(root, splits, 1)
    assert idx.classes == ("brush_hair", "kick", "kick_ball")  # plain sort of the class names
    assert [(e.key, e.label) for e in idx.train] == [
        ("brush_hair/a_brush.avi", 0),
        ("kick/b_kick_f.avi", 1),
        ("kick_ball/a_kick_ball_f.avi", 2),
    ]
    assert [(e.key, e.label) for e in idx.test] == [("kick/a_kick_f.avi", 1), ("kick_ball/b_kick_ball_f.avi", 2)]
    assert idx.summary() == {"classes": 3, "train": 3, "test": 2, "missing": 0}
    assert [e.key for e in index_hmdb51(root, splits, 2).test] == ["brush_hair/a_brush.avi"]


@pytest.mark.parametrize(
    "lines, line_no, message",
    [
        (["a.avi 1 ", "b.avi 3 "], 2, "bad line 'b.avi 3'"),
        (["a.avi 1 ", "b.avi"], 2, "bad line 'b.avi'"),
        (["a.avi 1 ", "sub/b.avi 1"], 2, "bad line"),
        (["a.avi 1 ", "b.avi 1 ", "a.avi 2 "], 3, "duplicate entry 'a.avi' (first on line 1)"),
    ],
)
def test_hmdb51_malformed_file_names_file_and_line(tmp_path, lines, line_no, message):
    root, splits = hmdb_tree(tmp_path, {"clap_test_split1.txt": ["x.avi 1 "]})
    write_lines(splits / "wave_test_split1.txt", lines, eol="\n")
    with pytest.raises(SplitFileError) as err:
        index_hmdb51(root, splits, 1)
    assert str(err.value).startswith(f"{splits / 'wave_test_split1.txt'}:{line_no}: ")
    assert message in str(err.value)


def test_hmdb51_no_files_for_the_split(tmp_path):
    root, splits = hmdb_tree(tmp_path, {"clap_test_split1.txt": ["x.avi 1 "]})
    with pytest.raises(SplitFileError, match="no HMDB-51 split files named <class>_test_split3.txt"):
        index_hmdb51(root, splits, 3)


def test_hmdb51_missing_videos(tmp_path):
    root, splits = hmdb_tree(tmp_path, {"clap_test_split1.txt": ["x.avi 1 ", "y.avi 2 ", "z.avi 0 "]})
    (root / "clap" / "y.avi").unlink()
    (root / "clap" / "z.avi").unlink()  # unused in this split: not missing
    idx = index_hmdb51(root, splits, 1)
    assert idx.missing == ("clap/y.avi",)
    assert idx.summary()["test"] == 0
    with pytest.raises(MissingVideosError, match="clap/y.avi"):
        index_hmdb51(root, splits, 1, strict=True)


# ----------------------------------------------------------------------------------------------
# Plain class folders


def folder_tree(tmp_path, counts: dict[str, int]):
    root = tmp_path / "mine"
    for cls, n in counts.items():
        touch(root, *(f"{cls}/clip{i:03d}.mp4" for i in range(n)))
    touch(root, "walk/notes.txt", ".hidden/clip.mp4")
    (root / "empty").mkdir()
    return root


def test_folder_hash_split_is_deterministic_per_class_and_respects_the_fraction(tmp_path):
    root = folder_tree(tmp_path, {"walk": 10, "run": 7, "jump": 2, "sit": 1})
    idx = index_folder(root, test_fraction=0.3)
    assert idx.classes == ("jump", "run", "sit", "walk")  # sorted; no empty, hidden or non-video folders
    test_per_class = {c: sum(e.label == i for e in idx.test) for i, c in enumerate(idx.classes)}
    assert test_per_class == {"jump": 1, "run": 2, "sit": 0, "walk": 3}
    assert len(idx.train) + len(idx.test) == 20
    assert all(not e.key.endswith(".txt") for e in idx.train + idx.test)
    again = index_folder(root, test_fraction=0.3)
    assert again.test == idx.test and again.train == idx.train
    # the choice depends on the keys alone, not on other classes or directory order
    smaller = index_folder(folder_tree(tmp_path / "b", {"walk": 10}), test_fraction=0.3)
    assert [e.key for e in smaller.test] == [e.key for e in idx.test if e.key.startswith("walk/")]


def test_folder_test_fraction_zero_and_invalid(tmp_path):
    root = folder_tree(tmp_path, {"walk": 4})
    assert index_folder(root, test_fraction=0.0).summary() == {"classes": 1, "train": 4, "test": 0, "missing": 0}
    with pytest.raises(ValueError, match=r"test fraction must be in \[0, 1\)"):
        index_folder(root, test_fraction=1.0)


def test_folder_with_ucf_format_split_folder(tmp_path):
    root = folder_tree(tmp_path, {"walk": 3, "run": 3})
    splits = tmp_path / "splits"
    write_lines(splits / "trainlist01.txt", ["run/clip000.mp4", "walk/clip000.mp4 2", "walk/clip001.mp4"])
    write_lines(splits / "testlist01.txt", ["run/clip001.mp4", "walk/clip009.mp4"])
    idx = build_index("folder", root, splits, 1)
    assert idx.classes == ("run", "walk")  # no classInd.txt: sorted class folders
    assert [(e.key, e.label) for e in idx.train] == [
        ("run/clip000.mp4", 0),
        ("walk/clip000.mp4", 1),
        ("walk/clip001.mp4", 1),
    ]
    assert idx.missing == ("walk/clip009.mp4",)


def test_folder_root_must_exist_and_hold_videos(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset root not found"):
        index_folder(tmp_path / "nope")
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no class folders with videos"):
        index_folder(tmp_path / "empty")


# ----------------------------------------------------------------------------------------------
# Hostile file trees and split lines


def test_a_symlink_loop_is_absent_like_a_dangling_link(ucf, tmp_path):
    root, splits = ucf
    loop = root / "Archery" / "loop.avi"
    loop.symlink_to(loop.name)  # loop.avi -> loop.avi: ELOOP when followed
    assert index_ucf101(root, splits, 1).summary()["missing"] == 0  # not named by a split file: unseen
    write_lines(splits / "testlist01.txt", UCF_TEST + ["Archery/loop.avi"])
    assert index_ucf101(root, splits, 1).missing == ("Archery/loop.avi",)  # named: reported missing
    folder = tmp_path / "folder"
    touch(folder, "walk/a.avi", "walk/b.avi", "run/c.avi", "run/d.avi")
    (folder / "walk" / "loop.avi").symlink_to("loop.avi")
    idx = index_folder(folder)
    assert sorted(e.key for e in idx.train + idx.test) == ["run/c.avi", "run/d.avi", "walk/a.avi", "walk/b.avi"]


@pytest.mark.parametrize("line", ["Archery/./v_Archery_g08_c01.avi", "ApplyEyeMakeup/../Archery/v_Archery_g08_c01.avi",
                                  "Archery//v_Archery_g08_c01.avi", "Archery/.."])
def test_keys_with_dot_or_empty_components_are_refused_with_file_and_line(ucf, line):
    root, splits = ucf
    write_lines(splits / "testlist01.txt", UCF_TEST + [line])
    with pytest.raises(SplitFileError, match=r"testlist01.txt:3: bad line .*without '.', '..' or empty path"):
        index_ucf101(root, splits, 1)


def test_one_file_under_two_keys_is_refused_with_file_and_line(ucf):
    root, splits = ucf
    (root / "Archery" / "v_Archery_g01_c01.avi").unlink()
    (root / "Archery" / "v_Archery_g01_c01.avi").symlink_to("v_Archery_g08_c01.avi")  # a test key reaching a train video
    with pytest.raises(SplitFileError, match=r"testlist01.txt:2: 'Archery/v_Archery_g01_c01.avi' is the same file as "
                                             r"'Archery/v_Archery_g08_c01.avi' \(trainlist01.txt:2\)"):
        index_ucf101(root, splits, 1)


@pytest.mark.parametrize("bad", ["²", "١", "+2"])
def test_a_class_id_that_is_not_plain_digits_names_the_line(ucf, bad):
    root, splits = ucf
    write_lines(splits / "trainlist01.txt", UCF_TRAIN[:1] + [f"Archery/v_Archery_g08_c01.avi {bad}"])
    with pytest.raises(SplitFileError, match=r"trainlist01.txt:2: bad class id"):
        index_ucf101(root, splits, 1)
    write_lines(splits / "classInd.txt", ["1 ApplyEyeMakeup", f"{bad} Archery", "3 HandstandPushups"])
    with pytest.raises(SplitFileError, match=r"classInd.txt:2: bad line"):
        index_ucf101(root, splits, 1)
