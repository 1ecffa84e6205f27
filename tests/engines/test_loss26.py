"""YOLO26-seg's end-to-end loss against Ultralytics' ``E2ELoss(SegmentLoss26)`` on the same inputs
(fixtures/train/make_loss26_ref.py), and the pieces it adds to YOLOv8's: the one-to-many share's
schedule, the mask-aware overlap, small-box enlargement, the semantic target."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from engines.train.assigner import TaskAlignedAssigner, enlarge_small, gt_masks_at
from engines.train.loss import LOSS26_NAMES, E2ESegLoss, one2many_weight, semantic_loss

REF = Path(__file__).parent / "fixtures" / "train" / "loss26_ref.npz"


def _inputs():
    r = np.load(REF)
    t = {k: torch.tensor(r[k]) for k in r.files}
    proto, semantic = t["proto"].requires_grad_(), t["semantic"].requires_grad_()
    o2o = SimpleNamespace(feats=[t[f"o2o_feat{i}"].requires_grad_() for i in range(3)],
                          coeffs=t["o2o_coeffs"].requires_grad_(), proto=proto.detach(), semantic=semantic.detach())
    out = SimpleNamespace(feats=[t[f"o2m_feat{i}"].requires_grad_() for i in range(3)],
                          coeffs=t["o2m_coeffs"].requires_grad_(), proto=proto, semantic=semantic, one2one=o2o)
    batch = SimpleNamespace(cls=t["cls"], bboxes=t["bboxes"], batch_idx=t["batch_idx"], masks=t["masks"])
    return out, batch, t


def test_matches_ultralytics_e2e_segment_loss26():
    out, batch, ref = _inputs()
    crit = E2ESegLoss(nc=3, strides=[8.0, 16.0, 32.0], reg_max=1)
    assert crit.names == LOSS26_NAMES
    total, items = crit(out, batch)
    assert torch.allclose(items, ref["items"], rtol=1e-5, atol=1e-6), (items, ref["items"])
    assert float(total.detach()) == pytest.approx(float(ref["total"]), rel=1e-5)
    total.backward()
    grads = {"o2m_feat0": out.feats[0].grad, "o2o_feat1": out.one2one.feats[1].grad,
             "o2m_coeffs": out.coeffs.grad, "o2o_coeffs": out.one2one.coeffs.grad,
             "proto": out.proto.grad, "semantic": out.semantic.grad}
    for name, grad in grads.items():
        assert torch.allclose(grad, ref[f"grad_{name}"], atol=1e-6), name


class _Recording:
    """An assigner that keeps what it returned last."""

    def __init__(self, inner):
        self.inner, self.last = inner, None

    def __call__(self, *args, **kwargs):
        self.last = self.inner(*args, **kwargs)
        return self.last


def test_assignments_match_ultralytics_in_both_branches():
    out, batch, ref = _inputs()
    crit = E2ESegLoss(nc=3, strides=[8.0, 16.0, 32.0], reg_max=1)
    for loss, o, tag in ((crit.one2many, out, "o2m"), (crit.one2one, out.one2one, "o2o")):
        loss.assigner = _Recording(loss.assigner)
        loss(o, batch)
        fg = loss.assigner.last.fg_mask
        assert torch.equal(fg, ref[f"fg_{tag}"].bool()), tag
        assert torch.equal(loss.assigner.last.gt_idx[fg], ref[f"gt_idx_{tag}"][fg]), tag
    assert int(ref["fg_o2o"].sum()) == 5  # one anchor per gt in the one-to-one branch


def test_one2many_share_falls_as_ultralytics_schedules_it():
    ref = np.load(REF)
    epochs = int(ref["epochs"])
    for epoch, (o2m, o2o) in enumerate(ref["weights"]):
        assert one2many_weight(epoch, epochs) == pytest.approx(o2m)
        assert 1 - one2many_weight(epoch, epochs) == pytest.approx(o2o)
    assert one2many_weight(0, 1) == pytest.approx(0.8)


def test_small_boxes_are_enlarged_about_their_centres():
    boxes = torch.tensor([[[10.0, 20.0, 14.0, 50.0], [0.0, 0.0, 40.0, 40.0]]])
    out = enlarge_small(boxes, 16)
    assert out[0, 0].tolist() == [4.0, 20.0, 20.0, 50.0]
    assert out[0, 1].tolist() == [0.0, 0.0, 40.0, 40.0]


def test_topk2_keeps_one_positive_per_gt():
    g = torch.Generator().manual_seed(3)
    anchors = torch.stack(torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="xy"), -1).view(-1, 2) * 8 + 4
    gt = torch.tensor([[[0.0, 0.0, 40.0, 40.0], [24.0, 24.0, 64.0, 64.0]]])
    pd = gt[:, :1].expand(1, 64, 4) + torch.rand(1, 64, 4, generator=g) * 8
    scores = torch.rand(1, 64, 2, generator=g)
    args = (scores, pd, anchors, torch.tensor([[[0.0], [1.0]]]), gt, torch.ones(1, 2, 1))
    many = TaskAlignedAssigner(nc=2, topk=7)(*args)
    one = TaskAlignedAssigner(nc=2, topk=7, topk2=1)(*args)
    assert one.fg_mask.sum() == 2 and many.fg_mask.sum() > 2
    assert (one.fg_mask <= many.fg_mask).all()  # the one is among the seven


def test_semantic_target_is_the_smallest_covering_instance():
    masks = torch.zeros(3, 4, 4, dtype=torch.uint8)
    masks[0, :, :] = 1  # image 0, class 2, everything
    masks[1, 1:3, 1:3] = 1  # image 0, class 1, smaller: wins where it is
    masks[2, 0, 0] = 1  # image 1, class 0
    cls, bi = torch.tensor([2.0, 1.0, 0.0]), torch.tensor([0.0, 0.0, 1.0])
    big = 30.0  # logits that match a target exactly give (nearly) zero loss
    target = torch.zeros(2, 3, 4, 4)
    target[0, 2] = 1
    target[0, 2, 1:3, 1:3] = 0
    target[0, 1, 1:3, 1:3] = 1
    target[1, 0, 0, 0] = 1
    assert float(semantic_loss(big * (2 * target - 1), masks, cls, bi)) < 0.05
    wrong = target.clone()
    wrong[0, 1], wrong[0, 2] = target[0, 2], target[0, 1]
    assert float(semantic_loss(big * (2 * wrong - 1), masks, cls, bi)) > 1


def test_gt_masks_are_padded_per_image_and_resampled():
    masks = torch.zeros(2, 8, 8, dtype=torch.uint8)
    masks[0, :4] = 1
    masks[1, :, :2] = 1
    out = gt_masks_at(masks, torch.tensor([[1, -1], [0, -1]]), (4, 4))
    assert out.shape == (2, 2, 4, 4) and out.dtype == torch.bool
    assert out[0, 0, :, 0].all() and not out[0, 0, :, 1:].any()
    assert out[1, 0, :2].all() and not out[1, 0, 2:].any()
    assert not out[:, 1].any()


def test_one2one_outputs_train_only_their_own_branches(one_thread):
    """As Ultralytics: the one-to-one branches see detached features and prototypes, so their loss leaves
    the backbone, neck and prototypes to the one-to-many loss; the semantic branch is trained."""
    from engines.nn import SegmentationModel

    model = SegmentationModel("yolo26n-seg.yaml", nc=2).train()
    out = model(torch.rand(1, 3, 64, 64))
    assert out.one2one is not None and out.semantic is not None and out.semantic.shape == (1, 2, 8, 8)
    assert not out.one2one.proto.requires_grad and not out.one2one.semantic.requires_grad
    (sum(f.sum() for f in out.one2one.feats) + out.one2one.coeffs.sum()).backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None}
    assert grads and all(".one2one_" in n for n in grads), sorted(grads)[:5]
    model.zero_grad()
    out = model(torch.rand(1, 3, 64, 64))
    (sum(f.sum() for f in out.feats) + out.coeffs.sum() + out.proto.sum() + out.semantic.sum()).backward()
    unused = {n for n, p in model.named_parameters() if p.grad is None}
    assert unused and all(".one2one_" in n for n in unused), sorted(unused)[:5]


def test_the_weight_hook_follows_the_epoch_count_as_it_stands():
    """A --time budget re-plans cfg.epochs between epochs and a resume starts mid-run: the share is set
    from both as they are when each epoch begins."""
    from engines.train.hooks import E2EWeightHook

    s = SimpleNamespace(loss_fn=E2ESegLoss(nc=3, strides=[8.0, 16.0, 32.0], reg_max=1), epoch=0,
                        cfg=SimpleNamespace(epochs=5))
    hook = E2EWeightHook()
    hook.before_epoch(s)
    assert s.loss_fn.o2m == pytest.approx(0.8)
    s.epoch, s.cfg.epochs = 3, 4  # re-planned from 5 to 4: epoch 3 is now the last
    hook.before_epoch(s)
    assert s.loss_fn.o2m == pytest.approx(0.1)
    s.epoch, s.cfg.epochs = 2, 5
    hook.before_epoch(s)
    assert s.loss_fn.o2m == pytest.approx(one2many_weight(2, 5)) and 0.1 < s.loss_fn.o2m < 0.8


def test_a_batch_without_instances_trains_only_the_class_logits_down(one_thread):
    """Images with nothing in them (backgrounds): every term but the class one is 0, the semantic one
    too (Ultralytics skips it without positives), and the graph stays whole for backward."""
    from engines.nn import SegmentationModel
    from engines.train.loss import SegLoss

    torch.manual_seed(0)
    model = SegmentationModel("yolo26n-seg.yaml", nc=3).train()
    out = model(torch.rand(2, 3, 64, 64))
    empty = SimpleNamespace(cls=torch.zeros(0), bboxes=torch.zeros(0, 4), batch_idx=torch.zeros(0),
                            masks=torch.zeros(0, 16, 16, dtype=torch.uint8))
    loss = SegLoss.for_model(model)
    total, items = loss(out, empty)
    assert dict(zip(loss.names, items.tolist(), strict=True)) == pytest.approx(
        {"box_loss": 0.0, "seg_loss": 0.0, "cls_loss": float(items[2]), "l1_loss": 0.0, "sem_loss": 0.0})
    assert float(items[2]) > 0 and torch.isfinite(total)
    total.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters() if ".cv3." in n)
