"""Vector drawing of one object: a display list in object-local pixels, rendered at a pose.

Leaf module: imports only numpy, cv2 and ``engines.synth.textures``.

An object is recorded once as a list of parts (polygons, circles, ellipses, thick lines, shading) in its
own frame: pixels at scale 1, origin at the object's anchor, x right, y down. ``Drawing.render(pose)``
maps every coordinate through the similarity transform of ``Pose`` (rotate by ``angle``, scale, move the
anchor to ``(cx, cy)`` in frame pixels) and rasterises straight into a small canvas, so no resampling
blurs the edges. Each part has a role:

- ``body``: painted and added to the object's mask,
- ``detail``: painted only (stripes, text, windows drawn over a body),
- ``hole``: removed from the mask (the ring of a wrench, the hole of a nut).

The mask and the paint come from the same cv2 rasteriser call with the same coordinates, so the mask is
exactly the set of pixels that the object puts into the scene when composited through it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from engines.synth.textures import value_noise

_SHIFT = 4  # cv2 fixed-point fraction bits: vertices are placed to 1/16 pixel
_ONE = 1 << _SHIFT
Color = tuple[float, float, float]
Point = tuple[float, float]


@dataclass(frozen=True, slots=True)
class Pose:
    """Where an object lands in the frame: anchor at ``(cx, cy)`` frame pixels, rotated by ``angle``
    radians (positive turns +x towards +y, i.e. clockwise on screen), ``scale`` frame pixels per local
    pixel, and an animation ``phase`` in cycles (walking legs; 0 for still objects)."""

    cx: float
    cy: float
    angle: float = 0.0
    scale: float = 1.0
    phase: float = 0.0


@dataclass(frozen=True, slots=True)
class Sprite:
    """A rendered object: ``image`` float32 ``(h, w, 3)`` BGR 0-255 and ``mask`` bool ``(h, w)``, whose
    top-left pixel sits at frame pixel ``(x0, y0)``. The canvas is already clipped to the frame."""

    image: np.ndarray
    mask: np.ndarray
    x0: int
    y0: int


class Drawing:
    """A display list of parts in object-local pixels; see the module docstring for roles."""

    def __init__(self) -> None:
        self.ops: list[tuple] = []
        self._pts: list[np.ndarray] = []  # every vertex (with its reach) for the bounds

    # -- recording -------------------------------------------------------------------------------
    def poly(self, pts: Sequence[Point] | np.ndarray, color: Color, *, role: str = "body") -> None:
        """A filled polygon, vertices ``(k, 2)`` local pixels."""
        p = np.asarray(pts, np.float64).reshape(-1, 2)
        self.ops.append(("poly", p, color, role))
        self._pts.append(p)

    def rect(
        self,
        x0: float,
        y0: float,
        x1: float,
        y1: float,
        color: Color,
        *,
        role: str = "body",
        radius: float = 0.0,
    ) -> None:
        """An axis-aligned (in local frame) rectangle, optionally with rounded corners of ``radius``."""
        if radius <= 0:
            self.poly([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], color, role=role)
            return
        r = min(radius, (x1 - x0) / 2, (y1 - y0) / 2)
        t = np.linspace(0, np.pi / 2, 5)
        corners = [
            (x1 - r, y1 - r, 0.0),
            (x0 + r, y1 - r, np.pi / 2),
            (x0 + r, y0 + r, np.pi),
            (x1 - r, y0 + r, 1.5 * np.pi),
        ]
        pts = [(cx + r * np.cos(a0 + t), cy + r * np.sin(a0 + t)) for cx, cy, a0 in corners]
        self.poly(np.concatenate([np.stack(p, 1) for p in pts]), color, role=role)

    def circle(self, c: Point, r: float, color: Color, *, role: str = "body") -> None:
        self.ops.append(("circle", np.asarray(c, np.float64), float(r), color, role))
        self._pts.append(np.array([[c[0] - r, c[1] - r], [c[0] + r, c[1] + r]]))

    def ellipse(
        self, c: Point, axes: tuple[float, float], angle: float, color: Color, *, role: str = "body"
    ) -> None:
        """A filled ellipse with semi-axes ``axes`` local pixels, tilted ``angle`` radians."""
        self.ops.append(("ellipse", np.asarray(c, np.float64), axes, float(angle), color, role))
        r = max(axes)
        self._pts.append(np.array([[c[0] - r, c[1] - r], [c[0] + r, c[1] + r]]))

    def line(self, p0: Point, p1: Point, thickness: float, color: Color, *, role: str = "detail") -> None:
        """A straight stroke ``thickness`` local pixels wide with round caps."""
        self.ops.append(("line", np.asarray([p0, p1], np.float64), float(thickness), color, role))
        h = thickness / 2
        self._pts.append(
            np.array(
                [
                    [min(p0[0], p1[0]) - h, min(p0[1], p1[1]) - h],
                    [max(p0[0], p1[0]) + h, max(p0[1], p1[1]) + h],
                ]
            )
        )

    def shade_linear(
        self, direction: Point, lo: float, hi: float, *, region: np.ndarray | None = None
    ) -> None:
        """Multiply what is painted so far by a ramp from ``lo`` to ``hi`` along local ``direction``,
        across the object's extent (or only inside the local polygon ``region``)."""
        self.ops.append(("shade_linear", np.asarray(direction, np.float64), lo, hi, region))

    def shade_cylinder(
        self, axis_y: float, radius: float, *, dark: float, shine: float, region: np.ndarray | None = None
    ) -> None:
        """Cylinder shading for a body lying along local x, centred on ``y = axis_y``: darkening by
        ``dark`` towards the rims and a specular band of strength ``shine`` above the axis."""
        self.ops.append(("shade_cyl", axis_y, radius, dark, shine, region))

    def grain(self, seed: int, cell: float, amplitude: float) -> None:
        """Material texture: multiply by ``1 + amplitude * noise`` with features ``cell`` local px."""
        self.ops.append(("grain", seed, cell, amplitude))

    # -- rendering -------------------------------------------------------------------------------
    def bounds(self) -> tuple[float, float, float, float]:
        """Local ``(x_min, y_min, x_max, y_max)`` of everything recorded."""
        allp = np.concatenate(self._pts)
        return (*allp.min(0), *allp.max(0))

    def render(self, pose: Pose, frame_size: tuple[int, int]) -> Sprite | None:
        """Rasterise at ``pose`` into a canvas clipped to ``frame_size = (W, H)``; None if nothing of
        the object falls inside the frame."""
        x_lo, y_lo, x_hi, y_hi = self.bounds()
        corners = np.array([[x_lo, y_lo], [x_hi, y_lo], [x_hi, y_hi], [x_lo, y_hi]])
        fc = _transform(corners, pose)
        W, H = frame_size
        x0, y0 = max(int(np.floor(fc[:, 0].min())) - 2, 0), max(int(np.floor(fc[:, 1].min())) - 2, 0)
        x1, y1 = min(int(np.ceil(fc[:, 0].max())) + 2, W), min(int(np.ceil(fc[:, 1].max())) + 2, H)
        if x1 <= x0 or y1 <= y0:
            return None
        canvas = _Canvas(pose, x0, y0, x1 - x0, y1 - y0, (x_lo, y_lo, x_hi, y_hi))
        for op in self.ops:
            canvas.apply(op)
        mask = canvas.mask.astype(bool)
        if not mask.any():
            return None
        return Sprite(canvas.image, mask, x0, y0)


