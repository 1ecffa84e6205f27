"""Polygon geometry for labels: resampling, exact clipped boxes, box filtering, mask rasterisation.

Pure numpy/cv2, no state. Coordinates are pixels of the image they live on, origin at the top-left
corner of the top-left pixel (pixel ``j`` spans ``[j, j+1)``), x right, y down.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

# Ultralytics resamples every polygon to 1000 points so that (a) instances stack into one array and
# (b) clamping points to a crop edge follows the true edge closely. Keeping the original vertices
# among the resampled points keeps rectangles and other exact shapes exact.
SEGMENT_POINTS = 1000
_SHIFT = 4  # fixed-point bits for cv2.fillPoly: 1/16-pixel vertex precision


def resample_segments(segments: list[np.ndarray], n: int = SEGMENT_POINTS) -> np.ndarray:
    """Resample closed polygons to ``n`` points each (Ultralytics' rule), original vertices kept.

    segments: list of (k_i, 2) arrays. Returns (N, n', 2) float32 where n' = n, or max(k_i)+1 when a
    polygon already has n or more points (so no vertex is dropped).
    """
    if not segments:
        return np.zeros((0, n, 2), np.float32)
    kmax = max(len(s) for s in segments)
    n = kmax + 1 if kmax >= n else n
    out = np.empty((len(segments), n, 2), np.float32)
    for i, s in enumerate(segments):
        s = np.asarray(s, np.float32)
        if len(s) == n:
            out[i] = s
            continue
        closed = np.concatenate((s, s[:1]), 0)
        xp = np.arange(len(closed))
        x = np.concatenate((np.linspace(0, len(closed) - 1, n - len(closed)), xp))
        x.sort()  # original vertices stay among the samples
        out[i, :, 0] = np.interp(x, xp, closed[:, 0])
        out[i, :, 1] = np.interp(x, xp, closed[:, 1])
    return out


def polygon_boxes(xy: np.ndarray, width: float, height: float) -> np.ndarray:
    """Bounding boxes of polygons intersected with the image ``[0,width] x [0,height]``.

    xy: (N, K, 2) pixel polygons (closed implicitly). Returns (N, 4) float32 xyxy; all zeros for a
    polygon that does not overlap the image. Exact: the extremes of polygon ∩ rectangle are among the
    vertices inside, the edge/border crossings and the image corners inside the polygon.
    """
    out = np.zeros((len(xy), 4), np.float32)
    if len(xy) == 0:
        return out
    lo, hi = xy.min(1), xy.max(1)
    inside = (lo[:, 0] >= 0) & (lo[:, 1] >= 0) & (hi[:, 0] <= width) & (hi[:, 1] <= height)
    out[inside] = np.concatenate((lo, hi), 1)[inside]
    cross = ~inside & (hi[:, 0] >= 0) & (hi[:, 1] >= 0) & (lo[:, 0] <= width) & (lo[:, 1] <= height)
    if cross.any():  # only polygons cut by the border need the exact clip
        out[cross] = _clipped_boxes(xy[cross].astype(np.float64), width, height)
    return out


def _clipped_boxes(xy: np.ndarray, width: float, height: float) -> np.ndarray:
    """polygon_boxes for polygons crossing the border: (N, K, 2) float64 -> (N, 4)."""
    x, y = xy[..., 0], xy[..., 1]
    inside = (x >= 0) & (x <= width) & (y >= 0) & (y <= height)
    d = np.roll(xy, -1, axis=1) - xy
    px = [np.where(inside, x, np.nan)]
    py = [np.where(inside, y, np.nan)]
    with np.errstate(divide="ignore", invalid="ignore"):
        for axis, bound, lim in ((0, 0.0, height), (0, width, height), (1, 0.0, width), (1, height, width)):
            t = (bound - xy[..., axis]) / d[..., axis]
            other = xy[..., 1 - axis] + t * d[..., 1 - axis]
            ok = (t >= 0) & (t <= 1) & (other >= 0) & (other <= lim)
            on, off = np.where(ok, bound, np.nan), np.where(ok, other, np.nan)
            px.append(on if axis == 0 else off)
            py.append(off if axis == 0 else on)
    corners = np.array([[0, 0], [width, 0], [0, height], [width, height]], np.float64)
    cin = _points_in_polygons(corners, xy)  # (N, 4)
    px.append(np.where(cin, corners[:, 0], np.nan))
    py.append(np.where(cin, corners[:, 1], np.nan))
    px, py = np.concatenate(px, 1), np.concatenate(py, 1)
    # fmin/fmax skip NaN (no all-NaN warning); rows without any point are zeroed
    boxes = np.stack((np.fmin.reduce(px, 1), np.fmin.reduce(py, 1), np.fmax.reduce(px, 1),
                      np.fmax.reduce(py, 1)), 1)
    boxes[np.isnan(px).all(1)] = 0
    return boxes


def _points_in_polygons(pts: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Even-odd test of P points against N polygons: (P, 2), (N, K, 2) -> (N, P) bool."""
    x1, y1 = xy[:, None, :, 0], xy[:, None, :, 1]
    nxt = np.roll(xy, -1, axis=1)
    x2, y2 = nxt[:, None, :, 0], nxt[:, None, :, 1]
    px, py = pts[None, :, None, 0], pts[None, :, None, 1]
    straddle = (y1 > py) != (y2 > py)
    with np.errstate(divide="ignore", invalid="ignore"):
        xcross = x1 + (py - y1) * (x2 - x1) / (y2 - y1)
    return ((straddle & (px < xcross)).sum(-1) % 2).astype(bool)


def box_candidates(box1: np.ndarray, box2: np.ndarray, *, wh_thr: float = 2, ar_thr: float = 100,
                   area_thr: float = 0.1, eps: float = 1e-16) -> np.ndarray:
    """Ultralytics' filter of boxes after augmentation: (N,4) xyxy before (scaled) and after -> (N,) bool.

    Keeps a box whose sides exceed ``wh_thr`` pixels, whose aspect ratio is under ``ar_thr`` and that
    kept more than ``area_thr`` of its (scale-adjusted) area.
    """
    w1, h1 = box1[:, 2] - box1[:, 0], box1[:, 3] - box1[:, 1]
    w2, h2 = box2[:, 2] - box2[:, 0], box2[:, 3] - box2[:, 1]
    ar = np.maximum(w2 / (h2 + eps), h2 / (w2 + eps))
    return (w2 > wh_thr) & (h2 > wh_thr) & (w2 * h2 / (w1 * h1 + eps) > area_thr) & (ar < ar_thr)


def rasterize(xy: np.ndarray | Sequence[np.ndarray], height: int, width: int, ratio: int = 1) -> np.ndarray:
    """One filled mask per polygon at 1/``ratio`` resolution.

    xy: (N, K, 2) array or N (k_i, 2) arrays, pixel polygons on a (height, width) image; parts outside the image are clipped by
    the fill. Returns (N, height // ratio, width // ratio) uint8 in {0, 1}; a low-res pixel is set
    when its centre lies inside the polygon (sub-pixel vertex precision, no full-res detour).
    """
    h, w = height // ratio, width // ratio
    masks = np.zeros((len(xy), h, w), np.uint8)
    if len(xy) == 0:
        return masks
    # cv2 puts integer coordinate j at the centre of pixel j, hence the -0.5.
    lim = float(1 << (30 - _SHIFT))  # keep far-away vertices (perspective) inside int32
    for i, p in enumerate(xy):
        q = (np.asarray(p, np.float64) / ratio - 0.5) * (1 << _SHIFT)
        q = np.rint(np.clip(q, -lim, lim)).astype(np.int32)
        cv2.fillPoly(masks[i], [q], 1, lineType=cv2.LINE_8, shift=_SHIFT)
    return masks


def xyxy_to_xywhn(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """(N,4) pixel xyxy -> (N,4) float32 normalised centre-x, centre-y, width, height."""
    out = np.empty((len(boxes), 4), np.float32)
    out[:, 0] = (boxes[:, 0] + boxes[:, 2]) / 2 / width
    out[:, 1] = (boxes[:, 1] + boxes[:, 3]) / 2 / height
    out[:, 2] = (boxes[:, 2] - boxes[:, 0]) / width
    out[:, 3] = (boxes[:, 3] - boxes[:, 1]) / height
    return out


def segments_to_boxes(segments: list[np.ndarray]) -> np.ndarray:
    """(k_i, 2) normalised polygons -> (N, 4) float32 normalised xywh of their extents."""
    if not segments:
        return np.zeros((0, 4), np.float32)
    lo = np.stack([s.min(0) for s in segments])
    hi = np.stack([s.max(0) for s in segments])
    return np.concatenate(((lo + hi) / 2, hi - lo), 1).astype(np.float32)
