"""Prototypes fed by the backbone's fine maps (``yolov8-seg-proto2-skip.yaml``: Segment inputs finer than
P3 feed only the prototype branch): the model, its start from other checkpoints, training and export."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engines.errors import ConfigError
from engines.nn import SegmentationModel, resolve_model_cfg
from tests.engines.proto_checks import assert_onnx_runtime_matches, backward_on_a_stroke, seeded_pair

NAMES = ("a", "b")


@pytest.fixture(scope="module")
def models() -> tuple[SegmentationModel, SegmentationModel]:
    """A proto2 model with trained-looking weights in the new step, and a skip model seeded from it."""
    plain, skip, n, total = seeded_pair("yolov8n-seg-proto2.yaml", "yolov8n-seg-proto2-skip.yaml", scales=True)
    assert n == len(plain.state_dict()) and total == n + 12  # all but skip4 and skip2 (conv + 5 BN tensors each)
    return plain, skip


def test_detection_reads_p3_to_p5_and_the_skips_reach_only_the_prototypes(models):
    _, skip = models
    head = skip.head
    assert head.nl == 3 and head.strides == (8.0, 16.0, 32.0) and skip.proto_stride == 2
    assert head.proto.skip_strides == (4, 2)
    assert head.proto.skip4.conv.in_channels == 32 and head.proto.skip2.conv.in_channels == 32 + 16


def test_new_skips_start_faint_so_seeded_weights_predict_nearly_as_before(models):
    plain, skip = models
    x = torch.rand(2, 3, 96, 64)
    with torch.no_grad():
        (pa, qa), (pb, qb) = plain(x), skip(x)
    assert qb.shape == (2, 32, 48, 32) and torch.equal(pa, pb)
    err = (qa - qb).abs()
    assert 0 < err.mean() < 0.1 * qa.abs().mean()


@pytest.mark.parametrize("rows, match", [
    ([15, 18, 21, 0], "at stride 4 or 2 .2 only for prototype stride 2"),  # stride-2 skip, stride-4 prototypes
    ([15, 18, 21, 0, 2], "coarsest first, one per stride"),
    ([15, 18, 21, 2, 1], "coarsest first, one per stride"),
])
def test_bad_skip_inputs_are_refused_naming_the_row(rows, match):
    d = resolve_model_cfg("yolov8n-seg.yaml")
    d["head"][-1][0] = rows
    with pytest.raises(ConfigError, match=r"head\[\d+\].*" + match):
        SegmentationModel(d, nc=2)


def test_a_stride4_skip_alone_works_with_yolov8_prototypes():
    d = resolve_model_cfg("yolov8n-seg.yaml")
    d["head"][-1][0] = [15, 18, 21, 2]
    net = SegmentationModel(d, nc=2).eval()
    with torch.no_grad():
        _, proto = net(torch.rand(1, 3, 64, 96))
    assert net.proto_stride == 4 and proto.shape == (1, 32, 16, 24)


def test_training_reaches_both_skips(models):
    net, items = backward_on_a_stroke(models[1])
    proto = net.head.proto
    assert torch.isfinite(items).all() and items[1] > 0
    for branch in (proto.skip4, proto.skip2, proto.refine):  # started faint, not closed: their convs learn too
        assert branch.bn.weight.grad.abs().sum() > 0 and branch.conv.weight.grad.abs().sum() > 0


def test_onnx_export_runs_in_onnx_runtime(models, tmp_path: Path):
    assert_onnx_runtime_matches(models[1], NAMES, tmp_path)
