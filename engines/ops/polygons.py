"""Mask outlines as polygons (cv2.findContours), and the window of a mask's pixels. Imports numpy and cv2
only."""

from __future__ import annotations

import cv2
import numpy as np


def mask_window(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """``(x0, y0, x1, y1)``: the half-open pixel window of a (H, W) mask's nonzero pixels (``x1`` = last
    column + 1); None when it has none."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if not len(rows):
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def mask_to_polygons(mask: np.ndarray, *, offset: tuple[int, int] = (0, 0),
                     min_points: int = 3) -> list[np.ndarray]:
    """Outer contours of a (h, w) bool mask -> list of (k, 2) float32 (x, y) vertex arrays.

    Vertices are pixel centres in frame pixels: ``offset`` = (x0, y0) shifts a crop's contours into
    the frame (pass the crop origin from :func:`engines.ops.masks.mask_crops`). Only external contours
    are returned (holes are not), simplified with CHAIN_APPROX_SIMPLE, largest area first; contours of
    fewer than ``min_points`` vertices (isolated pixels, 1-pixel lines) are dropped, since COCO and
    most drawing code reject polygons with fewer than three vertices. An empty mask gives [].
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask_to_polygons mask: expected shape (h, w), got {mask.shape}")
    if mask.size == 0:
        return []
    contours, _ = cv2.findContours(np.ascontiguousarray(mask, dtype=np.uint8), cv2.RETR_EXTERNAL,
                                   cv2.CHAIN_APPROX_SIMPLE, offset=(int(offset[0]), int(offset[1])))
    polys = [c.reshape(-1, 2).astype(np.float32) for c in contours if len(c) >= min_points]
    polys.sort(key=lambda p: -abs(cv2.contourArea(p)))
    return polys
