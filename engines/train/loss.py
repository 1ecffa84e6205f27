"""YOLOv8-seg training loss: CIoU + DFL box loss, BCE class loss, prototype mask loss.

Imports ``engines.nn.head`` (anchors, box decoding) and ``engines.train``'s assigner; nothing from
``pipeline``. Everything is computed in float32, also under autocast, so AMP only speeds up the
network, never the loss arithmetic.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from engines.nn.head import bbox2dist, dist2bbox, make_anchors
from engines.ops.crops import bilinear_taps
from engines.train.assigner import Assignment, TaskAlignedAssigner
from engines.train.boxes import bbox_ciou, crop_mask, xywh2xyxy

if TYPE_CHECKING:
    from engines.nn.model import SegmentationModel

LOSS_NAMES = ("box_loss", "seg_loss", "cls_loss", "dfl_loss")


class SegOutput(Protocol):
    """What the model returns in train mode (``engines.nn.model.SegTrainOutput``)."""

    feats: Sequence[Tensor]  # 3 x (B, 4*reg_max + nc, h_i, w_i)
    coeffs: Tensor  # (B, nm, A)
    proto: Tensor  # (B, nm, H/4, W/4)


class SegTargets(Protocol):
    """The labels of a batch (``engines.data.TrainBatch``)."""

    # Read-only properties, so that a frozen dataclass such as TrainBatch matches.
    @property
    def cls(self) -> Tensor: ...  # (M,) class ids
    @property
    def bboxes(self) -> Tensor: ...  # (M, 4) normalised xywh
    @property
    def batch_idx(self) -> Tensor: ...  # (M,) image index in the batch
    @property
    def masks(self) -> Tensor: ...  # (M, H/4, W/4) uint8, one per instance


@dataclass(frozen=True, slots=True, kw_only=True)
class LossGains:
    """Weights of the loss terms; the mask loss uses ``box`` as Ultralytics does. ``dice`` adds that
    much of each positive's Dice loss to its mask BCE (0: Ultralytics' loss)."""

    box: float = 7.5
    cls: float = 0.5
    dfl: float = 1.5
    dice: float = 0.0


@dataclass(frozen=True, slots=True)
class PaddedTargets:
    """Per-image padded gts: ``labels (B, n, 1)``, ``boxes (B, n, 4)`` xyxy input pixels,
    ``valid (B, n, 1) bool``, ``inst (B, n) int64`` row of the gt in the batch tensors (-1 = pad)."""

    labels: Tensor
    boxes: Tensor
    valid: Tensor
    inst: Tensor


def pad_targets(cls: Tensor, bboxes: Tensor, batch_idx: Tensor, *, batch_size: int, imgsz: Tensor) -> PaddedTargets:
    """Group flat per-instance labels by image, keeping their order within each image.

    Args:
        cls: ``(M,)`` class ids; bboxes: ``(M, 4)`` normalised xywh; batch_idx: ``(M,)``.
        batch_size: ``B``; imgsz: ``(2,)`` float tensor ``(H, W)`` of the network input in pixels.
    """
    device = bboxes.device
    bi = batch_idx.long().view(-1)
    m = bi.numel()
    n = int(torch.bincount(bi, minlength=batch_size).max()) if m else 0
    labels = torch.zeros(batch_size, n, 1, device=device)
    boxes = torch.zeros(batch_size, n, 4, device=device)
    inst = torch.full((batch_size, n), -1, dtype=torch.long, device=device)
    if m:
        onehot = F.one_hot(bi, batch_size)  # (M, B)
        rank = (onehot.cumsum(0) - 1).gather(1, bi[:, None]).squeeze(1)  # order within the image
        labels[bi, rank, 0] = cls.view(-1).float()
        boxes[bi, rank] = xywh2xyxy(bboxes.float() * imgsz[[1, 0, 1, 0]])
        inst[bi, rank] = torch.arange(m, device=device)
    return PaddedTargets(labels=labels, boxes=boxes, valid=(inst >= 0)[..., None], inst=inst)


def dfl_loss(pred_dist: Tensor, target: Tensor, reg_max: int = 16) -> Tensor:
    """Distribution focal loss (Li et al. 2020): cross-entropy against the two bins around the target.

    Args:
        pred_dist: ``(N, reg_max)`` logits over distance bins 0..reg_max-1.
        target: ``(N,)`` float distances, clamped to ``[0, reg_max - 1.01]``.

    Returns:
        ``(N,)``: ``-(wl * log p[tl] + wr * log p[tl + 1])`` with ``tl = floor(target)``,
        ``wl = tl + 1 - target``, ``wr = 1 - wl``.
    """
    target = target.clamp(0, reg_max - 1 - 0.01)
    tl = target.long()
    wl = tl + 1 - target
    logp = F.log_softmax(pred_dist, dim=-1)
    return -(logp.gather(1, tl[:, None]).squeeze(1) * wl + logp.gather(1, (tl + 1)[:, None]).squeeze(1) * (1 - wl))


def mask_loss(
    gt_masks: Tensor, coeffs: Tensor, proto: Tensor, boxes: Tensor, area: Tensor, dice: float = 0.0
) -> Tensor:
    """Summed mask loss of the positives of one image, in its plainest form (Ultralytics' whole-map
    product and crop). Training computes the same value with :func:`mask_loss_in_boxes`; this is its
    definition and the tests' reference.

    Args:
        gt_masks: ``(F, h, w)`` float 0/1 gt mask of each positive's gt, proto resolution.
        coeffs: ``(F, nm)`` predicted mask coefficients; proto: ``(nm, h, w)`` prototypes.
        boxes: ``(F, 4)`` gt xyxy in proto pixels (the crop); area: ``(F,)`` gt box area as a
            fraction of the image. dice: weight of the Dice term.

    Returns:
        Scalar: sum over positives of mean-over-pixels(BCE cropped to the box) / area, i.e. the
        BCE averaged inside each box, plus ``dice`` times ``1 - (2|P.T| + 1) / (|P| + |T| + 1)`` over
        the box's pixels (P the predicted probabilities, T the target).
    """
    logits = torch.einsum("fn,nhw->fhw", coeffs, proto)
    bce = F.binary_cross_entropy_with_logits(logits, gt_masks, reduction="none")
    per = crop_mask(bce, boxes).mean(dim=(1, 2)) / area
    if dice:
        p, t = crop_mask(logits.sigmoid(), boxes), crop_mask(gt_masks, boxes)
        per = per + dice * dice_loss((p * t).sum((1, 2)), p.sum((1, 2)) + t.sum((1, 2)))
    return per.sum()


def dice_loss(overlap: Tensor, total: Tensor) -> Tensor:
    """``1 - (2 overlap + 1) / (total + 1)`` per positive (soft Dice, smoothed by one pixel).

    Why beside the BCE: in the box of a thin object (a bicycle's 1-3 px frame) nearly every pixel is
    background, so the mean BCE is low for a mask that draws nothing and the model learns to
    under-draw; the Dice term counts the object's own pixels whatever else the box holds."""
    return 1 - (2 * overlap + 1) / (total + 1)


def mask_loss_in_boxes(
    masks: Tensor, inst: Tensor, img: Tensor, coeffs: Tensor, proto: Tensor, boxes: Tensor, area: Tensor,
    dice: float = 0.0,
) -> Tensor:
    """The summed :func:`mask_loss` of a whole batch, on the prototypes resized bilinearly to the mask
    grid, computed only on the pixels inside each positive's box.

    masks: ``(M, h, w)`` 0/1 gt masks of the batch, indexed by ``inst`` ``(F,)`` (each positive's gt);
    img: ``(F,)`` each positive's image in ``proto`` ``(B, nm, h', w')``; coeffs ``(F, nm)``, boxes
    ``(F, 4)`` (mask pixels), area ``(F,)`` and dice as in :func:`mask_loss`. Pixel column ``c`` is inside
    when ``x1 <= c < x2``, as :func:`crop_mask` has it.

    The whole-map route (resize every prototype to ``h x w``, one ``F x h x w`` logit map per image,
    crop) spends nearly all its work on pixels the crop zeroes; at ``mask_ratio`` 1 that is 16x the
    usual 1/4 grid. Resizing is linear, so here each positive's logits are made at the prototypes'
    resolution (one batched product for the batch) and only its box's pixels are interpolated from
    them, all positives' pixels in one flat list: a fixed number of kernels per batch (a per-gt or
    per-image loop is launch-bound on a GPU) and two host syncs.
    """
    h, w = masks.shape[-2:]
    nb, nm, ph, pw = proto.shape
    dev, n = proto.device, len(inst)
    order = torch.argsort(img, stable=True)
    inst, img, coeffs, boxes, area = inst[order], img[order], coeffs[order], boxes[order], area[order]
    per_img = torch.bincount(img, minlength=nb)
    rank = torch.arange(n, device=dev) - (per_img.cumsum(0) - per_img)[img]  # position within its image
    lo = boxes[:, :2].ceil().clamp(min=0)
    hi = torch.minimum(boxes[:, 2:].ceil(), torch.tensor([w, h], device=dev, dtype=boxes.dtype))
    lo, size = lo.long(), (hi - lo).clamp(min=0).long()  # (F, 2) x, y
    pixels = size[:, 0] * size[:, 1]
    fmax, total = torch.stack((per_img.max(), pixels.sum())).tolist()  # the host sync (sizes)

    padded = coeffs.new_zeros(nb, fmax, nm).index_put((img, rank), coeffs)
    low = torch.bmm(padded, proto.flatten(2)).flatten()  # (B * fmax * ph * pw) logits at proto resolution

    seg = torch.repeat_interleave(torch.arange(n, device=dev), pixels, output_size=total)  # pixel -> positive
    local = torch.arange(total, device=dev) - (pixels.cumsum(0) - pixels)[seg]
    width = size[seg, 0]
    y, x = lo[seg, 1] + local // width, lo[seg, 0] + local % width
    ty0, ty1, ty = bilinear_taps(ph, h, ph / h, dev, low.dtype)  # per-axis tables, looked up per pixel
    tx0, tx1, tx = bilinear_taps(pw, w, pw / w, dev, low.dtype)
    y0, y1, fy = ty0[y], ty1[y], ty[y]
    x0, x1, fx = tx0[x], tx1[x], tx[x]
    base = (img * fmax + rank)[seg] * (ph * pw)
    r0, r1 = base + y0 * pw, base + y1 * pw
    # One gather of the four taps (one zero-filled gradient and one scatter-add in the backward pass).
    taps = low.gather(0, torch.cat((r0 + x0, r0 + x1, r1 + x0, r1 + x1))).view(4, -1)
    gy, gx = 1 - fy, 1 - fx
    logits = (taps * torch.stack((gy * gx, gy * fx, fy * gx, fy * fx))).sum(0)
    target = masks[inst[seg], y, x].to(logits.dtype)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    per = torch.zeros(n, device=dev, dtype=bce.dtype).index_add(0, seg, bce) / (h * w) / area
    if dice:
        p = logits.sigmoid()
        sums = torch.zeros(2, n, device=dev, dtype=p.dtype).index_add(1, seg, torch.stack((p * target, p + target)))
        per = per + dice * dice_loss(sums[0], sums[1])
    return per.sum()


class SegLoss:
    """Callable ``loss(out, batch) -> (total, items)`` for YOLOv8-seg.

    ``total`` is the scalar to back-propagate: the sum of the gained terms times the batch size.
    ``items`` is ``(4,)`` detached ``(box, seg, cls, dfl)`` (gained, not scaled by batch size).
    """

    def __init__(
        self, *, nc: int, strides: Sequence[float] | Tensor, reg_max: int = 16,
        gains: LossGains = LossGains(), topk: int = 10,
    ) -> None:
        self.nc, self.reg_max, self.gains = nc, reg_max, gains
        self.strides = torch.as_tensor(strides, dtype=torch.float32).flatten()
        self.assigner = TaskAlignedAssigner(nc=nc, topk=topk, alpha=0.5, beta=6.0)

    @classmethod
    def for_model(cls, model: SegmentationModel, *, gains: LossGains = LossGains()) -> SegLoss:
        """Read nc, strides and reg_max from a ``SegmentationModel``."""
        head = model.head
        return cls(nc=int(model.nc), strides=model.stride, reg_max=int(head.reg_max), gains=gains)

    def decode(self, anchor_points: Tensor, pred_dist: Tensor) -> Tensor:
        """``(B, A, 4*reg_max)`` logits -> ``(B, A, 4)`` xyxy in grid units (expected bin per side)."""
        b, a, _ = pred_dist.shape
        proj = torch.arange(self.reg_max, dtype=pred_dist.dtype, device=pred_dist.device)
        dist = pred_dist.view(b, a, 4, self.reg_max).softmax(3) @ proj
        return dist2bbox(dist, anchor_points, xywh=False)

    def __call__(self, out: SegOutput, batch: SegTargets) -> tuple[Tensor, Tensor]:
        feats = [f.float() for f in out.feats]
        bs, no = feats[0].shape[:2]
        pred = torch.cat([f.view(bs, no, -1) for f in feats], 2).permute(0, 2, 1)  # (B, A, no)
        pred_dist, pred_scores = pred.split((4 * self.reg_max, self.nc), 2)
        coeffs = out.coeffs.float().permute(0, 2, 1)  # (B, A, nm)
        proto = out.proto.float()
        strides = self.strides.to(pred.device)
        anchors, stride_t = make_anchors(feats, strides, 0.5)
        imgsz = torch.tensor(feats[0].shape[2:], device=pred.device, dtype=torch.float32) * strides[0]
        gt = pad_targets(batch.cls.to(pred.device), batch.bboxes.to(pred.device),
                         batch.batch_idx.to(pred.device), batch_size=bs, imgsz=imgsz)

        pred_boxes = self.decode(anchors, pred_dist)  # grid units
        asg = self.assigner(pred_scores.detach().sigmoid(), pred_boxes.detach() * stride_t,
                            anchors * stride_t, gt.labels, gt.boxes, gt.valid)
        score_sum = asg.scores.sum().clamp(min=1)

        cls = F.binary_cross_entropy_with_logits(pred_scores, asg.scores, reduction="none").sum() / score_sum
        box, dfl = self._box_losses(pred_dist, pred_boxes, anchors, stride_t, asg, score_sum)
        seg = self._seg_loss(asg, gt, batch.masks.to(pred.device), proto, coeffs, imgsz)
        g = self.gains
        items = torch.stack((box * g.box, seg * g.box, cls * g.cls, dfl * g.dfl))
        return items.sum() * bs, items.detach()

    def _box_losses(
        self, pred_dist: Tensor, pred_boxes: Tensor, anchors: Tensor, stride_t: Tensor,
        asg: Assignment, score_sum: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """CIoU and DFL over positives, weighted by their soft target score; zero without positives
        while keeping ``pred_dist`` in the graph (DDP needs every parameter to get a gradient)."""
        fg = asg.fg_mask
        weight = asg.scores.sum(-1)[fg]  # (F,)
        target = asg.bboxes / stride_t  # grid units
        iou = bbox_ciou(pred_boxes[fg], target[fg])
        box = ((1.0 - iou) * weight).sum() / score_sum
        ltrb = bbox2dist(anchors, target, self.reg_max - 1)[fg]  # (F, 4)
        per_side = dfl_loss(pred_dist[fg].reshape(-1, self.reg_max), ltrb.reshape(-1), self.reg_max)
        dfl = (per_side.view(-1, 4).mean(-1) * weight).sum() / score_sum
        return box, dfl

    def _seg_loss(
        self, asg: Assignment, gt: PaddedTargets, masks: Tensor, proto: Tensor, coeffs: Tensor, imgsz: Tensor
    ) -> Tensor:
        """Mean over positives of the per-instance box-normalised mask BCE, plus the Dice term when
        ``gains.dice`` is set (see :func:`mask_loss`)."""
        mh, mw = masks.shape[-2:]
        norm = asg.bboxes / imgsz[[1, 0, 1, 0]]  # (B, A, 4) xyxy, 0-1
        area = (norm[..., 2] - norm[..., 0]) * (norm[..., 3] - norm[..., 1])
        mboxes = norm * torch.tensor([mw, mh, mw, mh], device=norm.device, dtype=norm.dtype)
        loss = (proto * 0).sum() + (coeffs * 0).sum()  # keeps the graph whole when nothing is positive
        img, anchor = asg.fg_mask.nonzero(as_tuple=True)
        if len(img):
            inst = gt.inst[img, asg.gt_idx[img, anchor]]
            loss = loss + mask_loss_in_boxes(masks, inst, img, coeffs[img, anchor], proto, mboxes[img, anchor],
                                             area[img, anchor], self.gains.dice)
        return loss / asg.fg_mask.sum().clamp(min=1)
