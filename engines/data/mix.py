"""Augmentations that combine an image with instances from elsewhere: MixUp, CutMix, Copy-Paste, plus the
flips. Imports nothing from pipeline/.

Ultralytics' semantics (``ultralytics/data/augment.py``); what differs is exactness. Pasted pixels are
exactly those whose centres lie inside the pasted polygons (``polygons.fill``, the rule ``rasterize``
masks with), not ``cv2.drawContours`` of rounded vertices; an instance cut by a CutMix rectangle is clipped
to it exactly, not clamped; and an instance partly hidden by a pasted one loses the hidden pixels from its
mask (``visible``; Ultralytics keeps them). Every random draw comes from the Generator passed in.

Coordinates are pixels of the image (``engines.data.polygons``); boxes are xyxy float32.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from engines.data.polygons import (
    SEGMENT_POINTS,
    box_candidates,
    clip_polygon,
    fill,
    rasterize,
    resample_segments,
)

# Ultralytics' thresholds. Copy-Paste pastes an instance only if its box covers under 30 % of each existing
# box; CutMix cuts where no existing box reaches (3 tries) and brings the other sample's instances whose box
# has at least 1 % inside the cut (segment datasets; 10 % for boxes only).
PASTE_IOA_MAX = 0.30
CUT_TRIES = 3
CUT_IOA_MIN = 0.01


@dataclass(frozen=True, slots=True)
class Labelled:
    """An image and its instances, as the train-mode transforms hand them to each other.

    img: (H, W, 3) uint8 BGR. xy: (N, K, 2) float64 polygons in img's pixels (they may reach beyond it).
    cls: (N,) int64. boxes: (N, 4) float32 xyxy; after the random affine each polygon's extent inside the
    image, before it the polygon's extent (what ``box_candidates`` compares against). hidden_by: (N, N) bool
    or None (nothing hidden): ``hidden_by[i, j]`` when instance j was pasted over instance i. An instance the
    box filter drops hides nothing any more: what it still covered was a sliver, or under 1 % of its box.
    """

    img: np.ndarray
    xy: np.ndarray
    cls: np.ndarray
    boxes: np.ndarray
    hidden_by: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.cls)
        if self.img.ndim != 3 or self.img.shape[2] != 3 or self.img.dtype != np.uint8:
            raise ValueError(f"Labelled.img: expected (H, W, 3) uint8, got {self.img.shape} {self.img.dtype}")
        if self.xy.ndim != 3 or self.xy.shape[::2] != (n, 2) or self.cls.shape != (n,) or self.boxes.shape != (n, 4):
            raise ValueError(f"Labelled: expected xy (N, K, 2), cls (N,), boxes (N, 4) with one N, got "
                             f"{self.xy.shape}, {self.cls.shape}, {self.boxes.shape}")
        if self.hidden_by is not None and self.hidden_by.shape != (n, n):
            raise ValueError(f"Labelled.hidden_by: expected ({n}, {n}), got {self.hidden_by.shape}")

    def take(self, idx: np.ndarray) -> Labelled:
        """The same image with only instances ``idx`` (int indices or a bool mask)."""
        hidden = None if self.hidden_by is None else self.hidden_by[idx][:, idx]
        return Labelled(self.img, self.xy[idx], self.cls[idx], self.boxes[idx], hidden)


def flip(a: Labelled, *, vertical: bool = False) -> Labelled:
    """Mirror the image and its instances left-right (or top-bottom). The image is a new C-contiguous array
    (``cv2.flip``: 20x faster to paste from than a reversed view).

    Pixel j spans [j, j+1), so it lands on [w-1-j, w-j): the coordinate map is x -> w - x.
    """
    axis = 1 if vertical else 0
    size = a.img.shape[1 - axis]
    xy = a.xy.copy()
    xy[..., axis] = size - xy[..., axis]
    boxes = a.boxes.copy()
    boxes[:, [axis, axis + 2]] = size - a.boxes[:, [axis + 2, axis]]
    return Labelled(cv2.flip(a.img, 0 if vertical else 1), xy, a.cls, boxes, a.hidden_by)


def box_ioa(box1: np.ndarray, box2: np.ndarray, eps: float = 1e-7) -> np.ndarray:
    """Intersection of each box1 with each box2 over box2's area: (N, 4), (M, 4) xyxy -> (N, M)."""
    lt = np.maximum(box1[:, None, :2], box2[None, :, :2])
    rb = np.minimum(box1[:, None, 2:], box2[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area = (box2[:, 2] - box2[:, 0]) * (box2[:, 3] - box2[:, 1])
    return inter / (area + eps)


def mixup(a: Labelled, b: Labelled, r: float) -> Labelled:
    """MixUp: ``a * r + b * (1 - r)`` (truncated to uint8, as Ultralytics) carrying both samples' instances.
    Ultralytics draws ``r`` from Beta(32, 32): close to an even blend."""
    if a.img.shape != b.img.shape:
        raise ValueError(f"mixup: images of different sizes {a.img.shape} and {b.img.shape}")
    return _join(a, b, (a.img * r + b.img * (1 - r)).astype(np.uint8))


def cutmix(a: Labelled, b: Labelled, rng: np.random.Generator) -> Labelled:
    """CutMix: paste a random rectangle of ``b`` into ``a`` with b's instances inside it.

    Ultralytics' rule: draw ``CUT_TRIES`` rectangles (side ratio sqrt(1 - lam), lam ~ Beta(1, 1), at a random
    centre), keep one that no box of ``a`` touches (so a's masks stay whole), and bring b's instances whose
    box has at least ``CUT_IOA_MIN`` inside it, clipped to it; nothing changes when no rectangle is free or
    none of b's instances reaches it. A clipped instance left 2 px wide or less, or with 1 % of its box or
    less, is dropped as the affine's ``box_candidates`` drops such slivers (Ultralytics keeps them).
    """
    if a.img.shape != b.img.shape:
        raise ValueError(f"cutmix: images of different sizes {a.img.shape} and {b.img.shape}")
    h, w = a.img.shape[:2]
    areas = np.array([_cut_area(rng, w, h) for _ in range(CUT_TRIES)], np.float32)
    free = np.nonzero(box_ioa(areas, a.boxes).sum(1) <= 0)[0]
    if not len(free):
        return a
    area = areas[rng.choice(free)]
    hit = np.nonzero(box_ioa(area[None], b.boxes)[0] >= CUT_IOA_MIN)[0]
    if not len(hit):
        return a
    x1, y1, x2, y2 = (int(v) for v in area)
    img = a.img.copy()
    img[y1:y2, x1:x2] = b.img[y1:y2, x1:x2]
    polys = [clip_polygon(b.xy[i], x1, y1, x2, y2) for i in hit]
    boxes = np.array([[*p.min(0), *p.max(0)] if len(p) >= 3 else [0, 0, 0, 0] for p in polys], np.float32)
    keep = box_candidates(b.boxes[hit], boxes, area_thr=0.01)
    cut = b.take(hit[keep])
    cut = Labelled(img, _stack([p for p, k in zip(polys, keep, strict=True) if k]), cut.cls, boxes[keep],
                   cut.hidden_by)
    return _join(a, cut, img)


def copy_paste(a: Labelled, src: Labelled, fraction: float) -> Labelled:
    """Copy-Paste: paste instances of ``src`` (a's mirror image in "flip" mode, another sample in "mixup" mode,
    same size as a) with their pixels into ``a``.

    Ultralytics' rule: a source instance is eligible when its box covers under ``PASTE_IOA_MAX`` of every box
    of ``a``; the ``round(fraction * eligible)`` least-overlapping are pasted. Nothing changes when ``a`` has
    no instances. What a pasted instance hides of an existing one (under 30 % of its box) is recorded in
    ``hidden_by`` and later cut from that one's mask (``visible``).
    """
    if not len(a.cls) or not fraction:
        return a
    if a.img.shape != src.img.shape:
        raise ValueError(f"copy_paste: images of different sizes {a.img.shape} and {src.img.shape}")
    ioa = box_ioa(src.boxes, a.boxes)
    eligible = np.nonzero((ioa < PASTE_IOA_MAX).all(1))[0]
    eligible = eligible[np.argsort(ioa.max(1)[eligible], kind="stable")]
    chosen = eligible[: round(fraction * len(eligible))]
    if not len(chosen):
        return a
    pasted = src.take(chosen)
    img = a.img.copy()
    h, w = img.shape[:2]
    x0, y0 = (max(int(np.floor(v)), 0) for v in pasted.boxes[:, :2].min(0))
    x1, y1 = min(int(np.ceil(pasted.boxes[:, 2].max())), w), min(int(np.ceil(pasted.boxes[:, 3].max())), h)
    if x1 > x0 and y1 > y0:  # only the pasted boxes' hull is touched; cv2.copyTo writes into the view
        where = fill(pasted.xy - (x0, y0), y1 - y0, x1 - x0)
        cv2.copyTo(src.img[y0:y1, x0:x1], where.view(np.uint8), img[y0:y1, x0:x1])
    return _join(a, pasted, img, b_covers_a=ioa[chosen].T > 0)


def visible(a: Labelled, ratio: int) -> tuple[Labelled, np.ndarray]:
    """The instance masks at 1/``ratio`` (``rasterize``), less what pasted instances hide (``hidden_by``).

    A hidden pixel is one whose centre lies inside the pasting instance's polygon, so a hidden instance's
    mask and its hider's are exact complements where they meet. The box of a partly hidden instance shrinks
    to what is left of it (to the pixel: the full-resolution pixels left, and the mask's); an instance with
    nothing left is dropped. Returns (the instances kept, their (N', H/ratio, W/ratio) uint8 masks).
    """
    h, w = a.img.shape[:2]
    masks = rasterize(a.xy, h, w, ratio)
    if a.hidden_by is None or not a.hidden_by.any():
        return a, masks
    whole = masks.copy()
    boxes, keep = a.boxes.copy(), np.ones(len(masks), bool)
    for i in np.nonzero(a.hidden_by.any(1))[0]:
        hiders = a.hidden_by[i]
        masks[i] &= ~whole[hiders].any(0)
        x0, y0 = (max(int(np.floor(v)), 0) for v in boxes[i, :2])
        x1, y1 = min(int(np.ceil(boxes[i, 2])), w), min(int(np.ceil(boxes[i, 3])), h)
        if x1 <= x0 or y1 <= y0:
            continue
        left = rasterize([a.xy[i] - (x0, y0)], y1 - y0, x1 - x0)[0].astype(bool)
        left &= ~fill(a.xy[hiders] - (x0, y0), y1 - y0, x1 - x0)
        ys, xs = np.nonzero(left)
        ms, ns = np.nonzero(masks[i])  # a mask pixel's centre (ratio * (n + 1/2)) stays inside the box
        if not len(xs) and not len(ns):
            keep[i] = False
            continue
        lo = np.array([x0 + xs.min(initial=w), y0 + ys.min(initial=h)], np.float64)
        hi = np.array([x0 + xs.max(initial=-1) + 1, y0 + ys.max(initial=-1) + 1], np.float64)
        if len(ns):
            lo = np.minimum(lo, ratio * (np.array([ns.min(), ms.min()]) + 0.5))
            hi = np.maximum(hi, ratio * (np.array([ns.max(), ms.max()]) + 0.5))
        boxes[i] = [*np.maximum(boxes[i, :2], lo), *np.minimum(boxes[i, 2:], hi)]
    kept = Labelled(a.img, a.xy, a.cls, boxes, a.hidden_by).take(keep)
    return kept, masks[keep]


def _cut_area(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """One CutMix rectangle (x1, y1, x2, y2) inside a (h, w) image (Ultralytics' ``_rand_bbox``)."""
    ratio = np.sqrt(1.0 - rng.beta(1.0, 1.0))
    cw, ch = int(w * ratio), int(h * ratio)
    cx, cy = int(rng.integers(w)), int(rng.integers(h))
    return np.clip([cx - cw // 2, cy - ch // 2, cx + cw // 2, cy + ch // 2], 0, [w, h, w, h])


def _join(a: Labelled, b: Labelled, img: np.ndarray, *, b_covers_a: np.ndarray | None = None) -> Labelled:
    """a's instances then b's, on ``img``. b_covers_a: (len(a), len(b)) bool, which of b's instances were
    pasted over which of a's (None: b's pixels were blended in or fill a free place)."""
    n, m = len(a.cls), len(b.cls)
    if not m or not n:
        xy = a.xy if n or not m else b.xy
    elif a.xy.shape[1] == b.xy.shape[1]:
        xy = np.concatenate((a.xy, b.xy))
    else:  # one point count per array
        xy = _stack([*a.xy, *b.xy])
    hidden = None
    if a.hidden_by is not None or b.hidden_by is not None or b_covers_a is not None:
        hidden = np.zeros((n + m, n + m), bool)
        for block, at in ((a.hidden_by, np.s_[:n, :n]), (b.hidden_by, np.s_[n:, n:]), (b_covers_a, np.s_[:n, n:])):
            if block is not None:
                hidden[at] = block
    return Labelled(img, xy.astype(np.float64, copy=False), np.concatenate((a.cls, b.cls)).astype(np.int64),
                    np.concatenate((a.boxes, b.boxes)).astype(np.float32), hidden)


def _stack(polys: Sequence[np.ndarray]) -> np.ndarray:
    """Polygons (k_i, 2) -> (N, max k_i, 2) float64: shorter ones get points added along their edges."""
    if not polys:
        return np.zeros((0, SEGMENT_POINTS, 2))
    n = max(len(p) for p in polys)
    return np.stack([p if len(p) == n else resample_segments([p], n, np.float64)[0] for p in polys])
