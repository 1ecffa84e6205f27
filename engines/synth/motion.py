"""Tracks for synthetic video: objects that enter, cross and leave the scene at constant speed.

Imports only ``engines.synth`` modules. A ``Track`` is an object (``ObjectSpec``) with an analytic
motion, so the pose at any frame is a pure function of the frame index and a clip is reproducible
from its seed. Arrivals are a random stream per source (belt, lane, pavement, crossing) that starts
well before frame 0, so the first frame is already populated.

Two motions exist:

- ``linear``: the anchor moves ``(vx, vy)`` frame pixels per frame (conveyor items, profile traffic,
  people on a crossing); the object keeps its size.
- ``depth``: the object moves ``vz`` metres per frame along the road of an ``along`` traffic layout;
  its row, column and scale follow the ground model (it shrinks towards the horizon).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from engines.synth.drawing import Pose
from engines.synth.factory_scene import FactoryLayout
from engines.synth.shapes import ObjectSpec
from engines.synth.traffic_scene import TrafficLayout


@dataclass(frozen=True, slots=True)
class Track:
    """One moving object. Frames ``start..end`` (inclusive, may be negative) are its life; ``(x, y)``
    is the anchor at frame ``start`` in frame pixels (``depth``: ``x`` = lateral metres ``X``, ``y`` =
    depth metres ``Z``); ``(vx, vy)`` per-frame velocity in the same units; ``spin`` rad/frame;
    ``phase_rate`` animation cycles per frame; ``order`` breaks drawing-order ties (a rider after its
    bicycle)."""

    track_id: int
    spec: ObjectSpec
    start: int
    end: int
    x: float
    y: float
    vx: float
    vy: float
    angle: float = 0.0
    spin: float = 0.0
    phase0: float = 0.0
    phase_rate: float = 0.0
    order: int = 0
    road: TrafficLayout | None = field(default=None, repr=False)

    def alive(self, t: int) -> bool:
        return self.start <= t <= self.end

    def pose(self, t: int) -> Pose:
        """The object's pose at frame ``t``."""
        dt = t - self.start
        phase = float(self.phase0 + self.phase_rate * dt)
        if self.road is None:
            return Pose(self.x + self.vx * dt, self.y + self.vy * dt, self.angle + self.spin * dt, 1.0, phase)
        lay = self.road
        Z = max(self.y + self.vy * dt, 1e-3)
        ppm = lay.width / Z  # the ground model's focal length is the frame width
        y = lay.horizon + ppm * lay.cam_height
        return Pose(lay.vp_x + (self.x + self.vx * dt) * ppm, y, self.angle, ppm / self.spec.size, phase)


def _arrivals(
    rng: np.random.Generator, first: float, last: float, mean_gap: float, min_gap: float
) -> list[float]:
    """Arrival frames in ``[first, last)``: exponential gaps of mean ``mean_gap``, at least ``min_gap``."""
    out, t = [], first + rng.uniform(0, mean_gap)
    while t < last:
        out.append(t)
        t += min_gap + rng.exponential(max(mean_gap - min_gap, 1e-6))
    return out


