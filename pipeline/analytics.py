"""Zones and counting lines per camera (``cameras[].zones``, ``cameras[].lines`` in a run config).

Imports from pipeline/ only ``messages`` and ``config``. Runs in the sink stage after tracking, on each
camera's results in order. Shapes are configured as fractions of the frame, so a camera switched to
another resolution keeps its zones; they are turned into frame pixels at the first frame of each size.

- A zone holds the objects whose anchor point (``bottom``: the middle of the box's bottom edge, where
  an object meets the road or the belt; ``center``) lies inside its polygon (even-odd rule). Every
  detection lists its zones; the frame says how many objects each zone holds. A tracked object also
  says how long it has been in each of its zones (``dwell_s``, stream time: pts, else capture time),
  counted from the first result that saw it inside, through frames where it was not seen at all (hidden
  for up to the tracker's ``max_lost_frames``), until a result sees it outside. In a zone with
  ``max_dwell_s``, the frame on which an object's dwell passes it reports an overstay, once per visit.
  A zone with ``max_objects`` is crowded once it has held more objects than that for ``CROWD_HOLD_S`` of
  stream time, and no longer once it has held at most that many for as long: each change is reported
  on the frame that makes it (one frame's miss or extra box changes nothing).
- A line counts tracked objects whose anchor goes from one side of it to the other, between its two
  end points: ``in`` when the object ends on the left of first point -> second point as seen on the
  picture, ``out`` on its right. An object is on a side only once its anchor is further from the line
  than a tenth of its size (``DEAD_BAND``), so a box that jitters while its object waits on the line
  counts nothing; an object that appears already past the line counts nothing either.
  The side is taken where the object was last seen clearly on it, so a crossing seen only as two
  results far apart (a sampled camera, dropped frames) still counts, once. A new track starts from
  the box that started it, seen before it had an id, so an object that crosses while its track is being
  confirmed counts too.
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Literal, cast

import numpy as np

from pipeline.config import CameraConfig, LineConfig, Point, ZoneConfig
from pipeline.messages import Crossing, Crowding, Detection, FrameAnalytics, FrameResult, Overstay

CROWD_HOLD_S = 1.0
"""Stream seconds a zone's count must stay above (or back at or below) its ``max_objects`` before its
crowding starts (or ends): detections that flicker at the threshold change nothing."""

DEAD_BAND = 0.1
"""Fraction of an object's size (the geometric mean of its box's width and height) its anchor must be
from a line to be on one side: box jitter grows with the object, so the margin does too."""


def anchor_points(boxes: np.ndarray, anchor: str) -> np.ndarray:
    """(N, 2) points of (N, 4) xyxy boxes: ``bottom`` (middle of the bottom edge) or ``center``."""
    x = (boxes[:, 0] + boxes[:, 2]) / 2
    y = boxes[:, 3] if anchor == "bottom" else (boxes[:, 1] + boxes[:, 3]) / 2
    return np.stack([x, y], -1)


def inside(points: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """(N,) bool: which of ``points`` (N, 2) lie inside ``polygon`` (K, 2), even-odd rule."""
    px, py = points[:, 0:1], points[:, 1:2]
    x0, y0 = polygon[:, 0], polygon[:, 1]
    nxt = np.arange(1, len(polygon) + 1) % len(polygon)
    x1, y1 = x0[nxt], y0[nxt]
    spans = (y0 > py) != (y1 > py)  # (N, K): edges that cross the point's row
    with np.errstate(divide="ignore", invalid="ignore"):
        at_x = x0 + (py - y0) * (x1 - x0) / (y1 - y0)
    return (np.count_nonzero(spans & (px < at_x), axis=1) % 2).astype(bool)


def signed_distance(points: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N,) distance in pixels of ``points`` from the line through ``a`` and ``b``: > 0 on its right
    (looking from a to b, as seen on a picture whose y axis points down), < 0 on its left."""
    d = b - a
    return (d[0] * (points[:, 1] - a[1]) - d[1] * (points[:, 0] - a[0])) / math.hypot(d[0], d[1])


@dataclasses.dataclass(slots=True)
class _Side:
    side: int       # +1 right, -1 left of the line
    x: float        # where the object was last seen clearly on that side
    y: float
    seen: int       # decoder seq of its last result


