"""Local weights files (--backbone-weights PATH): a fine-tuned model's state_dict with another classifier
works, since the classifier is never used for features; anything else is one line naming the file."""
from __future__ import annotations

import pytest
import torch
import torchvision
from click.testing import CliRunner

from cli import main
from pipeline.extract.backbone import FeatureExtractor, WeightsError, load_backbone
from tests.conftest import folder_dataset, seeded_resnet, torchvision_levels


def test_a_fine_tuned_state_dict_with_another_classifier_gives_the_trunks_features(tmp_path):
    model = seeded_resnet(5)
    model.fc = torch.nn.Linear(512, 10)  # fine-tuned on 10 classes
    path = tmp_path / "finetuned.pth"
    torch.save(model.state_dict(), path)
    x = torch.randn(2, 3, 64, 64)
    features = FeatureExtractor(load_backbone(str(path)), torch.device("cpu"))(x)
    reference = torchvision_levels(seeded_resnet(5), x)  # the same trunk with ImageNet's 1000-class head
    for level in ("low", "mid", "high"):
        torch.testing.assert_close(features[level], reference[level], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("content, message", [
    (["a", "list"], "not a state_dict (a dict of named tensors, as model.state_dict() gives); got list"),
    ({"epoch": 3, "note": "no tensors"}, "not a state_dict"),
    ("text", "not a state_dict"),
])
def test_a_file_that_is_not_a_state_dict_is_one_clear_line(tmp_path, content, message):
    path = tmp_path / "weights.pth"
    torch.save(content, path)
    with pytest.raises(WeightsError, match=f"weights.pth: {message[:16]}") as err:
        load_backbone(str(path))
    assert message in str(err.value) and "\n" not in str(err.value)


class _Model(torch.nn.Module):
    """A whole model saved with torch.save: torch refuses to load it as plain data, in many lines."""


def test_unloadable_files_and_other_shapes_are_one_line(tmp_path):
    pickled = tmp_path / "pickled.pth"
    torch.save(_Model(), pickled)
    wide = tmp_path / "wide.pth"
    torch.save(torchvision.models.resnet50().state_dict(), wide)  # same names, other shapes
    videos = folder_dataset(tmp_path / "videos", per_class=1)
    for path, message in ((pickled, "cannot read a state_dict"), (wide, "not a torchvision resnet34 state_dict")):
        result = CliRunner().invoke(main, ["extract", "--dataset", "folder", "--root", str(videos), "--out",
                                           str(tmp_path / f"{path.stem}.h5"), "--backbone-weights", str(path),
                                           "--short-side", "64", "--crop", "64", "--quiet"])
        lines = result.stderr.strip().splitlines()
        assert result.exit_code == 1 and len(lines) == 1, result.output
        assert lines[0].startswith(f"Error: {path}: {message}"), lines[0]


def test_predict_checks_its_weights_path_like_extract(level_runs, sample_dir, tmp_path):
    video = sample_dir / "videos" / "Stripes" / "v_Stripes_g01_c01.avi"
    for path in (tmp_path / "absent.pth", tmp_path):
        result = CliRunner().invoke(main, ["predict", str(video), "--runs", str(level_runs["high"]),
                                           "--backbone-weights", str(path)])
        assert result.exit_code == 1, result.output
        assert result.stderr == f"Error: {path}: weights file not found (--backbone-weights names the state_dict file " \
                                "the runs' cache was made with)\n"
