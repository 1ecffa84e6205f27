"""Letterbox: resize keeping the aspect ratio, then pad, on the device. Imports only torch.

The geometry is Ultralytics' ``LetterBox`` exactly (same Python rounding, same asymmetric padding
split), so boxes and masks map back to the original frame the same way. The resize runs on the device
with ``F.interpolate(bilinear, align_corners=False, antialias=False)``, the same half-pixel bilinear
as ``cv2.INTER_LINEAR``; the result is rounded to whole uint8 levels as cv2 does, so pixel values
differ from cv2's fixed-point arithmetic by at most one level (see tests/engines/test_ops_letterbox.py
for the figures measured on coco128).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True, slots=True, kw_only=True)
class LetterboxInfo:
    """How one image was letterboxed; everything needed to map results back to it.

    orig_shape: (H, W) of the original image, pixels.
    new_shape: (h, w) of the letterboxed model input, pixels (padding included).
    gain: the resize ratio ``min(h_target / H, w_target / W)`` (capped at 1 when scaleup=False).
    pad: (left, top) padding in model-input pixels; the image occupies
      ``[top, top + unpad_h) x [left, left + unpad_w)`` of the input.
    unpad_shape: (unpad_h, unpad_w), the resized image before padding, pixels.
    """

    orig_shape: tuple[int, int]
    new_shape: tuple[int, int]
    gain: float
    pad: tuple[int, int]
    unpad_shape: tuple[int, int]

    @property
    def ratio_pad(self) -> tuple[tuple[float, float], tuple[int, int]]:
        """Ultralytics' ``ratio_pad``: ((gain_h, gain_w), (pad_left, pad_top))."""
        return (self.gain, self.gain), self.pad


def letterbox_geometry(
    orig_shape: tuple[int, int],
    *,
    size: int | tuple[int, int] = 640,
    stride: int = 32,
    auto: bool = False,
    scaleup: bool = True,
) -> LetterboxInfo:
    """Ultralytics' ``LetterBox.get_params`` for one (H, W) image (centred, no scale_fill).

    size: target (h, w) or an int for a square. auto=True pads only up to the next multiple of
    ``stride`` instead of to ``size``. scaleup=False never enlarges the image.
    """
    h0, w0 = (int(v) for v in orig_shape)
    if h0 < 1 or w0 < 1:
        raise ValueError(f"letterbox image shape: expected H, W >= 1, got {(h0, w0)}")
    th, tw = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    r = min(th / h0, tw / w0)
    if not scaleup:
        r = min(r, 1.0)
    # Python's round() (half to even) is what Ultralytics uses; do not replace with floor(x + 0.5).
    uw, uh = max(round(w0 * r), 1), max(round(h0 * r), 1)
    dw, dh = tw - uw, th - uh
    if auto:
        dw, dh = dw % stride, dh % stride
    pw, ph = dw / 2, dh / 2
    top, bottom = round(ph - 0.1), round(ph + 0.1)
    left, right = round(pw - 0.1), round(pw + 0.1)
    return LetterboxInfo(orig_shape=(h0, w0), new_shape=(uh + top + bottom, uw + left + right), gain=r,
                         pad=(left, top), unpad_shape=(uh, uw))


def letterbox(
    images: torch.Tensor | Sequence[torch.Tensor],
    *,
    size: int | tuple[int, int] = 640,
    stride: int = 32,
    auto: bool = False,
    scaleup: bool = True,
    pad_value: int = 114,
) -> tuple[torch.Tensor, list[LetterboxInfo]]:
    """Letterbox a batch of BGR uint8 images into one model-input batch on their device.

    images: uint8 BGR, either one tensor (N, H, W, 3) or a list of (H_i, W_i, 3) tensors (sizes may
      differ; all on one device). Channels last, as decoders and cv2 produce them.
    Returns (batch, infos): batch float32 (N, 3, h, w), RGB, values in [0, 1], on the images' device;
    infos[i] is the :class:`LetterboxInfo` of image i. Every image must land on the same (h, w): with
    auto=True and differently sized images that is not guaranteed, and a ValueError says so.
    An empty list gives a (0, 3, h, w) batch with h, w from ``size``.
    """
    imgs = _as_image_list(images)
    th, tw = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if not imgs:
        device = images.device if isinstance(images, torch.Tensor) else None
        return torch.empty((0, 3, th, tw), dtype=torch.float32, device=device), []
    infos = [letterbox_geometry((im.shape[0], im.shape[1]), size=size, stride=stride, auto=auto,
                                scaleup=scaleup) for im in imgs]
    shapes = {i.new_shape for i in infos}
    if len(shapes) != 1:
        raise ValueError(f"letterbox: images of different sizes give different input shapes {sorted(shapes)} "
                         "with auto=True; use auto=False to batch them")
    h, w = shapes.pop()
    device = imgs[0].device
    out = torch.full((len(imgs), 3, h, w), float(pad_value), dtype=torch.float32, device=device)
    # Images of one size share a geometry: resize them together (one kernel for a same-camera batch).
    groups: dict[tuple[int, int], list[int]] = {}
    for i, im in enumerate(imgs):
        groups.setdefault((im.shape[0], im.shape[1]), []).append(i)
    for idx in groups.values():
        info = infos[idx[0]]
        src = images if isinstance(images, torch.Tensor) and len(idx) == len(imgs) else torch.stack(
            [imgs[i] for i in idx])
        x = src.permute(0, 3, 1, 2)[:, [2, 1, 0]].float()  # BGR -> RGB, NCHW
        uh, uw = info.unpad_shape
        if (uh, uw) != info.orig_shape:
            x = F.interpolate(x, size=(uh, uw), mode="bilinear", align_corners=False, antialias=False)
            x = x.round_().clamp_(0, 255)  # cv2 returns uint8: quantise the same way
        left, top = info.pad
        out[idx, :, top:top + uh, left:left + uw] = x
    return out.div_(255), infos


def _as_image_list(images: torch.Tensor | Sequence[torch.Tensor]) -> list[torch.Tensor]:
    if isinstance(images, torch.Tensor):
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"letterbox images: expected a (N, H, W, 3) tensor, got {tuple(images.shape)}")
        if images.dtype != torch.uint8:
            raise ValueError(f"letterbox images: expected dtype uint8, got {images.dtype}")
        return list(images.unbind(0))
    imgs = list(images)
    for i, im in enumerate(imgs):
        if not isinstance(im, torch.Tensor):
            raise TypeError(f"letterbox images[{i}]: expected a torch.Tensor, got {type(im).__name__}")
        if im.ndim != 3 or im.shape[-1] != 3:
            raise ValueError(f"letterbox images[{i}]: expected shape (H, W, 3), got {tuple(im.shape)}")
        if im.dtype != torch.uint8:
            raise ValueError(f"letterbox images[{i}]: expected dtype uint8, got {im.dtype}")
        if im.device != imgs[0].device:
            raise ValueError(f"letterbox images[{i}]: expected device {imgs[0].device}, got {im.device}")
    return imgs
