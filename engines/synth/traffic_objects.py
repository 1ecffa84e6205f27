"""Road users seen from a raised traffic camera: cars, vans, trucks, buses, pedestrians, bicycles.

Imports only ``engines.synth.drawing``. Every ``draw_*`` records one object into a ``Drawing`` in
local pixels with the origin at its ground contact point (bottom centre), y up being negative. Here
``size`` is the image scale in pixels per metre at that ground point, so the scene's perspective decides
how big things are and the objects keep real proportions (a car is about 1.8 m wide, a person 1.75 m).

``view`` picks the side shown: vehicles ``rear`` / ``front`` / ``left`` / ``right`` (side views face
that way), people ``walk_front`` / ``walk_left`` / ``walk_right`` / ``ride_left`` / ``ride_right``,
bicycles ``left`` / ``right``. ``phase`` (cycles) animates walking legs and pedals.
"""

from __future__ import annotations

import numpy as np

from engines.synth.drawing import Color, Drawing

_PAINT: tuple[Color, ...] = (
    (235, 235, 235),
    (30, 30, 30),
    (175, 175, 170),
    (40, 40, 180),
    (150, 80, 20),
    (60, 110, 40),
    (30, 150, 220),
    (110, 100, 95),
    (90, 30, 120),
    (200, 200, 210),
)
_CLOTHES: tuple[Color, ...] = (
    (40, 40, 40),
    (140, 60, 20),
    (40, 40, 170),
    (200, 200, 200),
    (60, 140, 60),
    (30, 140, 220),
    (110, 70, 60),
    (150, 50, 120),
    (90, 90, 90),
)
_SKIN: tuple[Color, ...] = ((140, 170, 225), (110, 145, 200), (70, 100, 150), (50, 70, 110))
_GLASS: Color = (70, 55, 45)
_TYRE: Color = (28, 28, 30)


def _pick(rng: np.random.Generator, palette: tuple[Color, ...], jitter: float = 15.0) -> Color:
    base = np.asarray(palette[int(rng.integers(len(palette)))], np.float64)
    return tuple(np.clip(base + rng.uniform(-jitter, jitter, 3), 0, 255))  # type: ignore[return-value]


def _k(c: Color, k: float) -> Color:
    return tuple(float(np.clip(v * k, 0, 255)) for v in c)  # type: ignore[return-value]


def _mirror(pts: list[tuple[float, float]], sx: float, m: float) -> list[tuple[float, float]]:
    """Metres to local pixels, mirrored left-right when ``sx`` is -1."""
    return [(sx * x * m, y * m) for x, y in pts]


def draw_vehicle(
    d: Drawing, rng: np.random.Generator, size: float, view: str = "rear", phase: float = 0.0
) -> None:
    """A car, van, truck or bus; ``size`` pixels per metre; rear/front or side view (see module doc)."""
    body = ("car", "car", "car", "van", "truck", "bus")[int(rng.integers(6))]
    paint = _pick(rng, _PAINT)
    if body in ("truck", "bus") and rng.random() < 0.5:
        paint = _pick(rng, ((235, 235, 235), (40, 120, 220), (50, 50, 160)))
    if view in ("left", "right"):
        _vehicle_side(d, rng, size, body, paint, -1.0 if view == "left" else 1.0)
    else:
        _vehicle_end(d, rng, size, body, paint, view == "front")
    d.grain(int(rng.integers(2**31)), 0.5 * size, 0.04)


