"""Instance masks from YOLOv8-seg prototypes. Imports only torch and engines.ops.letterbox.

A mask is ``sigmoid(coeffs @ protos) > 0.5``, i.e. ``coeffs @ protos > 0`` on the logits, cut to the
object's box. Three routes, all Ultralytics' semantics:

- :func:`process_masks`: logits upsampled to the model input (h, w), thresholded, cut to the box in
  input pixels; :func:`scale_masks` then takes them to the original frame (bilinear, > 0.5).
- :func:`process_masks_native` ("retina masks"): logits upsampled straight to the original frame.
- :func:`mask_crops`: the retina route evaluated only inside each box, for the streaming runtime: a
  1080p frame with 100 objects never holds 100 frame-sized masks.

protos: (nm, mh, mw) float, the prototype maps of one image (nm = 32, mh, mw = input h/4, w/4).
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
                         shape: tuple[int, int]) -> torch.Tensor:
    """Ultralytics' ``process_mask_native`` (retina masks). boxes and shape (H, W) in original-frame
    pixels -> bool (n, H, W).

    The logits are upsampled by the smallest factor f in {1, 2, 4} that puts the letterbox padding on
    whole pixels, the padding is cut off, and the rest is resized to the frame; the letterbox is
    inferred from the shapes (input = 4 x prototypes, centred padding), as Ultralytics does.
    """
    nm, mh, mw = _check(protos, coeffs, boxes)
    h, w = shape
    if coeffs.shape[0] == 0:
        return torch.zeros((0, h, w), dtype=torch.bool, device=protos.device)
    f = _native_upsample_factor(mh, mw, h, w)
    logits = (coeffs.float() @ protos.float().view(nm, -1)).view(1, -1, mh, mw)
    out = torch.empty((coeffs.shape[0], h, w), dtype=torch.bool, device=protos.device)
    step = max(1, _PIXEL_BUDGET // (h * w + f * f * mh * mw))
    for i in range(0, coeffs.shape[0], step):
        c = logits[:, i:i + step]
        if f > 1:
            c = F.interpolate(c, scale_factor=f, mode="bilinear", align_corners=False)
        torch.gt(scale_masks(c, (h, w))[0], 0, out=out[i:i + step])
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


def mask_crops(protos: torch.Tensor, coeffs: torch.Tensor, boxes: torch.Tensor,
               shape: tuple[int, int]) -> list[tuple[int, int, torch.Tensor]]:
    """Per-detection retina masks computed only inside each box, at frame resolution, on the device.

    boxes: (n, 4) xyxy in original-frame pixels; shape: frame (H, W). Returns, per detection,
    ``(x0, y0, crop)`` with crop bool (h_i, w_i) on the protos' device covering frame pixels
    ``[y0, y0 + h_i) x [x0, x0 + w_i)``; everything outside is background. Pasting the crops into
    zero frames gives :func:`process_masks_native`'s masks (up to float rounding at the 0 threshold).

    Both resize steps of the native route are linear per axis, so one (H, mh) and one (W, mw) weight
    matrix describe them; a crop is ``Ay[rows] @ (coeffs_i @ protos) @ Ax[cols].T`` restricted to the
    prototype band those rows and columns read.
    """
    _, mh, mw = _check(protos, coeffs, boxes)
    h, w = shape
    if coeffs.shape[0] == 0:
        return []
    f = _native_upsample_factor(mh, mw, h, w)
    top, left, bottom, right = _inferred_window(f * mh, f * mw, h, w)
    ay = _axis_weights(mh, f, top, bottom, h, protos.device)
    ax = _axis_weights(mw, f, left, right, w, protos.device)
    y_band, x_band = _bands(ay), _bands(ax)
    protos = protos.float()
    coeffs = coeffs.float()
    crops = []
    # One host read of the boxes: the crop bounds index Python slices.
    for i, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
        x0, xe = _span(x1, x2, w)
        y0, ye = _span(y1, y2, h)
        if xe <= x0 or ye <= y0:
            crops.append((x0, y0, torch.zeros((max(ye - y0, 0), max(xe - x0, 0)), dtype=torch.bool,
                                              device=protos.device)))
            continue
        py0, py1 = y_band[0][y0], y_band[1][ye - 1] + 1
        px0, px1 = x_band[0][x0], x_band[1][xe - 1] + 1
        p = protos[:, py0:py1, px0:px1]
        m = (coeffs[i] @ p.reshape(p.shape[0], -1)).view(py1 - py0, px1 - px0)
        logits = ay[y0:ye, py0:py1] @ m @ ax[x0:xe, px0:px1].T
        crops.append((x0, y0, logits > 0))
    return crops


def paste_crops(crops: list[tuple[int, int, torch.Tensor]], shape: tuple[int, int],
                device: torch.device | str | None = None) -> torch.Tensor:
    """Inverse of :func:`mask_crops`: bool (n, H, W) frame masks from (x0, y0, crop) triples."""
    out = torch.zeros((len(crops), *shape), dtype=torch.bool, device=device)
    for i, (x0, y0, c) in enumerate(crops):
        out[i, y0:y0 + c.shape[0], x0:x0 + c.shape[1]] = c.to(out.device)
    return out


def _span(a: float, b: float, size: int) -> tuple[int, int]:
    """Pixel indices c with a <= c < b, clamped to [0, size): (first, end)."""
    return min(max(math.ceil(a), 0), size), min(max(math.ceil(b), 0), size)


def _native_upsample_factor(mh: int, mw: int, h: int, w: int) -> int:
    """Ultralytics' choice of f in {1, 2, 4}: the smallest prototype upsample that crops the inferred
    letterbox padding on whole pixels."""
    gain = min(4 * mh / h, 4 * mw / w)
    pad = (4 * mh - max(round(h * gain), 1)) | (4 * mw - max(round(w * gain), 1))
    return 4 // math.gcd(4, pad | pad // 2)


def _inferred_window(ih: int, iw: int, oh: int, ow: int) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) of the content in an (ih, iw) letterboxed copy of an (oh, ow) image,
    assuming centred padding (Ultralytics' scale_masks with ratio_pad=None)."""
    gain = min(ih / oh, iw / ow)
    ch, cw = max(round(oh * gain), 1), max(round(ow * gain), 1)
    top, left = round((ih - ch) / 2 - 0.1), round((iw - cw) / 2 - 0.1)
    return top, left, top + ch, left + cw


