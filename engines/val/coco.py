"""COCO json writers: ground truth from our labels, and detections in COCO results format.

Imports nothing from ``pipeline``. The pair is what pycocotools' ``COCO``/``loadRes``/``COCOeval``
read. Ids: ``image_id`` is the image's index in the val file list (sorted ids = our order),
``category_id`` the class index, annotation ids start at 1 (COCOeval treats id 0 as "unmatched").
Numbers are written at full float64 precision so pycocotools sees the values our metric used.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from engines.val.truth import ImageTruth


def encode_masks(masks: np.ndarray) -> list[dict[str, Any]]:
    """Compressed COCO RLE of (n, H, W) bool masks -> n dicts ``{"size": [H, W], "counts": str}``."""
    masks = np.asarray(masks, bool)
    if len(masks) == 0:
        return []
    # pycocotools wants (H, W, n) in Fortran order, i.e. the bytes of a C-order (n, W, H) array
    rles = mask_utils.encode(np.ascontiguousarray(masks.transpose(0, 2, 1), dtype=np.uint8).T)
    for r in rles:
        r["counts"] = r["counts"].decode("ascii")
    return rles


def gt_json(
    truths: Sequence[ImageTruth], files: Sequence[str | os.PathLike[str]], names: Sequence[str]
) -> dict[str, Any]:
    """COCO ground-truth dict: one image per truth (id = index), masks as compressed RLE."""
    if len(truths) != len(files):
        raise ValueError(f"{len(truths)} truths for {len(files)} files")
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for i, (t, f) in enumerate(zip(truths, files, strict=True)):
        H, W = t.shape
        images.append({"id": i, "file_name": Path(f).name, "height": H, "width": W})
        rles = encode_masks(np.stack([t.full_mask(j) for j in range(len(t))])) if len(t) else []
        for j, rle in enumerate(rles):
            annotations.append({
                "id": len(annotations) + 1,
                "image_id": i,
                "category_id": int(t.cls[j]),
                "bbox": [float(v) for v in t.boxes[j]],
                "area": int(t.areas[j]),
                "iscrowd": int(t.crowd[j]),
                "segmentation": rle,
            })
    categories = [{"id": c, "name": str(n)} for c, n in enumerate(names)]
    return {"images": images, "annotations": annotations, "categories": categories}


def results_json(
    image_id: int,
    boxes_xywh: np.ndarray,
    scores: np.ndarray,
    cls: np.ndarray,
    masks: np.ndarray | None,
) -> list[dict[str, Any]]:
    """COCO results for one image: boxes (n, 4) COCO ``[x, y, w, h]`` frame pixels, scores (n,),
    cls (n,), masks (n, H, W) bool or None (box-only results)."""
    rles = encode_masks(masks) if masks is not None else [None] * len(scores)
    out = []
    for b, s, c, rle in zip(np.asarray(boxes_xywh, np.float64), scores, cls, rles, strict=True):
        r: dict[str, Any] = {"image_id": int(image_id), "category_id": int(c),
                             "bbox": [float(v) for v in b], "score": float(s)}
        if rle is not None:
            r["segmentation"] = rle
        out.append(r)
    return out


def xyxy_to_coco(boxes: np.ndarray) -> np.ndarray:
    """(n, 4) x1, y1, x2, y2 -> (n, 4) float64 COCO x, y, w, h (same frame, pixels)."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    return np.stack([b[:, 0], b[:, 1], b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], 1)


def write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write json atomically (tmp + rename) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj))
    tmp.replace(path)
    return path


def cocoeval_stats(gt_path: str | os.PathLike[str], pred_path: str | os.PathLike[str]) -> dict[str, float]:
    """Run pycocotools' COCOeval (bbox and segm) on a written pair; returns
    ``{"box.map", "box.map50", "box.map75", "seg.map", ...}`` from ``COCOeval.stats[:3]``.

    The independent check of our own numbers; pycocotools' chatter is swallowed.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    out: dict[str, float] = {}
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_path))
        preds = json.loads(Path(pred_path).read_text())
        dt = gt.loadRes(preds) if preds else None
        for iou_type, key in (("bbox", "box"), ("segm", "seg")):
            if dt is None:
                out.update({f"{key}.map": 0.0, f"{key}.map50": 0.0, f"{key}.map75": 0.0})
                continue
            ev = COCOeval(gt, dt, iou_type)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
            out.update({f"{key}.map": float(ev.stats[0]), f"{key}.map50": float(ev.stats[1]),
                        f"{key}.map75": float(ev.stats[2])})
    return out
