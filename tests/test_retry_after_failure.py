"""A command that fails before doing anything leaves nothing behind that would refuse the corrected
command: no empty cache recorded with the failed settings, no empty run directory."""
from __future__ import annotations

from click.testing import CliRunner

from cli import main
from pipeline.cache.reader import FeatureCache
from tests.conftest import folder_dataset, write_video
from tests.test_extract import extract_args


def _offline(monkeypatch, tmp_path) -> None:
    """No ImageNet weights file in $TORCH_HOME, and every download refused at once."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    for var in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(var, raising=False)


def test_after_imagenet_weights_fail_offline_the_same_command_with_random_weights_succeeds(tmp_path, monkeypatch):
    _offline(monkeypatch, tmp_path)
    root = folder_dataset(tmp_path / "data", per_class=1)
    out = tmp_path / "c.h5"
    first = CliRunner().invoke(main, extract_args(root, out, "--backbone-weights", "imagenet"))
    assert first.exit_code == 1
    assert "cannot load torchvision's" in first.stderr and "--backbone-weights PATH" in first.stderr
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(out.name)]  # no cache, journal or lock
    again = CliRunner().invoke(main, extract_args(root, out))  # --backbone-weights random, nothing deleted by hand
    assert again.exit_code == 0, again.output
    with FeatureCache(out) as cache:
        assert len(cache.videos) == 2
        assert cache.identity.backbone_weights == "random:seed=0"


def test_after_every_video_failed_other_settings_are_accepted(tmp_path):
    root = tmp_path / "data"
    (root / "walk").mkdir(parents=True)
    (root / "walk" / "a.avi").write_bytes(b"")
    out = tmp_path / "c.h5"
    first = CliRunner().invoke(main, extract_args(root, out))
    assert first.exit_code == 1 and "every video failed to decode" in first.stderr
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(out.name)]
    write_video(root / "walk" / "a.avi", 12, seed=1)
    again = CliRunner().invoke(main, extract_args(root, out, "--crop", "48"))
    assert again.exit_code == 0, again.output
    with FeatureCache(out) as cache:
        assert [v.key for v in cache.videos] == ["walk/a.avi"]


def test_after_a_first_epoch_that_diverged_the_same_out_takes_a_lower_learning_rate(sample_cache, tmp_path):
    out = tmp_path / "run"
    args = ["train", "--cache", str(sample_cache), "--level", "high", "--hidden", "16", "--layers", "1",
            "--epochs", "1", "--normalize", "--quiet", "--out", str(out)]
    diverged = CliRunner().invoke(main, [*args, "--lr", "1e30"])
    assert diverged.exit_code == 1 and "the loss is not finite at epoch 1" in diverged.stderr
    again = CliRunner().invoke(main, [*args, "--lr", "1e-3"])  # nothing deleted by hand
    assert again.exit_code == 0, again.output
    assert (out / "summary.json").is_file()
