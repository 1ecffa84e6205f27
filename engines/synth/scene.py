"""Scene assembly: background, objects composited in order with exact instance masks, camera effects.

Imports only ``engines.synth`` modules (no ``pipeline``).

Compositing keeps an instance-id map ``(H, W) int16``: every object is pasted through its own mask and
writes its index into the map where it lands, so later objects occlude earlier ones pixel-exactly. An
object's visible mask is ``id_map == index``; its label is derived from that mask only. Labelled objects
are dropped when fewer than ``min_area`` pixels, or less than ``min_visible`` of their in-frame area,
remain visible. Objects cut by the frame edge keep their in-frame part (rendering is clipped to the
frame, so their mask is clipped too). Camera effects (lighting, blur, noise, JPEG) act on the image after
compositing and never move a mask.

Images are BGR; ``Scene.image`` is uint8 ``(H, W, 3)``; sizes are ``(W, H)`` pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from engines.synth import factory_scene, traffic_scene
from engines.synth import textures as tx
from engines.synth.drawing import Pose, Sprite
from engines.synth.shapes import CLUTTER, ObjectSpec, render_object

STYLES: tuple[str, ...] = ("factory", "traffic", "mixed")
_MODULES = {"factory": factory_scene, "traffic": traffic_scene}
Placed = tuple[ObjectSpec, Pose]


@dataclass(frozen=True, slots=True)
class Scene:
    """One rendered frame and its ground truth.

    ``image`` uint8 ``(H, W, 3)`` BGR; ``id_map`` int16 ``(H, W)``: index into ``objects`` of the object
    seen at each pixel, -1 for background; ``objects``: every placed ``(spec, pose)`` in drawing order,
    clutter and dropped ones included; ``instances``: indices of the labelled objects kept, in drawing
    order; ``style``: ``factory`` or ``traffic``."""

    image: np.ndarray
    id_map: np.ndarray
    objects: tuple[Placed, ...]
    instances: tuple[int, ...]
    style: str

    @property
    def class_ids(self) -> np.ndarray:
        """``(n,) int64`` class id of each kept instance."""
        return np.array([self.objects[i][0].class_id for i in self.instances], np.int64)

    def masks(self) -> np.ndarray:
        """``(n, H, W) bool`` visible mask of each kept instance."""
        if not self.instances:
            return np.zeros((0, *self.id_map.shape), bool)
        return self.id_map[None] == np.array(self.instances, np.int16)[:, None, None]


@dataclass(frozen=True, slots=True)
class Effects:
    """Camera and lighting of one image or clip: ``gain`` BGR multipliers; ``light`` float32 ``(H, W)``
    multiplier or None; ``blur`` gaussian sigma px (0 = none); ``motion`` kernel or None; ``noise`` sigma
    in 0-255 units; ``jpeg`` quality 1-100 (0 = none)."""

    gain: np.ndarray
    light: np.ndarray | None
    blur: float
    motion: np.ndarray | None
    noise: float
    jpeg: int


def sample_effects(rng: np.random.Generator, width: int, height: int, *, jpeg: bool = True) -> Effects:
    """Draw lighting and camera degradations for one image (or one whole clip)."""
    gain = (rng.uniform(0.65, 1.3) * rng.uniform(0.9, 1.1, 3)).astype(np.float32)
    light = None
    if rng.random() < 0.5:
        light = tx.linear_gradient(
            height, width, rng.uniform(0, 2 * np.pi), rng.uniform(0.6, 0.9), rng.uniform(1.0, 1.3)
        )
    if rng.random() < 0.3:
        spot = tx.radial_falloff(
            height,
            width,
            rng.uniform(0, width),
            rng.uniform(0, height),
            rng.uniform(0.5, 1.2) * max(width, height),
        )
        light = (1.0 if light is None else light) * (0.75 + 0.45 * spot)
    blur = float(rng.uniform(0.5, 1.6)) if rng.random() < 0.3 else 0.0
    motion = None
    if rng.random() < 0.15:
        k = int(rng.integers(3, 10))
        motion = np.zeros((k, k), np.float32)
        a = rng.uniform(0, np.pi)
        c = (k - 1) / 2
        cv2.line(
            motion,
            (round(c - c * np.cos(a)), round(c - c * np.sin(a))),
            (round(c + c * np.cos(a)), round(c + c * np.sin(a))),
            1.0,
            1,
        )
        motion /= motion.sum()
    noise = float(rng.uniform(1.0, 7.0)) if rng.random() < 0.7 else 0.0
    q = int(rng.integers(35, 90)) if jpeg and rng.random() < 0.3 else 0
    return Effects(gain, light, blur, motion, noise, q)


def apply_effects(img: np.ndarray, fx: Effects, rng: np.random.Generator) -> np.ndarray:
    """float32 ``(H, W, 3)`` scene -> uint8 camera image; ``rng`` draws the sensor noise."""
    out = img * fx.gain  # a new array: every later step works in place on it
    if fx.light is not None:
        out *= fx.light[..., None]
    if fx.blur > 0:
        out = cv2.GaussianBlur(out, (0, 0), fx.blur)
    if fx.motion is not None:
        out = cv2.filter2D(out, -1, fx.motion)
    if fx.noise > 0:
        # grey (luminance) grain: a third of the cost of per-channel noise, and it dominates anyway
        out += (rng.standard_normal(out.shape[:2], dtype=np.float32) * np.float32(fx.noise))[..., None]
    out8 = np.clip(out, 0, 255, out=out).astype(np.uint8)
    if fx.jpeg:
        ok, buf = cv2.imencode(".jpg", out8, [cv2.IMWRITE_JPEG_QUALITY, fx.jpeg])
        out8 = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    return out8


def shadow_matrix(style: str, pose: Pose, spec: ObjectSpec, light: tuple[float, float]) -> np.ndarray:
    """2x3 frame-pixel affine throwing an object's silhouette onto the ground as its shadow.

    Factory objects lie flat: the shadow is the silhouette shifted along ``light`` by a little of the
    object's size. Traffic objects stand on ``y = pose.cy``: a point ``h`` pixels above the ground lands
    ``h * light`` from its foot, flattened so the shadow stays on the ground."""
    lx, ly = light
    if style == "factory":
        d = 0.05 * spec.size * pose.scale
        return np.array([[1, 0, lx * d], [0, 1, abs(ly) * d]], np.float64)
    ya, sy = pose.cy, 0.25 * abs(ly) + 0.05
    return np.array([[1, -lx, lx * ya], [0, -sy, ya * (1 + sy)]], np.float64)


def _cast_shadow(img: np.ndarray, sp: Sprite, M: np.ndarray, strength: float) -> None:
    h, w = sp.mask.shape
    H, W = img.shape[:2]
    box = np.array(
        [[sp.x0, sp.y0, 1], [sp.x0 + w, sp.y0, 1], [sp.x0, sp.y0 + h, 1], [sp.x0 + w, sp.y0 + h, 1]]
    )
    pts = box @ M.T
    pad = 4
    bx0, by0 = max(int(pts[:, 0].min()) - pad, 0), max(int(pts[:, 1].min()) - pad, 0)
    bx1, by1 = min(int(pts[:, 0].max()) + pad, W), min(int(pts[:, 1].max()) + pad, H)
    if bx1 <= bx0 or by1 <= by0:
        return
    local = M.copy()
    local[:, 2] += M[:, 0] * sp.x0 + M[:, 1] * sp.y0 - (bx0, by0)
    sh = cv2.warpAffine(sp.mask.astype(np.float32), local, (bx1 - bx0, by1 - by0), flags=cv2.INTER_LINEAR)
    sh = cv2.GaussianBlur(sh, (0, 0), 1.5)
    img[by0:by1, bx0:bx1] *= (1.0 - strength * sh)[..., None]


def composite(
    background: np.ndarray,
    placed: list[Placed] | tuple[Placed, ...],
    style: str,
    *,
    light: tuple[float, float] = (0.5, 0.5),
    shadow: float = 0.35,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Paste ``placed`` objects over a copy of ``background`` (float32 ``(H, W, 3)``) in order.

    Returns ``(image float32 (H, W, 3), id_map int16 (H, W), in_frame_area int64 (n,))``; the area is
    each object's pixel count inside the frame before anything occluded it (0 when off-frame)."""
    img = background.copy()
    H, W = img.shape[:2]
    id_map = np.full((H, W), -1, np.int16)
    areas = np.zeros(len(placed), np.int64)
    for k, (spec, pose) in enumerate(placed):
        sp = render_object(spec, pose, (W, H))
        if sp is None:
            continue
        if shadow > 0:
            _cast_shadow(img, sp, shadow_matrix(style, pose, spec, light), shadow)
        h, w = sp.mask.shape
        region, ids = img[sp.y0 : sp.y0 + h, sp.x0 : sp.x0 + w], id_map[sp.y0 : sp.y0 + h, sp.x0 : sp.x0 + w]
        region[sp.mask] = sp.image[sp.mask]
        ids[sp.mask] = k
        areas[k] = int(sp.mask.sum())
    return img, id_map, areas