def _linear_weights(in_size: int, out_size: int, scale: float,
                    device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PyTorch's bilinear (align_corners=False) taps along one axis: for each output index the two
    source indices and the weight of the second, with source = scale * (dst + 0.5) - 0.5 clamped at 0."""
    dst = torch.arange(out_size, device=device, dtype=torch.float32)
    src = (torch.tensor(scale, dtype=torch.float32, device=device) * (dst + 0.5) - 0.5).clamp_(min=0)
    i0 = src.long()
    lam = (src - i0).clamp_(0, 1)
    i1 = torch.where(i0 < in_size - 1, i0 + 1, i0)
    return i0, i1, lam


def _axis_weights(m: int, f: int, lo: int, hi: int, out_size: int, device: torch.device) -> torch.Tensor:
    """(out_size, m) float32: upsample m -> f*m, keep [lo, hi), resize to out_size, as one matrix."""
    if f > 1:
        i0, i1, lam = _linear_weights(m, f * m, 1.0 / f, device)
        up = torch.zeros((f * m, m), dtype=torch.float32, device=device)
        rows = torch.arange(f * m, device=device)
        up.index_put_((rows, i0), 1 - lam, accumulate=True)
        up.index_put_((rows, i1), lam, accumulate=True)
    else:
        up = torch.eye(m, dtype=torch.float32, device=device)
    up = up[lo:hi]
    n_in = hi - lo
    # Ultralytics resizes with an explicit size, so PyTorch's scale is n_in / out_size in float32.
    scale = float(torch.tensor(n_in, dtype=torch.float32) / out_size)
    i0, i1, lam = _linear_weights(n_in, out_size, scale, device)
    return (1 - lam)[:, None] * up[i0] + lam[:, None] * up[i1]


def _bands(a: torch.Tensor) -> tuple[list[int], list[int]]:
    """First and last prototype index each output row of a weight matrix reads (host lists)."""
    nz = a != 0
    first = nz.to(torch.uint8).argmax(1)
    last = a.shape[1] - 1 - nz.flip(1).to(torch.uint8).argmax(1)
    return first.tolist(), last.tolist()


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
