"""Drawing results on frames: masks (half-transparent), boxes, labels and track ids, a camera's zones
with their object counts and its counting lines with their totals. Shared by the sinks that show
pictures (video files, the live preview)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from pipeline.client import box_window, decode_mask
from pipeline.messages import Detection, FrameAnalytics, FrameResult

PALETTE = np.array([  # BGR, one per class id (or track id, when tracked) modulo its length
    (56, 56, 255), (151, 157, 255), (31, 112, 255), (29, 178, 255), (49, 210, 207), (10, 249, 72),
    (23, 204, 146), (134, 219, 61), (52, 147, 26), (187, 212, 0), (168, 153, 44), (255, 194, 0),
    (147, 69, 52), (255, 115, 100), (236, 24, 0), (255, 56, 132), (133, 0, 82), (255, 56, 203),
], np.uint8)


def draw(canvas: np.ndarray, result: FrameResult, *, scale: float = 1.0) -> np.ndarray:
    """Draw ``result``'s masks (half-transparent), boxes and labels on ``canvas`` in place, and its
    camera's zones (with their object counts) and counting lines (with their in/out totals); the part
    of the picture outside its roi (which the model does not see) is darkened.

    canvas: (h, w, 3) uint8 BGR, the frame resized by ``scale`` (frame pixels * scale = canvas px).
    """
    width, height = result.frame_size
    if result.roi is not None:
        _dim_outside(canvas, result.roi, scale)
    if result.analytics is not None:
        _draw_shapes(canvas, result.analytics, scale)
    _draw_detections(canvas, result.detections, height, width, scale)
    return canvas


def draw_event(canvas: np.ndarray, event: dict[str, Any], *, scale: float = 1.0) -> np.ndarray:
    """Draw a frame event's detections (``pipeline.events`` JSON: masks in either format, or none) on
    ``canvas`` in place, as ``draw`` draws a result's; the frame scaled by ``scale`` is the canvas."""
    dets = []
    for d in event["detections"]:
        mask = d.get("mask")
        if mask is not None:
            mask = mask["polygons"] if mask["format"] == "polygon" else {"size": mask["size"], "counts": mask["counts"]}
        dets.append(Detection(class_id=d["class_id"], label=d["label"], score=d["score"], box=tuple(d["box"]),
                              mask=mask, track_id=d.get("track_id")))
    _draw_detections(canvas, dets, event["frame"]["height"], event["frame"]["width"], scale)
    return canvas


def _draw_detections(canvas: np.ndarray, detections: Sequence[Detection], height: int, width: int,
                     scale: float) -> None:
    for det in detections:
        # a tracked object keeps its colour from frame to frame; untracked ones are coloured by class
        color = PALETTE[(det.class_id if det.track_id is None else det.track_id) % len(PALETTE)]
        if det.mask is not None:
            _blend_mask(canvas, det, height, width, scale, color)
        x1, y1, x2, y2 = (int(round(v * scale)) for v in det.box)
        c = tuple(int(v) for v in color)
        cv2.rectangle(canvas, (x1, y1), (x2, y2), c, 1, cv2.LINE_AA)
        tag = "" if det.track_id is None else f" #{det.track_id}"
        cv2.putText(canvas, f"{det.label}{tag} {det.score:.2f}", (x1, max(y1 - 3, 10)), cv2.FONT_HERSHEY_SIMPLEX,
                    0.4, c, 1, cv2.LINE_AA)


_ZONE_COLOR, _LINE_COLOR = (0, 215, 255), (255, 255, 255)  # BGR: amber zones, white lines


def _dim_outside(canvas: np.ndarray, roi: tuple[int, int, int, int], scale: float) -> None:
    x0, y0, x1, y1 = (int(round(v * scale)) for v in roi)
    for band in (canvas[:y0], canvas[y1:], canvas[y0:y1, :x0], canvas[y0:y1, x1:]):
        band >>= 1


def _draw_shapes(canvas: np.ndarray, analytics: FrameAnalytics, scale: float) -> None:
    font = cv2.FONT_HERSHEY_SIMPLEX
    for name, pts in analytics.shapes.get("zones", {}).items():
        poly = np.round(np.array(pts) * scale).astype(np.int32)
        cv2.polylines(canvas, [poly], True, _ZONE_COLOR, 1, cv2.LINE_AA)
        n = (analytics.zone_counts or {}).get(name, 0)
        x, y = poly.min(0)
        cv2.putText(canvas, f"{name}: {n}", (int(x) + 3, int(y) + 12), font, 0.4, _ZONE_COLOR, 1, cv2.LINE_AA)
    for name, ((x1, y1), (x2, y2)) in analytics.shapes.get("lines", {}).items():
        a, b = (int(round(x1 * scale)), int(round(y1 * scale))), (int(round(x2 * scale)), int(round(y2 * scale)))
        cv2.line(canvas, a, b, _LINE_COLOR, 2, cv2.LINE_AA)
        n_in, n_out = analytics.line_totals.get(name, (0, 0))
        cv2.putText(canvas, f"{name} in {n_in} out {n_out}", (a[0] + 3, max(a[1] - 4, 10)), font, 0.4,
                    _LINE_COLOR, 1, cv2.LINE_AA)


def _blend_mask(canvas: np.ndarray, det: Detection, height: int, width: int, scale: float,
                color: np.ndarray) -> None:
    mask = det.mask
    event_mask = {"format": "rle", **mask} if isinstance(mask, dict) else {"format": "polygon", "polygons": mask}
    x0, y0, x1, y1 = box_window(det.box, height, width)
    crop = decode_mask(event_mask, height, width, window=(x0, y0, x1, y1))
    if crop.size == 0:
        return
    cx0, cy0 = int(x0 * scale), int(y0 * scale)
    cw = max(min(int(round(x1 * scale)), canvas.shape[1]) - cx0, 0)
    ch = max(min(int(round(y1 * scale)), canvas.shape[0]) - cy0, 0)
    if cw == 0 or ch == 0:
        return
    if scale != 1.0:
        crop = cv2.resize(crop.astype(np.uint8), (cw, ch), interpolation=cv2.INTER_NEAREST).astype(bool)
    region = canvas[cy0:cy0 + ch, cx0:cx0 + cw]
    region[crop] = (region[crop] >> 1) + (color >> 1)
