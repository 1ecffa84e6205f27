"""Non-maximum suppression in plain torch (CPU and CUDA). Imports engines.errors and engines.ops.boxes.

``nms`` is greedy NMS with torchvision's semantics: boxes visited by descending score (ties keep the
input order), a box is dropped when its IoU with an already kept box is strictly above the threshold.
``non_max_suppression`` is Ultralytics' segmentation post-NMS (single label per box) on top of it.
``topk_rows`` is its NMS-free counterpart for end-to-end (YOLO26) heads, and ``select_rows`` picks one.
torchvision.ops.nms is used when torchvision imports and runs; otherwise the torch version below.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch

from engines.errors import ConfigError
from engines.ops.boxes import box_iou, xywh2xyxy

# Boxes per block of the blocked greedy pass (see _blocked_nms). Each block costs a (B, B) IoU matrix,
# the culling of later boxes by its kept ones, and a host sync. On 2 CPU cores, 1 thread, 1000 and 8400
# candidates (`python benchmarks/postprocess.py --nms-blocks`): 32..256 within noise at 1000 (7-8 ms),
# 64 best at 8400 (104 ms vs 144 at 128, 415 at 1024). Not yet measured on CUDA, where fewer, larger
# blocks (fewer syncs) may win.
NMS_BLOCK = 64
# After this many fixed-point rounds in one block the rest of that block is resolved sequentially
# (only adversarial chains of boxes, each overlapping just the next, need more rounds).
_MAX_ROUNDS = 32


@dataclass(frozen=True, slots=True, kw_only=True)
class NMSConfig:
    """Post-processing thresholds (Ultralytics' predict defaults).

    conf: minimum class score in [0, 1] (strictly greater passes). iou: IoU in [0, 1] above which the
    lower-scored box is suppressed. classes: keep only these class ids (None keeps all). agnostic: one
    NMS over all classes instead of one per class. max_det: boxes kept per image. max_nms: candidates
    fed to NMS (the highest-scored). max_wh: per-class coordinate offset (pixels) for class-aware NMS.
    """

    conf: float = 0.25
    iou: float = 0.7
    classes: tuple[int, ...] | None = None
    agnostic: bool = False
    max_det: int = 300
    max_nms: int = 30000
    max_wh: int = 7680

    def __post_init__(self) -> None:
        for name in ("conf", "iou"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ConfigError(name, f"expected a value in [0, 1], got {v!r}")
        for name in ("max_det", "max_nms", "max_wh"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(name, f"expected an integer >= 1, got {v!r}")
        if self.classes is not None:
            if isinstance(self.classes, (str, bytes)) or not all(
                    isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in self.classes):
                raise ConfigError("classes", f"expected non-negative integer class ids, got {self.classes!r}")
            object.__setattr__(self, "classes", tuple(self.classes))


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou: float, *, max_keep: int | None = None) -> torch.Tensor:
    """Greedy NMS. boxes (n, 4) xyxy float, scores (n,) float -> kept indices (k,) int64, best first.

    Matches torchvision.ops.nms: same keep set, same order (descending score, ties by input index).
    max_keep stops once that many boxes are kept (the result is then the first max_keep of the full
    answer); it lets the caller skip work it would discard. Empty input gives an empty result.
    """
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"nms boxes: expected shape (n, 4), got {tuple(boxes.shape)}")
    if scores.shape != boxes.shape[:1]:
        raise ValueError(f"nms scores: expected shape ({boxes.shape[0]},), got {tuple(scores.shape)}")
    if boxes.shape[0] == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    tv = _torchvision_nms()
    if tv is not None:
        keep = tv(boxes, scores, float(iou))
        return keep if max_keep is None else keep[:max_keep]
    return _blocked_nms(boxes, scores, float(iou), max_keep=max_keep)


def _blocked_nms(boxes: torch.Tensor, scores: torch.Tensor, iou: float, *, max_keep: int | None,
                 block: int | None = None) -> torch.Tensor:
    """Greedy NMS over score-sorted blocks.

    Take the best ``block`` boxes still alive, solve their greedy answer with
    :func:`_greedy_fixed_point`, then drop every later box that one of the newly kept boxes
    suppresses. Detections come in clusters, so a few blocks usually clear most candidates and the cost
    stays near O(n * kept) instead of the O(n^2) of a full IoU matrix.
    """
    block = block or NMS_BLOCK
    order = torch.sort(scores, descending=True, stable=True).indices
    remaining = order  # input indices, best first, not yet decided, not suppressed by anything kept
    kept: list[torch.Tensor] = []
    n_kept = 0
    while remaining.numel() and (max_keep is None or n_kept < max_keep):
        blk, rest = remaining[:block], remaining[block:]
        blk_boxes = boxes[blk]
        suppress = (box_iou(blk_boxes, blk_boxes) > iou).triu_(diagonal=1)  # [i, j]: i (better) drops j
        keep_blk = _greedy_fixed_point(suppress, torch.ones_like(blk, dtype=torch.bool))
        kept.append(blk[keep_blk])
        n_kept += kept[-1].numel()
        if rest.numel():
            remaining = rest[~(box_iou(blk_boxes[keep_blk], boxes[rest]) > iou).any(0)]
        else:
            remaining = rest
    keep = torch.cat(kept) if kept else order[:0]
    return keep if max_keep is None else keep[:max_keep]


def _greedy_fixed_point(suppress: torch.Tensor, alive: torch.Tensor) -> torch.Tensor:
    """Greedy keep mask of one block. suppress (B, B) bool upper-triangular, alive (B,) bool -> (B,) bool.

    The greedy answer is the unique x with x = alive & ~any_i(x[i] & suppress[i, :]): entry j depends
    only on entries before it. Iterating that map from x = alive fixes at least one more leading entry
    per round and usually converges in a few rounds, each one dense (B x B) product instead of B
    sequential steps; any fixed point reached is the greedy answer because the fixed point is unique.
    """
    s = suppress.to(torch.float32)
    x = alive
    for _ in range(_MAX_ROUNDS):
        nxt = alive & ((x.to(torch.float32) @ s) == 0)
        if torch.equal(nxt, x):
            return x
        x = nxt
    return _greedy_sequential(suppress, alive)


def _greedy_sequential(suppress: torch.Tensor, alive: torch.Tensor) -> torch.Tensor:
    """The textbook sequential pass, for blocks whose suppression chains are too long to iterate."""
    keep = alive.clone()
    for i in range(keep.shape[0]):
        if keep[i]:
            keep &= ~suppress[i]
    return keep


@functools.cache  # probe once per process: importing torchvision is slow
def _torchvision_nms() -> Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor] | None:
    """torchvision.ops.nms when torchvision imports and its compiled op runs, else None."""
    try:
        import torchvision

        op = torchvision.ops.nms
        op(torch.zeros((1, 4)), torch.zeros(1), 0.5)
    except Exception:  # missing, or built against another torch (the op then fails to load)
        return None
    return op


def non_max_suppression(pred: torch.Tensor, cfg: NMSConfig, *, nc: int) -> list[torch.Tensor]:
    """Ultralytics' ``non_max_suppression`` for segmentation heads (multi_label=False).

    pred: (N, 4 + nc + nm, A) float, the model's eval output: boxes xywh in model-input pixels, nc
      sigmoid class scores, nm mask coefficients (32 for YOLOv8-seg), A anchors.
    Returns one float32 tensor per image, (n, 6 + nm), rows ``x1, y1, x2, y2, score, class,
    coeffs...`` in model-input pixels, best score first, n <= cfg.max_det.
    """
    if pred.ndim != 3 or pred.shape[1] < 4 + nc:
        raise ValueError(f"non_max_suppression pred: expected (N, 4 + {nc} + nm, A), got {tuple(pred.shape)}")
    bs, nm = pred.shape[0], pred.shape[1] - 4 - nc
    candidates = pred[:, 4:4 + nc].amax(1) > cfg.conf  # (N, A)
    pred = pred.transpose(-1, -2)  # (N, A, 4 + nc + nm)
    classes = None if cfg.classes is None else torch.tensor(cfg.classes, device=pred.device)
    out = []
    for xi in range(bs):
        x = pred[xi][candidates[xi]]
        if not x.shape[0]:
            out.append(torch.zeros((0, 6 + nm), dtype=torch.float32, device=pred.device))
            continue
        box, cls, coeffs = xywh2xyxy(x[:, :4]), x[:, 4:4 + nc], x[:, 4 + nc:]
        conf, j = cls.max(1, keepdim=True)
        x = torch.cat((box, conf, j.float(), coeffs), 1)[conf.view(-1) > cfg.conf]
        if classes is not None:
            x = x[(x[:, 5:6] == classes).any(1)]
        if x.shape[0] > cfg.max_nms:
            x = x[torch.sort(x[:, 4], descending=True, stable=True).indices[:cfg.max_nms]]
        # Class-aware NMS in one call: shift each class's boxes into its own region of the plane.
        offsets = x[:, 5:6] * (0 if cfg.agnostic else cfg.max_wh)
        keep = nms(x[:, :4] + offsets, x[:, 4], cfg.iou, max_keep=cfg.max_det)[:cfg.max_det]
        out.append(x[keep].float())
    return out


# Candidates an end-to-end head's top-k keeps at least (Ultralytics' predictor raises the head's max_det to
# this before filtering by score and class, so a class filter still finds its objects).
E2E_TOPK = 300


def topk_rows(pred: torch.Tensor, cfg: NMSConfig, *, nc: int) -> list[torch.Tensor]:
    """Ultralytics' post-processing of an end-to-end (NMS-free, YOLO26) head's output: its one-to-one
    branch scores each object once, so the best ``max(cfg.max_det, E2E_TOPK)`` (anchor, class) pairs are
    taken (the anchors of best top score first, then the best of their classes; one anchor may give
    several classes, as there), those above ``cfg.conf`` and of ``cfg.classes`` kept, then the first
    ``cfg.max_det``. ``cfg.agnostic``: one class per anchor, its best. ``cfg.iou`` plays no part.

    pred and the result as :func:`non_max_suppression`'s.
    """
    if pred.ndim != 3 or pred.shape[1] < 4 + nc:
        raise ValueError(f"topk_rows pred: expected (N, 4 + {nc} + nm, A), got {tuple(pred.shape)}")
    pred = pred.transpose(-1, -2)  # (N, A, 4 + nc + nm)
    box, scores, coeffs = xywh2xyxy(pred[..., :4]), pred[..., 4:4 + nc], pred[..., 4 + nc:]
    k = min(max(cfg.max_det, E2E_TOPK), pred.shape[1])
    if cfg.agnostic:
        best, labels = scores.max(-1)
        conf, index = best.topk(k, dim=1)
        cls = labels.gather(1, index).float()
    else:
        anchors = scores.max(-1)[0].topk(k, dim=1)[1]  # (N, k)
        conf, flat = scores.gather(1, anchors[..., None].expand(-1, -1, nc)).flatten(1).topk(k, dim=1)
        cls, index = (flat % nc).float(), anchors.gather(1, flat // nc)
    classes = None if cfg.classes is None else torch.tensor(cfg.classes, device=pred.device)
    out = []
    for xi in range(pred.shape[0]):
        i = index[xi]
        rows = torch.cat((box[xi, i], conf[xi, :, None], cls[xi, :, None], coeffs[xi, i]), 1)
        keep = conf[xi] > cfg.conf
        if classes is not None:
            keep &= (cls[xi, :, None] == classes).any(1)
        out.append(rows[keep][:cfg.max_det].float())
    return out


def select_rows(pred: torch.Tensor, cfg: NMSConfig, *, nc: int, nms_free: bool = False) -> list[torch.Tensor]:
    """A model's eval output -> its detections' rows: :func:`topk_rows` for an NMS-free (one-to-one) head,
    :func:`non_max_suppression` otherwise."""
    return (topk_rows if nms_free else non_max_suppression)(pred, cfg, nc=nc)
