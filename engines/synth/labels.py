"""Instance masks to YOLO-seg polygons and back, and masks to COCO RLE.

Imports numpy, pycocotools, ``engines.data.polygons`` (the geometry training uses) and
``engines.ops.polygons.mask_window``.

A YOLO-seg label holds one polygon per instance, but a visible mask may have several parts (an object
split by an occluder) and holes (a tyre, a wrench ring, an object in front of the middle of another).
``mask_to_polygon`` traces every outer boundary and hole along the pixel edges and stitches them into
one polygon through zero-width bridges (``engines.data.polygons.mask_outline``). Filled the way the
trainer fills labels (a pixel is in when its centre is, even-odd rule), the polygon gives the mask
back, thin strokes and holes included.

Polygons are float ``(k, 2)`` ``(x, y)`` in continuous pixel coordinates (pixel ``(r, c)`` spans
``[c, c+1) x [r, r+1)``), or normalised by ``(W, H)`` in label files: the convention of COCO,
pycocotools and segpipe's trainer and validator.
"""

from __future__ import annotations

import numpy as np
from pycocotools import mask as mask_utils

from engines.data.polygons import mask_outline, rasterize
from engines.ops.polygons import mask_window


def mask_to_polygon(mask: np.ndarray, *, epsilon: float = 0.4, min_part_area: float = 2.0) -> np.ndarray:
    """One polygon for a bool ``(H, W)`` mask (all parts and holes, see the module docstring).

    ``epsilon``: Douglas-Peucker tolerance in pixels (keeps label files small; 0.4 keeps 2-px strokes);
    parts or holes smaller than ``min_part_area`` pixels are left out. Returns float32 ``(k, 2)`` pixel
    ``(x, y)``; ``(0, 2)`` when nothing is left."""
    return mask_outline(mask, epsilon=epsilon, min_part_area=min_part_area).astype(np.float32)


def polygon_to_mask(poly: np.ndarray, width: int, height: int, *, normalized: bool = False) -> np.ndarray:
    """Fill a ``(k, 2)`` polygon (pixel or, with ``normalized``, 0-1 coordinates) into a bool
    ``(height, width)`` mask as the trainer does: pixel centres inside, even-odd (holes stay empty)."""
    p = np.asarray(poly, np.float64).reshape(-1, 2)
    if normalized:
        p = p * (width, height)
    if len(p) < 3:
        return np.zeros((height, width), bool)
    return rasterize([p], height, width, 1)[0].astype(bool)


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
    window = mask_window(mask)
    assert window is not None, "mask_box of an empty mask"
    return [float(v) for v in window]
