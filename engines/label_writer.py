"""YOLO-seg label files from predictions (``predict --save-txt``), the video frames they label
(``--save-frames``), for ``train`` to read back (the auto-labelling loop), each object's crop
(``--save-crop``) and the annotated still images (``--save``). Imports cv2, numpy, engines.structures and
engines.data.polygons only.

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

Crops are Ultralytics' ``save_one_box`` (8.4): the box's width and height times 1.02 plus 10 px about its
centre (float32), truncated to integers, clipped to the frame; JPEG quality 95 with full-resolution chroma
(4:4:4), as Ultralytics saves them through PIL.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from engines.data.polygons import mask_outline
from engines.structures import Detections

FRAME_JPEG_QUALITY = 95  # see the module docstring
JPEG_MAX_SIDE = 65500  # the most pixels a side libjpeg writes (JPEG_MAX_DIMENSION; the format allows 65535)
CROP_GAIN, CROP_PAD = 1.02, 10  # Ultralytics' save_one_box defaults
_UNSAFE = re.compile(r'[/\\:*?"<>|\x00-\x1f]')  # path separators and what Windows refuses in a name


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
    _write_jpeg(path, image, [cv2.IMWRITE_JPEG_QUALITY, FRAME_JPEG_QUALITY], "frame")


def crop_box(box: Sequence[float], shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """The region ``(x1, y1, x2, y2)``, integer pixels, x2/y2 exclusive, that ``--save-crop`` cuts for ``box``
    (``x1 y1 x2 y2`` in frame pixels) from a frame of ``shape`` ``(H, W, ...)``: Ultralytics' ``save_one_box``,
    width and height times ``CROP_GAIN`` plus ``CROP_PAD`` about the centre in float32, truncated toward
    zero, then clipped to ``[0, W] x [0, H]``. Empty (x1 == x2 or y1 == y2) only for a box off the frame."""
    b = np.asarray(box, np.float32).reshape(4)
    centre, size = (b[:2] + b[2:]) / np.float32(2), b[2:] - b[:2]
    half = (size * np.float32(CROP_GAIN) + np.float32(CROP_PAD)) / np.float32(2)
    x1, y1, x2, y2 = np.concatenate((centre - half, centre + half)).astype(np.int64).tolist()  # trunc, as .long()
    h, w = shape[:2]
    return min(max(x1, 0), w), min(max(y1, 0), h), min(max(x2, 0), w), min(max(y2, 0), h)


def crop_folders(names: Sequence[str]) -> list[str]:
    """Each class's ``crops/`` subfolder name: its name with path separators and characters a file system
    may refuse (``/ \\ : * ? " < > |``, control characters) replaced by ``_``, so no name leaves ``crops/``;
    a name left empty, ``.`` or ``..`` becomes ``class_ID``, and one equal to an earlier class's gets
    ``_ID`` appended (two classes never share a folder)."""
    out: list[str] = []
    for i, name in enumerate(names):
        safe = _UNSAFE.sub("_", str(name)).strip()
        if safe in ("", ".", ".."):
            safe = f"class_{i}"
        out.append(f"{safe}_{i}" if safe in out else safe)
    return out


def write_crop_image(path: Path, image: np.ndarray) -> None:
    """Write a crop, (h, w, 3) uint8 BGR, as the JPEG ``path``, quality 95 with 4:4:4 chroma (Ultralytics'
    ``save_one_box``), whole or not at all (see ``_write_whole``); shrunk to fit as ``write_annotated_image``
    shrinks a panorama (an object across one)."""
    params = [cv2.IMWRITE_JPEG_QUALITY, 95, cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]
    _write_jpeg(path, _fit_jpeg(image), params, "crop")


def write_annotated_image(path: Path, image: np.ndarray) -> None:
    """Write an annotated still image, (H, W, 3) uint8 BGR, as the JPEG ``path`` (quality 95, as cv2.imwrite
    writes it), whole or not at all (see ``_write_whole``). One with a side over ``JPEG_MAX_SIDE`` (a
    panorama) is shrunk to fit: cv2.imwrite wrote no file for it, without a word."""
    _write_jpeg(path, _fit_jpeg(image), [cv2.IMWRITE_JPEG_QUALITY, 95], "annotated image")


def _fit_jpeg(image: np.ndarray) -> np.ndarray:
    """``image``, shrunk (aspect kept) when a side is over ``JPEG_MAX_SIDE``; contiguous."""
    h, w = image.shape[:2]
    if max(h, w) > JPEG_MAX_SIDE:
        scale = JPEG_MAX_SIDE / max(h, w)
        size = (min(max(round(w * scale), 1), JPEG_MAX_SIDE), min(max(round(h * scale), 1), JPEG_MAX_SIDE))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(image)


def _write_jpeg(path: Path, image: np.ndarray, params: list[int], what: str) -> None:
    ok, data = cv2.imencode(".jpg", image, params)
    # predict hands over BGR uint8 frames and non-empty crops of them, which always encode
    assert ok, f"JPEG encoding failed for a {image.shape} {image.dtype} {what}"
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
