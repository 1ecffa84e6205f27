"""Model output -> per-image Detections. Imports engines.ops and (lazily) engines.structures only.

Reproduces Ultralytics' SegmentationPredictor.postprocess: NMS, masks (input-resolution or retina),
boxes mapped to the frame, detections whose mask came out empty dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from engines.ops.boxes import scale_boxes
from engines.ops.letterbox import LetterboxInfo
from engines.ops.masks import _PIXEL_BUDGET, process_masks, process_masks_native, scale_masks
from engines.ops.nms import NMSConfig, non_max_suppression

if TYPE_CHECKING:
    from engines.structures import Detections


def postprocess(pred: torch.Tensor, proto: torch.Tensor, infos: Sequence[LetterboxInfo], cfg: NMSConfig, *,
                names: Sequence[str], retina_masks: bool = False, masks: bool = True) -> list[Detections]:
    """Turn a batch of raw model outputs into one :class:`Detections` per image, on the outputs' device.

    pred: (N, 4 + nc + 32, A) float, boxes xywh in model-input pixels (see engines.nn); nc = len(names).
    proto: (N, 32, h/4, w/4) float prototypes. infos: the letterbox of each image (N of them).
    retina_masks=False: masks are made at the model input (h, w) and resized to the frame (bilinear,
    > 0.5); True: made straight at frame resolution (sharper, slower). masks=False skips masks.
    Detections are in each frame's pixels; masks (n, H, W) bool over the frame.
    """
    if pred.shape[0] != len(infos) or proto.shape[0] != len(infos):
        raise ValueError(f"postprocess: expected {len(infos)} images (one per LetterboxInfo), got pred "
                         f"{tuple(pred.shape)} and proto {tuple(proto.shape)}")
    names = tuple(names)
    rows = non_max_suppression(pred, cfg, nc=len(names))
    return [_one_image(r, p, info, names, retina_masks=retina_masks, masks=masks)
            for r, p, info in zip(rows, proto, infos, strict=True)]


def _one_image(rows: torch.Tensor, proto: torch.Tensor, info: LetterboxInfo, names: tuple[str, ...], *,
               retina_masks: bool, masks: bool) -> Detections:
    # Imported here, not at the top: engines.structures imports engines.ops (rle, polygons), and
    # engines.ops re-exports this function, so a top-level import would be circular.
    from engines.structures import Detections

    boxes, coeffs = rows[:, :4], rows[:, 6:]
    frame_masks = None
    if not masks:
        boxes = scale_boxes(boxes, info)
    elif retina_masks:
        boxes = scale_boxes(boxes, info)
        frame_masks = process_masks_native(proto, coeffs, boxes, info.orig_shape)
    else:
        input_masks = process_masks(proto, coeffs, boxes, info.new_shape, upsample=True)
        boxes = scale_boxes(boxes, info)
        keep = input_masks.flatten(1).any(1)  # Ultralytics drops objects whose mask is empty at the input
        rows, boxes, input_masks = rows[keep], boxes[keep], input_masks[keep]
        frame_masks = _input_masks_to_frame(input_masks, info)
    if retina_masks and masks:
        keep = frame_masks.flatten(1).any(1)
        rows, boxes, frame_masks = rows[keep], boxes[keep], frame_masks[keep]
    return Detections(boxes=boxes.float(), scores=rows[:, 4].float(), class_ids=rows[:, 5].long(),
                      masks=frame_masks, orig_shape=info.orig_shape, names=names)


def _input_masks_to_frame(input_masks: torch.Tensor, info: LetterboxInfo) -> torch.Tensor:
    """bool (n, h, w) at the model input -> bool (n, H, W) in the frame, in chunks so the float
    intermediate of many masks on a large frame stays within the pixel budget."""
    h, w = info.orig_shape
    out = torch.empty((input_masks.shape[0], h, w), dtype=torch.bool, device=input_masks.device)
    step = max(1, _PIXEL_BUDGET // (h * w))
    for i in range(0, input_masks.shape[0], step):
        torch.gt(scale_masks(input_masks[None, i:i + step], (h, w), info=info)[0], 0.5, out=out[i:i + step])
    return out
