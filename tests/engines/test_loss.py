"""YOLOv8-seg loss: closed-form pieces, a reference computed by Ultralytics, gradients."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from engines.train.boxes import bbox_ciou, crop_mask
from engines.train.loss import LossGains, SegLoss, dfl_loss, mask_loss, mask_loss_in_boxes, pad_targets

REF = Path(__file__).parent / "fixtures" / "train" / "loss_ref.npz"


@pytest.mark.parametrize(("b1", "b2", "expect"), [
    ((0, 0, 4, 4), (0, 0, 4, 4), 1.0),
    # IoU 4/28; centres 2*sqrt(2) apart, enclosing diagonal² 72; same aspect (v = 0).
    ((0, 0, 4, 4), (2, 2, 6, 6), 1 / 7 - 8 / 72),
    # IoU 4/12; centre distance² 2, diagonal² 32; aspects 2:1 vs 1:2.
    ((0, 0, 4, 2), (0, 0, 2, 4), None),
    # Disjoint: IoU 0, only the distance term; centres 10 apart, diagonal² 12² + 2².
    ((0, 0, 2, 2), (10, 0, 12, 2), -100 / 148),
])
def test_ciou_closed_form(b1, b2, expect):
    if expect is None:
        v = 4 / math.pi**2 * (math.atan(0.5) - math.atan(2.0)) ** 2
        expect = 1 / 3 - (2 / 32 + v * v / (1 - 1 / 3 + v))
    got = bbox_ciou(torch.tensor(b1, dtype=torch.float64), torch.tensor(b2, dtype=torch.float64))
    assert float(got) == pytest.approx(expect, abs=1e-6)


def test_dfl_on_known_distributions():
    # Uniform over 16 bins: -log(1/16) whatever the target.
    assert torch.allclose(dfl_loss(torch.zeros(3, 16), torch.tensor([0.0, 3.3, 14.5])), torch.full((3,), math.log(16)))
    # Known probabilities: target 3.3 splits 0.7 / 0.3 between bins 3 and 4.
    p = torch.full((16,), 0.02)
    p[3], p[4] = 0.5, 0.22
    got = dfl_loss(p.log()[None], torch.tensor([3.3]))
    assert float(got) == pytest.approx(-(0.7 * math.log(0.5) + 0.3 * math.log(0.22)), rel=1e-5)
    # Targets past the last bin are clamped to 14.99 (bins 14 and 15).
    big = dfl_loss(p.log()[None], torch.tensor([40.0]))
    assert float(big) == pytest.approx(-(0.01 * math.log(0.02) + 0.99 * math.log(0.02)), rel=1e-5)


def test_mask_loss_perfect_prediction_is_zero_and_chance_is_log2():
    gt = torch.zeros(2, 8, 8)
    gt[0, 1:5, 2:6] = 1
    gt[1, 4:8, 0:3] = 1
    boxes = torch.tensor([[2.0, 1.0, 6.0, 5.0], [0.0, 4.0, 3.0, 8.0]])  # xyxy, mask pixels
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) / 64
    proto = (gt * 2 - 1)  # one prototype per instance: +1 on the object, -1 elsewhere
    perfect = mask_loss(gt, torch.eye(2) * 100, proto, boxes, area)
    assert float(perfect) == pytest.approx(0.0, abs=1e-12)
    # Zero logits: BCE log 2 on every pixel; the crop mean / box area is log 2 per instance.
    chance = mask_loss(gt, torch.zeros(2, 2), proto, boxes, area)
    assert float(chance) == pytest.approx(2 * math.log(2), rel=1e-6)
    # Pixels outside the box do not count: predicting garbage there changes nothing.
    noisy = proto.clone()
    noisy[0, 6:, 6:] = 5.0
    assert float(mask_loss(gt, torch.eye(2) * 100, noisy, boxes, area)) == pytest.approx(0.0, abs=1e-12)


def test_dice_term_counts_the_objects_own_pixels():
    """A 1 px stroke in a 16x16 box: drawing nothing costs the whole Dice term, a perfect mask none of
    it, p = 0.5 everywhere the closed form; and SegLoss adds it to the seg item only."""
    gt = torch.zeros(1, 16, 16)
    gt[0, 8, :] = 1
    boxes, area = torch.tensor([[0.0, 0.0, 16.0, 16.0]]), torch.tensor([1.0])
    proto = (gt * 2 - 1)
    empty = mask_loss(gt, torch.tensor([[-100.0]]), proto.abs(), boxes, area)  # every pixel says no
    with_dice = mask_loss(gt, torch.tensor([[-100.0]]), proto.abs(), boxes, area, dice=2.0)
    assert float(with_dice - empty) == pytest.approx(2 * (1 - 1 / 17), rel=1e-6)  # 16 object pixels
    perfect = mask_loss(gt, torch.tensor([[100.0]]), proto, boxes, area, dice=1.0)
    assert float(perfect) == pytest.approx(0.0, abs=1e-9)
    half = mask_loss(gt, torch.zeros(1, 1), proto, boxes, area, dice=1.0)
    assert float(half) == pytest.approx(math.log(2) + 1 - (2 * 8 + 1) / (128 + 16 + 1), rel=1e-6)
    out, batch, _ = _ref_inputs()
    _, plain = SegLoss(nc=3, strides=[8.0, 16.0, 32.0])(out, batch)
    _, diced = SegLoss(nc=3, strides=[8.0, 16.0, 32.0], gains=LossGains(dice=1.0))(out, batch)
    assert diced[1] > plain[1] and torch.equal(diced[[0, 2, 3]], plain[[0, 2, 3]])


def _whole_map_loss(masks, inst, img, coeffs, proto, boxes, area, dice=0.0):
    """mask_loss image by image on the prototypes upsampled to the mask grid: the reference for
    mask_loss_in_boxes."""
    proto = torch.nn.functional.interpolate(proto, masks.shape[-2:], mode="bilinear", align_corners=False)
    return sum(mask_loss(masks[inst[img == i]].to(proto.dtype), coeffs[img == i], proto[i], boxes[img == i],
                         area[img == i], dice) for i in img.unique().tolist())


@pytest.mark.parametrize("dice", [0.0, 1.5])
@pytest.mark.parametrize("ratio", [4, 2, 1, 0.5])
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_mask_loss_in_boxes_equals_the_whole_map_loss_and_its_gradients(device, ratio, dice):
    """Against resampling the prototypes to the mask grid (masks 4x and 2x finer than the prototypes,
    as fine, 2x coarser) and the whole-map loss: the same value and gradients, for boxes of many sizes."""
    g = torch.Generator().manual_seed(0)
    h, w, nm = 72, 96, 8
    masks = (torch.rand(5, h, w, generator=g) > 0.5).to(torch.uint8)
    # Sides from 1 px to the whole map (several padded sizes), fractional and out-of-frame edges, and a
    # box wholly outside the map (no pixels: contributes nothing).
    gt_boxes = torch.tensor([[3.2, 4.7, 20.5, 30.0], [-2.0, 10.3, 12.0, 71.9], [30.1, 0.0, 101.0, 39.99],
                             [0.0, 0.0, 96.0, 72.0], [40.5, 50.2, 41.1, 51.0]])
    inst = torch.tensor([2, 0, 2, 1, 0, 2, 3, 4, 4, 1, 3])  # positives share gts, out of order
    img = torch.tensor([1, 0, 1, 0, 0, 1, 2, 2, 2, 0, 2])  # each gt lives in one image
    boxes, area = gt_boxes[inst], torch.rand(len(inst), generator=g) * 0.3 + 0.05
    boxes[inst == 4] = torch.tensor([100.0, 80.0, 120.0, 90.0])
    coeffs = torch.randn(len(inst), nm, generator=g, dtype=torch.float64).to(device).requires_grad_()
    proto = torch.randn(3, nm, int(h / ratio), int(w / ratio), generator=g, dtype=torch.float64).to(device).requires_grad_()
    masks, inst, img, boxes, area = (t.to(device) for t in (masks, inst, img, boxes, area))
    want = _whole_map_loss(masks, inst, img, coeffs, proto, boxes, area, dice)
    gc, gp = torch.autograd.grad(want, (coeffs, proto))
    got = mask_loss_in_boxes(masks, inst, img, coeffs, proto, boxes, area, dice)
    hc, hp = torch.autograd.grad(got, (coeffs, proto))
    assert float(got.detach()) == pytest.approx(float(want.detach()), rel=1e-12)
    assert torch.allclose(hc, gc, atol=1e-12) and torch.allclose(hp, gp, atol=1e-12)


def test_fine_masks_take_the_in_box_route_with_the_same_loss(monkeypatch):
    """mask_ratio < 4 (masks finer than the prototypes) goes through mask_loss_in_boxes; the loss is the
    one the whole-map route gives on the same upsampled prototypes."""
    import engines.train.loss as L

    out, batch, _ = _ref_inputs()
    batch.masks = batch.masks.repeat_interleave(4, 1).repeat_interleave(4, 2)  # as if drawn at ratio 1
    crit = SegLoss(nc=3, strides=[8.0, 16.0, 32.0])
    calls = []
    monkeypatch.setattr(L, "mask_loss_in_boxes", lambda *a: calls.append(1) or mask_loss_in_boxes(*a))
    _, fine = crit(out, batch)
    monkeypatch.setattr(L, "mask_loss_in_boxes", _whole_map_loss)
    _, whole = crit(out, batch)
    assert calls and torch.allclose(fine, whole, rtol=1e-5)


def test_crop_mask_is_half_open():
    out = crop_mask(torch.ones(1, 4, 4), torch.tensor([[1.0, 0.0, 3.0, 2.0]]))
    assert out[0].nonzero().tolist() == [[0, 1], [0, 2], [1, 1], [1, 2]]


def test_pad_targets_keeps_order_within_each_image():
    cls = torch.tensor([5.0, 1.0, 2.0, 3.0])
    bi = torch.tensor([1.0, 0.0, 1.0, 1.0])
    boxes = torch.tensor([[0.5, 0.5, 0.5, 0.5]]).repeat(4, 1)
    t = pad_targets(cls, boxes, bi, batch_size=3, imgsz=torch.tensor([64.0, 128.0]))
    assert t.inst.tolist() == [[1, -1, -1], [0, 2, 3], [-1, -1, -1]]
    assert t.labels[1, :, 0].tolist() == [5.0, 2.0, 3.0]
    assert t.boxes[1, 0].tolist() == [32.0, 16.0, 96.0, 48.0]
    assert t.valid[..., 0].sum() == 4


def _ref_inputs(requires_grad: bool = False):
    r = np.load(REF)
    t = {k: torch.tensor(r[k]) for k in r.files}
    feats = [t[f"feat{i}"].requires_grad_(requires_grad) for i in range(3)]
    out = SimpleNamespace(feats=feats, coeffs=t["coeffs"].requires_grad_(requires_grad),
                          proto=t["proto"].requires_grad_(requires_grad))
    batch = SimpleNamespace(cls=t["cls"], bboxes=t["bboxes"], batch_idx=t["batch_idx"], masks=t["masks"])
    return out, batch, t


def test_matches_ultralytics_reference():
    """Loss items, total and gradients equal Ultralytics' v8SegmentationLoss on the same inputs
    (fixture written by fixtures/train/make_loss_ref.py)."""
    out, batch, ref = _ref_inputs(requires_grad=True)
    crit = SegLoss(nc=3, strides=[8.0, 16.0, 32.0])
    total, items = crit(out, batch)
    assert torch.allclose(items, ref["items"][:4], rtol=1e-5)
    assert float(total.detach()) == pytest.approx(float(ref["total"]), rel=1e-5)
    total.backward()
    assert torch.allclose(out.feats[0].grad, ref["grad_feat0"], atol=1e-6)
    assert torch.allclose(out.coeffs.grad, ref["grad_coeffs"], atol=1e-6)
    assert torch.allclose(out.proto.grad, ref["grad_proto"], atol=1e-6)


def test_no_labels_gives_background_only_loss_with_whole_graph():
    out, batch, _ = _ref_inputs(requires_grad=True)
    empty = SimpleNamespace(cls=torch.zeros(0), bboxes=torch.zeros(0, 4), batch_idx=torch.zeros(0),
                            masks=torch.zeros(0, 16, 24, dtype=torch.uint8))
    total, items = SegLoss(nc=3, strides=[8.0, 16.0, 32.0])(out, empty)
    assert items[0] == 0 and items[1] == 0 and items[3] == 0 and items[2] > 0
    total.backward()
    assert out.proto.grad is not None and out.coeffs.grad is not None
    assert all(f.grad is not None and torch.isfinite(f.grad).all() for f in out.feats)


def test_backward_gives_finite_grads_for_every_model_parameter(one_thread):
    from engines.nn.model import SegmentationModel

    torch.manual_seed(0)
    model = SegmentationModel("yolov8n-seg.yaml", nc=2).train()
    img = torch.rand(2, 3, 64, 64)
    batch = SimpleNamespace(
        cls=torch.tensor([0.0, 1.0, 1.0]), batch_idx=torch.tensor([0.0, 0.0, 1.0]),
        bboxes=torch.tensor([[0.3, 0.3, 0.4, 0.4], [0.7, 0.6, 0.5, 0.6], [0.5, 0.5, 0.8, 0.8]]),
        masks=(torch.rand(3, 16, 16) > 0.5).to(torch.uint8),
    )
    total, items = SegLoss.for_model(model)(model(img), batch)
    assert items.shape == (4,) and torch.isfinite(items).all()
    total.backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert len(trainable) > 200  # everything but the fixed DFL integral
    missing = [n for n, p in trainable if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing
