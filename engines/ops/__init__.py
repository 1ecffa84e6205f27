"""Pre- and post-processing ops: letterbox, boxes, NMS, masks, COCO RLE, polygons, postprocess.

All tensor ops are batched torch that run unchanged on CPU and CUDA; RLE and polygons are numpy/cv2
on the host. Imports nothing from ``pipeline``. COCO RLE lives in ``engines.ops.rle``.
"""

from __future__ import annotations

from engines.ops.boxes import box_iou, clip_boxes, scale_boxes, xywh2xyxy, xyxy2xywh
from engines.ops.crops import input_mask_crops, mask_crops, paste_crops, retina_mask_crops
from engines.ops.letterbox import LetterboxInfo, letterbox, letterbox_geometry
from engines.ops.masks import crop_mask, process_masks, process_masks_native, scale_masks
from engines.ops.nms import NMSConfig, nms, non_max_suppression, select_rows, topk_rows
from engines.ops.polygons import mask_to_polygons

# Last: postprocess builds engines.structures.Detections, which itself imports engines.ops.rle/polygons.
from engines.ops.postprocess import postprocess  # noqa: E402

__all__ = [
    "LetterboxInfo", "NMSConfig", "box_iou", "clip_boxes", "crop_mask", "input_mask_crops", "letterbox", "letterbox_geometry",
    "mask_crops", "mask_to_polygons", "nms", "non_max_suppression", "select_rows", "topk_rows", "paste_crops", "process_masks",
    "postprocess", "process_masks_native", "retina_mask_crops", "scale_boxes", "scale_masks", "xywh2xyxy", "xyxy2xywh",
]
