"""Augmentation hyperparameters and the image-side transforms. Imports nothing from pipeline/.

Every random draw comes from a ``numpy.random.Generator`` passed in by the caller (the dataset
derives one per sample from ``(seed, epoch, index)``), never from global RNG state.
Images are uint8 BGR ``(H, W, 3)`` in pixels; matrices map source pixels to destination pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import cv2
import numpy as np

from engines.errors import ConfigError
from engines.ops.letterbox import LetterboxInfo

PAD_VALUE = 114  # grey used for letterbox/mosaic/affine borders, as Ultralytics
COPY_PASTE_MODES = ("flip", "mixup")


@dataclass(frozen=True, slots=True)
class AugmentConfig:
    """Training augmentation hyperparameters; defaults are Ultralytics' (``default.yaml``).

    hsv_h/s/v: max fractional hue/saturation/value jitter. degrees: max rotation. translate: max
    shift as a fraction of the output size. scale: zoom in ``[1 - scale, 1 + scale]``. shear: max
    shear in degrees. perspective: max projective term (0-0.001 is sensible). flipud/fliplr: flip
    probabilities. bgr: probability that the input keeps OpenCV's BGR channel order instead of RGB.
    mosaic: probability of a 4-image mosaic. mixup: probability of blending in another sample (built the
    same way) at a Beta(32, 32) ratio. cutmix: probability of pasting a rectangle of another sample with its
    instances. copy_paste: fraction of the eligible instances pasted; copy_paste_mode "flip" pastes mirrored
    copies of the image's own instances, "mixup" (applied with probability copy_paste) instances of another
    sample (``engines.data.mix``). close_mosaic: mosaic, mixup, cutmix and copy_paste are turned off for the
    last this-many epochs (the trainer calls ``close_mosaic()``). mask_ratio: masks are rasterised at
    1/mask_ratio of the network input.
    """

    hsv_h: float = 0.015
    hsv_s: float = 0.7
    hsv_v: float = 0.4
    degrees: float = 0.0
    translate: float = 0.1
    scale: float = 0.5
    shear: float = 0.0
    perspective: float = 0.0
    flipud: float = 0.0
    fliplr: float = 0.5
    bgr: float = 0.0
    mosaic: float = 1.0
    mixup: float = 0.0
    cutmix: float = 0.0
    copy_paste: float = 0.0
    copy_paste_mode: str = "flip"
    close_mosaic: int = 10
    mask_ratio: int = 4

    def __post_init__(self) -> None:
        unit = ("hsv_h", "hsv_s", "hsv_v", "flipud", "fliplr", "bgr", "mosaic", "mixup", "cutmix", "copy_paste",
                "translate")
        for name in unit:
            _check(name, getattr(self, name), 0.0, 1.0)
        if self.copy_paste_mode not in COPY_PASTE_MODES:
            raise ConfigError("hyp.copy_paste_mode", f"expected {' or '.join(map(repr, COPY_PASTE_MODES))}, "
                                                     f"got {self.copy_paste_mode!r}")
        _check("degrees", self.degrees, 0.0, 180.0)
        _check("scale", self.scale, 0.0, 0.99)  # 1 - scale must stay positive
        _check("shear", self.shear, 0.0, 89.0)
        _check("perspective", self.perspective, 0.0, 0.1)
        for name in ("close_mosaic", "mask_ratio"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < (1 if name == "mask_ratio" else 0):
                raise ConfigError(f"hyp.{name}", f"expected a {'positive' if name == 'mask_ratio' else 'non-negative'} "
                                                 f"integer, got {v!r}")

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, path: str = "hyp") -> AugmentConfig:
        """Build from a mapping; an unknown key is a ConfigError naming it (typos must not pass)."""
        known = {f.name for f in fields(cls)}
        for k in d:
            if k not in known:
                raise ConfigError(f"{path}.{k}", f"unknown augmentation setting (known: {', '.join(sorted(known))})")
        return cls(**d)


def _check(name: str, v: Any, lo: float, hi: float) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
        raise ConfigError(f"hyp.{name}", f"expected a number in [{lo:g}, {hi:g}], got {v!r}")


def random_affine(rng: np.random.Generator, hyp: AugmentConfig, in_shape: tuple[int, int],
                  out_size: tuple[int, int]) -> tuple[np.ndarray, float]:
    """Ultralytics' random perspective matrix ``M = T @ S @ R @ P @ C``.

    in_shape: (h, w) of the source; out_size: (w, h) of the output. C moves the source centre to the
    origin, P/R/S add perspective, rotation+scale, shear, T moves the origin to a random point near
    the output centre. Returns ``(M (3, 3) float64, sampled scale)``.
    """
    C = np.eye(3)
    C[0, 2], C[1, 2] = -in_shape[1] / 2, -in_shape[0] / 2
    P = np.eye(3)
    P[2, 0] = rng.uniform(-hyp.perspective, hyp.perspective)
    P[2, 1] = rng.uniform(-hyp.perspective, hyp.perspective)
    R = np.eye(3)
    a = rng.uniform(-hyp.degrees, hyp.degrees)
    s = rng.uniform(1 - hyp.scale, 1 + hyp.scale)
    R[:2] = cv2.getRotationMatrix2D(angle=a, center=(0, 0), scale=s)
    S = np.eye(3)
    S[0, 1] = math.tan(math.radians(rng.uniform(-hyp.shear, hyp.shear)))
    S[1, 0] = math.tan(math.radians(rng.uniform(-hyp.shear, hyp.shear)))
    T = np.eye(3)
    T[0, 2] = rng.uniform(0.5 - hyp.translate, 0.5 + hyp.translate) * out_size[0]
    T[1, 2] = rng.uniform(0.5 - hyp.translate, 0.5 + hyp.translate) * out_size[1]
    return T @ S @ R @ P @ C, float(s)


def warp_image(img: np.ndarray, M: np.ndarray, out_size: tuple[int, int]) -> np.ndarray:
    """Warp a uint8 image by M (3x3, continuous pixel coordinates) into ``out_size`` (w, h), grey borders.

    cv2 applies its matrix to pixel indices (pixel centres at integers), our polygons live in
    continuous coordinates (centres at +0.5); conjugating by that half-pixel shift keeps image and
    polygons aligned (Ultralytics skips it: up to 0.5 px off at scale 1.5).
    """
    half = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5], [0.0, 0.0, 1.0]])
    Mi = np.linalg.inv(half) @ M @ half
    border = (PAD_VALUE,) * 3
    if M[2, 0] or M[2, 1]:
        return cv2.warpPerspective(img, Mi, dsize=out_size, borderValue=border)
    return cv2.warpAffine(img, Mi[:2], dsize=out_size, borderValue=border)


def transform_points(xy: np.ndarray, M: np.ndarray) -> np.ndarray:
    """Apply a 3x3 projective matrix to (..., 2) points -> float64 (..., 2)."""
    shape = xy.shape
    p = xy.reshape(-1, 2).astype(np.float64) @ M[:2, :2].T + M[:2, 2]
    if M[2, 0] or M[2, 1]:
        w = xy.reshape(-1, 2).astype(np.float64) @ M[2, :2] + M[2, 2]
        p /= w[:, None]
    return p.reshape(shape)


def mosaic_layout(rng: np.random.Generator, s: int, shapes: list[tuple[int, int]]) -> list[tuple[int, ...]]:
    """Placement of 4 images (h, w) around a random centre of a ``2s x 2s`` canvas (Ultralytics).

    Returns per image ``(x1a, y1a, x2a, y2a, x1b, y1b, x2b, y2b)``: canvas rectangle ``a`` receives
    image rectangle ``b``. Images sit top-left, top-right, bottom-left, bottom-right of the centre,
    each touching it; what is cut off lies beyond the canvas edge.
    """
    yc = int(rng.uniform(s // 2, 2 * s - s // 2))
    xc = int(rng.uniform(s // 2, 2 * s - s // 2))
    out: list[tuple[int, ...]] = []
    for i, (h, w) in enumerate(shapes):
        if i == 0:
            x1a, y1a, x2a, y2a = max(xc - w, 0), max(yc - h, 0), xc, yc
            x1b, y1b, x2b, y2b = w - (x2a - x1a), h - (y2a - y1a), w, h
        elif i == 1:
            x1a, y1a, x2a, y2a = xc, max(yc - h, 0), min(xc + w, s * 2), yc
            x1b, y1b, x2b, y2b = 0, h - (y2a - y1a), min(w, x2a - x1a), h
        elif i == 2:
            x1a, y1a, x2a, y2a = max(xc - w, 0), yc, xc, min(s * 2, yc + h)
            x1b, y1b, x2b, y2b = w - (x2a - x1a), 0, w, min(y2a - y1a, h)
        else:
            x1a, y1a, x2a, y2a = xc, yc, min(xc + w, s * 2), min(s * 2, yc + h)
            x1b, y1b, x2b, y2b = 0, 0, min(w, x2a - x1a), min(y2a - y1a, h)
        out.append((x1a, y1a, x2a, y2a, x1b, y1b, x2b, y2b))
    return out


def hsv_jitter(img: np.ndarray, rng: np.random.Generator, hgain: float, sgain: float, vgain: float) -> None:
    """Random hue/saturation/value change of a uint8 BGR image, in place (Ultralytics' LUT form)."""
    if not (hgain or sgain or vgain):
        return
    r = rng.uniform(-1, 1, 3) * (hgain, sgain, vgain)
    x = np.arange(256, dtype=np.float64)
    lut_hue = ((x + r[0] * 180) % 180).astype(np.uint8)
    lut_sat = np.clip(x * (r[1] + 1), 0, 255).astype(np.uint8)
    lut_val = np.clip(x * (r[2] + 1), 0, 255).astype(np.uint8)
    lut_sat[0] = 0  # keep greys grey
    lut = np.stack((lut_hue, lut_sat, lut_val), -1).reshape(1, 256, 3)
    hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
    cv2.cvtColor(cv2.LUT(hsv, lut), cv2.COLOR_HSV2BGR, dst=img)


def val_letterbox(shape: tuple[int, int], imgsz: int, target: tuple[int, int]) -> LetterboxInfo:
    """Letterbox geometry of a val image: (H, W) ``shape`` into ``target`` (h, w), centred.

    The gain is Ultralytics' val rule: longest side to ``imgsz`` (up or down), then never enlarged to
    fill a rectangular batch shape: ``min(imgsz / max(H, W), h / H, w / W)``. Rounding and the pad
    split follow ``engines.ops.letterbox`` (Ultralytics' LetterBox).
    """
    h0, w0 = shape
    th, tw = target
    r = min(imgsz / max(h0, w0), th / h0, tw / w0)
    uw, uh = min(max(round(w0 * r), 1), tw), min(max(round(h0 * r), 1), th)
    dw, dh = (tw - uw) / 2, (th - uh) / 2
    return LetterboxInfo(orig_shape=(h0, w0), new_shape=(th, tw), gain=r,
                         pad=(round(dw - 0.1), round(dh - 0.1)), unpad_shape=(uh, uw))


def pad_image(img: np.ndarray, info: LetterboxInfo) -> np.ndarray:
    """Place a (unpad_h, unpad_w, 3) image into ``info.new_shape`` at ``info.pad``, grey around."""
    (th, tw), (left, top) = info.new_shape, info.pad
    h, w = img.shape[:2]
    return cv2.copyMakeBorder(img, top, th - h - top, left, tw - w - left, cv2.BORDER_CONSTANT,
                              value=(PAD_VALUE,) * 3)
