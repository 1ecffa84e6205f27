"""Instance masks evaluated only inside each object's box. Imports torch, engines.ops and engines.limits only.

The full-frame routes of :mod:`engines.ops.masks` cost O(n * H * W) floats: 100 objects on a 1080p
frame are ~200 M interpolated values. Every step of those routes (bilinear resizes, cutting the
letterbox padding) is linear and separable, so each axis is one small weight matrix (frame rows x
prototype rows) and a mask inside its box is ``Ay[rows] @ logits @ Ax[cols].T``, restricted to the
band of prototype rows/cols those frame pixels read. Cost: O(sum of box areas). Results equal the
full-frame routes except where a value lies within float rounding of the threshold (tests measure it).

A crop is ``(x0, y0, crop)``: crop bool (h_i, w_i) on the prototypes' device covering frame pixels
``[y0, y0 + h_i) x [x0, x0 + w_i)``; everything outside it is background.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

import torch

from engines.limits import check_mask_threshold
from engines.ops.boxes import scale_boxes
from engines.ops.letterbox import LetterboxInfo
from engines.ops.masks import _check, native_window

Crop = tuple[int, int, torch.Tensor]


@dataclass(frozen=True, slots=True)
class _Axis:
    """One axis of a resize: weights (out, in) float32, and per output index the first and last input
    index with a non-zero weight (host lists, non-decreasing)."""

    weights: torch.Tensor
    first: list[int]
    last: list[int]

    @classmethod
    def build(cls, m: int, f: int, lo: int, hi: int, out_size: int, device: torch.device) -> _Axis:
        """Upsample m -> f*m (f = 1: none), keep [lo, hi), resize to out_size: as one (out_size, m)
        matrix with at most 4 non-zeros a row, built by scattering the taps (no dense products)."""
        n_in = hi - lo
        # F.interpolate with an explicit size uses scale = n_in / out_size computed in float32.
        scale = float(torch.tensor(n_in, dtype=torch.float32) / out_size)
        r0, r1, lam = bilinear_taps(n_in, out_size, scale, device)
        r0, r1 = r0 + lo, r1 + lo  # rows of the (upsampled) input
        cols: tuple[torch.Tensor, ...]
        vals: tuple[torch.Tensor, ...]
        if f > 1:
            j0, j1, mu = bilinear_taps(m, f * m, 1.0 / f, device)
            cols = (j0[r0], j1[r0], j0[r1], j1[r1])
            vals = ((1 - lam) * (1 - mu[r0]), (1 - lam) * mu[r0], lam * (1 - mu[r1]), lam * mu[r1])
        else:
            cols, vals = (r0, r1), (1 - lam, lam)
        w = torch.zeros((out_size, m), dtype=torch.float32, device=device)
        rows = torch.arange(out_size, device=device)
        for c, v in zip(cols, vals, strict=True):
            w.index_put_((rows, c), v, accumulate=True)
        # Band bounds include zero-weight taps: reading them adds exact zeros.
        return cls(w, cols[0].tolist(), cols[-1].tolist())

    def band(self, start: int, end: int) -> tuple[int, int]:
        """Input index range [lo, hi) read by outputs [start, end)."""
        return self.first[start], self.last[end - 1] + 1

    def reach(self, start: int, end: int) -> tuple[int, int]:
        """Output index range [lo, hi) that reads any input in [start, end)."""
        return bisect.bisect_left(self.last, start), bisect.bisect_right(self.first, end - 1)


def mask_crops(protos: torch.Tensor, coeffs: torch.Tensor, boxes: torch.Tensor,
               shape: tuple[int, int], *, batched: bool | None = None, stride: int = 4,
               info: LetterboxInfo | None = None, threshold: float = 0.5) -> list[Crop]:
    """Retina masks (:func:`engines.ops.masks.process_masks_native`) inside each box, frame resolution.

    protos (nm, mh, mw), coeffs (n, nm), boxes (n, 4) xyxy in original-frame pixels, shape the frame
    (H, W); stride: model-input pixels per prototype pixel (4 for YOLOv8, 2 for finer prototypes);
    info: the letterbox of the input (else inferred from the shapes, as Ultralytics does: wrong when it
    padded both axes, as rectangular val batches do; see :func:`engines.ops.masks.native_window`),
    which also gives the stride; threshold: the mask probability a pixel must exceed (Ultralytics' 0.5, see
    :func:`mask_logit`). Returns one ``(x0, y0, crop)`` per detection, in order; the crop is exactly the box's pixel
    span (``ceil(x1) <= x < ceil(x2)``, clamped to the frame), possibly empty. For the streaming
    runtime: a 1080p frame with 100 objects never holds 100 frame-sized masks.

    ``batched`` (default: on CUDA) computes all crops in a few batched products over the whole
    prototype width instead of one small product per box reading only its band: more arithmetic, far
    fewer kernel launches. On a GPU the per-box loop was launch-bound (H200: 22.5 ms for 70
    detections, benchmarks/latency.py); on a CPU the band-limited loop does less work.
    """
    _, mh, mw = _check(protos, coeffs, boxes)
    h, w = shape
    cut = mask_logit(threshold)  # a bad threshold fails with or without objects
    if coeffs.shape[0] == 0:
        return []
    f, (top, left, bottom, right) = native_window(mh, mw, h, w, stride=stride, info=info)
    ay = _Axis.build(mh, f, top, bottom, h, protos.device)
    ax = _Axis.build(mw, f, left, right, w, protos.device)
    protos, coeffs = protos.float(), coeffs.float()
    spans = [(*_span(x1, x2, w), *_span(y1, y2, h)) for x1, y1, x2, y2 in boxes.tolist()]  # one host read
    if protos.is_cuda if batched is None else batched:
        return _batched_crops(protos, coeffs, ay, ax, spans, cut)
    return [(x0, y0, _logits(protos, coeffs[i], ay, ax, y0, ye, x0, xe) > cut)
            for i, (x0, xe, y0, ye) in enumerate(spans)]


def _batched_crops(protos: torch.Tensor, coeffs: torch.Tensor, ay: _Axis, ax: _Axis,
                   spans: list[tuple[int, int, int, int]], cut: float, max_elems: int = 1 << 25) -> list[Crop]:
    """:func:`mask_crops`' crops, boxes padded to the largest and computed in chunks of at most
    ``max_elems`` logits: ``Ay[rows] @ (coeffs @ protos) @ Ax[cols].T`` batched over detections.
    Crops are views of each chunk's binary result."""
    nm, mh, mw = protos.shape
    dev = protos.device
    h, w = ay.weights.shape[0], ax.weights.shape[0]
    hs = [max(ye - y0, 0) for _, _, y0, ye in spans]
    ws = [max(xe - x0, 0) for x0, xe, _, _ in spans]
    hmax, wmax = max(max(hs), 1), max(max(ws), 1)
    origin = torch.tensor([[x0, y0] for x0, _, y0, _ in spans], device=dev)  # one upload
    rows = (origin[:, 1:] + torch.arange(hmax, device=dev)).clamp_(max=h - 1)  # (n, hmax)
    cols = (origin[:, :1] + torch.arange(wmax, device=dev)).clamp_(max=w - 1)  # (n, wmax)
    m = (coeffs @ protos.reshape(nm, -1)).view(-1, mh, mw)
    step = max(1, max_elems // (hmax * wmax))
    crops: list[Crop] = []
    for a in range(0, len(spans), step):
        b = min(a + step, len(spans))
        logits = ay.weights[rows[a:b]] @ m[a:b] @ ax.weights[cols[a:b]].transpose(1, 2)  # (k, hmax, wmax)
        binary = logits > cut
        crops += [(spans[i][0], spans[i][2], binary[i - a, :hs[i], :ws[i]]) for i in range(a, b)]
    return crops


def input_mask_crops(protos: torch.Tensor, coeffs: torch.Tensor, boxes: torch.Tensor,
                     info: LetterboxInfo, *, threshold: float = 0.5) -> tuple[list[Crop], list[bool]]:
    """Input-resolution masks taken to the frame (:func:`process_masks` at the input, then
    :func:`scale_masks` with ``info``, > 0.5), inside each box.

    boxes: (n, 4) xyxy in model-input pixels. Returns (crops in frame pixels, has_pixels) where
    has_pixels[i] says whether the mask had any pixel at the input resolution (Ultralytics drops the
    objects without). A frame crop covers every frame pixel the input box can reach.
    """
    _, mh, mw = _check(protos, coeffs, boxes)
    cut = mask_logit(threshold)
    if coeffs.shape[0] == 0:
        return [], []
    (ih, iw), (h, w) = info.new_shape, info.orig_shape
    dev = protos.device
    in_y, in_x = _Axis.build(mh, 1, 0, mh, ih, dev), _Axis.build(mw, 1, 0, mw, iw, dev)
    left, top = info.pad
    fr_y = _Axis.build(ih, 1, top, top + info.unpad_shape[0], h, dev)
    fr_x = _Axis.build(iw, 1, left, left + info.unpad_shape[1], w, dev)
    protos, coeffs = protos.float(), coeffs.float()
    binaries = []
    for i, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
        ix0, ixe = _span(x1, x2, iw)
        iy0, iye = _span(y1, y2, ih)
        binaries.append((ix0, iy0, _logits(protos, coeffs[i], in_y, in_x, iy0, iye, ix0, ixe) > cut))
    has = [bool(v) for v in torch.stack([b.any() for _, _, b in binaries]).tolist()]  # one sync
    crops = []
    for ix0, iy0, b in binaries:
        iye, ixe = iy0 + b.shape[0], ix0 + b.shape[1]
        fy0, fye = fr_y.reach(iy0, iye) if b.shape[0] else (0, 0)
        fx0, fxe = fr_x.reach(ix0, ixe) if b.shape[1] else (0, 0)
        if fye <= fy0 or fxe <= fx0:
            crops.append((fx0, fy0, torch.zeros((max(fye - fy0, 0), max(fxe - fx0, 0)), dtype=torch.bool,
                                                device=dev)))
            continue
        vals = fr_y.weights[fy0:fye, iy0:iye] @ b.float() @ fr_x.weights[fx0:fxe, ix0:ixe].T
        crops.append((fx0, fy0, vals > 0.5))
    return crops, has


def retina_mask_crops(protos: torch.Tensor, coeffs: torch.Tensor, boxes: torch.Tensor,
                      info: LetterboxInfo, *, threshold: float = 0.5) -> list[Crop]:
    """:func:`mask_crops` for boxes in model-input pixels (mapped to the frame with ``info`` first)."""
    return mask_crops(protos, coeffs, scale_boxes(boxes, info), info.orig_shape, info=info, threshold=threshold)


def mask_logit(threshold: float) -> float:
    """The logit a mask pixel must exceed for ``sigmoid(logit) > threshold``: 0 at Ultralytics' 0.5.

    A threshold under 0.5 draws masks wider (thin parts the bilinear resize thinned survive), over 0.5
    narrower. Outside (0, 1) the ``ConfigError`` of :func:`engines.limits.check_mask_threshold`."""
    check_mask_threshold(threshold)
    return 0.0 if threshold == 0.5 else math.log(threshold) - math.log1p(-threshold)


def paste_crops(crops: list[Crop], shape: tuple[int, int],
                device: torch.device | str | None = None) -> torch.Tensor:
    """Frame masks bool (n, H, W) from (x0, y0, crop) triples (the inverse of the crop functions)."""
    out = torch.zeros((len(crops), *shape), dtype=torch.bool, device=device)
    for i, (x0, y0, c) in enumerate(crops):
        out[i, y0:y0 + c.shape[0], x0:x0 + c.shape[1]] = c.to(out.device)
    return out


def _logits(protos: torch.Tensor, coeff: torch.Tensor, ay: _Axis, ax: _Axis, y0: int, ye: int, x0: int,
            xe: int) -> torch.Tensor:
    """Mask logits (ye - y0, xe - x0) of one detection at the resolution ay/ax map to."""
    if ye <= y0 or xe <= x0:
        return torch.zeros((max(ye - y0, 0), max(xe - x0, 0)), device=protos.device)
    py0, py1 = ay.band(y0, ye)
    px0, px1 = ax.band(x0, xe)
    p = protos[:, py0:py1, px0:px1]
    m = (coeff @ p.reshape(p.shape[0], -1)).view(py1 - py0, px1 - px0)
    return ay.weights[y0:ye, py0:py1] @ m @ ax.weights[x0:xe, px0:px1].T


def _span(a: float, b: float, size: int) -> tuple[int, int]:
    """Pixel indices c with a <= c < b, clamped to [0, size): (first, end)."""
    return min(max(math.ceil(a), 0), size), min(max(math.ceil(b), 0), size)


def bilinear_taps(in_size: int, out_size: int, scale: float, device: torch.device,
                  dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PyTorch's bilinear (align_corners=False) taps along one axis: for each output index the two
    source indices and the weight of the second, with source = scale * (dst + 0.5) - 0.5 clamped at 0,
    computed in ``dtype`` (F.interpolate computes in its input's)."""
    dst = torch.arange(out_size, device=device, dtype=dtype)
    src = (torch.tensor(scale, dtype=dtype, device=device) * (dst + 0.5) - 0.5).clamp_(min=0)
    i0 = src.long()
    lam = (src - i0).clamp_(0, 1)
    i1 = torch.where(i0 < in_size - 1, i0 + 1, i0)
    return i0, i1, lam
