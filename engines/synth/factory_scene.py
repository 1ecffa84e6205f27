"""The factory style: a conveyor seen from above (belt or rollers, side rails, floor) and what lies on it.

Imports only ``engines.synth`` leaf modules. ``background`` paints an empty conveyor and returns where
the belt is; ``place`` scatters boxes, bottles, tools and clutter over it. Frame pixels, origin top-left.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from engines.synth import textures as tx
from engines.synth.drawing import Pose
from engines.synth.shapes import ObjectSpec

_LABELLED = ("box", "box", "bottle", "bottle", "tool", "tool")


@dataclass(frozen=True, slots=True)
class FactoryLayout:
    """Where the conveyor is. ``axis`` 0: the belt runs along x (a horizontal band between rows
    ``lo`` and ``hi``); 1: along y (a vertical band between columns ``lo`` and ``hi``). ``size`` is the
    nominal object length in pixels for this image (the camera's zoom)."""

    width: int
    height: int
    axis: int
    lo: float
    hi: float
    size: float


def background(rng: np.random.Generator, width: int, height: int) -> tuple[np.ndarray, FactoryLayout]:
    """An empty conveyor: float32 ``(H, W, 3)`` BGR 0-255 and its ``FactoryLayout``."""
    axis = int(rng.random() < 0.35)
    # Paint with the belt running along x in a (long, across) canvas, then transpose if it runs along y.
    L, A = (width, height) if axis == 0 else (height, width)
    img = _floor(rng, A, L)
    frac = rng.uniform(0.45, 0.8)
    lo = A * rng.uniform(0.05, 0.95 - frac)
    hi = lo + A * frac
    rail = max(int(A * rng.uniform(0.03, 0.06)), 3)
    b0, b1 = int(lo), int(hi)
    img[b0:b1] = _rollers(rng, b1 - b0, L) if rng.random() < 0.3 else _belt(rng, b1 - b0, L)
    for y0 in (b0 - rail, b1):
        y0 = max(y0, 0)
        h = min(rail, A - y0)
        if h > 0:
            img[y0 : y0 + h] = _rail(rng, h, L)
    img *= tx.linear_gradient(A, L, rng.uniform(0, 2 * np.pi), rng.uniform(0.7, 0.95), rng.uniform(1.0, 1.2))[
        ..., None
    ]
    if axis == 1:
        img = np.ascontiguousarray(img.transpose(1, 0, 2))
    size = min(width, height) * rng.uniform(0.1, 0.3)
    return img, FactoryLayout(width, height, axis, float(lo), float(hi), float(size))


def _floor(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    if rng.random() < 0.5:
        base = rng.uniform(100, 170)
        img = tx.tint(
            1.0 + 0.12 * tx.value_noise(rng, h, w, cell=rng.uniform(40, 120)), base + rng.uniform(-10, 10, 3)
        )
    else:
        shade = rng.uniform(90, 180)
        img = tx.tiles(
            rng,
            h,
            w,
            size=int(rng.integers(24, 80)),
            base=tuple(shade + rng.uniform(-15, 15, 3)),
            jitter=12,
            grout=shade * 0.6,
        )
    img += tx.fine_noise(rng, h, w, 3)[..., None]
    if rng.random() < 0.5:  # yellow-black hazard stripes along one floor edge
        band = int(h * rng.uniform(0.04, 0.08))
        y0 = 0 if rng.random() < 0.5 else h - band
        s = tx.stripes(band, w, period=band * 2.0, duty=0.5, angle=np.pi / 4)
        img[y0 : y0 + band] = np.where(
            s[..., None], np.array([20, 200, 230], np.float32), np.array([25, 25, 25], np.float32)
        )
    return img


def _belt(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    base = np.array([rng.uniform(35, 80)] * 3, np.float32) + rng.uniform(-10, 10, 3).astype(np.float32)
    if rng.random() < 0.3:  # green or blue PVC belts exist too
        base = np.array([60, 110, 60] if rng.random() < 0.5 else [120, 80, 40], np.float32)
    g = 1.0 + 0.15 * tx.value_noise(rng, h, w, cell=rng.uniform(8, 30), octaves=2)
    img = tx.tint(g, base)
    img += tx.fine_noise(rng, h, w, rng.uniform(2, 6))[..., None]
    period = rng.uniform(w * 0.15, w * 0.6)
    seams = tx.stripes(h, w, period=period, duty=3.0 / period, angle=0.0, phase=rng.uniform(0, period))
    img[seams] *= 0.6
    if rng.random() < 0.5:  # fine transverse ribs
        ribs = tx.stripes(h, w, period=rng.uniform(5, 12), duty=0.3, angle=0.0)
        img[ribs] *= 0.85
    return img


def _rollers(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    pitch = rng.uniform(14, 40)
    x = np.arange(w, dtype=np.float32)
    t = np.mod(x, pitch) / pitch  # position across one roller, 0..1
    gap = 0.12
    prof = np.where(t < gap, 0.25, 0.75 + 0.5 * np.sin(np.pi * (t - gap) / (1 - gap)))
    steel = rng.uniform(120, 190)
    img = np.broadcast_to((prof * steel).astype(np.float32)[None, :, None], (h, w, 3)).copy()
    img += tx.fine_noise(rng, h, w, 3)[..., None]
    return img


def _rail(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    prof = 0.7 + 0.5 * np.sin(np.linspace(0, np.pi, h, dtype=np.float32))
    col = np.float32(rng.uniform(130, 200, 3)) if rng.random() < 0.7 else np.array([40, 160, 210], np.float32)
    img = np.broadcast_to(prof[:, None, None] * col[None, None, :], (h, w, 3)).copy()
    step = max(int(rng.uniform(40, 120)), 10)
    for x in range(int(rng.integers(step)), w, step):  # bolts
        cv2.circle(img, (x, h // 2), max(h // 5, 1), (60.0, 60.0, 60.0), -1)
    return img


def place(rng: np.random.Generator, layout: FactoryLayout) -> list[tuple[ObjectSpec, Pose]]:
    """Random objects on (mostly) the belt, in drawing order (later ones lie on top)."""
    n = int(rng.integers(4, 15))  # traffic scenes hold more objects; keep the classes balanced
    out: list[tuple[ObjectSpec, Pose]] = []
    for _ in range(n):
        kind = "metal_part" if rng.random() < 0.15 else _LABELLED[int(rng.integers(len(_LABELLED)))]
        size = layout.size * rng.uniform(0.6, 1.4) * (0.35 if kind == "metal_part" else 1.0)
        out.append((ObjectSpec(kind, int(rng.integers(2**31)), float(size)), random_pose(rng, layout)))
    return out


def random_pose(rng: np.random.Generator, layout: FactoryLayout, *, along: float | None = None) -> Pose:
    """A pose on the belt (90 %) or anywhere (10 %); ``along`` fixes the position along the belt."""
    length = layout.width if layout.axis == 0 else layout.height
    a = rng.uniform(-0.1, 1.1) * length if along is None else along
    if rng.random() < 0.9:
        c = rng.uniform(layout.lo, layout.hi)
    else:
        c = rng.uniform(0, layout.height if layout.axis == 0 else layout.width)
    cx, cy = (a, c) if layout.axis == 0 else (c, a)
    return Pose(float(cx), float(cy), float(rng.uniform(0, 2 * np.pi)), 1.0)
