"""Instance masks from YOLOv8-seg prototypes. Imports only torch and engines.ops.letterbox.

A mask is ``sigmoid(coeffs @ protos) > 0.5``, i.e. ``coeffs @ protos > 0`` on the logits, cut to the
object's box. Two routes, both exact ports of Ultralytics (the reference for the faster box-restricted
versions in engines.ops.crops, which postprocess and the streaming runtime use):

- :func:`process_masks`: logits upsampled to the model input (h, w), thresholded, cut to the box in
  input pixels; :func:`scale_masks` then takes them to the original frame (bilinear, > 0.5).
- :func:`process_masks_native` ("retina masks"): logits upsampled straight to the original frame.

protos: (nm, mh, mw) float, the prototype maps of one image (nm = 32, mh, mw = input h/4, w/4, or
h/2, w/2 for a model with finer prototypes).
coeffs: (n, nm) float, one row of mask coefficients per detection. boxes: (n, 4) xyxy float.
A box covers pixel column c when ``x1 <= c < x2`` (and rows likewise), as in Ultralytics' crop_mask.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from engines.ops.letterbox import LetterboxInfo

# Upper bound on pixels one interpolation chunk may hold (n_chunk * H * W); Ultralytics' figure. It
# keeps the float intermediates of 100 masks on a 4K frame to ~64 MB instead of ~3 GB.
_PIXEL_BUDGET = 16_000_000


def crop_mask(masks: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Zero every pixel outside its box. masks (n, H, W) bool/uint8/float, boxes (n, 4) xyxy in the
    masks' pixels -> (n, H, W), same dtype (new tensor). Rows and columns are tested separately, so no
    (n, H, W) grid of coordinates is built."""
    _, h, w = masks.shape
    boxes = boxes.to(device=masks.device, dtype=torch.float32)
    x1, y1, x2, y2 = boxes[:, :, None].unbind(1)  # each (n, 1)
    cols = torch.arange(w, device=masks.device, dtype=torch.float32)[None, None, :]
    rows = torch.arange(h, device=masks.device, dtype=torch.float32)[None, :, None]
    in_cols = (cols >= x1[:, :, None]) & (cols < x2[:, :, None])  # (n, 1, W)
    in_rows = (rows >= y1[:, :, None]) & (rows < y2[:, :, None])  # (n, H, 1)
    if masks.dtype == torch.bool:
        return masks & in_cols & in_rows
    return masks * in_cols * in_rows


def process_masks(protos: torch.Tensor, coeffs: torch.Tensor, boxes: torch.Tensor, shape: tuple[int, int],
                  *, upsample: bool = True) -> torch.Tensor:
    """Ultralytics' ``process_mask``. boxes in model-input pixels, shape = input (h, w).

    Returns bool (n, h, w) when upsample=True (logits bilinearly resized to the input, then
    thresholded and cut), else bool (n, mh, mw) at prototype resolution (boxes scaled down to it).
    n = 0 gives an empty tensor of that shape.
    """
    nm, mh, mw = _check(protos, coeffs, boxes)
    out_hw = tuple(shape) if upsample else (mh, mw)
    if coeffs.shape[0] == 0:
        return torch.zeros((0, *out_hw), dtype=torch.bool, device=protos.device)
    logits = (coeffs.float() @ protos.float().view(nm, -1)).view(-1, mh, mw)
    if not upsample:
        ratios = torch.tensor([[mw / shape[1], mh / shape[0], mw / shape[1], mh / shape[0]]], device=boxes.device)
        return crop_mask(logits > 0, boxes * ratios)
    out = torch.empty((logits.shape[0], *out_hw), dtype=torch.bool, device=protos.device)
    step = _chunk(out_hw[0] * out_hw[1])
    for i in range(0, logits.shape[0], step):
        up = F.interpolate(logits[None, i:i + step], out_hw, mode="bilinear", align_corners=False)[0]
        torch.gt(up, 0, out=out[i:i + step])
    return crop_mask(out, boxes)