class _Builder:
    """Numbers tracks in creation order (deterministic ids)."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.tracks: list[Track] = []

    def add(
        self, spec: ObjectSpec, start: float, life: float, **kw: float | int | TrafficLayout | None
    ) -> None:
        first, last = int(np.floor(start)), int(np.ceil(start + life))
        self.tracks.append(Track(len(self.tracks), spec, first, last, **kw))  # type: ignore[arg-type]

    def seed(self) -> int:
        return int(self.rng.integers(2**31))


def factory_tracks(rng: np.random.Generator, lay: FactoryLayout, frames: int, fps: float) -> list[Track]:
    """Items riding the belt from one edge to the other (a few slide or turn a little)."""
    b = _Builder(rng)
    length = lay.width if lay.axis == 0 else lay.height
    sgn = 1.0 if rng.random() < 0.5 else -1.0
    speed = length / (fps * rng.uniform(3.0, 8.0))  # px per frame: 3-8 s to cross the frame
    reach = 0.9 * lay.size * 1.4  # an object's farthest pixel from its centre, upper bound
    life = (length + 2 * reach) / (speed * 0.85)
    gap = life / rng.uniform(4, 9)  # about 4-9 objects in view
    for t0 in _arrivals(rng, -life, frames, gap, gap * 0.2):
        kind = "metal_part" if rng.random() < 0.15 else ("box", "bottle", "tool")[int(rng.integers(3))]
        size = lay.size * rng.uniform(0.6, 1.4) * (0.35 if kind == "metal_part" else 1.0)
        spec = ObjectSpec(kind, b.seed(), float(size))
        c = rng.uniform(lay.lo, lay.hi)
        a = -reach if sgn > 0 else length + reach
        v = sgn * speed * rng.uniform(0.85, 1.15)
        x, y, vx, vy = (a, c, v, 0.0) if lay.axis == 0 else (c, a, 0.0, v)
        spin = rng.uniform(-0.01, 0.01) if rng.random() < 0.3 else 0.0
        b.add(spec, t0, life, x=x, y=y, vx=vx, vy=vy, angle=rng.uniform(0, 2 * np.pi), spin=spin)
    return b.tracks


def traffic_tracks(rng: np.random.Generator, lay: TrafficLayout, frames: int, fps: float) -> list[Track]:
    """Vehicles in every lane, pedestrians on the pavements and crossing, cyclists."""
    b = _Builder(rng)
    if lay.kind == "along":
        _along_tracks(b, lay, frames, fps)
    else:
        _cross_tracks(b, lay, frames, fps)
    return b.tracks


def _along_tracks(b: _Builder, lay: TrafficLayout, frames: int, fps: float) -> None:
    rng, W = b.rng, lay.width
    z_near = W * lay.cam_height / (lay.height * 1.6 - lay.horizon)  # anchor well below the frame
    z_far = W / 1.5  # 1.5 px per metre: a car is 3 px wide there
    for i, X in enumerate(lay.lanes):
        v = rng.uniform(8, 16) / fps  # metres per frame
        life = (z_far - z_near) / v
        gap = max(life / rng.uniform(1.0, 3.0), 1.5 * fps)  # 1-3 vehicles per lane in view
        for t0 in _arrivals(rng, -life, frames, gap, 1.2 * fps):
            ppm0 = W / z_near
            spec = ObjectSpec("vehicle", b.seed(), ppm0, "rear" if lay.dirs[i] > 0 else "front")
            z0, vz = (z_near, v) if lay.dirs[i] > 0 else (z_far, -v)
            b.add(spec, t0, life, x=X + rng.uniform(-0.3, 0.3), y=z0, vx=0.0, vy=vz, road=lay)
    for lo, hi in lay.walks:
        v = rng.uniform(1.1, 1.7) / fps
        life = (z_far / 4 - z_near) / v  # people become too small a quarter of the way to the far end
        for t0 in _arrivals(rng, -life, frames, life / rng.uniform(0.5, 3.0), fps):
            away = rng.random() < 0.5
            spec = ObjectSpec("person", b.seed(), W / z_near, "walk_front")
            b.add(
                spec,
                t0,
                life,
                x=rng.uniform(lo, hi),
                y=z_near if away else z_far / 4,
                vx=0.0,
                vy=v if away else -v,
                phase0=rng.uniform(0, 1),
                phase_rate=1.8 / fps,
                road=lay,
            )
    if lay.zebra is not None:
        span = lay.half_width + 2.5
        for t0 in _arrivals(rng, -30 * fps, frames, rng.uniform(4, 10) * fps, fps):
            y = rng.uniform(*lay.zebra)
            ppm = lay.ppm(y)
            sgn = 1.0 if rng.random() < 0.5 else -1.0
            ride = rng.random() < 0.25
            v = (rng.uniform(3.5, 5.5) if ride else rng.uniform(1.1, 1.7)) * ppm / fps
            life = 2 * span * ppm / v
            kw = dict(x=lay.vp_x - sgn * span * ppm, y=y, vx=sgn * v, vy=0.0, phase0=rng.uniform(0, 1))
            _person_or_cyclist(b, t0, life, ppm, sgn, ride, fps, kw)


def _person_or_cyclist(
    b: _Builder, t0: float, life: float, ppm: float, sgn: float, ride: bool, fps: float, kw: dict
) -> None:
    face = "right" if sgn > 0 else "left"
    if ride:
        b.add(ObjectSpec("bicycle", b.seed(), ppm, face), t0, life, phase_rate=1.2 / fps, **kw)
        b.add(
            ObjectSpec("person", b.seed(), ppm, "ride_" + face), t0, life, phase_rate=1.2 / fps, order=1, **kw
        )
    else:
        b.add(ObjectSpec("person", b.seed(), ppm, "walk_" + face), t0, life, phase_rate=1.8 / fps, **kw)


def _cross_tracks(b: _Builder, lay: TrafficLayout, frames: int, fps: float) -> None:
    rng, W = b.rng, lay.width
    sources: list[tuple[str, float, float]] = [
        ("vehicle", y, d) for y, d in zip(lay.lanes, lay.dirs, strict=True)
    ]
    for lo, hi in lay.walks:
        sources += [("person", rng.uniform(lo + 0.3 * (hi - lo), hi), d) for d in (-1.0, 1.0)]
    near = lay.lanes[-1] + 0.2 * (lay.walks[1][0] - lay.lanes[-1])
    sources.append(("cyclist", near, 1.0 if rng.random() < 0.5 else -1.0))
    for kind, y, sgn in sources:
        ppm = lay.ppm(y)
        # speed m/s, how many in view at once, half length m
        mps, busy, half = {
            "vehicle": ((6, 14), (0.6, 2.0), 7.0),
            "person": ((1.1, 1.7), (0.3, 1.5), 0.6),
            "cyclist": ((3.5, 6), (0.2, 0.8), 1.2),
        }[kind]
        v = rng.uniform(*mps) * ppm / fps
        life = (W + 2 * half * ppm) / v
        min_gap = 2 * half * ppm / v + 0.5 * fps  # a vehicle never drives into the one ahead
        for t0 in _arrivals(rng, -life, frames, max(life / rng.uniform(*busy), min_gap), min_gap):
            yy = y + (rng.uniform(-0.15, 0.15) * ppm if kind == "person" else 0.0)
            kw = dict(x=-half * ppm if sgn > 0 else W + half * ppm, y=yy, vx=sgn * v, vy=0.0)
            if kind == "vehicle":
                b.add(ObjectSpec("vehicle", b.seed(), ppm, "right" if sgn > 0 else "left"), t0, life, **kw)
            else:
                kw["phase0"] = rng.uniform(0, 1)
                _person_or_cyclist(b, t0, life, lay.ppm(yy), sgn, kind == "cyclist", fps, kw)


def frame_objects(tracks: list[Track], t: int, style: str) -> list[tuple[Track, Pose]]:
    """The tracks alive at frame ``t`` with their poses, in drawing order: factory by arrival (later
    items on top), traffic by ground row (nearer on top), ties by ``order`` then id."""
    live = [(tr, tr.pose(t)) for tr in tracks if tr.alive(t)]
    if style == "factory":
        return live
    return sorted(live, key=lambda tp: (round(tp[1].cy, 3), tp[0].order, tp[0].track_id))
