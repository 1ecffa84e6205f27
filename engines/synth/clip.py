"""A synthetic video scene: one static background, moving tracks, per-frame ground truth.

Imports only ``engines.synth`` modules. Lighting and camera settings are drawn once per clip; only the
sensor noise changes from frame to frame (seeded by the frame index), so frame ``t`` is a pure function
of ``(seed, style, size, fps, frames, t)`` and can be rendered in any order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engines.synth import factory_scene, traffic_scene
from engines.synth.motion import Track, factory_tracks, frame_objects, traffic_tracks
from engines.synth.scene import Effects, apply_effects, composite, sample_effects, visible_instances


@dataclass(frozen=True, slots=True)
class FrameTruth:
    """Frame ``index`` of a clip: ``image`` uint8 ``(H, W, 3)`` BGR, ``masks`` bool ``(n, H, W)``
    visible masks of the kept labelled instances, with their ``track_ids`` and ``class_ids`` (``(n,)``)
    in drawing order (later ones occlude earlier ones)."""

    index: int
    image: np.ndarray
    masks: np.ndarray
    track_ids: tuple[int, ...]
    class_ids: tuple[int, ...]


class VideoScene:
    """Background, tracks and camera of one clip of ``frames`` frames at ``fps`` and ``size=(W, H)``."""

    def __init__(
        self,
        *,
        style: str,
        size: tuple[int, int],
        fps: float,
        frames: int,
        seed: int,
        min_area: int = 40,
        min_visible: float = 0.2,
    ) -> None:
        rng = np.random.default_rng([seed, 1])
        self.style = style if style != "mixed" else ("factory", "traffic")[int(rng.integers(2))]
        self.size, self.fps, self.frames, self.seed = size, fps, frames, seed
        self.min_area, self.min_visible = min_area, min_visible
        W, H = size
        if self.style == "factory":
            self.background, lay = factory_scene.background(rng, W, H)
            self.tracks: list[Track] = factory_tracks(rng, lay, frames, fps)
        else:
            self.background, tlay = traffic_scene.background(rng, W, H)
            self.tracks = traffic_tracks(rng, tlay, frames, fps)
        a = rng.uniform(0, 2 * np.pi)
        self.light = (float(np.cos(a)), float(np.sin(a)))
        self.shadow = float(rng.uniform(0.2, 0.45))
        self.effects: Effects = sample_effects(rng, W, H, jpeg=False)

    def render(self, t: int) -> FrameTruth:
        """Frame ``t`` (0-based) with its ground truth."""
        live = frame_objects(self.tracks, t, self.style)
        placed = [(tr.spec, pose) for tr, pose in live]
        img, id_map, areas = composite(
            self.background, placed, self.style, light=self.light, shadow=self.shadow
        )
        image = apply_effects(img, self.effects, np.random.default_rng([self.seed, 2, t]))
        cls = np.array([s.class_id for s, _ in placed], np.int64)
        keep = visible_instances(id_map, cls, areas, min_area=self.min_area, min_visible=self.min_visible)
        masks = (
            id_map[None] == np.array(keep, np.int16)[:, None, None]
            if keep
            else np.zeros((0, *id_map.shape), bool)
        )
        return FrameTruth(
            t, image, masks, tuple(live[k][0].track_id for k in keep), tuple(int(cls[k]) for k in keep)
        )

    def empty_frame(self) -> np.ndarray:
        """The background under this clip's lighting, without objects or noise: uint8 ``(H, W, 3)``."""
        fx = self.effects
        quiet = Effects(fx.gain, fx.light, fx.blur, fx.motion, 0.0, 0)
        return apply_effects(self.background, quiet, np.random.default_rng(0))
