"""Box and mask helpers the training loss needs. Leaf module: imports only torch.

Kept beside the loss rather than in ``engines.ops`` because their exact numerics (the ``eps``
placement in CIoU, the half-open crop) are part of the loss definition, not of inference.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def xywh2xyxy(boxes: Tensor) -> Tensor:
    """``(..., 4)`` centre-x, centre-y, width, height -> ``(..., 4)`` x1, y1, x2, y2 (same units)."""
    xy, wh = boxes[..., :2], boxes[..., 2:] / 2
    return torch.cat((xy - wh, xy + wh), -1)


def bbox_ciou(box1: Tensor, box2: Tensor, eps: float = 1e-7) -> Tensor:
    """Complete IoU (Zheng et al. 2020) of boxes paired element-wise.

    Args:
        box1, box2: ``(..., 4)`` xyxy boxes in the same units; broadcast against each other.
        eps: guards the divisions; added to heights and the union as Ultralytics does, so
            values match YOLOv8 training to float precision.

    Returns:
        ``(...)`` CIoU = IoU - centre distance² / enclosing diagonal² - alpha * v, in ``[-1.5, 1]``.
        The aspect-ratio trade-off ``alpha`` is treated as a constant (no gradient), as in the paper.
    """
    b1x1, b1y1, b1x2, b1y2 = box1.unbind(-1)
    b2x1, b2y1, b2x2, b2y2 = box2.unbind(-1)
    w1, h1 = b1x2 - b1x1, b1y2 - b1y1 + eps
    w2, h2 = b2x2 - b2x1, b2y2 - b2y1 + eps
    inter = (torch.minimum(b1x2, b2x2) - torch.maximum(b1x1, b2x1)).clamp(0) * (
        torch.minimum(b1y2, b2y2) - torch.maximum(b1y1, b2y1)
    ).clamp(0)
    union = w1 * h1 + w2 * h2 - inter + eps
    iou = inter / union
    cw = torch.maximum(b1x2, b2x2) - torch.minimum(b1x1, b2x1)
    ch = torch.maximum(b1y2, b2y2) - torch.minimum(b1y1, b2y1)
    c2 = cw.pow(2) + ch.pow(2) + eps
    rho2 = ((b2x1 + b2x2 - b1x1 - b1x2).pow(2) + (b2y1 + b2y2 - b1y1 - b1y2).pow(2)) / 4
    v = (4 / math.pi**2) * (torch.atan(w2 / h2) - torch.atan(w1 / h1)).pow(2)
    with torch.no_grad():
        alpha = v / (1 - iou + v + eps)
    return iou - (rho2 / c2 + v * alpha)


def crop_mask(masks: Tensor, boxes: Tensor) -> Tensor:
    """Zero everything outside each box; returns a new tensor.

    Args:
        masks: ``(N, H, W)`` any float dtype.
        boxes: ``(N, 4)`` xyxy in mask pixels; pixel column ``c`` is kept when ``x1 <= c < x2``.

    Returns:
        ``(N, H, W)`` masks, zero outside the boxes.
    """
    _, h, w = masks.shape
    x1, y1, x2, y2 = boxes[:, :, None].unbind(1)  # each (N, 1)
    cols = torch.arange(w, device=masks.device, dtype=boxes.dtype)[None, None, :]
    rows = torch.arange(h, device=masks.device, dtype=boxes.dtype)[None, :, None]
    inside = ((cols >= x1[:, None]) & (cols < x2[:, None])) & ((rows >= y1[:, None]) & (rows < y2[:, None]))
    return masks * inside
