"""Ground truth of one image at its original resolution, as the metrics and the COCO GT json see it.

Imports nothing from ``pipeline``. Label polygons are rasterised here, once, as the trainer fills them
(``engines.data.polygons.rasterize``: a pixel is in when its centre is); both our metric and
``coco.gt_json`` read the same masks, so pycocotools scores what we score. Why not ``cv2.fillPoly``
(Ultralytics' choice, and ours before): it also sets every pixel the outline touches. On coco128's
polygons it made masks 7.7 % larger than pycocotools' own rasterisation of them (16 % for objects under
32x32 px, IoU 0.84 with it), where the centre rule matches it (area 1.000, IoU 0.989); on generated
scenes a bicycle's ground truth came out 10 % larger than the rendered mask (IoU 0.87), so that an exact
prediction could not reach the upper IoU thresholds.
Masks are kept as bit-packed crops over each instance's pixel window: a val set's ground truth
stays small enough to cache across epochs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from engines.data.polygons import rasterize
from engines.ops.polygons import mask_window


def rasterize_polygon(points: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Fill one polygon into the smallest window of the frame that holds it.

    points: (k, 2) float, pixel coordinates x, y in the frame's continuous coordinates (pixel
    ``(i, j)`` covers ``[j, j+1) x [i, i+1)``, so its centre is at ``(j+0.5, i+0.5)``).
    shape: frame ``(H, W)``. A pixel is in when its centre is inside (even-odd rule), as the trainer
    fills labels. Returns ``(crop (h, w) bool, window (4,) int64 x0, y0, x1, y1)``; an empty window
    ``(0, 0, 0, 0)`` with a ``(0, 0)`` crop when the polygon lies outside the frame.
    """
    H, W = shape
    pts = np.asarray(points, np.float64).reshape(-1, 2)
    if len(pts) == 0:
        return np.zeros((0, 0), bool), np.zeros(4, np.int64)
    lo = np.floor(pts.min(0) - 0.5).astype(np.int64)  # the pixels whose centres the polygon may hold
    hi = np.ceil(pts.max(0) - 0.5).astype(np.int64) + 1
    x0, y0 = max(int(lo[0]), 0), max(int(lo[1]), 0)
    x1, y1 = min(int(hi[0]), W), min(int(hi[1]), H)
    if x1 <= x0 or y1 <= y0:
        return np.zeros((0, 0), bool), np.zeros(4, np.int64)
    crop = rasterize([pts - (x0, y0)], y1 - y0, x1 - x0)[0]
    return crop.view(bool), np.array([x0, y0, x1, y1], np.int64)


def _tight(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Crop a full-frame (H, W) bool mask to its nonzero window; empty -> (0, 0) crop."""
    window = mask_window(mask)
    if window is None:
        return np.zeros((0, 0), bool), np.zeros(4, np.int64)
    x0, y0, x1, y1 = window
    return mask[y0:y1, x0:x1], np.array(window, np.int64)


@dataclass(frozen=True, slots=True, eq=False)
class ImageTruth:
    """Instances of one image at original resolution.

    shape: (H, W) pixels. cls: (m,) int64. boxes: (m, 4) float64 COCO ``[x, y, w, h]`` in frame
    pixels (exactly the numbers written to the GT json). crowd: (m,) bool (``iscrowd``).
    windows: (m, 4) int64 ``x0, y0, x1, y1`` pixel window of each mask crop (half-open).
    bits: m arrays, ``np.packbits`` of each crop along its rows. areas: (m,) int64 mask pixel counts.
    """

    shape: tuple[int, int]
    cls: np.ndarray
    boxes: np.ndarray
    crowd: np.ndarray
    windows: np.ndarray
    bits: tuple[np.ndarray, ...]
    areas: np.ndarray

    def __post_init__(self) -> None:
        m = len(self.cls)
        if self.boxes.shape != (m, 4) or self.crowd.shape != (m,) or self.windows.shape != (m, 4):
            raise ValueError(
                f"ImageTruth: {m} classes but boxes {self.boxes.shape}, crowd {self.crowd.shape}, "
                f"windows {self.windows.shape}"
            )
        if len(self.bits) != m or self.areas.shape != (m,):
            raise ValueError(f"ImageTruth: {m} classes but {len(self.bits)} masks, areas {self.areas.shape}")

    def __len__(self) -> int:
        return len(self.cls)

    def mask_crop(self, i: int) -> np.ndarray:
        """Mask ``i`` over its window: (h, w) bool."""
        x0, _, x1, _ = self.windows[i]
        return np.unpackbits(self.bits[i], axis=1, count=int(x1 - x0)).view(bool)

    def full_mask(self, i: int) -> np.ndarray:
        """Mask ``i`` over the whole frame: (H, W) bool."""
        out = np.zeros(self.shape, bool)
        x0, y0, x1, y1 = self.windows[i]
        out[y0:y1, x0:x1] = self.mask_crop(i)
        return out

    @classmethod
    def _from_crops(
        cls,
        shape: tuple[int, int],
        classes: np.ndarray,
        boxes: np.ndarray,
        crops: Sequence[tuple[np.ndarray, np.ndarray]],
        crowd: np.ndarray | None,
    ) -> ImageTruth:
        m = len(classes)
        windows = np.stack([w for _, w in crops]) if m else np.zeros((0, 4), np.int64)
        return cls(
            shape=(int(shape[0]), int(shape[1])),
            cls=np.asarray(classes, np.int64).reshape(m),
            boxes=np.asarray(boxes, np.float64).reshape(m, 4),
            crowd=np.zeros(m, bool) if crowd is None else np.asarray(crowd, bool).reshape(m),
            windows=windows.astype(np.int64),
            bits=tuple(np.packbits(c, axis=1) for c, _ in crops),
            areas=np.array([int(c.sum()) for c, _ in crops], np.int64),
        )

    @classmethod
    def from_labels(
        cls,
        shape: tuple[int, int],
        classes: np.ndarray,
        segments: Sequence[np.ndarray],
        boxes_xywhn: np.ndarray,
    ) -> ImageTruth:
        """From YOLO-seg labels: ``segments`` (k_i, 2) normalised x, y polygons, one per instance;
        ``boxes_xywhn`` (m, 4) normalised centre-x, centre-y, width, height."""
        H, W = shape
        b = np.asarray(boxes_xywhn, np.float64).reshape(-1, 4)
        xywh = np.stack(
            [(b[:, 0] - b[:, 2] / 2) * W, (b[:, 1] - b[:, 3] / 2) * H, b[:, 2] * W, b[:, 3] * H], 1
        )
        scale = np.array([W, H], np.float64)
        crops = [rasterize_polygon(np.asarray(s, np.float64) * scale, (H, W)) for s in segments]
        if len(crops) != len(b):
            raise ValueError(f"{len(segments)} segments for {len(b)} boxes")
        return cls._from_crops((H, W), classes, xywh, crops, None)

    @classmethod
    def from_masks(
        cls,
        classes: np.ndarray,
        boxes_xywh: np.ndarray,
        masks: np.ndarray,
        crowd: np.ndarray | None = None,
    ) -> ImageTruth:
        """From full-frame masks (m, H, W) bool and COCO ``[x, y, w, h]`` pixel boxes (m, 4)."""
        masks = np.asarray(masks, bool)
        crops = [_tight(mk) for mk in masks]
        return cls._from_crops(masks.shape[1:], classes, boxes_xywh, crops, crowd)