def _vehicle_end(
    d: Drawing, rng: np.random.Generator, m: float, body: str, paint: Color, front: bool
) -> None:
    """Seen from behind or ahead and a little from above: the roof shows as a band on top."""
    hw = {"car": 0.9, "van": 0.98, "truck": 1.25, "bus": 1.27}[body] * rng.uniform(0.95, 1.05)
    belt = {"car": 0.95, "van": 1.1, "truck": 1.3, "bus": 1.1}[body]
    top = {"car": 1.45, "van": 2.0, "truck": 3.4, "bus": 3.0}[body] * rng.uniform(0.95, 1.05)
    roof = top + {"car": 0.3, "van": 0.35, "truck": 0.6, "bus": 0.5}[body]
    for sx in (-1, 1):  # tyres peeking out under the bumper
        d.rect(
            sx * (hw - 0.05) * m - (0.25 * m if sx > 0 else 0),
            -0.35 * m,
            sx * (hw - 0.05) * m + (0.25 * m if sx < 0 else 0),
            0,
            _TYRE,
        )
    d.rect(-hw * m, -belt * m, hw * m, -0.2 * m, paint, radius=0.12 * m)
    taper = 0.9 if body == "car" else 0.98
    d.poly(
        [(-hw * m, -belt * m), (hw * m, -belt * m), (hw * taper * m, -top * m), (-hw * taper * m, -top * m)],
        paint,
    )
    d.poly(
        [
            (-hw * taper * m, -top * m),
            (hw * taper * m, -top * m),
            (hw * taper * 0.95 * m, -roof * m),
            (-hw * taper * 0.95 * m, -roof * m),
        ],
        _k(paint, 1.12),
    )
    d.shade_linear((0.0, 1.0), 1.08, 0.85)
    gl_lo, gl_hi = belt + 0.08, top - 0.1
    if body == "truck" and not front:  # box trailer: doors instead of a window
        d.line((0, -top * m), (0, -0.35 * m), max(0.04 * m, 1), _k(paint, 0.6))
        for sx in (-1, 1):
            d.line(
                (sx * 0.3 * m, -belt * m), (sx * 0.3 * m, -(belt + 0.9) * m), max(0.05 * m, 1), (90, 90, 90)
            )
    else:
        if body == "truck":
            gl_hi = belt + 1.2
        wi = 0.86 if front else 0.8
        d.poly(
            [
                (-hw * wi * m, -gl_lo * m),
                (hw * wi * m, -gl_lo * m),
                (hw * wi * taper * m, -gl_hi * m),
                (-hw * wi * taper * m, -gl_hi * m),
            ],
            _GLASS,
            role="detail",
        )
        d.shade_linear(
            (0.3, 1.0),
            1.4,
            0.7,
            region=np.array(
                [(-hw * m, -gl_lo * m), (hw * m, -gl_lo * m), (hw * m, -gl_hi * m), (-hw * m, -gl_hi * m)]
            ),
        )
    lamp = (230, 240, 250) if front else (30, 30, 210)
    for sx in (-1, 1):
        x0, x1 = sx * (hw - 0.08) * m, sx * (hw - 0.42) * m
        d.rect(min(x0, x1), -(belt - 0.1) * m, max(x0, x1), -(belt - 0.32) * m, lamp, role="detail")
    d.rect(-hw * m, -0.42 * m, hw * m, -0.2 * m, _k(paint, 0.45), role="detail", radius=0.05 * m)
    if front and body != "truck":
        d.rect(-0.45 * m, -(belt - 0.15) * m, 0.45 * m, -0.5 * m, (35, 35, 35), role="detail")
    d.rect(-0.26 * m, -0.68 * m, 0.26 * m, -0.55 * m, (235, 235, 235), role="detail")
    d.line((-0.18 * m, -0.615 * m), (0.18 * m, -0.615 * m), max(0.04 * m, 1), (40, 40, 40))


_SIDE_PROFILES: dict[str, list[tuple[float, float]]] = {
    "car": [
        (-2.2, -0.3),
        (-2.25, -0.9),
        (-1.75, -1.0),
        (-1.1, -1.45),
        (0.45, -1.45),
        (1.15, -1.0),
        (2.2, -0.85),
        (2.25, -0.3),
    ],
    "van": [(-2.45, -0.3), (-2.45, -2.05), (1.2, -2.05), (2.25, -1.15), (2.4, -0.3)],
    "truck": [(-4.6, -0.45), (-4.6, -3.5), (2.0, -3.5), (2.0, -2.9), (2.9, -2.9), (3.3, -1.5), (3.3, -0.45)],
    "bus": [(-5.8, -0.35), (-5.8, -3.0), (5.7, -3.0), (5.9, -2.6), (5.9, -0.35)],
}
_SIDE_WINDOWS: dict[str, list[tuple[float, float]]] = {
    "car": [(-1.6, -1.02), (-1.05, -1.38), (0.42, -1.38), (1.02, -1.02)],
    "van": [(0.3, -1.25), (0.3, -1.95), (1.15, -1.95), (2.0, -1.25)],
    "truck": [(2.15, -2.2), (2.15, -2.8), (2.85, -2.8), (3.15, -2.2)],
    "bus": [(-5.5, -1.6), (-5.5, -2.6), (5.6, -2.6), (5.6, -1.6)],
}
_AXLES: dict[str, tuple[float, ...]] = {
    "car": (-1.4, 1.35),
    "van": (-1.6, 1.45),
    "truck": (-3.6, -2.5, 2.4),
    "bus": (-4.0, 3.8),
}


