"""Objects on a conveyor seen from above: cardboard boxes, lying bottles, hand tools, loose metal parts.

Imports only ``engines.synth.drawing``. Every ``draw_*`` function records one object into a
``Drawing`` (local pixels, origin at the object's centre, its long axis along x) from ``rng`` and a
nominal ``size`` (the object's length in pixels at scale 1). ``view`` and ``phase`` are accepted for a
uniform signature and ignored: a top-down object looks the same from every side and does not animate.
"""

from __future__ import annotations

from typing import cast

import numpy as np

from engines.synth.drawing import Color, Drawing

_CARDBOARD: tuple[Color, ...] = ((95, 140, 185), (80, 120, 160), (110, 160, 200), (70, 105, 140))
_CRATE: tuple[Color, ...] = ((170, 90, 30), (40, 60, 170), (60, 150, 60), (200, 200, 200))
_GLASS: tuple[Color, ...] = ((60, 120, 40), (30, 70, 120), (150, 110, 60), (190, 190, 185))
_PLASTIC: tuple[Color, ...] = ((220, 220, 225), (200, 140, 40), (40, 40, 200), (60, 180, 230))
_CAPS: tuple[Color, ...] = ((30, 30, 200), (200, 60, 20), (230, 230, 230), (20, 160, 220), (40, 40, 40))
_GRIPS: tuple[Color, ...] = ((30, 30, 200), (20, 170, 230), (170, 80, 20), (30, 30, 30), (60, 140, 40))


def _pick(rng: np.random.Generator, palette: tuple[Color, ...], jitter: float = 18.0) -> Color:
    base = np.asarray(palette[int(rng.integers(len(palette)))], np.float64)
    return tuple(np.clip(base + rng.uniform(-jitter, jitter, 3), 0, 255))  # type: ignore[return-value]


def _scaled(c: Color, k: float) -> Color:
    return tuple(float(np.clip(v * k, 0, 255)) for v in c)  # type: ignore[return-value]


def draw_box(d: Drawing, rng: np.random.Generator, size: float, view: str = "", phase: float = 0.0) -> None:
    """A closed cardboard box (taped seam, sometimes a shipping label) or a plastic crate with ribs."""
    w, h = size / 2, size * rng.uniform(0.45, 0.9) / 2
    seed = int(rng.integers(2**31))
    if rng.random() < 0.75:
        col = _pick(rng, _CARDBOARD)
        d.rect(-w, -h, w, h, col, radius=size * 0.015)
        d.grain(seed, size * 0.08, 0.10)
        tape = _pick(rng, ((150, 190, 215), (120, 160, 200), (200, 200, 200), (60, 60, 160)), 10)
        t = h * rng.uniform(0.12, 0.22)
        d.rect(-w, -t, w, t, tape, role="detail")
        d.line((-w, 0), (w, 0), max(size * 0.008, 1), _scaled(col, 0.55))
        for x in (-w + size * 0.02, w - size * 0.02):  # flap creases near the short edges
            d.line((x, -h), (x, h), max(size * 0.006, 1), _scaled(col, 0.8))
        if rng.random() < 0.6:
            lx, ly = rng.uniform(-w * 0.8, w * 0.2), rng.choice([-1, 1]) * h * rng.uniform(0.4, 0.55)
            lw, lh = w * 0.5, h * 0.3
            d.rect(lx, ly - lh / 2, lx + lw, ly + lh / 2, (235, 235, 235), role="detail")
            for k in range(6):
                x = lx + lw * (0.1 + 0.13 * k)
                d.line(
                    (x, ly - lh * 0.3),
                    (x, ly + lh * 0.3),
                    max(size * rng.uniform(0.004, 0.012), 1),
                    (20, 20, 20),
                )
    else:
        col = _pick(rng, _CRATE)
        d.rect(-w, -h, w, h, col, radius=size * 0.04)
        inner = _scaled(col, 0.7)
        d.rect(-w * 0.88, -h * 0.8, w * 0.88, h * 0.8, inner, role="detail", radius=size * 0.02)
        for k in range(1, 6):
            x = -w * 0.88 + 2 * w * 0.88 * k / 6
            d.line((x, -h * 0.8), (x, h * 0.8), max(size * 0.012, 1), _scaled(col, 1.1))
        d.grain(seed, size * 0.1, 0.05)
    d.shade_linear((rng.uniform(-1, 1), rng.uniform(-1, 1)), 0.8, 1.15)


