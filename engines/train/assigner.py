"""Task-aligned label assignment (TOOD, Feng et al. 2021) as used by YOLOv8.

Leaf module: imports only torch and ``engines.train.boxes``.

Each ground-truth box picks as positives the ``topk`` anchors whose centres lie inside it and
that score best on ``t = s**alpha * u**beta`` (``s`` the predicted score of the gt's class,
``u`` the CIoU of the predicted box with the gt). An anchor picked by several gts keeps the one
its predicted box overlaps most. Soft class targets are ``t`` rescaled per gt so that its best
anchor gets the gt's best IoU.

YOLO26's variants (Ultralytics' ``SegTaskAlignedAssigner``) are options: ``topk2`` keeps only the best
``topk2`` positives of each gt after that (its one-to-one branch: 7 then 1), ``min_side`` enlarges
gt boxes smaller than it about their centres when picking candidate anchors (small-target-aware
assignment), and ``masks`` (:class:`MaskInputs`) makes the overlap the mean of the box CIoU and the
IoU of the anchor's predicted mask with the gt's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from engines.train.boxes import bbox_ciou, crop_mask


@dataclass(frozen=True, slots=True)
class Assignment:
    """Targets for every anchor of a batch (``B`` images, ``A`` anchors, ``nc`` classes).

    ``labels (B, A) int64`` class of the assigned gt (meaningless where not foreground);
    ``bboxes (B, A, 4) float`` xyxy of the assigned gt, in the units of the gt boxes;
    ``scores (B, A, nc) float`` soft one-hot class targets, zero off the foreground;
    ``fg_mask (B, A) bool`` positives; ``gt_idx (B, A) int64`` index of the gt within its image.
    """

    labels: Tensor
    bboxes: Tensor
    scores: Tensor
    fg_mask: Tensor
    gt_idx: Tensor


@dataclass(frozen=True, slots=True)
class MaskInputs:
    """What the mask-aware overlap reads: ``coeffs (B, A, nm)`` predicted mask coefficients,
    ``proto (B, nm, mh, mw)`` prototypes, ``gt_masks (B, M, mh, mw) bool`` each padded gt's mask at the
    prototypes' resolution, ``scale`` prototype pixels per input pixel."""

    coeffs: Tensor
    proto: Tensor
    gt_masks: Tensor
    scale: float


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskAlignedAssigner:
    """Callable assigner; defaults are YOLOv8's (topk 10, alpha 0.5, beta 6)."""

    nc: int
    topk: int = 10
    alpha: float = 0.5
    beta: float = 6.0
    eps: float = 1e-9
    topk2: int | None = None
    min_side: float = 0.0

    @torch.no_grad()
    def __call__(
        self,
        pd_scores: Tensor,
        pd_bboxes: Tensor,
        anchor_points: Tensor,
        gt_labels: Tensor,
        gt_bboxes: Tensor,
        mask_gt: Tensor,
        masks: MaskInputs | None = None,
    ) -> Assignment:
        """Assign gts to anchors.

        Args:
            pd_scores: ``(B, A, nc)`` predicted class probabilities (after sigmoid).
            pd_bboxes: ``(B, A, 4)`` predicted xyxy boxes, input pixels.
            anchor_points: ``(A, 2)`` anchor centres x, y in input pixels.
            gt_labels: ``(B, M, 1)`` class ids (padded rows arbitrary).
            gt_bboxes: ``(B, M, 4)`` gt xyxy boxes, input pixels (padded rows zero).
            mask_gt: ``(B, M, 1)`` 1 for real gts, 0 for padding.
            masks: the mask-aware overlap's inputs (None: box CIoU alone).
        """
        bs, n_max = gt_bboxes.shape[:2]
        if n_max == 0:
            return Assignment(
                labels=torch.full_like(pd_scores[..., 0], self.nc, dtype=torch.long),
                bboxes=torch.zeros_like(pd_bboxes),
                scores=torch.zeros_like(pd_scores),
                fg_mask=torch.zeros_like(pd_scores[..., 0], dtype=torch.bool),
                gt_idx=torch.zeros_like(pd_scores[..., 0], dtype=torch.long),
            )
        valid = mask_gt.bool()  # (B, M, 1)
        pick_boxes = enlarge_small(gt_bboxes, self.min_side) if self.min_side else gt_bboxes
        in_gts = anchors_in_boxes(anchor_points, pick_boxes, self.eps)  # (B, M, A)
        align, overlaps = self._metrics(pd_scores, pd_bboxes, gt_labels, gt_bboxes, in_gts & valid, masks)
        topk = topk_mask(align, self.topk, valid.expand(-1, -1, self.topk))
        mask_pos = topk & in_gts & valid
        mask_pos = resolve_multiple_gts(mask_pos, overlaps)
        if self.topk2 is not None and self.topk2 != self.topk:
            best = torch.topk(align * mask_pos, min(self.topk2, align.shape[-1]), dim=-1).indices
            mask_pos = mask_pos & torch.zeros_like(mask_pos).scatter_(-1, best, True)
        fg_mask = mask_pos.any(1)  # (B, A)
        gt_idx = mask_pos.to(torch.uint8).argmax(1)  # (B, A)

        batch_ind = torch.arange(bs, device=gt_labels.device)[:, None]
        labels = gt_labels[..., 0].long()[batch_ind, gt_idx].clamp(0)  # (B, A)
        bboxes = gt_bboxes[batch_ind, gt_idx]  # (B, A, 4)
        scores = torch.zeros_like(pd_scores)
        scores.scatter_(2, labels.unsqueeze(-1), 1.0)
        scores *= fg_mask.unsqueeze(-1)

        # Normalise per gt: the best-aligned positive gets the gt's best IoU among positives.
        align = align * mask_pos
        overlaps = overlaps * mask_pos
        pos_align = align.amax(-1, keepdim=True)  # (B, M, 1)
        pos_overlap = overlaps.amax(-1, keepdim=True)
        norm = (align * pos_overlap / (pos_align + self.eps)).amax(1)  # (B, A)
        return Assignment(labels=labels, bboxes=bboxes, scores=scores * norm.unsqueeze(-1),
                          fg_mask=fg_mask, gt_idx=gt_idx)

    def _metrics(
        self, pd_scores: Tensor, pd_bboxes: Tensor, gt_labels: Tensor, gt_bboxes: Tensor, cand: Tensor,
        masks: MaskInputs | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Alignment metric and overlap for candidate pairs; ``(B, M, A)`` each, 0 elsewhere. The
        overlap is the CIoU (clamped at 0), or with ``masks`` its mean with the mask IoU."""
        b, m, a = cand.nonzero(as_tuple=True)
        scores = pd_scores[b, a, gt_labels[b, m, 0].long()]
        iou = bbox_ciou(gt_bboxes[b, m], pd_bboxes[b, a]).clamp(0)
        if masks is not None:
            iou = (iou + self._mask_ious(cand.shape, (b, m, a), scores, iou, pd_bboxes, masks)) / 2
        overlaps = torch.zeros(cand.shape, dtype=pd_bboxes.dtype, device=pd_bboxes.device)
        align = torch.zeros(cand.shape, dtype=pd_scores.dtype, device=pd_scores.device)
        overlaps[b, m, a] = iou.to(overlaps.dtype)
        align[b, m, a] = (scores.pow(self.alpha) * iou.pow(self.beta)).to(align.dtype)
        return align, overlaps

    def _mask_ious(self, shape: torch.Size, pairs: tuple[Tensor, Tensor, Tensor], scores: Tensor, iou: Tensor,
                   pd_bboxes: Tensor, masks: MaskInputs) -> Tensor:
        """``(P,)`` IoU of each candidate pair's predicted mask (coefficients times prototypes, positive
        logits, cropped to its predicted box, as validation draws it) with the gt mask, at the
        prototypes' resolution. Only each gt's ``3 * topk`` pairs of best box metric are drawn, the rest
        get 0: they are far from being picked, and drawing every candidate's mask is what costs."""
        b, m, a = pairs
        dense = torch.zeros(shape, dtype=scores.dtype, device=scores.device)
        # eps: pairs of zero metric stay pickable
        dense[b, m, a] = scores.pow(self.alpha) * iou.pow(self.beta) + self.eps
        top = dense.topk(min(3 * self.topk, shape[-1]), dim=-1).indices
        sel = torch.zeros(shape, dtype=torch.bool, device=dense.device).scatter_(-1, top, True)[b, m, a]
        out = torch.zeros_like(iou)
        if not bool(sel.any()):
            return out
        mh, mw = masks.proto.shape[-2:]
        sb, sm, sa = b[sel], m[sel], a[sel]
        ious = torch.zeros_like(sb, dtype=torch.float32)
        # per image: each selected anchor's mask drawn once, its overlap with every gt of the image in one
        # product (a batch-wide product would hold every anchor's prototypes at once)
        for i in sb.unique().tolist():
            mine = (sb == i).nonzero().squeeze(1)
            anchors, inv = sa[mine].unique(return_inverse=True)
            logits = masks.coeffs[i, anchors].float() @ masks.proto[i].flatten(1).float()  # (K, mh*mw)
            boxes = pd_bboxes[i, anchors].float() * masks.scale
            drawn = crop_mask((logits > 0).float().view(-1, mh, mw), boxes)
            gt = masks.gt_masks[i].flatten(1).float()  # (M, mh*mw)
            inter = gt @ drawn.flatten(1).T  # (M, K)
            union = gt.sum(1)[:, None] + drawn.flatten(1).sum(1)[None] - inter
            ious[mine] = (inter / union.clamp(min=1))[sm[mine], inv]
        out[sel] = ious.to(out.dtype)
        return out