def _vehicle_side(d: Drawing, rng: np.random.Generator, m: float, body: str, paint: Color, sx: float) -> None:
    """Profile view facing right (``sx`` = 1) or left (-1)."""
    wheel_r = 0.33 if body in ("car", "van") else 0.5
    prof = _SIDE_PROFILES[body]
    d.poly(_mirror(prof, sx, m), paint)
    for ax in _AXLES[body]:
        d.circle((sx * ax * m, -wheel_r * m), wheel_r * m, _TYRE)
        d.circle((sx * ax * m, -wheel_r * m), wheel_r * 0.55 * m, (150, 150, 155), role="detail")
    d.shade_linear((0.0, 1.0), 1.15, 0.8)
    d.poly(_mirror(_SIDE_WINDOWS[body], sx, m), _GLASS, role="detail")
    if body == "bus":
        for x in np.arange(-4.5, 5.5, 1.6):
            d.line((sx * x * m, -1.6 * m), (sx * x * m, -2.6 * m), max(0.08 * m, 1), _k(paint, 0.8))
    if body == "truck":
        d.line((sx * 2.0 * m, -3.5 * m), (sx * 2.0 * m, -0.5 * m), max(0.05 * m, 1), (60, 60, 60))
    if body == "car":
        d.line((sx * -0.3 * m, -1.0 * m), (sx * -0.3 * m, -0.35 * m), max(0.03 * m, 1), _k(paint, 0.6))
        d.line((sx * 0.45 * m, -1.38 * m), (sx * 0.45 * m, -1.0 * m), max(0.08 * m, 1), _k(paint, 0.9))
    front = max(x for x, _ in prof)
    back = min(x for x, _ in prof)
    fx0, fx1 = sorted((sx * (front - 0.12) * m, sx * front * m))
    d.rect(fx0, -0.95 * m, fx1, -0.75 * m, (200, 235, 245), role="detail")
    bx0, bx1 = sorted((sx * back * m, sx * (back + 0.1) * m))
    d.rect(bx0, -1.0 * m, bx1, -0.8 * m, (30, 30, 200), role="detail")


def draw_person(
    d: Drawing, rng: np.random.Generator, size: float, view: str = "walk_front", phase: float = 0.0
) -> None:
    """A pedestrian (walking, legs swinging with ``phase``) or a seated cyclist; ``size`` px per metre."""
    m = size
    height = rng.uniform(1.55, 1.9)
    skin, shirt, pants = _pick(rng, _SKIN, 10), _pick(rng, _CLOTHES), _pick(rng, _CLOTHES)
    hair = _pick(rng, ((20, 20, 25), (30, 60, 100), (60, 110, 160), (180, 180, 180)), 8)
    sx = -1.0 if view.endswith("left") else 1.0
    if view.startswith("ride"):
        _rider(d, m, sx, height, skin, shirt, pants, hair, phase)
        return
    side = view != "walk_front"
    swing = np.sin(2 * np.pi * phase)
    hip_y, sh_y = -height * 0.5, -height * 0.81
    for k in (-1, 1):  # legs
        hip_x = 0.0 if side else k * 0.08
        foot_x = (k * 0.28 * swing * sx) if side else k * (0.1 + 0.04 * swing * k)
        d.line((hip_x * m, hip_y * m), (foot_x * m, -0.06 * m), max(0.14 * m, 1), pants, role="body")
        d.ellipse(((foot_x + 0.06 * sx * side) * m, -0.04 * m), (0.1 * m, 0.045 * m), 0.0, (25, 25, 25))
    for k in (-1, 1):  # arms swing against the legs
        sh_x = 0.0 if side else k * 0.2
        hand_x = (-k * 0.22 * swing * sx) if side else k * 0.25
        d.line(
            (sh_x * m, (sh_y + 0.04) * m),
            (hand_x * m, (hip_y + 0.05) * m),
            max(0.09 * m, 1),
            shirt,
            role="body",
        )
        d.circle((hand_x * m, (hip_y + 0.05) * m), 0.05 * m, skin)
    half = 0.15 if side else 0.22
    d.poly(
        [
            (-half * m, sh_y * m),
            (half * m, sh_y * m),
            (half * 0.8 * m, (hip_y + 0.02) * m),
            (-half * 0.8 * m, (hip_y + 0.02) * m),
        ],
        shirt,
    )
    d.shade_linear((1.0, 0.0), 0.85, 1.1)
    _head(d, m, sx, height, skin, hair, side)


def _head(
    d: Drawing, m: float, sx: float, height: float, skin: Color, hair: Color, side: bool, x: float = 0.0
) -> None:
    """Neck, face and hair of a person ``height`` metres tall, centred on ``x`` metres."""
    _head_at(d, m, sx, x, -height + 0.12, skin, hair, side)


def _head_at(
    d: Drawing, m: float, sx: float, x: float, hy: float, skin: Color, hair: Color, side: bool
) -> None:
    d.rect((x - 0.04) * m, (hy + 0.08) * m, (x + 0.04) * m, (hy + 0.2) * m, skin)
    d.ellipse((x * m, hy * m), (0.1 * m, 0.12 * m), 0.0, skin)
    d.ellipse(((x - 0.02 * sx * side) * m, (hy - 0.05) * m), (0.1 * m, 0.08 * m), 0.0, hair)


