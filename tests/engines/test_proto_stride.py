"""Segment heads with finer prototypes (``yolov8-seg-proto2.yaml``: stride 2 instead of YOLOv8's 4):
the model, its start from a stride-4 checkpoint, training, mask post-processing and export."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from engines.checkpoint import load_checkpoint, save_checkpoint
from engines.checkpoint.meta import ModelMeta
from engines.errors import ConfigError
from engines.nn import SegmentationModel, resolve_model_cfg
from engines.ops.crops import mask_crops, paste_crops
from engines.ops.masks import process_masks_native
from engines.train.weights import transfer_weights
from tests.engines.proto_checks import assert_onnx_runtime_matches, backward_on_a_stroke, seeded_pair

NAMES = ("a", "b")


@pytest.fixture(scope="module")
def models() -> tuple[SegmentationModel, SegmentationModel]:
    """A stride-4 model with trained-looking BatchNorm statistics, and a stride-2 one seeded from it."""
    coarse, fine, n, total = seeded_pair("yolov8n-seg.yaml", "yolov8n-seg-proto2.yaml")
    assert n == len(coarse.state_dict()) and total == n + 8  # all but upsample2 (2) and refine (6)
    return coarse, fine


def test_a_stride4_checkpoint_loads_and_predicts_the_same_at_twice_the_resolution(models):
    coarse, fine = models
    assert (coarse.proto_stride, fine.proto_stride) == (4, 2)
    x = torch.rand(2, 3, 96, 64)
    with torch.no_grad():
        (pc, qc), (pf, qf) = coarse(x), fine(x)
    assert qf.shape == (2, 32, 48, 32) and torch.equal(pc, pf)
    # The new step starts as bilinear upsampling (all but the outermost row and column, which see padding)
    # plus a faint refine: close, but live.
    want = F.interpolate(qc, scale_factor=2, mode="bilinear", align_corners=False)[..., 1:-1, 1:-1]
    err = (qf[..., 1:-1, 1:-1] - want).abs()
    assert 0 < err.mean() < 0.1 * want.abs().mean()


def test_meta_reads_the_stride_from_the_model_yaml(models):
    coarse, fine = models
    assert ModelMeta(names=NAMES, model_yaml=fine.yaml, imgsz=64, stride=32).proto_stride == 2
    assert ModelMeta(names=NAMES, model_yaml=coarse.yaml, imgsz=64, stride=32).proto_stride == 4
    assert ModelMeta(names=NAMES, model_yaml={}, imgsz=64, stride=32).proto_stride == 4


@pytest.mark.parametrize("stride", [3, 8, True])
def test_other_strides_are_refused_naming_the_row(stride):
    d = resolve_model_cfg("yolov8n-seg.yaml")
    d["head"][-1][3] = ["nc", 32, 256, stride]
    with pytest.raises(ConfigError, match=r"head\[\d+\].*prototype stride .*must be 4 or 2"):
        SegmentationModel(d, nc=2)


@pytest.mark.parametrize("ratio", [1, 2, 4])
def test_training_reaches_the_new_layers_at_any_mask_ratio(models, ratio):
    _, fine = models
    net, items = backward_on_a_stroke(fine, ratio)
    assert torch.isfinite(items).all() and items[1] > 0
    assert net.head.proto.refine.bn.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("frame", [(50, 40), (40, 50), (32, 32)])
def test_frame_crops_agree_with_native_masks_at_stride2(frame):
    g = torch.Generator().manual_seed(1)
    protos = torch.randn(32, 16, 16, generator=g)  # a 32x32 input at stride 2
    coeffs = torch.randn(5, 32, generator=g)
    h, w = frame
    boxes = torch.tensor([[0.0, 0.0, w, h], [3.2, 4.5, 20.1, 30.7], [w - 9.5, h - 7.2, w + 3.0, h + 1.0],
                          [10.0, 10.0, 10.5, 11.0], [-4.0, 2.0, 6.0, 9.0]])
    native = process_masks_native(protos, coeffs, boxes, frame, stride=2)
    crops = paste_crops(mask_crops(protos, coeffs, boxes, frame, stride=2), frame)
    assert torch.equal(native, crops)
    # And they are the stride-2 reading: the stride-4 one upsamples a 16x16 map as if the input were 64x64.
    assert not torch.equal(native, process_masks_native(protos, coeffs, boxes, frame, stride=4)) or frame == (32, 32)


def test_onnx_export_runs_in_onnx_runtime_with_half_resolution_prototypes(models, tmp_path: Path):
    assert_onnx_runtime_matches(models[1], NAMES, tmp_path)


def test_a_trained_model_seeded_into_finer_prototypes_predicts_the_same_objects(tmp_path: Path):
    """End to end through SegModel (letterbox, NMS, both mask routes): before any training, the stride-2
    copy of a trained stride-4 model (the Ultralytics-trained fixture, on the three real images it was
    trained on) finds the same objects with nearly the same masks."""
    from engines.predict import PredictConfig, SegModel
    from tests.engines.test_cuda_paths import CKPT, IMGSZ, fixture_images

    ckpt = load_checkpoint(CKPT)
    fine = SegmentationModel("yolov8n-seg-proto2.yaml", nc=len(ckpt.meta.names))
    transfer_weights(fine, ckpt.state_dict)
    meta = ModelMeta(names=ckpt.meta.names, model_yaml=fine.yaml, imgsz=IMGSZ, stride=32)
    fine_pt = save_checkpoint(tmp_path / "fine.pt", state_dict=fine.state_dict(), meta=meta)
    coarse, seeded = SegModel(CKPT), SegModel(fine_pt)
    for retina in (False, True):
        cfg = PredictConfig(imgsz=IMGSZ, retina_masks=retina)
        found = 0
        for image in fixture_images():
            a, b = (m.predict_arrays([image], cfg)[0] for m in (coarse, seeded))
            found += len(a.boxes)
            assert torch.equal(a.class_ids, b.class_ids)
            assert torch.allclose(a.boxes, b.boxes, atol=1e-3)
            inter = (a.masks & b.masks).flatten(1).sum(1)
            union = (a.masks | b.masks).flatten(1).sum(1)
            assert (inter / union).mean() > 0.85
        assert found >= 8
