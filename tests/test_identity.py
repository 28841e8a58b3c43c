"""CacheIdentity: the one typed record of how a cache was made: JSON both ways with old files' defaults,
differences worded field by field, what the backbone saw, and the format documentation kept complete."""
from __future__ import annotations

import dataclasses
import json

import pytest

from pipeline.config import FlowSpec, Preprocess
from pipeline.cache.identity import STREAM_FIELDS, CacheIdentity, IdentityError
from tests.conftest import REPO, make_identity


def test_json_round_trip_for_rgb_and_flow_caches():
    for identity in (make_identity(), make_identity(modality="flow", flow=FlowSpec(method="tvl1", bound=15.0, size=128))):
        assert CacheIdentity.from_json(identity.to_json()) == identity
        assert CacheIdentity.from_json(identity.canonical()) == identity
        assert json.loads(identity.canonical()) == identity.to_json()
    assert "flow" not in make_identity().to_json()  # RGB caches store no flow settings


def test_files_from_before_the_motion_stream_read_as_rgb():
    stored = {k: v for k, v in make_identity().to_json().items() if k != "modality"}
    assert CacheIdentity.from_json(stored).modality == "rgb"
    assert CacheIdentity.from_json(stored) == make_identity()


def test_differences_are_worded_field_by_field():
    a = make_identity()
    b = dataclasses.replace(a, backbone_weights="random:seed=1", preprocess=Preprocess(short_side=64, crop=48),
                            classes=("a", "c"))
    assert a.diff(b) == ("classes: cache 2 classes, this run 2 classes (others); preprocess.crop: cache 64, this run 48; "
                         "weights: cache random:seed=0, this run random:seed=1")
    assert a.diff(b, "shard", "cache").startswith("classes: shard 2 classes, cache 2 classes (others)")
    assert a.diff(a) == ""


def test_rgb_and_flow_caches_of_one_backbone_are_two_streams_of_one_source():
    rgb, flow = make_identity(), make_identity(modality="flow", flow=FlowSpec())
    assert rgb.differing_fields(flow) == ["flow.bound", "flow.method", "flow.size", "modality"]
    assert rgb.differing_fields(flow, ignore=STREAM_FIELDS) == []
    assert rgb.without_stream() == flow.without_stream()
    assert rgb.without_stream() != dataclasses.replace(flow, backbone_weights="random:seed=2").without_stream()


def test_frame_source_is_what_the_backbone_saw():
    flow = FlowSpec(size=64)
    assert make_identity().frame_source() == (Preprocess(short_side=64, crop=64), None)
    assert make_identity(modality="flow", flow=flow).frame_source().flow == flow
    assert make_identity().level_widths == {"low": 128, "mid": 256, "high": 512}


def test_describe_says_how_the_features_were_made():
    lines = make_identity(modality="flow", flow=FlowSpec(size=64)).describe()
    assert lines[0] == "dataset     folder, 2 classes, modality flow"
    assert lines[1] == "backbone    resnet34, weights random:seed=0, precision fp32"
    assert lines[3] == "flow        farneback, bound 20 px, computed at a shorter side of 64 px"


@pytest.mark.parametrize("damaged", ["not json", "{}", '{"backbone": "resnet34"}', "[1, 2]"])
def test_a_damaged_identity_is_one_clear_error(damaged):
    with pytest.raises(IdentityError, match="not a cache identity"):
        CacheIdentity.from_json(damaged)


def test_the_format_documentation_lists_every_field():
    doc = (REPO / "docs" / "cache-format.md").read_text()
    flow = make_identity(modality="flow", flow=FlowSpec())
    for key in flow.to_json():
        assert f"| `{key}` |" in doc, f"docs/cache-format.md lacks the config key {key!r}"


@pytest.mark.parametrize("resize", ["bilinear-antialias-uint8", "bilinear-antialias-float-rounded",
                                    "bicubic-antialias-uint8", "bicubic-antialias-float-rounded"])
def test_every_resize_a_cache_may_hold_reads_back_as_written(resize):
    stored = make_identity().to_json()
    stored["preprocess"]["resize"] = resize
    identity = CacheIdentity.from_json(json.dumps(stored))
    assert identity.to_json() == stored and CacheIdentity.from_json(identity.canonical()) == identity
    with pytest.raises(IdentityError, match="not a cache identity"):
        CacheIdentity.from_json({**stored, "preprocess": {**stored["preprocess"], "resize": "nearest-antialias-uint8"}})