def _rider(
    d: Drawing,
    m: float,
    sx: float,
    height: float,
    skin: Color,
    shirt: Color,
    pants: Color,
    hair: Color,
    phase: float,
) -> None:
    """Seated on a bicycle drawn by ``draw_bicycle`` at the same anchor (saddle, bars, pedals match)."""
    a = 2 * np.pi * phase
    lean = (height - 1.55) * 0.4  # taller riders sit a little higher
    hip, shoulder, bars = np.array([-0.2, -1.0]), np.array([0.06, -1.5 - lean]), np.array([0.45, -1.1])

    def pt(p: np.ndarray) -> tuple[float, float]:
        return (sx * float(p[0]) * m, float(p[1]) * m)

    for k in (0, np.pi):  # both legs: hip -> knee -> pedal on a 0.17 m crank around (0, -0.3)
        foot = np.array([0.17 * np.cos(a + k), -0.3 + 0.17 * np.sin(a + k)])
        knee = (hip + foot) / 2 + (0.2, -0.06)
        d.line(pt(hip), pt(knee), max(0.14 * m, 1), pants, role="body")
        d.line(pt(knee), pt(foot), max(0.11 * m, 1), pants, role="body")
        d.ellipse(pt(foot + (0.04, 0.0)), (0.09 * m, 0.04 * m), 0.0, (25, 25, 25))
    axis = (shoulder - hip) / np.linalg.norm(shoulder - hip)
    normal = np.array([-axis[1], axis[0]])
    d.poly(
        [
            pt(hip + normal * 0.13),
            pt(hip - normal * 0.13),
            pt(shoulder - normal * 0.15),
            pt(shoulder + normal * 0.15),
        ],
        shirt,
    )
    d.line(pt(shoulder), pt(bars), max(0.085 * m, 1), shirt, role="body")
    d.circle(pt(bars), 0.05 * m, skin)
    d.shade_linear((0.0, 1.0), 1.1, 0.85)
    head = shoulder + axis * 0.12 + (0.08, -0.12)
    _head_at(d, m, sx, sx * float(head[0]), float(head[1]), skin, hair, True)


def draw_bicycle(
    d: Drawing, rng: np.random.Generator, size: float, view: str = "right", phase: float = 0.0
) -> None:
    """A bicycle in profile: two tyres (rings with see-through centres), frame, saddle, bars, crank."""
    m, sx = size, (-1.0 if view == "left" else 1.0)
    frame = _pick(rng, ((40, 40, 200), (30, 30, 30), (200, 200, 200), (160, 90, 20), (40, 160, 60)))
    r, thick = 0.34, 0.06
    wheels = ((-0.55, -r), (0.55, -r))
    for wx, wy in wheels:
        d.circle((sx * wx * m, wy * m), r * m, _TYRE)
        d.circle((sx * wx * m, wy * m), (r - thick) * m, (0, 0, 0), role="hole")
        d.circle((sx * wx * m, wy * m), 0.04 * m, (160, 160, 160))
    crank = (0.0, -0.3)
    joints = {
        "rear": wheels[0],
        "front": wheels[1],
        "crank": crank,
        "seat": (-0.15, -0.85),
        "head": (0.4, -0.88),
    }
    w = max(0.045 * m, 1)
    for a, b in (
        ("rear", "crank"),
        ("rear", "seat"),
        ("seat", "crank"),
        ("crank", "head"),
        ("seat", "head"),
        ("head", "front"),
    ):
        (x0, y0), (x1, y1) = joints[a], joints[b]
        d.line((sx * x0 * m, y0 * m), (sx * x1 * m, y1 * m), w, frame, role="body")
    d.line((sx * -0.15 * m, -0.85 * m), (sx * -0.2 * m, -0.98 * m), w, (60, 60, 60), role="body")
    d.ellipse((sx * -0.2 * m, -1.0 * m), (0.11 * m, 0.03 * m), 0.0, (25, 25, 25))
    d.line((sx * 0.4 * m, -0.88 * m), (sx * 0.45 * m, -1.1 * m), w, (60, 60, 60), role="body")
    d.line((sx * 0.38 * m, -1.1 * m), (sx * 0.52 * m, -1.1 * m), w, (25, 25, 25), role="body")
    ang = 2 * np.pi * phase
    for k in (0, np.pi):
        px, py = 0.17 * np.cos(ang + k), -0.3 + 0.17 * np.sin(ang + k)
        d.line(
            (sx * crank[0] * m, crank[1] * m),
            (sx * px * m, py * m),
            max(0.03 * m, 1),
            (90, 90, 90),
            role="body",
        )