class CameraAnalytics:
    """One camera's zones and lines; ``apply`` takes its results in order."""

    def __init__(self, zones: Sequence[ZoneConfig], lines: Sequence[LineConfig], *, max_lost_frames: int = 30):
        self.zones, self.lines = tuple(zones), tuple(lines)
        self.max_lost_frames = max_lost_frames
        self._size: tuple[int, int] | None = None
        self._zone_px: list[np.ndarray] = []
        self._line_px: list[tuple[tuple[float, float], tuple[float, float]]] = []
        self._shapes: dict[str, dict[str, tuple[tuple[float, float], ...]]] = {}
        self._sides: list[dict[int, _Side]] = [{} for _ in self.lines]
        self._entered: list[dict[int, list[float]]] = [{} for _ in self.zones]  # track -> [since, seen seq, told]
        self._last_seq: int | None = None
        # zone -> [crowded now, stream time the count first disagreed with that state (None: it agrees)]
        self._crowd: dict[str, list] = {z.name: [False, None] for z in self.zones if z.max_objects is not None}
        self.totals: dict[str, list[int]] = {ln.name: [0, 0] for ln in self.lines}
        self.zone_counts: dict[str, int] = {}

    def _scale(self, size: tuple[int, int]) -> None:
        if size == self._size:
            return
        wh = np.array(size, np.float64)
        if self._size is not None:  # last positions were in the old size's pixels
            self._sides = [{} for _ in self.lines]
        self._size = size
        self._zone_px = [np.array(z.polygon, np.float64) * wh for z in self.zones]
        self._line_px = [(_as_tuples(np.array(ln.points) * wh)) for ln in self.lines]  # type: ignore[misc]
        self._shapes = {"zones": {z.name: _as_tuples(p) for z, p in zip(self.zones, self._zone_px, strict=True)},
                        "lines": {ln.name: p for ln, p in zip(self.lines, self._line_px, strict=True)}}

    def apply(self, result: FrameResult, track_ids: Sequence[int | None] | None = None,
              born: Mapping[int, Sequence[float]] | None = None) -> FrameResult:
        """``result`` with each detection's zones and the frame's ``analytics`` filled in; with
        ``track_ids`` (one per detection, from the tracker), those are set too, in the same copy.
        ``born``: tracks confirmed on this frame -> the box that started each (``CameraTrackers.born``)."""
        self._scale(tuple(int(v) for v in result.frame_size))  # type: ignore[arg-type]
        if self._last_seq is not None and result.seq <= self._last_seq:
            self._sides = [{} for _ in self.lines]  # the stream started again: its tracks are new
            self._entered = [{} for _ in self.zones]
        self._last_seq = result.seq
        dets = result.detections
        tids = [d.track_id for d in dets] if track_ids is None else list(track_ids)
        boxes = np.array([d.box for d in dets], np.float64).reshape(-1, 4)
        zone_counts = None
        zones: list[tuple[str, ...] | None] = [d.zones for d in dets]
        dwell: dict[int, dict[str, float]] = {}
        overstays: list[Overstay] | None = [] if any(z.max_dwell_s is not None for z in self.zones) else None
        crowding: tuple[Crowding, ...] | None = None
        if self.zones:
            members = np.zeros((len(dets), len(self.zones)), bool)
            for j, (zone, poly) in enumerate(zip(self.zones, self._zone_px, strict=True)):
                members[:, j] = inside(anchor_points(boxes, zone.anchor), poly)
            zone_counts = {z.name: int(members[:, j].sum()) for j, z in enumerate(self.zones)}
            self.zone_counts = zone_counts
            dwell = self._dwell(result, tids, members, overstays)
            names = [z.name for z in self.zones]
            zones = [tuple(n for n, m in zip(names, row, strict=True) if m) for row in members.tolist()]
            if self._crowd:
                crowding = self._crowding(result, zone_counts)
        crossings = None
        if self.lines:
            crossings = tuple(c for j in range(len(self.lines))
                              for c in self._cross(j, result.seq, boxes, dets, tids, born or {}))
        analytics = FrameAnalytics(zone_counts=zone_counts, crossings=crossings,
                                   overstays=None if overstays is None else tuple(overstays),
                                   crowding=crowding,
                                   line_totals={k: (v[0], v[1]) for k, v in self.totals.items()},
                                   shapes=self._shapes)
        # one positional copy per detection: dataclasses.replace was the largest cost of this stage
        out = tuple(Detection(d.class_id, d.label, d.score, d.box, d.mask, tid, z,
                              dwell.get(tid) if tid is not None else None)
                    for d, tid, z in zip(dets, tids, zones, strict=True))
        return dataclasses.replace(result, detections=out, analytics=analytics)

    @property
    def crowded(self) -> dict[str, bool]:
        """Whether each zone with ``max_objects`` is crowded now."""
        return {zone: state[0] for zone, state in self._crowd.items()}

    def _crowding(self, result: FrameResult, counts: Mapping[str, int]) -> tuple[Crowding, ...]:
        """Zones whose crowding starts or ends on this frame (see ``CROWD_HOLD_S``)."""
        now = result.pts if result.pts is not None else result.capture_ts
        out = []
        for zone in self.zones:
            state = self._crowd.get(zone.name)
            if state is None:
                continue
            over = counts[zone.name] > cast(int, zone.max_objects)
            if over == state[0]:
                state[1] = None
                continue
            if state[1] is None or now < state[1]:  # a clock that went back starts the wait again
                state[1] = now
            if now - state[1] >= CROWD_HOLD_S:
                state[0], state[1] = over, None
                out.append(Crowding(zone=zone.name, state="start" if over else "end", objects=counts[zone.name]))
        return tuple(out)

    def _dwell(self, result: FrameResult, tracks: list[int | None], members: np.ndarray,
               overstays: list[Overstay] | None) -> dict[int, dict[str, float]]:
        """Seconds each tracked detection has been in each zone it is in, by track id; objects whose dwell
        passed their zone's ``max_dwell_s`` on this frame are added to ``overstays``."""
        now = result.pts if result.pts is not None else result.capture_ts
        seq = result.seq
        out: dict[int, dict[str, float]] = {}
        for j, zone in enumerate(self.zones):
            entered = self._entered[j]
            for gone in [t for t, (_, seen, _) in entered.items() if seq - seen > self.max_lost_frames + 1]:
                del entered[gone]
            for i, (tid, is_in) in enumerate(zip(tracks, members[:, j], strict=True)):
                if tid is None:
                    continue
                if not is_in:
                    entered.pop(tid, None)  # seen outside: left
                    continue
                since = entered.setdefault(tid, [now, seq, 0])
                since[0], since[1] = min(since[0], now), seq  # a clock that went back restarts it
                stay = round(now - since[0], 3)
                out.setdefault(tid, {})[zone.name] = stay
                if zone.max_dwell_s is not None and stay >= zone.max_dwell_s and not since[2]:
                    since[2] = 1  # once per visit: leaving (seen outside, or lost) starts a new one
                    det = result.detections[i]
                    assert overstays is not None
                    overstays.append(Overstay(zone=zone.name, track_id=tid, class_id=det.class_id,
                                              label=det.label, dwell_s=stay))
        return out

    def _cross(self, j: int, seq: int, boxes: np.ndarray, dets: Sequence[Detection],
               tids: list[int | None], born: Mapping[int, Sequence[float]]) -> list[Crossing]:
        line, (a, b) = self.lines[j], self._line_px[j]
        sides = self._sides[j]
        # a track unseen for longer than the tracker keeps it is over (ids are never reused)
        for tid in [t for t, s in sides.items() if seq - s.seen > self.max_lost_frames + 1]:
            del sides[tid]
        tracked = [i for i, t in enumerate(tids) if t is not None]
        out: list[Crossing] = []
        for tid, first in born.items():  # where a new track's object was before it had an id
            if tid not in sides:
                box = np.array([first], np.float64)
                side = _side_of(line.anchor, box, a, b)[0]
                if side:
                    p = anchor_points(box, line.anchor)[0]
                    sides[tid] = _Side(side, float(p[0]), float(p[1]), seq)
        if tracked:
            pts = anchor_points(boxes[tracked], line.anchor)
            now = _side_of(line.anchor, boxes[tracked], a, b)
            # plain Python floats from here: per-object numpy scalars cost more than the arithmetic
            for i, side, (x, y) in zip(tracked, now, pts.tolist(), strict=True):
                det, tid = dets[i], cast(int, tids[i])  # tracked holds only indices with a track id
                state = sides.get(tid)
                if state is not None:
                    state.seen = seq
                if side == 0:
                    continue
                if state is None:
                    sides[tid] = _Side(side, x, y, seq)
                    continue
                if side != state.side and _between(a, b, (state.x, state.y), (x, y)):
                    direction: Literal["in", "out"] = "in" if side < 0 else "out"
                    self.totals[line.name][0 if side < 0 else 1] += 1
                    out.append(Crossing(line=line.name, track_id=tid, class_id=det.class_id,
                                        label=det.label, direction=direction))
                state.side, state.x, state.y = side, x, y
        return out