def _transform(pts: np.ndarray, pose: Pose) -> np.ndarray:
    c, s = np.cos(pose.angle) * pose.scale, np.sin(pose.angle) * pose.scale
    x, y = pts[:, 0], pts[:, 1]
    return np.stack([pose.cx + c * x - s * y, pose.cy + s * x + c * y], 1)


class _Canvas:
    """Rasterisation state of one ``Drawing.render`` call (canvas-local pixel coordinates)."""

    def __init__(
        self, pose: Pose, x0: int, y0: int, w: int, h: int, bounds: tuple[float, float, float, float]
    ) -> None:
        self.pose, self.x0, self.y0, self.bounds = pose, x0, y0, bounds
        self.image = np.zeros((h, w, 3), np.float32)
        self.mask = np.zeros((h, w), np.uint8)
        self.painted = np.zeros((h, w), np.uint8)
        self._uv: tuple[np.ndarray, np.ndarray] | None = None

    def fixed(self, pts: np.ndarray) -> np.ndarray:
        f = _transform(pts, self.pose) - (self.x0, self.y0)
        return np.round(f * _ONE).astype(np.int32)

    def uv(self) -> tuple[np.ndarray, np.ndarray]:
        """Local coordinates of every canvas pixel centre (inverse of the pose transform)."""
        if self._uv is None:
            h, w = self.mask.shape
            ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
            dx, dy = xs + (self.x0 - self.pose.cx), ys + (self.y0 - self.pose.cy)
            c, s = np.cos(self.pose.angle) / self.pose.scale, np.sin(self.pose.angle) / self.pose.scale
            self._uv = (c * dx + s * dy, -s * dx + c * dy)
        return self._uv

    def _draw(self, fn, role: str, color: Color, *args, **kw) -> None:
        if role in ("body", "detail"):
            fn(self.image, *args, color=tuple(float(v) for v in color), **kw)
            fn(self.painted, *args, color=1, **kw)
        if role == "body":
            fn(self.mask, *args, color=1, **kw)
        elif role == "hole":
            fn(self.mask, *args, color=0, **kw)

    def region(self, pts: np.ndarray | None) -> np.ndarray:
        if pts is None:
            return self.painted.astype(bool)
        m = np.zeros_like(self.mask)
        cv2.fillPoly(m, [self.fixed(pts)], 1, cv2.LINE_8, _SHIFT)
        return m.astype(bool) & self.painted.astype(bool)

    def apply(self, op: tuple) -> None:
        kind, s = op[0], self.pose.scale
        if kind == "poly":
            _, pts, color, role = op
            self._draw(cv2.fillPoly, role, color, [self.fixed(pts)], lineType=cv2.LINE_8, shift=_SHIFT)
        elif kind == "circle":
            _, c, r, color, role = op
            ((cx, cy),) = self.fixed(c[None])
            rr = max(int(round(r * s * _ONE)), 1)
            self._draw(
                cv2.circle,
                role,
                color,
                (int(cx), int(cy)),
                rr,
                thickness=-1,
                lineType=cv2.LINE_8,
                shift=_SHIFT,
            )
        elif kind == "ellipse":
            _, c, axes, ang, color, role = op
            ((cx, cy),) = self.fixed(c[None])
            ax = (max(int(round(axes[0] * s * _ONE)), 1), max(int(round(axes[1] * s * _ONE)), 1))
            deg = float(np.degrees(ang + self.pose.angle))
            self._draw(
                cv2.ellipse,
                role,
                color,
                (int(cx), int(cy)),
                ax,
                deg,
                0.0,
                360.0,
                thickness=-1,
                lineType=cv2.LINE_8,
                shift=_SHIFT,
            )
        elif kind == "line":
            _, pts, thick, color, role = op
            (ax, ay), (bx, by) = self.fixed(pts)
            t = max(int(round(thick * s)), 1)
            self._draw(
                cv2.line,
                role,
                color,
                (int(ax), int(ay)),
                (int(bx), int(by)),
                thickness=t,
                lineType=cv2.LINE_8,
                shift=_SHIFT,
            )
        else:
            self._shade(op)

    def _shade(self, op: tuple) -> None:
        kind = op[0]
        if kind == "grain":
            _, seed, cell, amp = op
            h, w = self.mask.shape
            noise = value_noise(
                np.random.default_rng(seed), h, w, cell=max(cell * self.pose.scale, 1.5), octaves=2
            )
            self.image *= (1.0 + amp * noise)[..., None]
            return
        u, v = self.uv()
        if kind == "shade_linear":
            _, d, lo, hi, region = op
            d = d / (np.hypot(*d) or 1.0)
            x_lo, y_lo, x_hi, y_hi = self.bounds
            ends = np.array([[x_lo, y_lo], [x_hi, y_lo], [x_hi, y_hi], [x_lo, y_hi]]) @ d
            t = np.clip((u * d[0] + v * d[1] - ends.min()) / (np.ptp(ends) or 1.0), 0, 1)
            factor = lo + (hi - lo) * t
        else:  # shade_cyl
            _, axis_y, radius, dark, shine, region = op
            r = np.clip((v - axis_y) / radius, -1, 1)
            factor = 1.0 - dark * r * r + shine * np.exp(-(((r + 0.45) / 0.18) ** 2))
        where = self.region(region)
        self.image[where] *= factor[where][:, None]
