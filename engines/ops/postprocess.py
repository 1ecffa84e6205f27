"""Model output -> per-image Detections. Imports engines.ops and (lazily) engines.structures only.

Reproduces Ultralytics' SegmentationPredictor.postprocess: NMS (top-k for end-to-end heads), masks (input-resolution or retina),
boxes mapped to the frame, detections whose mask came out empty dropped. Masks are evaluated inside
each box only (engines.ops.crops) and pasted into frame-sized masks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from engines.ops.boxes import scale_boxes
from engines.ops.crops import input_mask_crops, mask_crops
from engines.ops.letterbox import LetterboxInfo
from engines.ops.nms import NMSConfig, select_rows

if TYPE_CHECKING:
    from engines.structures import Detections


def postprocess(pred: torch.Tensor, proto: torch.Tensor, infos: Sequence[LetterboxInfo], cfg: NMSConfig, *,
                names: Sequence[str], retina_masks: bool = False, masks: bool = True,
                nms_free: bool = False, mask_threshold: float = 0.5) -> list[Detections]:
    """Turn a batch of raw model outputs into one :class:`Detections` per image, on the outputs' device.

    pred: (N, 4 + nc + 32, A) float, boxes xywh in model-input pixels (see engines.nn); nc = len(names).
    proto: (N, 32, h/4, w/4) float prototypes. infos: the letterbox of each image (N of them).
    retina_masks=False: masks are made at the model input (h, w) and resized to the frame (bilinear,
    > 0.5); True: made straight at frame resolution (sharper, slower). masks=False skips masks.
    mask_threshold: the mask probability a pixel must exceed (Ultralytics' 0.5; ``engines.ops.crops.mask_logit``).
    nms_free: the model ran an NMS-free head (YOLO26's one-to-one): its best scores are taken, no NMS.
    Detections are in each frame's pixels; masks (n, H, W) bool over the frame.
    """
    if pred.shape[0] != len(infos) or proto.shape[0] != len(infos):
        raise ValueError(f"postprocess: expected {len(infos)} images (one per LetterboxInfo), got pred "
                         f"{tuple(pred.shape)} and proto {tuple(proto.shape)}")
    names = tuple(names)
    rows = select_rows(pred, cfg, nc=len(names), nms_free=nms_free)
    return [_one_image(r, p, info, names, retina_masks=retina_masks, masks=masks, threshold=mask_threshold)
            for r, p, info in zip(rows, proto, infos, strict=True)]


def _one_image(rows: torch.Tensor, proto: torch.Tensor, info: LetterboxInfo, names: tuple[str, ...], *,
               retina_masks: bool, masks: bool, threshold: float) -> Detections:
    # Imported here, not at the top: engines.structures imports engines.ops (rle, polygons), and
    # engines.ops re-exports this function, so a top-level import would be circular.
    from engines.structures import Detections

    boxes = scale_boxes(rows[:, :4], info)
    frame_crops = None
    if masks:
        # Box-restricted evaluation (engines.ops.crops): the same pixels as Ultralytics' full-frame
        # process_mask(+scale_masks) / process_mask_native in the reference tests, 5-10x less work.
        if retina_masks:
            crops = mask_crops(proto, rows[:, 6:], boxes, info.orig_shape, info=info, threshold=threshold)
            has = [bool(v) for v in torch.stack([c.any() for _, _, c in crops]).tolist()] if crops else []
        else:
            crops, has = input_mask_crops(proto, rows[:, 6:], rows[:, :4], info, threshold=threshold)
        if not all(has):  # Ultralytics drops objects whose mask has no pixel
            keep = torch.tensor(has, dtype=torch.bool, device=rows.device)
            rows, boxes, crops = rows[keep], boxes[keep], [c for c, k in zip(crops, has, strict=True) if k]
        frame_crops = crops
    # Dense frame masks are built lazily by Detections.masks: RLE, polygons and plots use the crops.
    return Detections(boxes=boxes.float(), scores=rows[:, 4].float(), class_ids=rows[:, 5].long(),
                      crops=frame_crops, orig_shape=info.orig_shape, names=names)