def visible_instances(
    id_map: np.ndarray,
    class_ids: np.ndarray,
    areas: np.ndarray,
    *,
    min_area: int = 40,
    min_visible: float = 0.2,
) -> tuple[int, ...]:
    """Indices of labelled objects (class id >= 0) that keep at least ``min_area`` visible pixels and at
    least ``min_visible`` of their in-frame ``areas``."""
    visible = np.bincount(id_map.ravel().astype(np.int64) + 1, minlength=len(areas) + 1)[1:]
    keep = (class_ids != CLUTTER) & (visible >= min_area) & (visible >= min_visible * np.maximum(areas, 1))
    return tuple(int(i) for i in np.flatnonzero(keep))


def render_scene(
    rng: np.random.Generator,
    style: str,
    size: tuple[int, int],
    *,
    min_area: int = 40,
    min_visible: float = 0.2,
) -> Scene:
    """One random scene of ``style`` (``mixed`` picks factory or traffic) at ``size = (W, H)``."""
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}; expected one of {', '.join(STYLES)}")
    st = style if style != "mixed" else ("factory", "traffic")[int(rng.integers(2))]
    W, H = size
    mod = _MODULES[st]
    bg, layout = mod.background(rng, W, H)
    placed = mod.place(rng, layout)
    a = rng.uniform(0, 2 * np.pi)
    img, id_map, areas = composite(
        bg, placed, st, light=(float(np.cos(a)), float(np.sin(a))), shadow=float(rng.uniform(0.2, 0.45))
    )
    image = apply_effects(img, sample_effects(rng, W, H), rng)
    cls = np.array([s.class_id for s, _ in placed], np.int64)
    keep = visible_instances(id_map, cls, areas, min_area=min_area, min_visible=min_visible)
    return Scene(image, id_map, tuple(placed), keep, st)
