"""YOLOv8-seg training loss: CIoU + DFL box loss, BCE class loss, prototype mask loss; and YOLO26-seg's
end-to-end loss (:class:`E2ESegLoss`) built from it.

Imports ``engines.nn.head`` (anchors, box decoding) and ``engines.train``'s assigner; nothing from
``pipeline``. Everything is computed in float32, also under autocast, so AMP only speeds up the
network, never the loss arithmetic.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from engines.nn.head import bbox2dist, dist2bbox, make_anchors
from engines.ops.crops import bilinear_taps
from engines.train.assigner import Assignment, MaskInputs, TaskAlignedAssigner, gt_masks_at
from engines.train.boxes import bbox_ciou, crop_mask, xywh2xyxy

if TYPE_CHECKING:
    from engines.nn.model import SegmentationModel

LOSS_NAMES = ("box_loss", "seg_loss", "cls_loss", "dfl_loss")
# YOLO26: 1-bin boxes have an L1 term where DFL was, and a semantic-segmentation term is added
LOSS26_NAMES = ("box_loss", "seg_loss", "cls_loss", "l1_loss", "sem_loss")


class SegOutput(Protocol):
    """What the model returns in train mode (``engines.nn.model.SegTrainOutput``)."""

    feats: Sequence[Tensor]  # 3 x (B, 4*reg_max + nc, h_i, w_i)
    coeffs: Tensor  # (B, nm, A)
    proto: Tensor  # (B, nm, H/4, W/4)
    semantic: Tensor | None  # (B, nc, H/8, W/8) YOLO26's semantic logits, else None


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


def semantic_loss(pred: Tensor, masks: Tensor, cls: Tensor, batch_idx: Tensor) -> Tensor:
    """YOLO26's semantic-segmentation term (Ultralytics' ``BCEDiceLoss``, half BCE, half Dice).

    pred: ``(B, nc, h, w)`` logits; masks ``(M, H, W)`` the batch's gt masks, cls ``(M,)``, batch_idx
    ``(M,)``. The target of a pixel is the one-hot class of the smallest instance (fewest mask pixels)
    covering it, all zero where none does, at the masks' resolution resampled nearest to ``h x w``.
    Returns ``0.5 * mean BCE + 0.5 * mean over images and classes of 1 - Dice`` (Dice smoothed by 1).
    """
    nb, nc, h, w = pred.shape
    area = masks.flatten(1).sum(1, dtype=torch.int64)  # at the masks' resolution, where the target is made
    # Resampling the instance masks first picks the same source pixel as resampling the target would.
    small = F.interpolate(masks[None].float(), (h, w), mode="nearest")[0].flatten(1).bool()  # (M, h*w)
    bi, m = batch_idx.long().view(-1), len(masks)
    # per pixel the covering instance with the least area, ties to the lowest index: key = area * M + index
    none = torch.iinfo(torch.int64).max
    key = torch.where(small, (area * m + torch.arange(m, device=pred.device))[:, None], none)
    best = torch.full((nb, h * w), none, device=pred.device).scatter_reduce(
        0, bi[:, None].expand(-1, h * w), key, "amin")
    covered = best != none
    winner = torch.where(covered, best, 0) % max(m, 1)  # the instance of each pixel (0 where uncovered)
    target = torch.zeros(nb, nc, h * w, device=pred.device)
    target.scatter_(1, cls.view(-1).long()[winner][:, None], covered[:, None].float())
    target = target.view(nb, nc, h, w)
    logits = pred.float()
    bce = F.binary_cross_entropy_with_logits(logits, target)
    p = logits.sigmoid()
    dice = 1 - (2 * (p * target).sum((2, 3)) + 1) / (p.sum((2, 3)) + target.sum((2, 3)) + 1)
    return 0.5 * bce + 0.5 * dice.mean()


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchTargets:
    """One batch's targets as :meth:`SegLoss.loss` reads them; both branches of :class:`E2ESegLoss` share one.

    gt: padded per-image boxes and classes; masks ``(M, H, W)``; imgsz ``(2,)`` input h, w. YOLO26 only:
    proto_masks ``(B, M, h, w)`` bool, the gt masks at prototype resolution (mask-aware assignment);
    semantic, the semantic term of the branch the targets were made with (None for a batch without instances).
    """

    gt: PaddedTargets
    masks: Tensor
    imgsz: Tensor
    proto_masks: Tensor | None = None
    semantic: Tensor | None = None


class SegLoss:
    """Callable ``loss(out, batch) -> (total, items)`` for YOLOv8-seg, or with ``yolo26`` one branch of
    YOLO26-seg's loss (Ultralytics' ``SegmentLoss26``).

    ``total`` is the scalar to back-propagate: the sum of the gained terms times the batch size.
    ``items`` is the detached gained terms named by :attr:`names` (not scaled by batch size):
    ``(box, seg, cls, dfl)``; ``l1`` for ``dfl`` when ``reg_max`` is 1; with ``yolo26`` ``sem`` added.

    ``yolo26``: assignment picks candidates with small gt boxes enlarged to the middle stride and
    scores overlaps by box and mask IoU together (:class:`~engines.train.assigner.TaskAlignedAssigner`'s
    options), and the semantic term (:func:`semantic_loss`, gained as the box term) is added. ``reg_max``
    1 regresses box sides directly: an L1 loss on them (as fractions of the input size) takes DFL's place.
    ``topk2`` narrows each gt's positives after assignment (the one-to-one branch).
    """

    def __init__(
        self, *, nc: int, strides: Sequence[float] | Tensor, reg_max: int = 16,
        gains: LossGains = LossGains(), topk: int = 10, topk2: int | None = None, yolo26: bool = False,
    ) -> None:
        self.nc, self.reg_max, self.gains, self.yolo26 = nc, reg_max, gains, yolo26
        self.strides = torch.as_tensor(strides, dtype=torch.float32).flatten()
        min_side = float(self.strides[1]) if yolo26 and len(self.strides) > 1 else 0.0
        self.assigner = TaskAlignedAssigner(nc=nc, topk=topk, alpha=0.5, beta=6.0, topk2=topk2,
                                            min_side=min_side)
        self.names = (*LOSS_NAMES[:3], "l1_loss" if reg_max == 1 else "dfl_loss",
                      *(("sem_loss",) if yolo26 else ()))

    @classmethod
    def for_model(cls, model: SegmentationModel, *, gains: LossGains = LossGains()) -> SegLoss | E2ESegLoss:
        """The loss a ``SegmentationModel`` trains with: :class:`E2ESegLoss` for a head with one-to-one
        branches (YOLO26), else this (nc, strides and reg_max read from the model)."""
        head = model.head
        nc, reg_max = int(model.nc), int(head.reg_max)
        if head.one2one:
            return E2ESegLoss(nc=nc, strides=model.stride, reg_max=reg_max, gains=gains, yolo26=head.proto26)
        return cls(nc=nc, strides=model.stride, reg_max=reg_max, gains=gains, yolo26=head.proto26)

    def decode(self, anchor_points: Tensor, pred_dist: Tensor) -> Tensor:
        """``(B, A, 4*reg_max)`` logits -> ``(B, A, 4)`` xyxy in grid units (expected bin per side;
        ``reg_max`` 1: the sides themselves)."""
        if self.reg_max == 1:
            return dist2bbox(pred_dist, anchor_points, xywh=False)
        b, a, _ = pred_dist.shape
        proj = torch.arange(self.reg_max, dtype=pred_dist.dtype, device=pred_dist.device)
        dist = pred_dist.view(b, a, 4, self.reg_max).softmax(3) @ proj
        return dist2bbox(dist, anchor_points, xywh=False)

    def __call__(self, out: SegOutput, batch: SegTargets) -> tuple[Tensor, Tensor]:
        return self.loss(out, self.targets(out, batch))

    def targets(self, out: SegOutput, batch: SegTargets) -> BatchTargets:
        """The batch's targets on the outputs' device, as :meth:`loss` reads them (for YOLO26 with the gt
        masks at prototype resolution and the semantic term, which depend only on the batch and
        ``out``'s prototype and semantic maps)."""
        f0 = out.feats[0]
        dev = f0.device
        imgsz = torch.tensor(f0.shape[2:], device=dev, dtype=torch.float32) * self.strides[0].to(dev)
        gt = pad_targets(batch.cls.to(dev), batch.bboxes.to(dev), batch.batch_idx.to(dev), batch_size=f0.shape[0],
                         imgsz=imgsz)
        masks = batch.masks.to(dev)
        if not self.yolo26:
            return BatchTargets(gt=gt, masks=masks, imgsz=imgsz)
        if out.semantic is None:
            raise ValueError("a YOLO26 loss needs the model's semantic output (SegTrainOutput.semantic)")
        mh, mw = out.proto.shape[-2:]
        # without instances nothing is positive, and the term is 0 whatever its value
        sem = semantic_loss(out.semantic, masks, batch.cls.to(dev), batch.batch_idx.to(dev)) if len(masks) else None
        return BatchTargets(gt=gt, masks=masks, imgsz=imgsz, proto_masks=gt_masks_at(masks, gt.inst, (mh, mw)),
                            semantic=sem)

    def loss(self, out: SegOutput, t: BatchTargets) -> tuple[Tensor, Tensor]:
        """``(total, items)`` of ``out`` against targets from :meth:`targets`."""
        feats = [f.float() for f in out.feats]
        bs, no = feats[0].shape[:2]
        pred = torch.cat([f.view(bs, no, -1) for f in feats], 2).permute(0, 2, 1)  # (B, A, no)
        pred_dist, pred_scores = pred.split((4 * self.reg_max, self.nc), 2)
        coeffs = out.coeffs.float().permute(0, 2, 1)  # (B, A, nm)
        proto = out.proto.float()
        anchors, stride_t = make_anchors(feats, self.strides.to(pred.device), 0.5)
        gt, masks, imgsz = t.gt, t.masks, t.imgsz

        pred_boxes = self.decode(anchors, pred_dist)  # grid units
        mask_in = None
        if t.proto_masks is not None:
            scale = proto.shape[-2] / (feats[0].shape[2] * float(self.strides[0]))  # prototype px per input px
            mask_in = MaskInputs(coeffs=coeffs.detach(), proto=proto.detach(), gt_masks=t.proto_masks, scale=scale)
        asg = self.assigner(pred_scores.detach().sigmoid(), pred_boxes.detach() * stride_t,
                            anchors * stride_t, gt.labels, gt.boxes, gt.valid, mask_in)
        score_sum = asg.scores.sum().clamp(min=1)

        cls = F.binary_cross_entropy_with_logits(pred_scores, asg.scores, reduction="none").sum() / score_sum
        box, dfl = self._box_losses(pred_dist, pred_boxes, anchors, stride_t, asg, score_sum, imgsz)
        seg = self._seg_loss(asg, gt, masks, proto, coeffs, imgsz)
        g = self.gains
        terms = [box * g.box, seg * g.box, cls * g.cls, dfl * g.dfl]
        if self.yolo26:
            terms.append(self._sem_loss(out.semantic, asg, t.semantic) * g.box)
        items = torch.stack(terms)
        return items.sum() * bs, items.detach()

    def _box_losses(
        self, pred_dist: Tensor, pred_boxes: Tensor, anchors: Tensor, stride_t: Tensor,
        asg: Assignment, score_sum: Tensor, imgsz: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """CIoU and DFL (``reg_max`` 1: L1) over positives, weighted by their soft target score; zero
        without positives while keeping ``pred_dist`` in the graph (DDP needs every parameter to get a
        gradient)."""
        fg = asg.fg_mask
        weight = asg.scores.sum(-1)[fg]  # (F,)
        target = asg.bboxes / stride_t  # grid units
        iou = bbox_ciou(pred_boxes[fg], target[fg])
        box = ((1.0 - iou) * weight).sum() / score_sum
        if self.reg_max == 1:
            # sides in input pixels over the input's width (l, r) or height (t, b)
            scale = stride_t / imgsz[[1, 0, 1, 0]]  # (A, 4)
            ltrb = torch.cat((anchors - target[..., :2], target[..., 2:] - anchors), -1) * scale
            pred = pred_dist[fg] * scale.expand_as(pred_dist)[fg]
            l1 = F.l1_loss(pred, ltrb[fg], reduction="none").mean(-1)
            return box, (l1 * weight).sum() / score_sum
        ltrb = bbox2dist(anchors, target, self.reg_max - 1)[fg]  # (F, 4)
        per_side = dfl_loss(pred_dist[fg].reshape(-1, self.reg_max), ltrb.reshape(-1), self.reg_max)
        dfl = (per_side.view(-1, 4).mean(-1) * weight).sum() / score_sum
        return box, dfl

    @staticmethod
    def _sem_loss(semantic: Tensor | None, asg: Assignment, value: Tensor | None) -> Tensor:
        """The semantic term ``value`` when the batch has positives (as Ultralytics: else 0, graph kept)."""
        if semantic is None:
            raise ValueError("a YOLO26 loss needs the model's semantic output (SegTrainOutput.semantic)")
        return value if value is not None and bool(asg.fg_mask.any()) else (semantic * 0).sum()

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


class E2EOutput(SegOutput, Protocol):
    """A model's train output with its one-to-one branches' (``engines.nn.model.SegTrainOutput``)."""

    one2one: SegOutput | None


def one2many_weight(epoch: int, epochs: int) -> float:
    """The one-to-many branch's share of :class:`E2ESegLoss` in ``epoch`` (0-based) of ``epochs``: 0.8
    at the first, falling linearly to 0.1 at the last (Ultralytics' ``E2ELoss`` schedule)."""
    return max(1 - epoch / max(epochs - 1, 1), 0.0) * (0.8 - 0.1) + 0.1


class E2ESegLoss:
    """YOLO26-seg's end-to-end loss (Ultralytics' ``E2ELoss``): its one-to-many branches trained as
    YOLOv8's (task-aligned top 10) and its one-to-one branches, which NMS-free inference runs, with only
    the best anchor of each object's top 7 positive, so that each object gets one box. The total is the
    two weighted ``w * o2m + (1 - w) * o2o`` with ``w`` falling over the run (:func:`one2many_weight`,
    set by :meth:`set_epoch`); ``items`` are the one-to-one branch's. The model feeds the one-to-one
    branches detached features and prototypes, so only the one-to-many loss trains the shared layers.
    """

    def __init__(self, *, nc: int, strides: Sequence[float] | Tensor, reg_max: int = 16,
                 gains: LossGains = LossGains(), yolo26: bool = True) -> None:
        self.one2many = SegLoss(nc=nc, strides=strides, reg_max=reg_max, gains=gains, yolo26=yolo26,
                                topk=10)
        self.one2one = SegLoss(nc=nc, strides=strides, reg_max=reg_max, gains=gains, yolo26=yolo26,
                               topk=7, topk2=1)
        self.names, self.strides = self.one2one.names, self.one2one.strides
        self.o2m = one2many_weight(0, 1)

    def set_epoch(self, epoch: int, epochs: int) -> None:
        self.o2m = one2many_weight(epoch, epochs)

    def __call__(self, out: E2EOutput, batch: SegTargets) -> tuple[Tensor, Tensor]:
        if out.one2one is None:
            raise ValueError("an end-to-end loss needs the model's one-to-one outputs "
                             "(SegTrainOutput.one2one)")
        # One set of targets: the one-to-one outputs have the same shapes, and their semantic map is the
        # one-to-many one detached, so its term is the same value, kept out of the graph.
        t = self.one2many.targets(out, batch)
        many, _ = self.one2many.loss(out, t)
        o2o_sem = None if t.semantic is None else t.semantic.detach()
        one, items = self.one2one.loss(out.one2one, replace(t, semantic=o2o_sem))
        return many * self.o2m + one * (1 - self.o2m), items
