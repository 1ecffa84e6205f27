"""YOLO-seg label files from predictions (``predict --save-txt``) and the video frames they label
(``--save-frames``), for ``train`` to read back: the auto-labelling loop. Imports cv2, numpy,
engines.structures and engines.data.polygons only.

One line per instance, ``class x1 y1 x2 y2 ...``, the polygon normalised to the image (0-1), with
``conf`` appended when asked: the lines Ultralytics' ``Results.save_txt`` writes for segmentation, each
number printed with ``%g`` as it prints them. Detections without masks give box lines ``class xc yc w h``.

The polygon is not Ultralytics' contour. Ultralytics traces the mask with cv2.findContours through the
centres of its boundary pixels (at the model input's resolution unless ``retina_masks``), half a pixel
inside the shape's edge, so a mask filled back from it loses its boundary pixels (a 2-px-thin part comes
back 1 px wide). Here each mask is traced at frame resolution along its pixel edges by
``engines.data.polygons.mask_outline``, the tracing ``segpipe convert coco`` uses for RLE masks: what the
dataset loader rasterises from the line is the predicted mask again (on the Ultralytics fixture images:
IoU 1.0, 0.98 where a hole was filled; Ultralytics' lines 0.88-0.98, see tests/engines/test_predict_labels.py).
As Ultralytics' (and convert's), the
outline is the outer one, holes filled, several parts joined into one polygon by zero-width bridges.
The price is time: ~40 ms for an object filling a quarter of a 1080p frame (traced magnified 4x), where
cv2's pixel-centre contour takes 0.5 ms; an object of 200x200 pixels costs ~2 ms.

Frames are written as JPEG at quality 95 (``FRAME_JPEG_QUALITY``): JPEG moves no pixel, so the labels'
coordinates hold (on 30 coco128 images at 1920x1080, phase correlation found < 0.01 px of shift), the mean
error is under one grey level (PSNR 48 dB), and its 4:2:0 chroma is what a video's frames already have.
PNG, lossless, is ~5x larger (2.4 MB against 0.5 MB a frame) and ~7x slower to write (70 ms against 10 ms).
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from engines.data.polygons import mask_outline
from engines.structures import Detections

FRAME_JPEG_QUALITY = 95  # see the module docstring


def label_lines(dets: Detections, *, save_conf: bool = False) -> list[str]:
    """The label lines of one image's detections, in their order (best first).

    A detection whose mask gives no polygon (under two pixels, or a one-pixel line) has no line, as in
    Ultralytics (whose loaders reject a row of fewer than three points); no detections, no lines.
    """
    if not len(dets):
        return []
    h, w = dets.orig_shape
    classes = dets.class_ids.tolist()
    scores = dets.scores.tolist()
    if dets.has_masks:
        polygons: list[np.ndarray | None] = []
        for x0, y0, crop in dets.mask_crops():
            poly = mask_outline(crop, holes=False)
            polygons.append(np.clip((poly + (x0, y0)) / (w, h), 0.0, 1.0) if len(poly) >= 3 else None)
    else:
        boxes = np.asarray(dets.boxes.tolist(), np.float64).reshape(-1, 4)
        xywh = np.concatenate(((boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2]), 1)
        polygons = list(np.clip(xywh / (w, h, w, h), 0.0, 1.0))
    lines = []
    for cls, score, xy in zip(classes, scores, polygons, strict=True):
        if xy is None:
            continue
        values = [int(cls), *xy.reshape(-1).tolist()] + ([score] if save_conf else [])
        lines.append(" ".join(f"{v:g}" for v in values))
    return lines


def write_label_file(path: Path, lines: list[str]) -> bool:
    """Write ``lines`` into ``path`` whole or not at all (see ``_write_whole``). No lines: no file, and one
    left by an earlier run into the same folder is removed (as Ultralytics does). Returns whether one was
    written.
    """
    if not lines:
        path.unlink(missing_ok=True)
        return False
    _write_whole(path, "".join(line + "\n" for line in lines).encode())
    return True


def write_frame_image(path: Path, image: np.ndarray) -> None:
    """Write a frame, (H, W, 3) uint8 BGR, as the JPEG ``path`` (quality ``FRAME_JPEG_QUALITY``), whole or
    not at all (see ``_write_whole``)."""
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, FRAME_JPEG_QUALITY])
    assert ok, f"JPEG encoding failed for a {image.shape} {image.dtype} frame"  # predict's frames are BGR uint8
    _write_whole(path, data.tobytes())


def _write_whole(path: Path, data: bytes) -> None:
    """Write ``data`` into a temp file renamed over ``path``: a run stopped by Ctrl-C or SIGTERM leaves no
    half-written file, nor its temp file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