def draw_bottle(
    d: Drawing, rng: np.random.Generator, size: float, view: str = "", phase: float = 0.0
) -> None:
    """A bottle lying on its side: rounded body, shoulder, neck and cap; paper label, cylinder shading."""
    L, r = size / 2, size * rng.uniform(0.11, 0.17)
    glass = rng.random() < 0.5
    col = _pick(rng, _GLASS if glass else _PLASTIC)
    neck_r, neck_x, shoulder_x = r * rng.uniform(0.35, 0.5), L * 0.55, L * rng.uniform(0.15, 0.35)
    body = np.array(
        [
            (-L, -r * 0.9),
            (-L + r * 0.1, -r),
            (shoulder_x, -r),
            (neck_x, -neck_r),
            (L * 0.85, -neck_r),
            (L * 0.85, neck_r),
            (neck_x, neck_r),
            (shoulder_x, r),
            (-L + r * 0.1, r),
            (-L, r * 0.9),
        ]
    )
    d.poly(body, col)
    cap = _pick(rng, _CAPS, 10)
    d.rect(L * 0.83, -neck_r * 1.25, L, neck_r * 1.25, cap, radius=neck_r * 0.3)
    for k in range(3):  # cap ridges
        x = L * (0.87 + 0.04 * k)
        d.line((x, -neck_r * 1.2), (x, neck_r * 1.2), max(size * 0.006, 1), _scaled(cap, 0.7))
    if rng.random() < 0.8:
        lab = _pick(rng, ((240, 240, 240), (40, 40, 200), (200, 120, 30), (40, 200, 230), (30, 30, 30)), 15)
        x0 = -L * rng.uniform(0.7, 0.85)
        x1 = x0 + (shoulder_x - x0) * rng.uniform(0.5, 0.85)
        d.rect(x0, -r, x1, r, lab, role="detail")
        ink = _scaled(lab, 0.35) if sum(lab) > 300 else (235, 235, 235)
        d.rect(x0 + (x1 - x0) * 0.15, -r * 0.3, x1 - (x1 - x0) * 0.15, r * 0.05, ink, role="detail")
    d.shade_cylinder(0.0, r, dark=0.55, shine=0.45 if glass else 0.25)


def _wrench(d: Drawing, rng: np.random.Generator, size: float) -> None:
    L = size / 2
    hw = size * rng.uniform(0.045, 0.06)
    steel = cast(Color, tuple(float(v) for v in np.full(3, rng.uniform(150, 200)) + rng.uniform(-8, 8, 3)))
    d.rect(-L * 0.7, -hw, L * 0.7, hw, steel, radius=hw * 0.8)
    jaw_r, ring_r = size * 0.13, size * 0.1
    d.circle((L - jaw_r, 0), jaw_r, steel)
    d.circle((-L + ring_r, 0), ring_r, steel)
    # the open jaw: a slot cut out of the head, opening outwards at an angle
    a, g = rng.uniform(-0.35, 0.35), jaw_r * 0.45
    ca, sa = np.cos(a), np.sin(a)
    cx = L - jaw_r
    slot = [(cx - g * 0.2, -g), (cx + 3 * jaw_r, -g), (cx + 3 * jaw_r, g), (cx - g * 0.2, g)]
    slot = [(cx + (x - cx) * ca - y * sa, (x - cx) * sa + y * ca) for x, y in slot]
    d.poly(slot, (0, 0, 0), role="hole")
    hexa = [
        (-L + ring_r + ring_r * 0.5 * np.cos(t), ring_r * 0.5 * np.sin(t)) for t in np.arange(6) * np.pi / 3
    ]
    d.poly(hexa, (0, 0, 0), role="hole")
    d.line((-L * 0.55, 0), (L * 0.55, 0), max(hw * 0.5, 1), _scaled(steel, 0.85))
    d.shade_cylinder(0.0, hw * 2.5, dark=0.3, shine=0.35)