def process_masks_native(protos: torch.Tensor, coeffs: torch.Tensor, boxes: torch.Tensor,
                         shape: tuple[int, int], *, stride: int = 4,
                         info: LetterboxInfo | None = None) -> torch.Tensor:
    """Ultralytics' ``process_mask_native`` (retina masks). boxes and shape (H, W) in original-frame
    pixels -> bool (n, H, W).

    The logits are upsampled by the smallest factor f dividing ``stride`` (1, 2, 4) that puts the
    letterbox padding on whole pixels, the padding is cut off, and the rest is resized to the frame; the
    letterbox is inferred from the shapes (input = ``stride`` x prototypes, 4 for YOLOv8, centred
    padding), as Ultralytics does, unless ``info`` gives it (then ``stride`` is read from it too). The
    inference fails for a letterbox padded on both axes, as rectangular val batches are (Ultralytics'
    own val makes these masks at the input size, where no padding is cut).
    """
    nm, mh, mw = _check(protos, coeffs, boxes)
    h, w = shape
    if coeffs.shape[0] == 0:
        return torch.zeros((0, h, w), dtype=torch.bool, device=protos.device)
    f, (top, left, bottom, right) = native_window(mh, mw, h, w, stride=stride, info=info)
    logits = (coeffs.float() @ protos.float().view(nm, -1)).view(1, -1, mh, mw)
    out = torch.empty((coeffs.shape[0], h, w), dtype=torch.bool, device=protos.device)
    step = max(1, _PIXEL_BUDGET // (h * w + f * f * mh * mw))
    for i in range(0, coeffs.shape[0], step):
        c = logits[:, i:i + step]
        if f > 1:
            c = F.interpolate(c, scale_factor=f, mode="bilinear", align_corners=False)
        c = F.interpolate(c[..., top:bottom, left:right], (h, w), mode="bilinear", align_corners=False)
        torch.gt(c[0], 0, out=out[i:i + step])
    return crop_mask(out, boxes)


def scale_masks(masks: torch.Tensor, shape: tuple[int, int], *, info: LetterboxInfo | None = None) -> torch.Tensor:
    """Un-letterbox masks: cut the padding off and bilinearly resize to the original frame.

    masks: (N, C, h, w) at model-input (or any letterboxed) resolution, any dtype. shape: frame (H, W).
    info: the letterbox that made the input; the masks must then be at ``info.new_shape``. Without it
    the letterbox is inferred from the two shapes (centred padding), as Ultralytics' ``scale_masks``
    with ``ratio_pad=None``. Returns float32 (N, C, H, W); threshold at 0.5 for binary masks (or at 0
    for logits). Same-shaped input is returned unchanged.
    """
    if masks.ndim != 4:
        raise ValueError(f"scale_masks masks: expected (N, C, h, w), got {tuple(masks.shape)}")
    ih, iw = masks.shape[2:]
    oh, ow = shape
    if (ih, iw) == (oh, ow):
        return masks
    if masks.shape[0] == 0 or masks.shape[1] == 0:
        return masks.new_zeros((*masks.shape[:2], oh, ow), dtype=torch.float32)
    if info is not None:
        if (ih, iw) != info.new_shape:
            raise ValueError(f"scale_masks masks: expected spatial shape {info.new_shape} (info.new_shape), "
                             f"got {(ih, iw)}")
        left, top = info.pad
        bottom, right = top + info.unpad_shape[0], left + info.unpad_shape[1]
    else:
        top, left, bottom, right = _inferred_window(ih, iw, oh, ow)
    return F.interpolate(masks[..., top:bottom, left:right].float(), (oh, ow), mode="bilinear",
                         align_corners=False)


def native_window(mh: int, mw: int, h: int, w: int, *, stride: int = 4,
                  info: LetterboxInfo | None = None) -> tuple[int, tuple[int, int, int, int]]:
    """Retina masks' geometry for (mh, mw) prototypes and an (h, w) frame: the prototype upsample f
    (a divisor of the input pixels per prototype pixel) and the frame's content window (top, left,
    bottom, right) on the f-times upsampled prototype grid, padding on whole pixels there.

    Without ``info`` the letterbox is inferred from the shapes as Ultralytics does (input = ``stride``
    x prototypes, centred padding on one axis); with it, its padding is used as it is.
    """
    if info is None:
        f = _native_upsample_factor(mh, mw, h, w, stride)
        return f, _inferred_window(f * mh, f * mw, h, w)
    ih, iw = info.new_shape
    stride = ih // mh
    if stride < 1 or (ih, iw) != (stride * mh, stride * mw):
        raise ValueError(f"prototypes ({mh}, {mw}) do not tile the model input {info.new_shape}")
    left, top = info.pad
    bottom, right = top + info.unpad_shape[0], left + info.unpad_shape[1]
    f = stride // math.gcd(stride, top | left | (ih - bottom) | (iw - right))
    s = stride // f  # input pixels per upsampled prototype pixel; every edge is a multiple of it
    return f, (top // s, left // s, bottom // s, right // s)


def _native_upsample_factor(mh: int, mw: int, h: int, w: int, stride: int = 4) -> int:
    """Ultralytics' choice of f in {1, 2, 4} (divisors of ``stride``, the input pixels per prototype
    pixel): the smallest prototype upsample that crops the inferred letterbox padding on whole pixels."""
    gain = min(stride * mh / h, stride * mw / w)
    pad = (stride * mh - max(round(h * gain), 1)) | (stride * mw - max(round(w * gain), 1))
    return stride // math.gcd(stride, pad | pad // 2)


def _inferred_window(ih: int, iw: int, oh: int, ow: int) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) of the content in an (ih, iw) letterboxed copy of an (oh, ow) image,
    assuming centred padding (Ultralytics' scale_masks with ratio_pad=None)."""
    gain = min(ih / oh, iw / ow)
    ch, cw = max(round(oh * gain), 1), max(round(ow * gain), 1)
    top, left = round((ih - ch) / 2 - 0.1), round((iw - cw) / 2 - 0.1)
    return top, left, top + ch, left + cw


def _chunk(pixels_per_mask: int) -> int:
    return max(1, _PIXEL_BUDGET // max(pixels_per_mask, 1))


def _check(protos: torch.Tensor, coeffs: torch.Tensor, boxes: torch.Tensor) -> tuple[int, int, int]:
    if protos.ndim != 3:
        raise ValueError(f"protos: expected (nm, mh, mw), got {tuple(protos.shape)}")
    nm = protos.shape[0]
    if coeffs.ndim != 2 or coeffs.shape[1] != nm:
        raise ValueError(f"coeffs: expected (n, {nm}), got {tuple(coeffs.shape)}")
    if boxes.shape != (coeffs.shape[0], 4):
        raise ValueError(f"boxes: expected ({coeffs.shape[0]}, 4), got {tuple(boxes.shape)}")
    return nm, protos.shape[1], protos.shape[2]
