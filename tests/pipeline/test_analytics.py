"""pipeline.analytics: zone membership and counts, line crossings (direction, segment ends, jitter on the
line, sampled frames, restarts), shapes scaled to each frame size, and the run config that declares them."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest
import yaml

from engines.errors import ConfigErrors
from pipeline.analytics import Analytics, CameraAnalytics, anchor_points, inside, signed_distance
from pipeline.config import CameraConfig, LineConfig, ZoneConfig, parse_config
from pipeline.messages import Detection, FrameResult

W, H = 400, 200


def _det(cx: float, bottom: float, *, track: int | None = 1, w: float = 20, h: float = 40, cls: int = 0) -> Detection:
    return Detection(class_id=cls, label=("car", "person")[cls], score=0.9, box=(cx - w / 2, bottom - h, cx + w / 2, bottom),
                     track_id=track)


def _frame(seq: int, *dets: Detection, size: tuple[int, int] = (W, H), pts: float | None = None) -> FrameResult:
    return FrameResult(camera_id="cam", seq=seq, pts=pts, capture_ts=time.time(), infer_ts=time.time(),
                       frame_size=size, model="m", detections=dets)


# horizontal line across the middle of the picture, left to right: its left side is the top
MIDDLE = LineConfig(name="mid", points=((0.0, 0.5), (1.0, 0.5)))


def _run(analytics: CameraAnalytics, path: list[tuple[int, float, float]]) -> list[tuple[str, int]]:
    """Feed one object per frame as (seq, x, bottom y); the crossings as (direction, track id)."""
    out = []
    for seq, x, y in path:
        res = analytics.apply(_frame(seq, _det(x, y)))
        out += [(c.direction, c.track_id) for c in res.analytics.crossings]
    return out


def test_geometry() -> None:
    square = np.array([[0, 0], [10, 0], [10, 10], [0, 10]], np.float64)
    concave = np.array([[0, 0], [10, 0], [10, 10], [5, 2], [0, 10]], np.float64)  # a notch from the top
    pts = np.array([[5, 5], [15, 5], [0.5, 8], [5, 1], [-1, 5]], np.float64)
    assert inside(pts, square).tolist() == [True, False, True, True, False]
    assert inside(pts, concave).tolist() == [False, False, True, True, False]
    boxes = np.array([[0, 0, 10, 20]], np.float64)
    assert anchor_points(boxes, "bottom").tolist() == [[5, 20]] and anchor_points(boxes, "center").tolist() == [[5, 10]]
    a, b = np.array([0.0, 0.0]), np.array([10.0, 0.0])
    # looking from a to b (rightwards on the picture), the right is down the picture (y grows)
    assert signed_distance(np.array([[3.0, 2.0], [3.0, -4.0]]), a, b).tolist() == [2.0, -4.0]


def test_zones_list_members_and_count_every_frame() -> None:
    left = ZoneConfig(name="left", polygon=((0, 0), (0.5, 0), (0.5, 1), (0, 1)))
    top = ZoneConfig(name="top", polygon=((0, 0), (1, 0), (1, 0.5), (0, 0.5)), anchor="center")
    an = CameraAnalytics([left, top], [])
    res = an.apply(_frame(0, _det(50, 90, track=None), _det(300, 90), _det(300, 190)))
    # bottoms at y=90 (top half); centres at y=70 and 170
    assert [d.zones for d in res.detections] == [("left", "top"), ("top",), ()]
    assert res.analytics.zone_counts == {"left": 1, "top": 2} and res.analytics.crossings is None
    assert an.apply(_frame(1)).analytics.zone_counts == {"left": 0, "top": 0}
    assert res.detections[0].track_id is None and res.detections[0].box == _det(50, 90).box  # nothing else changes


def test_dwell_counts_stream_time_inside_through_hidden_frames() -> None:
    left = ZoneConfig(name="left", polygon=((0, 0), (0.5, 0), (0.5, 1), (0, 1)))
    an = CameraAnalytics([left], [], max_lost_frames=5)
    # (seq, x of track 1 or None when hidden); pts = seq / 10 s; x < 200 is inside
    path = [(0, 300), (1, 150), (2, 120), (3, None), (4, None), (5, 100), (6, 300), (7, 150)]
    dwell = []
    for seq, x in path:
        dets = (_det(x, 100), _det(50, 100, track=None)) if x is not None else (_det(50, 100, track=None),)
        res = an.apply(_frame(seq, *dets, pts=seq / 10))
        dwell.append(res.detections[0].dwell_s if x is not None else "hidden")
        assert res.detections[-1].dwell_s is None  # untracked: in the zone, but no dwell
    assert dwell == [None, {"left": 0.0}, {"left": 0.1}, "hidden", "hidden", {"left": 0.4}, None, {"left": 0.0}]
    # hidden longer than the tracker keeps a track, then back inside: counted afresh
    res = an.apply(_frame(20, _det(150, 100), pts=2.0))
    assert res.detections[0].dwell_s == {"left": 0.0}


def test_an_overstay_is_told_once_per_visit() -> None:
    left = ZoneConfig(name="left", polygon=((0, 0), (0.5, 0), (0.5, 1), (0, 1)), max_dwell_s=0.3)
    an = Analytics([CameraConfig(id="cam", url="cam.mp4", zones=(left,))], max_lost_frames=5)
    # track 1: inside from seq 1 (pts = seq / 10 s), out at seq 7, back at seq 8; track 2 never stays 0.3 s
    told = []
    for seq in range(14):
        x1 = 300 if seq in (0, 7) else 150
        dets = (_det(x1, 100, track=1), _det(150 if seq in (2, 3) else 300, 100, track=2))
        res = an.apply(_frame(seq, *dets, pts=seq / 10))
        assert res.analytics.overstays is not None  # a zone with max_dwell_s: always a list, maybe empty
        told += [(seq, o.zone, o.track_id, o.dwell_s) for o in res.analytics.overstays]
    assert told == [(4, "left", 1, 0.3), (11, "left", 1, 0.3)]
    assert an.take_overstays() == {("cam", "left", "car"): 2} and an.take_overstays() == {}
    plain = CameraAnalytics([ZoneConfig(name="z", polygon=left.polygon)], [])
    assert plain.apply(_frame(0, _det(150, 100), pts=0.0)).analytics.overstays is None  # no max_dwell_s


def test_crowding_starts_and_ends_once_each_change_has_held_a_second() -> None:
    queue = ZoneConfig(name="queue", polygon=((0, 0), (0.5, 0), (0.5, 1), (0, 1)), max_objects=2)
    an = Analytics([CameraConfig(id="cam", url="cam.mp4", zones=(queue,))])
    # objects inside the left half per frame, 0.25 s apart: 3 for one frame (nothing), then for a second
    # (crowded); 2, then 3 again, each for one frame (still crowded), then 1 for a second (no longer)
    inside = [1, 3, 1, 3, 3, 3, 3, 3, 2, 3, 1, 1, 1, 1, 1, 1]
    changes, crowded = [], []
    for seq, n in enumerate(inside):
        dets = tuple(_det(40 + 30 * k, 100, track=None) for k in range(n)) + (_det(300, 100, track=None),)
        res = an.apply(_frame(seq, *dets, pts=seq / 4))
        changes += [(seq, c.state, c.objects) for c in res.analytics.crowding]
        crowded.append(an.zone_crowded()[("cam", "queue")])
    assert changes == [(7, "start", 3), (14, "end", 1)]
    assert crowded == [False] * 7 + [True] * 7 + [False] * 2
    plain = CameraAnalytics([ZoneConfig(name="z", polygon=queue.polygon)], [])
    assert plain.apply(_frame(0, _det(150, 100), pts=0.0)).analytics.crowding is None  # no max_objects


def test_line_counts_each_direction_once() -> None:
    an = CameraAnalytics([], [MIDDLE])
    down = [(i, 200.0, 60.0 + 10 * i) for i in range(10)]        # y 60 -> 150: crosses y=100 going down
    assert _run(an, down) == [("out", 1)]                          # ended on the right of left->right: below
    up = [(10 + i, 200.0, 150.0 - 10 * i) for i in range(10)]
    assert _run(an, up) == [("in", 1)]
    assert an.totals == {"mid": [1, 1]}
    assert an.apply(_frame(30)).analytics.line_totals == {"mid": (1, 1)}


def test_line_ignores_jitter_on_it_and_objects_that_start_past_it() -> None:
    an = CameraAnalytics([], [MIDDLE])
    # comes down to the line and waits there, its bottom edge jittering by +-2.5 px: inside the dead band
    # (0.1 * sqrt(20 * 40) = 2.8 px), so never clearly below it
    path = [(i, 200.0, 60.0 + 10 * i) for i in range(4)]
    path += [(4 + i, 200.0, 100.0 + (2.5 if i % 2 else -2.5)) for i in range(20)]
    assert _run(an, path) == []
    an2 = CameraAnalytics([], [MIDDLE])
    assert _run(an2, [(i, 200.0, 150.0 + i) for i in range(5)]) == []  # appeared below, stays below


def test_line_counts_only_between_its_end_points() -> None:
    half = LineConfig(name="half", points=((0.0, 0.5), (0.5, 0.5)))  # x 0..200
    an = CameraAnalytics([], [half])
    assert _run(an, [(i, 300.0, 60.0 + 10 * i) for i in range(10)]) == []  # passes at x=300
    an2 = CameraAnalytics([], [half])
    # a diagonal path whose crossing point (x=150) is inside, though it starts and ends outside x<=200
    assert _run(an2, [(0, 100.0, 50.0), (1, 250.0, 200.0)]) == [("out", 1)]


def test_sampled_frames_count_once_from_where_the_side_was_clear() -> None:
    an = CameraAnalytics([], [MIDDLE])
    # seen far above, then on the line (no side), then far below: one crossing at the last frame
    assert _run(an, [(0, 200.0, 40.0), (9, 200.0, 100.5), (20, 200.0, 180.0)]) == [("out", 1)]


def test_a_track_confirmed_past_the_line_counts_from_where_it_started() -> None:
    """An object first seen above the line gets its track id only below it (min_hits 2): the box that
    started the track says where it came from, so the crossing counts."""
    an = CameraAnalytics([], [MIDDLE])
    res = an.apply(_frame(1, _det(200, 150, track=7)), born={7: _det(200, 60).box})
    assert [(c.direction, c.track_id) for c in res.analytics.crossings] == [("out", 7)]
    fresh = CameraAnalytics([], [MIDDLE])
    assert fresh.apply(_frame(1, _det(200, 150, track=7))).analytics.crossings == ()  # without it: none


def test_untracked_detections_never_cross_and_tracks_are_kept_apart() -> None:
    an = CameraAnalytics([], [MIDDLE])
    for seq, y in enumerate([60.0, 150.0]):
        res = an.apply(_frame(seq, _det(100, y, track=None), _det(200, y, track=5), _det(300, 210 - y, track=6)))
    assert sorted((c.direction, c.track_id) for c in res.analytics.crossings) == [("in", 6), ("out", 5)]


def test_forgets_lost_tracks_and_restarted_streams() -> None:
    an = CameraAnalytics([], [MIDDLE], max_lost_frames=3)
    an.apply(_frame(0, _det(200, 60, track=1)))
    an.apply(_frame(10, _det(200, 60, track=2)))  # track 1 unseen for 10 frames: forgotten
    assert _run(an, [(11, 200.0, 150.0)]) == []   # so track 1 back below counts nothing
    an2 = CameraAnalytics([], [MIDDLE])
    an2.apply(_frame(50, _det(200, 60, track=1)))
    assert _run(an2, [(0, 200.0, 150.0)]) == []   # seq went back: the stream restarted


def test_shapes_follow_the_frame_size() -> None:
    zone = ZoneConfig(name="z", polygon=((0.25, 0.25), (0.75, 0.25), (0.75, 0.75), (0.25, 0.75)))
    an = CameraAnalytics([zone], [MIDDLE])
    a = an.apply(_frame(0, _det(150, 90), size=(400, 200)))
    assert a.analytics.shapes["zones"]["z"] == ((100, 50), (300, 50), (300, 150), (100, 150))
    assert a.analytics.shapes["lines"]["mid"] == ((0, 100), (400, 100))
    b = an.apply(_frame(1, _det(150, 90), size=(800, 400)))   # the same pixel is now above-left of it
    assert a.analytics.zone_counts == {"z": 1} and b.analytics.zone_counts == {"z": 0}
    assert b.analytics.shapes["lines"]["mid"] == ((0, 200), (800, 200))
    # positions in two frame sizes' pixels are not a path: no crossing from below y=100 of 200 to
    # above y=200 of 400 (the camera changed resolution)
    an2 = CameraAnalytics([], [MIDDLE])
    an2.apply(_frame(0, _det(200, 150), size=(400, 200)))
    c = an2.apply(_frame(1, _det(200, 190), size=(800, 400)))
    assert c.analytics.crossings == ()


def test_analytics_by_camera_counts_crossings_and_zone_gauges() -> None:
    cfg = parse_config(yaml.safe_load("""
