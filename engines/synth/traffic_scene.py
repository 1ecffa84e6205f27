"""The traffic style: a street seen from a raised camera, and the road users on it.

Imports only ``engines.synth`` leaf modules. Two layouts share one pinhole ground model: a row ``y``
below the horizon ``y_h`` shows the ground at ``ppm(y) = (y - y_h) / cam_height`` pixels per metre.

- ``along``: the camera looks down the road; lanes converge to a vanishing point on the horizon, cars
  show their rear (going away) or front (oncoming), people walk the pavements or cross at a zebra.
- ``cross``: the camera looks across a street (horizon above the frame); vehicles pass in profile,
  cyclists ride the near lane, pedestrians walk the pavements in front of a building facade.

Frame pixels, origin top-left; ground metres: ``X`` to the right of the road axis, ``Z`` away.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from engines.synth import textures as tx
from engines.synth.drawing import Pose
from engines.synth.shapes import ObjectSpec

LANE_M = 3.5


@dataclass(frozen=True, slots=True)
class TrafficLayout:
    """Camera and street geometry of one traffic image (see the module docstring).

    ``lanes``: ``along`` lane centres ``X`` in metres; ``cross`` lane ground rows in pixels.
    ``dirs``: +1 / -1 per lane (``along``: away / towards the camera; ``cross``: right / left).
    ``half_width`` (``along``): road half width in metres; ``walks``: pavement extents (``along``:
    ``X`` ranges in metres, ``cross``: row ranges in pixels); ``zebra``: crosswalk rows (``along``)."""

    width: int
    height: int
    kind: str
    horizon: float
    vp_x: float
    cam_height: float
    lanes: tuple[float, ...]
    dirs: tuple[int, ...]
    half_width: float
    walks: tuple[tuple[float, float], ...]
    zebra: tuple[float, float] | None

    def ppm(self, y: float) -> float:
        """Pixels per metre of ground at frame row ``y`` (0 at the horizon)."""
        return max((y - self.horizon) / self.cam_height, 1e-3)


def background(rng: np.random.Generator, width: int, height: int) -> tuple[np.ndarray, TrafficLayout]:
    """An empty street: float32 ``(H, W, 3)`` BGR 0-255 and its ``TrafficLayout``."""
    if rng.random() < 0.6:
        img, lay = _along(rng, width, height)
    else:
        img, lay = _cross(rng, width, height)
    if rng.random() < 0.5:  # soft shadows of trees and buildings falling across the scene
        n = tx.value_noise(rng, height, width, cell=rng.uniform(60, 200), octaves=2)
        thr = rng.uniform(0.0, 0.3)
        shade = np.clip((n - thr) * 6.0, 0, 1)
        img *= (1.0 - rng.uniform(0.25, 0.45) * shade)[..., None]
    return cv2.GaussianBlur(img, (0, 0), 0.6), lay


def _asphalt(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    base = rng.uniform(60, 105)
    g = (
        1.0
        + 0.1 * tx.value_noise(rng, h, w, cell=rng.uniform(30, 90))
        + 0.08 * tx.value_noise(rng, h, w, cell=4, octaves=1)
    )
    img = tx.tint(g, base + rng.uniform(-4, 6, 3))
    if rng.random() < 0.5:  # patches and repairs
        p = tx.value_noise(rng, h, w, cell=rng.uniform(40, 100), octaves=2) > 0.45
        img[p] *= 0.8
    return img


def _sky_and_skyline(rng: np.random.Generator, h: int, w: int, img: np.ndarray, horizon: int) -> None:
    if horizon <= 0:
        return
    sky = tx.linear_gradient(horizon, w, np.pi / 2, 0.0, 1.0)[..., None]
    top, low = np.float32(rng.uniform([150, 110, 60], [240, 200, 160])), np.array([225, 220, 215], np.float32)
    img[:horizon] = top * (1 - sky) + low * sky
    x = 0
    while x < w:  # a row of buildings standing on the horizon
        bw = int(rng.uniform(0.05, 0.2) * w)
        bh = int(rng.uniform(0.2, 1.0) * horizon)
        col = tuple(float(v) for v in rng.uniform(70, 190) + rng.uniform(-20, 20, 3))
        cv2.rectangle(img, (x, horizon - bh), (x + bw, horizon), col, -1)
        for wy in range(horizon - bh + 4, horizon - 4, 8):
            cv2.line(img, (x + 3, wy), (x + bw - 3, wy), tuple(c * 0.6 for c in col), 2)
        x += bw + int(rng.integers(0, 6))
    trees = tx.value_noise(rng, horizon, w, cell=rng.uniform(10, 30), octaves=2)
    band = np.linspace(-2.5, 0.8, horizon, dtype=np.float32)[:, None]
    m = 0.6 * trees + band > 0.3
    img[:horizon][m] = np.array([40, 95, 60], np.float32) * (1 + 0.3 * trees[m, None])


def _along(rng: np.random.Generator, W: int, H: int) -> tuple[np.ndarray, TrafficLayout]:
    horizon = H * rng.uniform(0.12, 0.4)
    vp_x = W * rng.uniform(0.3, 0.7)
    ppm_bottom = W / rng.uniform(14, 28)  # the road near the camera spans most of the width
    cam_h = (H - horizon) / ppm_bottom
    n_lanes = int(rng.integers(2, 5))
    R = n_lanes * LANE_M / 2
    walk = rng.uniform(2.5, 4.5)
    ys = np.arange(H, dtype=np.float32)[:, None]
    xs = np.arange(W, dtype=np.float32)[None, :]
    ppm = np.maximum((ys - horizon) / cam_h, 1e-3)
    X = (xs - vp_x) / ppm
    Z = W / ppm  # depth with a focal length of W pixels: only its ratios matter
    ground = np.broadcast_to(ys > horizon, (H, W))
    aX = np.abs(X)
    img = tx.tint(1.0 + 0.12 * tx.value_noise(rng, H, W, cell=50), rng.uniform([50, 100, 60], [90, 150, 110]))
    side = ground & (aX >= R) & (aX < R + 0.25 + walk)
    pave = np.float32(rng.uniform(140, 190)) + tx.fine_noise(rng, H, W, 5)
    np.copyto(img, pave[..., None], where=side[..., None])
    curb = ground & (aX >= R) & (aX < R + 0.25)
    img[curb] = np.array([200, 200, 200], np.float32)
    road = ground & (aX < R)
    np.copyto(img, _asphalt(rng, H, W), where=road[..., None])
    paint = np.zeros((H, W), bool)
    dashes = tx.frac(Z * np.float32(1 / 9.0)) < np.float32(1 / 3)  # 3 m dashes every 9 m, (H, 1)
    for i in range(1, n_lanes):
        paint |= (np.abs(X - np.float32(-R + i * LANE_M)) < 0.08) & dashes
    for s in (-1, 1):
        paint |= np.abs(X - np.float32(s * (R - 0.3))) < 0.08
    zebra = None
    if rng.random() < 0.6:
        y0 = H * rng.uniform(0.55, 0.85)
        y1 = y0 + ppm_bottom * 3.0 * (y0 - horizon) / (H - horizon) * 0.6
        rows = (ys >= y0) & (ys < y1)
        paint |= rows & (tx.frac(X * np.float32(1 / 1.2)) < 0.5)
        zebra = (float(y0), float(y1))
    paint &= road
    img[paint] = np.float32(rng.uniform(200, 240))
    _sky_and_skyline(rng, H, W, img, int(horizon))
    lanes = tuple(-R + (i + 0.5) * LANE_M for i in range(n_lanes))
    dirs = tuple(1 if x > 0 else -1 for x in lanes)
    walks = ((-(R + 0.25 + walk), -(R + 0.25)), (R + 0.25, R + 0.25 + walk))
    return img, TrafficLayout(
        W, H, "along", float(horizon), float(vp_x), float(cam_h), lanes, dirs, R, walks, zebra
    )


def _cross(rng: np.random.Generator, W: int, H: int) -> tuple[np.ndarray, TrafficLayout]:
    horizon = -H * rng.uniform(0.5, 2.5)
    ppm_bottom = W / rng.uniform(16, 36)  # 16-36 m of street across the frame
    cam_h = (H - horizon) / ppm_bottom
    n_lanes = int(rng.integers(2, 4))
    near_walk, road_h = H * rng.uniform(0.08, 0.2), H * rng.uniform(0.35, 0.55)
    far_walk = H * rng.uniform(0.08, 0.15)
    r1 = H - near_walk
    r0 = r1 - road_h
    f1 = r0 - far_walk
    img = np.empty((H, W, 3), np.float32)
    wall = np.float32(rng.uniform([60, 80, 100], [170, 190, 210]))
    img[:] = tx.tint(1.0 + 0.08 * tx.value_noise(rng, H, W, cell=20), wall)
    win_w, win_h = int(rng.uniform(0.05, 0.1) * W), int(rng.uniform(0.08, 0.15) * H)
    for x in range(int(rng.integers(5, 30)), W, win_w * 2):
        for y in range(int(f1) - win_h - 10, -win_h, -win_h * 2):
            cv2.rectangle(img, (x, y), (x + win_w, y + win_h), (90.0, 70.0, 55.0), -1)
            cv2.rectangle(img, (x, y), (x + win_w, y + win_h), tuple(float(v) * 0.7 for v in wall), 2)
    pave = np.float32(rng.uniform(140, 190))
    for a, b in ((f1, r0), (r1, H)):
        a, b = max(int(a), 0), int(b)
        img[a:b] = tx.tiles(
            rng,
            b - a,
            W,
            size=int(rng.integers(20, 40)),
            base=(pave, pave, pave + 5),
            jitter=8,
            grout=pave * 0.75,
        )
    a, b = int(r0), int(r1)
    img[a:b] = _asphalt(rng, b - a, W)
    bounds = np.linspace(r0, r1, n_lanes + 1)
    xs = np.arange(W)
    for i, y in enumerate(bounds):
        th = max(int(0.12 * ((y - horizon) / cam_h)), 1)
        y = int(np.clip(y + (4 if i == 0 else -4 if i == n_lanes else 0), 0, H - 1))
        on = np.mod(xs, 9 * (y - horizon) / cam_h) < 3 * (y - horizon) / cam_h if 0 < i < n_lanes else xs >= 0
        img[max(y - th // 2, 0) : y + th - th // 2, on] = np.float32(220)
    lanes = tuple(float(bounds[i] + 0.75 * (bounds[i + 1] - bounds[i])) for i in range(n_lanes))
    dirs = tuple(-1 if i < n_lanes / 2 else 1 for i in range(n_lanes))
    walks = ((max(f1, 0.0), r0), (r1, float(H)))
    return img, TrafficLayout(
        W, H, "cross", float(horizon), W / 2, float(cam_h), lanes, dirs, 0.0, walks, None
    )


def place(rng: np.random.Generator, layout: TrafficLayout) -> list[tuple[ObjectSpec, Pose]]:
    """Random road users in drawing order: far (small ``y``) first so nearer ones occlude them."""
    out: list[tuple[ObjectSpec, Pose]] = []
    taken: list[tuple[int, float]] = []  # (lane, metres along it) of vehicles placed so far
    for _ in range(int(rng.integers(2, 8))):
        for _try in range(4):  # vehicles in one lane keep 8 m apart (the ground plane is no pile-up)
            lane = int(rng.integers(len(layout.lanes)))
            obj = vehicle(rng, layout, lane=lane)
            pose = obj[0][1]
            at = (
                layout.width / layout.ppm(pose.cy)
                if layout.kind == "along"
                else pose.cx / layout.ppm(pose.cy)
            )
            if all(ln != lane or abs(at - a) >= 8.0 for ln, a in taken):
                taken.append((lane, at))
                out += obj
                break
    for _ in range(int(rng.integers(1, 7))):
        out += pedestrian(rng, layout)
    for _ in range(int(rng.integers(1, 4))):  # bicycles are the rarest class otherwise
        out += cyclist(rng, layout)
    out.sort(key=lambda sp: sp[1].cy)  # stable: a rider stays after its bicycle
    return out


def _seed(rng: np.random.Generator) -> int:
    return int(rng.integers(2**31))


def vehicle(
    rng: np.random.Generator, lay: TrafficLayout, *, x: float | None = None, lane: int | None = None
) -> list[tuple[ObjectSpec, Pose]]:
    """One vehicle in a random (or given) lane; ``x`` fixes the column for ``cross`` layouts."""
    i = int(rng.integers(len(lay.lanes))) if lane is None else lane
    if lay.kind == "along":
        y = lay.horizon + (lay.height * 1.1 - lay.horizon) * rng.uniform(0.03, 1.0) ** 0.7
        view = "rear" if lay.dirs[i] > 0 else "front"
        X = lay.lanes[i] + rng.uniform(-0.3, 0.3)
        px = lay.vp_x + X * lay.ppm(y)
    else:
        y = lay.lanes[i]
        view = "right" if lay.dirs[i] > 0 else "left"
        px = rng.uniform(-0.1, 1.1) * lay.width if x is None else x
    ppm = lay.ppm(y)
    return [
        (ObjectSpec("vehicle", _seed(rng), ppm, view), Pose(float(px), float(y), rng.uniform(-0.02, 0.02)))
    ]


def pedestrian(
    rng: np.random.Generator, lay: TrafficLayout, *, x: float | None = None, crossing: bool | None = None
) -> list[tuple[ObjectSpec, Pose]]:
    """One person on a pavement, or on the zebra crossing of an ``along`` layout."""
    cross_zebra = lay.zebra is not None and (rng.random() < 0.4 if crossing is None else crossing)
    if lay.kind == "along":
        if cross_zebra:
            y = rng.uniform(*lay.zebra)  # type: ignore[misc]
            X = rng.uniform(-lay.half_width - 1, lay.half_width + 1)
            view = "walk_left" if rng.random() < 0.5 else "walk_right"
        else:
            lo, hi = lay.walks[int(rng.integers(2))]
            y = lay.horizon + (lay.height * 1.05 - lay.horizon) * rng.uniform(0.05, 1.0) ** 0.7
            X = rng.uniform(lo, hi)
            view = ("walk_front", "walk_left", "walk_right")[int(rng.integers(3))]
        px = lay.vp_x + X * lay.ppm(y)
    else:
        lo, hi = lay.walks[int(rng.integers(2))]
        y = rng.uniform(lo + 0.3 * (hi - lo), hi)
        px = rng.uniform(-0.05, 1.05) * lay.width if x is None else x
        view = ("walk_front", "walk_left", "walk_right")[int(rng.integers(3))]
    pose = Pose(float(px), float(y), 0.0, 1.0, float(rng.uniform(0, 1)))
    return [(ObjectSpec("person", _seed(rng), lay.ppm(y), view), pose)]


def cyclist(
    rng: np.random.Generator, lay: TrafficLayout, *, x: float | None = None, rider: bool | None = None
) -> list[tuple[ObjectSpec, Pose]]:
    """A bicycle with its rider (two instances, rider on top), or a parked bicycle."""
    ridden = rng.random() < 0.8 if rider is None else rider
    facing = "left" if rng.random() < 0.5 else "right"
    if lay.kind == "along" and lay.zebra is not None and ridden:
        y = rng.uniform(*lay.zebra)
        px = lay.vp_x + rng.uniform(-lay.half_width, lay.half_width) * lay.ppm(y)
    elif lay.kind == "along":
        lo, hi = lay.walks[int(rng.integers(2))]
        y = lay.horizon + (lay.height - lay.horizon) * rng.uniform(0.1, 1.0)
        px = lay.vp_x + rng.uniform(lo, hi) * lay.ppm(y)
    else:
        y = lay.lanes[-1] + 0.2 * (lay.walks[1][0] - lay.lanes[-1]) if ridden else rng.uniform(*lay.walks[1])
        px = rng.uniform(-0.05, 1.05) * lay.width if x is None else x
    ppm, phase = lay.ppm(y), float(rng.uniform(0, 1))
    pose = Pose(float(px), float(y), 0.0, 1.0, phase)
    out = [(ObjectSpec("bicycle", _seed(rng), ppm, facing), pose)]
    if ridden:
        out.append((ObjectSpec("person", _seed(rng), ppm, "ride_" + facing), pose))
    return out
