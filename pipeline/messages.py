"""Typed messages passed between runtime stages. Leaf module: imports nothing from pipeline/ or engines/.

Frozen, slotted dataclasses that check shapes and types on construction, so a stage that builds a
bad message fails where the bug is, not three processes downstream.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np


def _expect(cond: bool, what: str, expected: str, actual: Any) -> None:
    if not cond:
        raise ValueError(f"{what}: expected {expected}, got {actual!r}")


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded frame.

    image: (H, W, 3) uint8, BGR, in frame pixels. May be a view into a shared-memory slot: copy it
      before the slot is released. pts: presentation time in seconds (None when the stream has none).
    capture_ts: wall-clock seconds (time.time()) when the decoder produced the frame.
    """

    camera_id: str
    seq: int
    pts: float | None
    capture_ts: float
    image: np.ndarray

    def __post_init__(self) -> None:
        img = self.image
        _expect(isinstance(img, np.ndarray) and img.ndim == 3 and img.shape[2] == 3,
                "Frame.image shape", "(H, W, 3)", getattr(img, "shape", type(img)))
        _expect(img.dtype == np.uint8, "Frame.image dtype", "uint8", img.dtype)
        _expect(self.seq >= 0, "Frame.seq", ">= 0", self.seq)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels."""
        return int(self.image.shape[1]), int(self.image.shape[0])


@dataclass(frozen=True, slots=True)
class Batch:
    """Frames gathered across cameras for one engine call (at most one frame per camera)."""

    frames: tuple[Frame, ...]
    created_ts: float

    def __post_init__(self) -> None:
        _expect(len(self.frames) > 0, "Batch.frames", "at least one frame", len(self.frames))
        ids = [f.camera_id for f in self.frames]
        _expect(len(set(ids)) == len(ids), "Batch.frames camera ids", "unique", ids)


@dataclass(frozen=True, slots=True)
class Detection:
    """One object in frame pixels.

    box: (x1, y1, x2, y2) floats, frame pixels. mask: COCO compressed RLE
    ``{"size": [H, W], "counts": str}`` over the whole frame, or a polygon list
    ``[[x1, y1, x2, y2, ...], ...]`` in frame pixels, or None when masks are off. track_id: the same
    object across its camera's frames (>= 1), None when tracking is off or its track is unconfirmed.
    zones: names of the camera's zones the object is in (``pipeline.analytics``), None when the camera
    has no zones. dwell_s: for a tracked object in zones, seconds it has been in each (zone -> s).
    """

    class_id: int
    label: str
    score: float
    box: tuple[float, float, float, float]
    mask: dict[str, Any] | list[list[float]] | None = None
    track_id: int | None = None
    zones: tuple[str, ...] | None = None
    dwell_s: Mapping[str, float] | None = None

    def __post_init__(self) -> None:
        _expect(len(self.box) == 4, "Detection.box", "4 numbers", self.box)
        _expect(0.0 <= self.score <= 1.0, "Detection.score", "in [0, 1]", self.score)
        _expect(self.track_id is None or self.track_id >= 1, "Detection.track_id", "None or >= 1", self.track_id)


@dataclass(frozen=True, slots=True)
class Crossing:
    """A tracked object that crossed one of its camera's counting lines on this frame.

    direction: ``in`` = it ended on the left of the line's first point -> second point, as seen on the
    picture; ``out`` = on its right.
    """

    line: str
    track_id: int
    class_id: int
    label: str
    direction: Literal["in", "out"]

    def __post_init__(self) -> None:
        _expect(self.direction in ("in", "out"), "Crossing.direction", "'in' or 'out'", self.direction)
        _expect(self.track_id >= 1, "Crossing.track_id", ">= 1", self.track_id)


@dataclass(frozen=True, slots=True)
class Overstay:
    """A tracked object that has now been inside a zone longer than the zone's ``max_dwell_s``: reported
    on the one frame where its dwell passed it, once per visit."""

    zone: str
    track_id: int
    class_id: int
    label: str
    dwell_s: float


@dataclass(frozen=True, slots=True)
class Crowding:
    """A zone with ``max_objects`` that became crowded (``start``: more objects inside than that, for a
    second of stream time) or stopped being so (``end``: at most that many, for a second)."""

    zone: str
    state: Literal["start", "end"]
    objects: int


@dataclass(frozen=True, slots=True)
class FrameAnalytics:
    """What a camera's zones and lines saw on one frame (``pipeline.analytics``).

    zone_counts: objects inside each zone on this frame (None: the camera has no zones). crossings:
    line crossings completed on this frame (None: the camera has no lines). overstays: objects whose
    dwell passed their zone's ``max_dwell_s`` on this frame (None: no zone of the camera has one).
    crowding: zones whose crowding started or ended on this frame (None: no zone has ``max_objects``).
    line_totals: (in, out)
    per line since the run started. shapes: the camera's zones and lines in frame pixels, for drawing
    (``{"zones": {name: ((x, y), ...)}, "lines": {name: ((x, y), (x, y))}}``); not published.
    """

    zone_counts: Mapping[str, int] | None = None
    crossings: tuple[Crossing, ...] | None = None
    overstays: tuple[Overstay, ...] | None = None
    crowding: tuple[Crowding, ...] | None = None
    line_totals: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    shapes: Mapping[str, Mapping[str, tuple[tuple[float, float], ...]]] = field(default_factory=dict, repr=False)


@dataclass(frozen=True, slots=True)
class FrameResult:
    """Everything the model found in one frame, ready for the sinks.

    Times are wall-clock seconds. frame_size is (width, height). analytics: set by the sink stage for
    cameras with zones or lines. roi: the frame pixels the model saw, (x0, y0, x1, y1) half-open, for a
    camera with ``roi``; None: the whole frame.
    """

    camera_id: str
    seq: int
    pts: float | None
    capture_ts: float
    infer_ts: float
    frame_size: tuple[int, int]
    model: str
    detections: tuple[Detection, ...] = field(default_factory=tuple)
    analytics: FrameAnalytics | None = None
    roi: tuple[int, int, int, int] | None = None

    def __post_init__(self) -> None:
        _expect(len(self.frame_size) == 2 and min(self.frame_size) > 0, "FrameResult.frame_size",
                "(width, height) > 0", self.frame_size)


@dataclass(frozen=True, slots=True)
class FramePreview:
    """A FrameResult with a copy of its frame, for sinks that draw on the picture (video).

    image: (h, w, 3) uint8 BGR, the frame downscaled to at most the drawing sink's width (so a 4K
    camera does not push 25 MB per frame through the sink queue). Sent only when such a sink exists.
    """

    result: FrameResult
    image: np.ndarray

    def __post_init__(self) -> None:
        img = self.image
        _expect(isinstance(img, np.ndarray) and img.ndim == 3 and img.shape[2] == 3 and img.dtype == np.uint8,
                "FramePreview.image", "(h, w, 3) uint8", (getattr(img, "shape", None), getattr(img, "dtype", None)))


class CameraState(str, enum.Enum):
    """States of a camera's decoder (see pipeline.camera for the transition table)."""

    CONNECTING = "connecting"
    LIVE = "live"
    STALLED = "stalled"
    RECONNECTING = "reconnecting"
    ENDED = "ended"
    FAILED = "failed"
    STOPPED = "stopped"