def _side_of(anchor: str, boxes: np.ndarray, a: Point, b: Point) -> list[int]:
    """Each box's side of line ab: +1 right, -1 left, 0 within the dead band."""
    dist = signed_distance(anchor_points(boxes, anchor), np.array(a), np.array(b))
    wh = boxes[:, 2:] - boxes[:, :2]
    band = DEAD_BAND * np.sqrt(np.clip(wh[:, 0] * wh[:, 1], 0, None))
    return np.where(dist > band, 1, np.where(dist < -band, -1, 0)).tolist()


def _between(a: Point, b: Point, q: Point, p: Point) -> bool:
    """Whether the path q -> p (its ends on opposite sides of line ab) meets the line between a and b."""
    dx, dy = b[0] - a[0], b[1] - a[1]
    dq = dx * (q[1] - a[1]) - dy * (q[0] - a[0])
    dp = dx * (p[1] - a[1]) - dy * (p[0] - a[0])
    t = dq / (dq - dp)
    x, y = q[0] + (p[0] - q[0]) * t, q[1] + (p[1] - q[1]) * t
    u = ((x - a[0]) * dx + (y - a[1]) * dy) / (dx * dx + dy * dy)
    return 0.0 <= u <= 1.0


def _as_tuples(points: np.ndarray) -> tuple[tuple[float, float], ...]:
    return tuple((float(x), float(y)) for x, y in points)