def _screwdriver(d: Drawing, rng: np.random.Generator, size: float) -> None:
    L = size / 2
    grip = _pick(rng, _GRIPS, 15)
    hr = size * rng.uniform(0.06, 0.08)
    split = L * rng.uniform(-0.15, 0.1)
    d.rect(-L, -hr, split, hr, grip, radius=hr * 0.7)
    for k in range(4):  # grip grooves
        x = -L + (split + L) * (0.2 + 0.18 * k)
        d.line((x, -hr * 0.8), (x, hr * 0.8), max(hr * 0.25, 1), _scaled(grip, 0.6))
    d.rect(split - hr * 0.2, -hr * 0.75, split + hr * 0.3, hr * 0.75, _scaled(grip, 0.8))
    sr = hr * 0.28
    d.rect(split, -sr, L * 0.94, sr, (185, 185, 190))
    d.poly([(L * 0.94, -sr), (L, -sr * 0.35), (L, sr * 0.35), (L * 0.94, sr)], (150, 150, 155))
    d.shade_cylinder(0.0, hr, dark=0.5, shine=0.35)


def _hammer(d: Drawing, rng: np.random.Generator, size: float) -> None:
    L = size / 2
    wood = rng.random() < 0.5
    handle = _pick(rng, ((70, 130, 180), (60, 110, 160)) if wood else _GRIPS, 12)
    hr = size * 0.045
    d.rect(-L, -hr, L * 0.75, hr, handle, radius=hr)
    if wood:
        d.grain(int(rng.integers(2**31)), size * 0.03, 0.12)
    head_w, head_l = size * 0.09, size * rng.uniform(0.3, 0.4)
    d.rect(
        L * 0.75 - head_w, -head_l * 0.4, L * 0.75 + head_w, head_l * 0.6, (95, 95, 100), radius=head_w * 0.2
    )
    d.poly(
        [
            (L * 0.75 - head_w * 0.6, -head_l * 0.4),
            (L * 0.75 + head_w * 0.6, -head_l * 0.4),
            (L * 0.75 + head_w * 0.2, -head_l * 0.6),
            (L * 0.75 - head_w * 0.2, -head_l * 0.6),
        ],
        (80, 80, 85),
    )
    d.shade_linear((1.0, 0.3), 0.75, 1.2)


def draw_tool(d: Drawing, rng: np.random.Generator, size: float, view: str = "", phase: float = 0.0) -> None:
    """A hand tool lying flat: open/ring wrench, screwdriver or hammer (picked by ``view`` or rng)."""
    pick = view or ("wrench", "screwdriver", "hammer")[int(rng.integers(3))]
    {"wrench": _wrench, "screwdriver": _screwdriver, "hammer": _hammer}[pick](d, rng, size)


def draw_metal_part(
    d: Drawing, rng: np.random.Generator, size: float, view: str = "", phase: float = 0.0
) -> None:
    """Unlabelled clutter: a hex nut, a washer or a drilled bracket plate (occludes, never labelled)."""
    metal = cast(Color, tuple(float(v) for v in np.full(3, rng.uniform(110, 190)) + rng.uniform(-10, 10, 3)))
    r = size / 2
    pick = int(rng.integers(3))
    if pick == 0:
        d.poly([(r * np.cos(t), r * np.sin(t)) for t in np.arange(6) * np.pi / 3], metal)
        d.circle((0, 0), r * 0.45, (0, 0, 0), role="hole")
    elif pick == 1:
        d.circle((0, 0), r, metal)
        d.circle((0, 0), r * rng.uniform(0.35, 0.55), (0, 0, 0), role="hole")
    else:
        a = r * rng.uniform(0.25, 0.4)
        d.poly([(-r, -r), (r, -r), (r, -r + a), (-r + a, -r + a), (-r + a, r), (-r, r)], metal)
        for x, y in ((r * 0.6, -r + a / 2), (-r + a / 2, r * 0.6)):
            d.circle((x, y), a * 0.25, (0, 0, 0), role="hole")
    d.shade_linear((rng.uniform(-1, 1), rng.uniform(-1, 1)), 0.7, 1.3)
