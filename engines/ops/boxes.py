"""Box conversions, IoU and letterbox un-mapping. Imports only torch and engines.ops.letterbox.

Every function is batched torch that runs unchanged on CPU and CUDA. Boxes are float tensors with the
four coordinates on the last axis; ``xyxy`` means (x1, y1, x2, y2) with x to the right and y down, in
pixels of whatever frame the caller names (model input or original frame).
"""

from __future__ import annotations

import torch

from engines.ops.letterbox import LetterboxInfo


def xywh2xyxy(x: torch.Tensor) -> torch.Tensor:
    """(..., 4) centre-x, centre-y, width, height -> (..., 4) x1, y1, x2, y2 (same units, new tensor).

    The arithmetic (halve the size, then subtract/add) is Ultralytics' so the results are bit-identical.
    """
    _check_last4(x, "xywh2xyxy input")
    y = torch.empty_like(x)
    xy, wh = x[..., :2], x[..., 2:] / 2
    y[..., :2] = xy - wh
    y[..., 2:] = xy + wh
    return y


def xyxy2xywh(x: torch.Tensor) -> torch.Tensor:
    """(..., 4) x1, y1, x2, y2 -> (..., 4) centre-x, centre-y, width, height (same units, new tensor)."""
    _check_last4(x, "xyxy2xywh input")
    y = torch.empty_like(x)
    y[..., 0] = (x[..., 0] + x[..., 2]) / 2
    y[..., 1] = (x[..., 1] + x[..., 3]) / 2
    y[..., 2] = x[..., 2] - x[..., 0]
    y[..., 3] = x[..., 3] - x[..., 1]
    return y


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of every box in ``a`` (n, 4) xyxy with every box in ``b`` (m, 4) xyxy -> (n, m) float.

    Same operation order as torchvision's NMS kernels (``inter / (area_a + area_b - inter)``, widths
    clamped at 0), so thresholding the result reproduces their keep decisions exactly. Degenerate
    pairs (both areas 0) give NaN, which compares False against any threshold, as in torchvision.
    """
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    # In-place on two (n, m) buffers: on CPU the allocations (page faults) of a temporary per step cost
    # as much as the arithmetic. The values are those of the plain expression, op for op.
    inter = torch.minimum(a[:, None, 2], b[None, :, 2])
    inter.sub_(torch.maximum(a[:, None, 0], b[None, :, 0])).clamp_(min=0)
    h = torch.minimum(a[:, None, 3], b[None, :, 3])
    tmp = torch.maximum(a[:, None, 1], b[None, :, 1])
    inter.mul_(h.sub_(tmp).clamp_(min=0))
    union = torch.add(area_a[:, None], area_b[None, :], out=tmp).sub_(inter)
    return inter.div_(union)


def clip_boxes(boxes: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Clamp (..., 4) xyxy boxes into an image of ``shape`` (H, W): x to [0, W], y to [0, H]. New tensor."""
    _check_last4(boxes, "clip_boxes input")
    h, w = shape
    out = boxes.clone()
    out[..., 0].clamp_(0, w)
    out[..., 1].clamp_(0, h)
    out[..., 2].clamp_(0, w)
    out[..., 3].clamp_(0, h)
    return out


def scale_boxes(boxes: torch.Tensor, info: LetterboxInfo, *, per_axis: bool = True) -> torch.Tensor:
    """Map (..., 4) xyxy boxes from model-input pixels back to original-frame pixels, clipped to the frame.

    Undoes :func:`engines.ops.letterbox.letterbox`: subtract the (left, top) padding, divide by the gain,
    clip to ``info.orig_shape``. Returns a new tensor (the input is not modified).

    per_axis=True divides x and y by the gains the resize really applied (``unpad_w / W``,
    ``unpad_h / H``): this is Ultralytics' predictor (``scale_boxes`` with ``ratio_pad=None``).
    per_axis=False divides both by the single letterbox gain ``info.gain``: this is Ultralytics'
    validator (``scale_boxes`` with the letterbox ``ratio_pad``). They differ by well under a pixel.
    """
    _check_last4(boxes, "scale_boxes input")
    if per_axis:
        gain_y, gain_x = info.unpad_shape[0] / info.orig_shape[0], info.unpad_shape[1] / info.orig_shape[1]
    else:
        gain_y = gain_x = info.gain
    pad_x, pad_y = info.pad
    out = boxes.clone()
    out[..., 0] -= pad_x
    out[..., 1] -= pad_y
    out[..., 2] -= pad_x
    out[..., 3] -= pad_y
    out[..., 0] /= gain_x
    out[..., 1] /= gain_y
    out[..., 2] /= gain_x
    out[..., 3] /= gain_y
    h, w = info.orig_shape
    out[..., 0].clamp_(0, w)
    out[..., 1].clamp_(0, h)
    out[..., 2].clamp_(0, w)
    out[..., 3].clamp_(0, h)
    return out


def _check_last4(x: torch.Tensor, what: str) -> None:
    if x.shape[-1:] != (4,):
        raise ValueError(f"{what}: expected shape (..., 4), got {tuple(x.shape)}")