class Analytics:
    """A ``CameraAnalytics`` for each camera with zones or lines; other cameras pass through."""

    def __init__(self, cameras: Sequence[CameraConfig], *, max_lost_frames: int = 30) -> None:
        self.max_lost_frames = max_lost_frames
        self._by_camera: dict[str, CameraAnalytics] = {}
        self._crossings: dict[tuple[str, str, str, str], int] = defaultdict(int)
        self._overstays: dict[tuple[str, str, str], int] = defaultdict(int)
        self.update(cameras)

    def update(self, cameras: Sequence[CameraConfig]) -> None:
        """Take a reloaded config's cameras: unchanged zones and lines keep their counts and tracks."""
        old, self._by_camera = self._by_camera, {}
        for c in cameras:
            if not (c.zones or c.lines):
                continue
            kept = old.get(c.id)
            same = kept is not None and (kept.zones, kept.lines) == (tuple(c.zones), tuple(c.lines))
            self._by_camera[c.id] = kept if same else CameraAnalytics(c.zones, c.lines,  # type: ignore[assignment]
                                                                      max_lost_frames=self.max_lost_frames)

    def covers(self, camera_id: str) -> bool:
        return camera_id in self._by_camera

    def apply(self, result: FrameResult, track_ids: Sequence[int | None] | None = None,
              born: Mapping[int, Sequence[float]] | None = None) -> FrameResult:
        """``result`` through its camera's zones and lines (unchanged for a camera without any)."""
        cam = self._by_camera.get(result.camera_id)
        if cam is None:
            return result
        result = cam.apply(result, track_ids, born)
        for c in result.analytics.crossings or ():  # type: ignore[union-attr]
            self._crossings[result.camera_id, c.line, c.direction, c.label] += 1
        for o in result.analytics.overstays or ():  # type: ignore[union-attr]
            self._overstays[result.camera_id, o.zone, o.label] += 1
        return result

    def take_crossings(self) -> dict[tuple[str, str, str, str], int]:
        """Crossings per (camera, line, direction, label) since the previous call."""
        out = dict(self._crossings)
        self._crossings.clear()
        return out

    def take_overstays(self) -> dict[tuple[str, str, str], int]:
        """Overstays per (camera, zone, label) since the previous call."""
        out = dict(self._overstays)
        self._overstays.clear()
        return out

    def zone_crowded(self) -> dict[tuple[str, str], bool]:
        """Whether each (camera, zone) with ``max_objects`` is crowded now."""
        return {(cam, zone): crowded for cam, a in self._by_camera.items() for zone, crowded in a.crowded.items()}

    def zone_objects(self) -> dict[tuple[str, str], int]:
        """Objects per (camera, zone) on each camera's latest frame."""
        return {(cam, zone): n for cam, a in self._by_camera.items() for zone, n in a.zone_counts.items()}