model: {path: m.pt}
tracking: {enabled: true}
cameras:
  - {id: cam, url: a.mp4, lines: [{name: mid, points: [[0, 0.5], [1, 0.5]]}],
     zones: [{name: all, polygon: [[0, 0], [1, 0], [1, 1], [0, 1]]}]}
  - {id: other, url: b.mp4}
"""), check_files=False)
    an = Analytics(cfg.cameras)
    for seq, y in enumerate([60.0, 150.0]):
        an.apply(_frame(seq, _det(200, y, track=3, cls=1)))
    plain = _frame(0, _det(1, 1))
    other = an.apply(dataclasses.replace(plain, camera_id="other"))
    assert other.analytics is None and other.detections[0].zones is None
    assert an.take_crossings() == {("cam", "mid", "out", "person"): 1} and an.take_crossings() == {}
    assert an.zone_objects() == {("cam", "all"): 1}


@pytest.mark.parametrize("body, error", [
    ("zones: [{name: z, polygon: [[0, 0], [640, 0], [640, 360]]}]",
     r"cameras\[0\].zones\[0\].polygon: point 1 is \[640, 0\]: expected fractions .* \(not pixels\)"),
    ("zones: [{name: z, polygon: [[0, 0], [0.5, 0.5], [1, 1]]}]", r"zones\[0\].polygon: the corners enclose no area"),
    ("zones: [{name: z, polygon: [[0, 0], [1, 0]]}]", r"zones\[0\].polygon: .*at least 3 items"),
    ("zones: [{name: 'a b', polygon: [[0, 0], [1, 0], [1, 1]]}]", r"zones\[0\].name: 'a b' must be"),
    ("lines: [{name: l, points: [[0, 0.5], [0, 0.5]]}]", r"lines\[0\].points: the two points are the same"),
    ("lines: [{name: l, points: [[0, 0.5]]}]", r"lines\[0\].points\[1\]: too few items"),
    ("lines: [{name: l, points: [[0, 0.5], [1, 0.5]], anchor: top}]", r"lines\[0\].anchor: Input should be"),
    ("lines: [{name: l, points: [[0, 0.5], [1, 0.5]]}, {name: l, points: [[0, 0.4], [1, 0.4]]}]",
     r"cameras\[0\].lines: duplicate name 'l'"),
])
def test_config_errors_name_the_field(body: str, error: str) -> None:
    raw = yaml.safe_load(f"model: {{path: m.pt}}\ntracking: {{enabled: true}}\ncameras:\n  - id: a\n    url: a.mp4\n    {body}\n")
    with pytest.raises(ConfigErrors, match=error):
        parse_config(raw, check_files=False)


def test_lines_need_tracking() -> None:
    raw = yaml.safe_load("model: {path: m.pt}\ncameras:\n  - {id: a, url: a.mp4, "
                         "lines: [{name: l, points: [[0, 0.5], [1, 0.5]]}]}\n")
    with pytest.raises(ConfigErrors, match=r"cameras\[0\].lines: counting lines follow tracked objects"):
        parse_config(raw, check_files=False)