def enlarge_small(boxes: Tensor, side: float) -> Tensor:
    """``(B, M, 4)`` xyxy boxes with every side shorter than ``side`` widened to it about the centre
    (all-zero padding rows too, which the caller's validity mask removes)."""
    c, wh = (boxes[..., :2] + boxes[..., 2:]) / 2, boxes[..., 2:] - boxes[..., :2]
    wh = torch.where(wh < side, torch.full_like(wh, side), wh)
    return torch.cat((c - wh / 2, c + wh / 2), -1)


def gt_masks_at(masks: Tensor, inst: Tensor, size: tuple[int, int]) -> Tensor:
    """``(B, M, h, w) bool``: the gt masks ``masks (N, H, W)`` padded per image by ``inst (B, M)`` (-1 =
    padding, all false), resampled nearest to ``size`` when they are at another resolution."""
    if masks.shape[-2:] != size and len(masks):
        masks = F.interpolate(masks[None].float(), size, mode="nearest")[0]
    out = masks.bool()[inst.clamp(min=0)] if len(masks) else torch.zeros(*inst.shape, *size, dtype=torch.bool,
                                                                          device=inst.device)
    return out & (inst >= 0)[..., None, None]


def anchors_in_boxes(anchor_points: Tensor, boxes: Tensor, eps: float = 1e-9) -> Tensor:
    """``(B, M, A)`` bool: anchor centre strictly inside the box (by more than ``eps`` on each side).

    ``anchor_points (A, 2)`` and ``boxes (B, M, 4)`` xyxy, same units.
    """
    lt, rb = boxes[:, :, None, :2], boxes[:, :, None, 2:]  # (B, M, 1, 2)
    deltas = torch.cat((anchor_points - lt, rb - anchor_points), -1)  # (B, M, A, 4)
    return deltas.amin(-1) > eps


