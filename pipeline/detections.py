"""Detections of a batch after NMS: mask crops on the device, one download, messages on the host.

The device stage's post thread calls these per batch: ``frame_detections`` (boxes to frame pixels,
mask crops, still on the device), ``download_detections`` (one transfer per kind for the whole
batch) and ``encode_detections`` (COCO RLE or polygons from the crops: no frame-sized mask is ever
made on the host). Imports engines' ops and pipeline's messages only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from engines.ops import mask_crops, mask_to_polygons, scale_boxes
from engines.ops.crops import mask_logit
from engines.ops.letterbox import LetterboxInfo
from engines.ops.rle import encode_crop
from pipeline.messages import Detection


def frame_detections(rows: torch.Tensor, proto: torch.Tensor, info: LetterboxInfo, *, masks: str,
                     resolution: str, threshold: float = 0.5) -> dict[str, Any]:
    """Boxes in frame pixels and mask crops of one frame, still on the device.

    rows (n, 6 + nm): NMS output in model-input pixels; proto (nm, mh, mw). masks: "rle" | "polygon" |
    "none"; resolution: "frame" | "model"; threshold: the mask probability a pixel must exceed (see
    ``DeviceSettings``). Returns boxes (n, 4) xyxy frame pixels, scores (n,), cls (n,) and crops (``(x0, y0, bool (h_i, w_i))`` per row, None without masks).
    """
    boxes = scale_boxes(rows[:, :4], info)
    out: dict[str, Any] = {"boxes": boxes, "scores": rows[:, 4], "cls": rows[:, 5], "crops": None}
    if masks != "none" and rows.shape[0]:
        coeffs = rows[:, 6:]
        if resolution == "frame":
            out["crops"] = mask_crops(proto, coeffs, boxes, info.orig_shape, info=info, threshold=threshold)
        else:
            out["crops"] = model_resolution_crops(proto, coeffs, boxes, info, threshold=threshold)
    return out


def roi_window(roi: tuple[float, float, float, float] | None, width: int,
               height: int) -> tuple[int, int, int, int] | None:
    """The frame pixels ``(x0, y0, x1, y1)``, half-open, of ``roi`` (fractions of the frame, rounded to
    whole pixels); None without one, or for one that covers the whole frame."""
    if roi is None:
        return None
    x0, x1 = (min(max(round(f * width), 0), width) for f in (roi[0], roi[2]))
    y0, y1 = (min(max(round(f * height), 0), height) for f in (roi[1], roi[3]))
    x1, y1 = max(x1, x0 + 1), max(y1, y0 + 1)
    return None if (x0, y0, x1, y1) == (0, 0, width, height) else (x0, y0, x1, y1)


def shift_detections(dets: dict[str, Any], dx: int, dy: int) -> dict[str, Any]:
    """Host-side detections (from ``download_detections``) of a region whose corner is at (dx, dy) in the
    frame, moved to frame pixels: boxes and the corners of the mask crops."""
    crops = dets["crops"]
    return {**dets, "boxes": dets["boxes"] + np.array([dx, dy, dx, dy], dtype=dets["boxes"].dtype),
            "crops": None if crops is None else [(x0 + dx, y0 + dy, c) for x0, y0, c in crops]}


def encode_detections(dets: dict[str, Any], shape: tuple[int, int], *, names: Sequence[str],
                      masks: str) -> tuple[Detection, ...]:
    """One frame's host-side detections (from ``download_detections``) as ``Detection`` messages.

    shape: the frame's (height, width). masks "rle" gives COCO RLE of the frame, "polygon" flat
    [x0, y0, x1, y1, ...] lists in frame pixels.
    """
    h, w = shape
    out = []
    crops = dets["crops"]
    for i, (box, score, cls) in enumerate(zip(dets["boxes"], dets["scores"], dets["cls"], strict=True)):
        mask: Any = None
        if crops is not None:
            x0, y0, crop = crops[i]
            if not crop.any():
                continue  # as engines.ops.postprocess: an object without a mask pixel is dropped
            if masks == "rle":
                mask = encode_crop(crop, x0, y0, h, w)
            else:
                mask = [p.reshape(-1).tolist() for p in mask_to_polygons(crop, offset=(x0, y0))]
        c = int(cls)
        out.append(Detection(class_id=c, label=names[c] if c < len(names) else str(c),
                             score=min(max(float(score), 0.0), 1.0),
                             box=(float(box[0]), float(box[1]), float(box[2]), float(box[3])), mask=mask))
    return tuple(out)


def model_resolution_crops(protos: torch.Tensor, coeffs: torch.Tensor, boxes: torch.Tensor,
                           info: LetterboxInfo, *, threshold: float = 0.5) -> list[tuple[int, int, torch.Tensor]]:
    """Masks thresholded at prototype resolution, sampled nearest-neighbour inside each frame box.

    protos (nm, mh, mw) float; coeffs (n, nm); boxes (n, 4) xyxy in frame pixels. Returns, like
    ``engines.ops.mask_crops``, ``(x0, y0, crop bool (h_i, w_i))`` per detection on the device. Cheaper
    and blockier than the frame-resolution route: one (n, mh, mw) matmul, then index gathers.
    """
    nm, mh, mw = protos.shape
    fh, fw = info.orig_shape
    masks = (coeffs.float() @ protos.float().reshape(nm, -1)).reshape(-1, mh, mw) > mask_logit(threshold)
    ih, iw = info.new_shape
    left, top = info.pad
    uh, uw = info.unpad_shape
    dev = protos.device
    # frame pixel centre -> model-input pixels -> prototype cell
    rows = ((torch.arange(fh, device=dev) + 0.5) * (uh / fh) + top) * (mh / ih)
    cols = ((torch.arange(fw, device=dev) + 0.5) * (uw / fw) + left) * (mw / iw)
    rows = rows.long().clamp_(0, mh - 1)
    cols = cols.long().clamp_(0, mw - 1)
    out = []
    for i, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
        x0, xe = _span(x1, x2, fw)
        y0, ye = _span(y1, y2, fh)
        crop = masks[i].index_select(0, rows[y0:ye]).index_select(1, cols[x0:xe])
        out.append((x0, y0, crop))
    return out


def _span(a: float, b: float, size: int) -> tuple[int, int]:
    """Pixel indices c with a <= c < b, clamped to [0, size) (the crop convention of mask_crops)."""
    return min(max(math.ceil(a), 0), size), min(max(math.ceil(b), 0), size)


def download_detections(per_frame: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Everything the encoder needs, moved to the host in one transfer per kind (not per detection)."""
    counts = [int(d["boxes"].shape[0]) for d in per_frame]
    if not per_frame:
        return []
    table = torch.cat([torch.cat([d["boxes"], d["scores"][:, None], d["cls"][:, None]], 1)
                       for d in per_frame]).float().cpu().numpy()
    crops_all = [c for d in per_frame if d["crops"] for c in d["crops"]]
    flat = (torch.cat([c.reshape(-1) for _, _, c in crops_all]).cpu().numpy() if crops_all
            else np.zeros(0, bool))
    out, row, pos = [], 0, 0
    for d, n in zip(per_frame, counts, strict=True):
        t = table[row:row + n]
        row += n
        crops = None
        if d["crops"] is not None:
            crops = []
            for x0, y0, c in d["crops"]:
                size = c.shape[0] * c.shape[1]
                crops.append((x0, y0, flat[pos:pos + size].reshape(c.shape[0], c.shape[1])))
                pos += size
        out.append({"boxes": t[:, :4], "scores": t[:, 4], "cls": t[:, 5], "crops": crops})
    return out
