"""Event clips for the video sink: which results trigger one, and the pre-roll each camera holds.

Imports nothing from pipeline/ but messages and the sink config. Without a clip open, each camera's
frames of the last ``pre_s`` seconds are held as JPEG (a 1280x720 frame is about 100 kB instead of
2.7 MB), so a wall of cameras can keep seconds of pre-roll each, with their results: they are
decoded and drawn on only when a trigger opens a clip (drawing costs as much as the JPEG, and most
held frames are never written). A clip runs until ``post_s`` after its last trigger, or ``max_s``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from pipeline.messages import FrameResult
from pipeline.sinks.config import ClipConfig

_JPEG_QUALITY = 90
BACK_S = 1.0  # stream time going back further than this is a new stream (a restarted decoder), not jitter


@dataclass(slots=True)
class ClipStep:
    """What the video sink does with one frame: close the camera's open clip first (``close``), then
    draw and write ``frames`` ((stream time s, BGR picture not drawn on yet, its result), oldest first;
    the first of them opens a clip when none is open). No frames: the frame is held as pre-roll."""

    close: bool = False
    frames: list[tuple[float, np.ndarray, FrameResult]] = field(default_factory=list)


@dataclass(slots=True)
class _Camera:
    held: deque[tuple[float, np.ndarray, FrameResult]] = field(default_factory=deque)  # (t, JPEG, result)
    start: float | None = None  # stream time of the open clip's first frame
    until: float = 0.0  # the open clip ends after this stream time
    size: tuple[int, int] | None = None  # the last frame's (width, height) and stream time
    last_t: float = 0.0


class ClipGate:
    """Per camera, frame by frame: is a clip open, what opens it, and the pre-roll."""

    def __init__(self, cfg: ClipConfig) -> None:
        self.cfg = cfg
        self._cams: dict[str, _Camera] = {}

    def triggered(self, result: FrameResult) -> bool:
        """Whether ``result`` fires one of the triggers (``cfg.triggers``) with an object of ``cfg.classes``."""
        return bool(self.reasons(result))

    def reasons(self, result: FrameResult) -> list[dict[str, Any]]:
        """What in ``result`` fires a trigger, one JSON-ready dict each (empty: nothing): line
        crossings, overstays in zones, objects in zones, detections, of the wanted classes; zones whose
        crowding starts."""
        on, classes = self.cfg.triggers, self.cfg.classes
        out: list[dict[str, Any]] = []
        crossings = result.analytics.crossings if result.analytics is not None else None
        overstays = result.analytics.overstays if result.analytics is not None else None
        if "crossing" in on:
            out += [{"trigger": "crossing", "line": c.line, "direction": c.direction, "track_id": c.track_id,
                     "label": c.label} for c in crossings or () if classes is None or c.label in classes]
        if "overstay" in on:
            out += [{"trigger": "overstay", "zone": o.zone, "dwell_s": o.dwell_s, "track_id": o.track_id,
                     "label": o.label} for o in overstays or () if classes is None or o.label in classes]
        if "crowding" in on and result.analytics is not None:  # a count of every object: classes do not apply
            out += [{"trigger": "crowding", "zone": c.zone, "objects": c.objects}
                    for c in result.analytics.crowding or () if c.state == "start"]
        for d in result.detections:
            if classes is not None and d.label not in classes:
                continue
            if "zone" in on and d.zones:
                out.append({"trigger": "zone", "zones": list(d.zones), "track_id": d.track_id, "label": d.label})
            elif "detection" in on:
                out.append({"trigger": "detection", "track_id": d.track_id, "label": d.label})
        return out

    def step(self, camera_id: str, t: float, canvas: np.ndarray, result: FrameResult) -> ClipStep:
        """The frame at stream time ``t`` (``canvas``: its picture, not drawn on) of ``result``'s camera."""
        cam = self._cams.setdefault(camera_id, _Camera())
        fired = self.triggered(result)
        step = ClipStep()
        size = (result.frame_size[0], result.frame_size[1])
        if cam.size is not None and (size != cam.size or t < cam.last_t - BACK_S):
            # a new frame size, or a new stream: neither the pre-roll nor the open clip can go on
            step.close, cam.start = cam.start is not None, None
            cam.held.clear()
        cam.size, cam.last_t = size, t
        if cam.start is not None:
            if t <= cam.until and t - cam.start < self.cfg.max_s:
                if fired:
                    cam.until = t + self.cfg.post_s
                step.frames.append((t, canvas, result))
                return step
            step.close, cam.start = True, None
        if fired:
            step.frames = [(ht, _decode(jpeg), res) for ht, jpeg, res in cam.held if ht >= t - self.cfg.pre_s]
            step.frames.append((t, canvas, result))
            cam.held.clear()
            cam.start, cam.until = step.frames[0][0], t + self.cfg.post_s
            return step
        if self.cfg.pre_s > 0:
            cam.held.append((t, _encode(canvas), result))
            while cam.held and cam.held[0][0] < t - self.cfg.pre_s:
                cam.held.popleft()
        return step

    def forget(self, camera_id: str) -> None:
        """Drop a camera's pre-roll and clip state (it left the run)."""
        self._cams.pop(camera_id, None)

    def held_bytes(self) -> int:
        """Memory the pre-roll takes, all cameras."""
        return sum(len(jpeg) for cam in self._cams.values() for _, jpeg, _ in cam.held)


def _encode(canvas: np.ndarray) -> np.ndarray:
    ok, buf = cv2.imencode(".jpg", canvas, [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY])
    if not ok:
        raise ValueError("JPEG encoding of a pre-roll frame failed")
    return buf


def _decode(jpeg: np.ndarray) -> np.ndarray:
    image = cv2.imdecode(jpeg, cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError("a held pre-roll frame does not decode")
    return image