def topk_mask(metrics: Tensor, k: int, valid: Tensor) -> Tensor:
    """``(B, M, A)`` bool: the ``k`` anchors with the largest metric for each valid gt.

    ``valid (B, M, k)`` is false for padded gts, whose rows come back all false. Ties are broken
    by ``torch.topk``; with fewer than ``k`` candidates the rest of the picks are zero-metric
    anchors, which the caller removes with the inside-box mask.
    """
    k = min(k, metrics.shape[-1])
    idx = torch.topk(metrics, k, dim=-1, largest=True).indices  # (B, M, k)
    idx = idx.masked_fill(~valid[..., :k], 0)
    count = torch.zeros(metrics.shape, dtype=torch.int8, device=metrics.device)
    count.scatter_add_(-1, idx, torch.ones_like(idx, dtype=torch.int8))
    # A padded row scattered k ones onto anchor 0: counts > 1 only come from there.
    return count == 1


def resolve_multiple_gts(mask_pos: Tensor, overlaps: Tensor) -> Tensor:
    """Keep one gt per anchor: where an anchor is positive for several gts, it goes to the gt with
    the largest CIoU with its predicted box (over all candidate gts, as YOLOv8 does).

    ``mask_pos (B, M, A) bool``, ``overlaps (B, M, A) float`` -> ``(B, M, A) bool``.
    """
    multi = (mask_pos.sum(1, keepdim=True) > 1).expand_as(mask_pos)
    best = torch.zeros_like(mask_pos)
    best.scatter_(1, overlaps.argmax(1, keepdim=True), True)
    return torch.where(multi, best, mask_pos)
