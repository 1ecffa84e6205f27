"""Instance masks to YOLO-seg polygons and back, and masks to COCO RLE.

Imports numpy, cv2 and pycocotools only.

A YOLO-seg label holds one polygon per instance, but a visible mask may have several parts (an object
split by an occluder) and holes (a tyre, a wrench ring, an object in front of the middle of another).
``mask_to_polygon`` traces every outer boundary and hole with ``cv2.findContours`` (``RETR_CCOMP``),
keeps the largest part first and stitches every other part and hole into it through a zero-width
bridge between nearest vertices. Filled with ``cv2.fillPoly`` (even-odd parity), the single polygon
reproduces the mask, holes included; the bridges add at most a one-pixel line.

Polygons are float32 ``(k, 2)`` ``(x, y)`` in pixel coordinates of pixel centres (``mask[y, x]``), or
normalised by ``(W, H)`` in label files.
"""

from __future__ import annotations

import cv2
import numpy as np
from pycocotools import mask as mask_utils


def _contours(mask: np.ndarray, epsilon: float, min_area: float) -> list[np.ndarray]:
    cs, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    parts = []
    for c in cs:
        if epsilon > 0:
            c = cv2.approxPolyDP(c, epsilon, True)
        if len(c) >= 3 and cv2.contourArea(c) >= min_area:
            parts.append(c.reshape(-1, 2))
    parts.sort(key=lambda p: -cv2.contourArea(p))
    return parts


def _bridge(poly: np.ndarray, part: np.ndarray) -> np.ndarray:
    """``poly`` with ``part`` spliced in at their nearest vertices: ``poly[:i+1], part[j:], part[:j+1],
    poly[i:]``. The bridge ``poly[i] - part[j]`` is walked there and back, so it encloses no area."""
    d = ((poly[:, None, :].astype(np.int64) - part[None, :, :]) ** 2).sum(-1)
    i, j = np.unravel_index(int(np.argmin(d)), d.shape)
    return np.concatenate([poly[: i + 1], part[j:], part[: j + 1], poly[i:]])


def mask_to_polygon(mask: np.ndarray, *, epsilon: float = 0.6, min_part_area: float = 2.0) -> np.ndarray:
    """One polygon for a bool ``(H, W)`` mask (all parts and holes, see the module docstring).

    ``epsilon``: Douglas-Peucker tolerance in pixels (keeps label files small); parts or holes smaller
    than ``min_part_area`` pixels are left out. Returns float32 ``(k, 2)`` pixel ``(x, y)``; ``(0, 2)``
    when nothing is left."""
    parts = _contours(mask, epsilon, min_part_area)
    if not parts:
        return np.zeros((0, 2), np.float32)
    poly = parts[0]
    for p in parts[1:]:
        poly = _bridge(poly, p)
    return poly.astype(np.float32)


def polygon_to_mask(poly: np.ndarray, width: int, height: int, *, normalized: bool = False) -> np.ndarray:
    """Fill a ``(k, 2)`` polygon (pixel or, with ``normalized``, 0-1 coordinates) into a bool
    ``(height, width)`` mask with cv2's even-odd rule (bridged holes stay empty)."""
    p = np.asarray(poly, np.float64).reshape(-1, 2)
    if normalized:
        p = p * (width, height)
    out = np.zeros((height, width), np.uint8)
    if len(p) >= 3:
        cv2.fillPoly(out, [np.round(p).astype(np.int32)], 1)
    return out.astype(bool)


def yolo_line(class_id: int, poly: np.ndarray, width: int, height: int) -> str:
    """``"cls x1 y1 x2 y2 ..."`` with coordinates normalised to 0-1 (6 decimals, clipped)."""
    p = np.clip(poly / np.array([width, height], np.float32), 0.0, 1.0)
    return f"{class_id} " + " ".join(f"{v:.6f}" for v in p.ravel())


def parse_yolo_line(line: str) -> tuple[int, np.ndarray]:
    """Inverse of ``yolo_line``: ``(class_id, (k, 2) float32 normalised polygon)``."""
    vals = line.split()
    return int(vals[0]), np.array(vals[1:], np.float32).reshape(-1, 2)


def mask_to_rle(mask: np.ndarray) -> dict:
    """COCO compressed RLE of a bool ``(H, W)`` mask: ``{"size": [H, W], "counts": str}``."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def rle_to_mask(rle: dict) -> np.ndarray:
    """Inverse of ``mask_to_rle``: bool ``(H, W)``."""
    return mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode("ascii")}).astype(bool)


def mask_box(mask: np.ndarray) -> list[float]:
    """``[x1, y1, x2, y2]`` pixel-edge box of a non-empty bool mask (``x2 = last column + 1``)."""
    ys = np.flatnonzero(mask.any(1))
    xs = np.flatnonzero(mask.any(0))
    return [float(xs[0]), float(ys[0]), float(xs[-1] + 1), float(ys[-1] + 1)]
