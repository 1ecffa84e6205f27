"""Procedural textures for synthetic scenes: value noise, gradients, tiles, stripes.

Leaf module: imports only numpy and cv2. Every function draws from the ``numpy.random.Generator`` it is
given (never a global RNG), so a scene is a pure function of its seed.

All images are float32 in 0-255, shape ``(H, W)`` or ``(H, W, 3)`` BGR; coordinates are pixels with the
origin at the top-left corner, x to the right, y down.
"""

from __future__ import annotations

import cv2
import numpy as np


def value_noise(
    rng: np.random.Generator, h: int, w: int, *, cell: float, octaves: int = 3, persistence: float = 0.5
) -> np.ndarray:
    """Smooth multi-octave noise, float32 ``(h, w)`` roughly in -1..1 (zero mean).

    ``cell`` is the feature size of the coarsest octave in pixels; each next octave halves it and its
    amplitude is multiplied by ``persistence``. Made by bicubic upsampling of small random grids, which
    costs a few resizes instead of per-pixel hashing. When the finest octave is at least 8 pixels, the
    octaves are summed at half resolution and upsampled once: a quarter of the work, same look.
    """
    finest = cell / 2 ** (octaves - 1)
    k = 2 if finest >= 8 and min(h, w) >= 16 else 1
    sh, sw = -(-h // k), -(-w // k)
    out: np.ndarray = np.zeros((sh, sw), np.float32)
    amp, total = 1.0, 0.0
    for o in range(octaves):
        c = max(cell / (2**o) / k, 1.0)
        gh, gw = max(int(sh / c) + 2, 2), max(int(sw / c) + 2, 2)
        grid = rng.uniform(-1.0, 1.0, (gh, gw)).astype(np.float32)
        out += np.float32(amp) * cv2.resize(grid, (sw, sh), interpolation=cv2.INTER_CUBIC)
        total += amp
        amp *= persistence
    out *= np.float32(1.0 / total)
    if k > 1:
        out = cv2.resize(out, (sw * k, sh * k), interpolation=cv2.INTER_LINEAR)[:h, :w]
    return np.ascontiguousarray(out)


def fine_noise(rng: np.random.Generator, h: int, w: int, sigma: float) -> np.ndarray:
    """Per-pixel grain, float32 ``(h, w)`` with standard deviation ``sigma`` (0-255 units).

    Uniformly distributed: a texture's grain looks the same as gaussian grain and costs a third."""
    u = rng.random((h, w), dtype=np.float32)
    u -= np.float32(0.5)
    u *= np.float32(sigma * np.sqrt(12.0))
    return u


def frac(a: np.ndarray) -> np.ndarray:
    """Fractional part ``a - floor(a)`` (float32); several times faster than ``np.mod`` on floats."""
    return a - np.floor(a)


def linear_gradient(h: int, w: int, angle: float, lo: float, hi: float) -> np.ndarray:
    """A linear ramp float32 ``(h, w)`` from ``lo`` to ``hi`` along direction ``angle`` (radians)."""
    xs = np.arange(w, dtype=np.float32)[None, :] * np.float32(np.cos(angle))
    ys = np.arange(h, dtype=np.float32)[:, None] * np.float32(np.sin(angle))
    d = xs + ys
    d -= d.min()
    span = float(d.max()) or 1.0
    return (np.float32(lo) + np.float32((hi - lo) / span) * d).astype(np.float32)


def radial_falloff(h: int, w: int, cx: float, cy: float, radius: float) -> np.ndarray:
    """Float32 ``(h, w)`` in 0..1: 1 at ``(cx, cy)`` falling smoothly to 0 at ``radius`` pixels."""
    ys, xs = np.ogrid[0:h, 0:w]
    r2 = ((xs - cx) ** 2 + (ys - cy) ** 2).astype(np.float32) / np.float32(radius * radius)
    return np.clip(1.0 - r2, 0.0, 1.0) ** 2


def tint(gray: np.ndarray, bgr: tuple[float, float, float] | np.ndarray) -> np.ndarray:
    """Colour a float32 ``(h, w)`` intensity map (about 0..1.5) with a BGR colour: ``(h, w, 3)``."""
    return gray[..., None] * np.asarray(bgr, np.float32)[None, None, :]


def tiles(
    rng: np.random.Generator,
    h: int,
    w: int,
    *,
    size: int,
    base: tuple[float, float, float],
    jitter: float,
    grout: float,
    grout_px: int = 2,
) -> np.ndarray:
    """Floor tiles: BGR float32 ``(h, w, 3)`` squares of ``size`` pixels, each a slightly different
    shade of ``base`` (+- ``jitter``), separated by ``grout``-coloured lines ``grout_px`` wide."""
    gh, gw = h // size + 2, w // size + 2
    shades = rng.uniform(-jitter, jitter, (gh, gw, 1)).astype(np.float32)
    cells = np.asarray(base, np.float32)[None, None, :] + shades
    img = cv2.resize(cells, (gw * size, gh * size), interpolation=cv2.INTER_NEAREST)
    ox, oy = (int(v) for v in rng.integers(0, size, 2))
    img = np.ascontiguousarray(img[oy : oy + h, ox : ox + w])
    lines_y = np.arange(size - oy, h, size)
    lines_x = np.arange(size - ox, w, size)
    for k in range(grout_px):
        img[np.clip(lines_y + k, 0, h - 1)] = grout
        img[:, np.clip(lines_x + k, 0, w - 1)] = grout
    return img


def stripes(h: int, w: int, *, period: float, duty: float, angle: float, phase: float = 0.0) -> np.ndarray:
    """Bool ``(h, w)``: parallel bands ``period`` pixels apart, a fraction ``duty`` of each filled,
    running across direction ``angle`` (radians); used for hazard stripes and belt seams."""
    xs = np.arange(w, dtype=np.float32)[None, :] * np.float32(np.cos(angle))
    ys = np.arange(h, dtype=np.float32)[:, None] * np.float32(np.sin(angle))
    d = xs + ys + np.float32(phase)
    return frac(d * np.float32(1.0 / period)) < np.float32(duty)
