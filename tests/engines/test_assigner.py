"""Task-aligned assigner on tiny hand-made grids."""

from __future__ import annotations

import math

import pytest
import torch

from engines.train.assigner import TaskAlignedAssigner, anchors_in_boxes, topk_mask

# One 4x4 level of stride 8: anchor centres at 4, 12, 20, 28 px (row-major, x fastest).
GRID = torch.stack(torch.meshgrid(torch.arange(4.0), torch.arange(4.0), indexing="ij")[::-1], -1).view(-1, 2) * 8 + 4


def _anchor(x: float, y: float) -> int:
    return int(((GRID[:, 0] == x) & (GRID[:, 1] == y)).nonzero())


def _assign(gt_xyxy: list[list[float]], pd_boxes: torch.Tensor, pd_scores: torch.Tensor, *, labels=None,
            valid=None, topk: int = 10, nc: int = 2):
    gts = torch.tensor([gt_xyxy], dtype=torch.float32)
    m = gts.shape[1]
    lab = torch.tensor([labels or [0] * m], dtype=torch.float32)[..., None]
    val = torch.tensor([valid or [1] * m], dtype=torch.float32)[..., None]
    return TaskAlignedAssigner(nc=nc, topk=topk)(pd_scores[None], pd_boxes[None], GRID, lab, gts, val)


def test_anchors_strictly_inside_box_are_candidates():
    inside = anchors_in_boxes(GRID, torch.tensor([[[0.0, 0.0, 16.0, 12.0]]]))[0, 0]
    # Centres (4,4), (12,4) are inside; (4,12) lies on the bottom edge, which does not count.
    assert inside.nonzero().view(-1).tolist() == [_anchor(4, 4), _anchor(12, 4)]


def test_all_anchors_in_box_become_positives_with_full_score():
    box = [0.0, 0.0, 16.0, 16.0]
    a = _assign([box], torch.tensor([box]).expand(16, 4), torch.full((16, 2), 0.5), labels=[1])
    expect = sorted(_anchor(x, y) for x in (4, 12) for y in (4, 12))
    assert a.fg_mask[0].nonzero().view(-1).tolist() == expect
    assert (a.gt_idx[0, expect] == 0).all() and (a.labels[0, expect] == 1).all()
    assert torch.equal(a.bboxes[0, expect], torch.tensor([box]).expand(4, 4))
    # Every positive is aligned as well as the best one and the gt's best IoU is 1: target score 1.
    assert torch.allclose(a.scores[0, expect], torch.tensor([[0.0, 1.0]]).expand(4, 2))
    assert a.scores[0, ~a.fg_mask[0]].abs().sum() == 0


def test_topk_keeps_best_aligned_anchors_and_scales_their_targets():
    box = [0.0, 0.0, 32.0, 32.0]  # every anchor is inside
    scores = torch.zeros(16, 2)
    scores[:, 0] = torch.arange(1, 17) / 16  # anchor i predicts class 0 with (i + 1) / 16
    a = _assign([box], torch.tensor([box]).expand(16, 4), scores, topk=3)
    assert a.fg_mask[0].nonzero().view(-1).tolist() == [13, 14, 15]
    # t = s**0.5 * 1**6, rescaled so the best positive gets the gt's best IoU (1).
    expect = [math.sqrt(14 / 16), math.sqrt(15 / 16), 1.0]
    assert torch.allclose(a.scores[0, 13:, 0], torch.tensor(expect), atol=1e-6)


def test_anchor_claimed_by_two_gts_goes_to_the_one_its_box_overlaps_most():
    gt_a, gt_b = [0.0, 0.0, 16.0, 16.0], [8.0, 0.0, 24.0, 16.0]
    pd = torch.tensor([[0.0, 0.0, 24.0, 16.0]]).repeat(16, 1)
    shared_top, shared_bottom = _anchor(12, 4), _anchor(12, 12)
    pd[shared_top] = torch.tensor(gt_b)  # predicts gt B exactly
    pd[shared_bottom] = torch.tensor(gt_a)  # predicts gt A exactly
    a = _assign([gt_a, gt_b], pd, torch.full((16, 2), 0.5), labels=[0, 1])
    assert a.gt_idx[0, shared_top] == 1 and a.labels[0, shared_top] == 1
    assert a.gt_idx[0, shared_bottom] == 0 and a.labels[0, shared_bottom] == 0
    only_a, only_b = [_anchor(4, 4), _anchor(4, 12)], [_anchor(20, 4), _anchor(20, 12)]
    assert (a.gt_idx[0, only_a] == 0).all() and (a.gt_idx[0, only_b] == 1).all()
    assert a.fg_mask[0].sum() == 6


def test_padded_gts_assign_nothing_and_empty_batches_are_background():
    box = [0.0, 0.0, 32.0, 32.0]
    a = _assign([box], torch.tensor([box]).expand(16, 4), torch.full((16, 2), 0.5), valid=[0])
    assert not a.fg_mask.any() and a.scores.sum() == 0
    empty = TaskAlignedAssigner(nc=2)(torch.rand(2, 16, 2), torch.rand(2, 16, 4), GRID,
                                      torch.zeros(2, 0, 1), torch.zeros(2, 0, 4), torch.zeros(2, 0, 1))
    assert empty.fg_mask.shape == (2, 16) and not empty.fg_mask.any()
    assert (empty.labels == 2).all() and empty.scores.sum() == 0


@pytest.mark.parametrize(("metric", "valid", "expect"), [
    ([0.1, 0.9, 0.5, 0.7], True, [1, 3]),
    ([0.0, 0.3, 0.2], True, [1, 2]),
    ([0.0, 0.3], True, [0, 1]),  # a zero-metric anchor can fill the top-k; callers mask it
    ([0.1, 0.9, 0.5, 0.7], False, []),
])
def test_topk_mask_table(metric, valid, expect):
    m = topk_mask(torch.tensor([[metric]]), 2, torch.tensor([[[valid, valid]]]))
    assert m[0, 0].nonzero().view(-1).tolist() == expect