class Picture(str, enum.Enum):
    """What a camera's decoded picture looks like (``pipeline.picture.PictureCheck``), beside its state:
    a camera can be LIVE, frames flowing, with a useless picture."""

    OK = "ok"
    FROZEN = "frozen"  # not changed for picture.frozen_s (an encoder repeating one frame)
    BLANK = "blank"  # no contrast for picture.blank_s (black, white, a covered lens, a wall)
    MOVED = "moved"  # not its usual view for picture.moved_s (turned, knocked, re-aimed)
    BLURRED = "blurred"  # its fine detail faded for picture.blurred_s (defocused, fogged, smeared)


@dataclass(frozen=True, slots=True)
class CameraStatus:
    """Emitted on every camera state change, and on every change of its ``picture`` (the state as it
    was). ts: wall-clock seconds of the change."""

    camera_id: str
    state: CameraState
    ts: float
    detail: str = ""
    picture: Picture = Picture.OK

    def __post_init__(self) -> None:
        _expect(isinstance(self.picture, Picture), "CameraStatus.picture", "a Picture", self.picture)


class _Stop:
    """Sentinel type: one instance per process that survives pickling through multiprocessing queues
    (``x is STOP`` holds after a round trip, unlike a bare ``object()``)."""

    _instance: _Stop | None = None

    def __new__(cls) -> _Stop:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __reduce__(self) -> tuple[type[_Stop], tuple[()]]:
        return (_Stop, ())

    def __repr__(self) -> str:
        return "STOP"


STOP = _Stop()
"""Sentinel that flows downstream through every stage queue to end the pipeline."""
