"""pipeline.tracking: ids that follow objects through motion, crossings, occlusion, dropped frames and
low-score frames; resets on a camera's gaps; detections otherwise untouched."""

from __future__ import annotations

import time

import numpy as np
import pytest

from pipeline.config import TrackingConfig
from pipeline.messages import CameraState, CameraStatus, Detection, FrameResult
from pipeline.tracking import CameraTrackers, Tracker, box_iou

CFG = TrackingConfig(enabled=True)


def _box(cx: float, cy: float, w: float = 40, h: float = 80) -> list[float]:
    return [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]


def _step(tr: Tracker, seq: int, objs: list[tuple[list[float], float, int]]) -> list[int | None]:
    boxes = np.array([b for b, _, _ in objs], np.float64).reshape(-1, 4)
    scores = np.array([s for _, s, _ in objs], np.float64)
    classes = np.array([c for _, _, c in objs], np.int64)
    return tr.update(seq, boxes, scores, classes)


def test_box_iou() -> None:
    a = np.array([[0, 0, 10, 10], [0, 0, 0, 0]], np.float64)
    b = np.array([[5, 0, 15, 10], [20, 20, 30, 30]], np.float64)
    np.testing.assert_allclose(box_iou(a, b), [[50 / 150, 0], [0, 0]])
    assert box_iou(a[:0], b).shape == (0, 2)


def test_moving_objects_keep_their_ids_from_the_second_frame() -> None:
    tr = Tracker(CFG)
    seen = []
    for f in range(20):
        seen.append(_step(tr, f, [(_box(100 + 5 * f, 100), 0.9, 0), (_box(400 - 4 * f, 300), 0.8, 1)]))
    assert seen[0] == [None, None]  # min_hits 2: an id from the second matched frame
    assert all(ids == seen[1] for ids in seen[1:]) and seen[1][0] != seen[1][1]
    assert None not in seen[1] and tr.active == 2


def test_min_hits_one_gives_ids_at_once() -> None:
    tr = Tracker(TrackingConfig(enabled=True, min_hits=1))
    assert _step(tr, 0, [(_box(100, 100), 0.9, 0)]) == [1]


@pytest.mark.parametrize("same_class", [True, False])
def test_crossing_objects_do_not_swap(same_class: bool) -> None:
    """Two objects of equal size pass each other head on; the Kalman prediction carries each through."""
    tr = Tracker(CFG)
    first = None
    for f in range(30):
        a = (_box(100 + 10 * f, 200), 0.9, 0)
        b = (_box(390 - 10 * f, 210), 0.9, 0 if same_class else 1)
        ids = _step(tr, f, [a, b])
        if f == 1:
            first = ids
        if f >= 1:
            assert ids == first, f
    assert first is not None and None not in first


def test_hidden_object_keeps_its_id_within_max_lost_frames() -> None:
    cfg = TrackingConfig(enabled=True, max_lost_frames=10)
    tr = Tracker(cfg)
    for f in range(5):
        ids = _step(tr, f, [(_box(100 + 6 * f, 100), 0.9, 0)])
    tid = ids[0]
    for f in range(5, 15):  # hidden for 10 frames, still moving
        assert _step(tr, f, []) == []
    assert _step(tr, 15, [(_box(100 + 6 * 15, 100), 0.9, 0)]) == [tid]
    for f in range(16, 27):  # hidden for 11 frames: the track is gone
        _step(tr, f, [])
    assert _step(tr, 27, [(_box(100 + 6 * 27, 100), 0.9, 0)]) == [None]
    assert _step(tr, 28, [(_box(100 + 6 * 28, 100), 0.9, 0)]) == [tid + 1]


def test_dropped_frames_are_predicted_across() -> None:
    """A fast object (half its width a frame) seen only every 4th decoder frame after the 6th: the step
    is the gap in seq, so the prediction lands on it. Fed as consecutive frames it is lost."""
    seqs = list(range(6)) + list(range(8, 60, 4))

    def run(step_of: list[int]) -> list[int | None]:
        tr = Tracker(CFG)
        return [_step(tr, t, [(_box(100 + 20 * s, 200), 0.9, 0)])[0] for t, s in zip(step_of, seqs, strict=True)]

    ids = run(seqs)
    assert ids[0] is None and ids[1:] == [ids[1]] * (len(ids) - 1) and ids[1] is not None
    assert run(list(range(len(seqs))))[6:] == [None] * (len(seqs) - 6)  # 80 px jumps at 20 px/frame


def test_low_score_frames_continue_a_track_but_never_start_one() -> None:
    tr = Tracker(CFG)
    for f in range(4):
        ids = _step(tr, f, [(_box(100 + 3 * f, 100), 0.9, 0)])
    tid = ids[0]
    for f in range(4, 10):  # partly hidden: score below high_score
        assert _step(tr, f, [(_box(100 + 3 * f, 100), 0.3, 0)]) == [tid]
    assert _step(tr, 10, [(_box(100 + 30, 100), 0.9, 0)]) == [tid]
    lone = Tracker(CFG)
    for f in range(5):
        assert _step(lone, f, [(_box(300, 300), 0.4, 0)]) == [None]
    # between high_score and new_track_score: continues tracks, starts none
    mid = Tracker(CFG)
    for f in range(5):
        assert _step(mid, f, [(_box(300, 300), 0.55, 0)]) == [None]


def _still_object(tr: Tracker) -> int:
    """Frames 0-2 of a still class-0 object; its track id."""
    for f in range(3):
        ids = _step(tr, f, [(_box(100, 100), 0.9, 0)])
    assert ids[0] is not None
    return ids[0]


def test_another_class_never_continues_a_track() -> None:
    tr = Tracker(CFG)
    tid = _still_object(tr)
    assert _step(tr, 3, [(_box(100, 100), 0.9, 1)]) == [None]
    assert _step(tr, 4, [(_box(100, 100), 0.9, 1)]) == [tid + 1]


def test_seq_going_back_resets_and_ids_are_never_reused() -> None:
    tr = Tracker(CFG)
    tid = _still_object(tr)
    assert _step(tr, 0, [(_box(100, 100), 0.9, 0)]) == [None]
    assert _step(tr, 1, [(_box(100, 100), 0.9, 0)]) == [tid + 1]


def _result(cam: str, seq: int, boxes: list[list[float]], score: float = 0.9, *,
            captured: float | None = None) -> FrameResult:
    dets = tuple(Detection(class_id=0, label="vehicle", score=score, box=tuple(b),  # type: ignore[arg-type]
                           mask={"size": [480, 640], "counts": "x"}) for b in boxes)
    t = time.time() if captured is None else captured
    return FrameResult(camera_id=cam, seq=seq, pts=seq / 10, capture_ts=t, infer_ts=t,
                       frame_size=(640, 480), model="m", detections=dets)


def test_camera_trackers_are_per_camera_and_pass_detections_through() -> None:
    trackers = CameraTrackers(CFG)
    for f in range(3):
        a = trackers.apply(_result("a", f, [_box(100 + f, 100)]))
        b = trackers.apply(_result("b", f, [_box(100 + f, 100), _box(300, 300)]))
    assert [d.track_id for d in a.detections] == [1]
    assert [d.track_id for d in b.detections] == [1, 2]  # ids count per camera
    src = _result("b", 3, [_box(103, 100), _box(300, 300)])
    out = trackers.apply(src)
    for d_in, d_out in zip(src.detections, out.detections, strict=True):
        assert (d_out.box, d_out.score, d_out.mask, d_out.class_id) == (d_in.box, d_in.score, d_in.mask, d_in.class_id)
    assert (out.seq, out.camera_id, out.capture_ts) == (src.seq, src.camera_id, src.capture_ts)
    assert trackers.active() == {"a": 1, "b": 2}


@pytest.mark.parametrize("state", [CameraState.STALLED, CameraState.RECONNECTING])
def test_tracks_end_at_the_first_frame_captured_after_a_camera_stops_being_live(state: CameraState) -> None:
    trackers = CameraTrackers(CFG)
    for f in range(3):
        trackers.apply(_result("a", f, [_box(100, 100)], captured=100.0 + f))
        trackers.apply(_result("b", f, [_box(100, 100)], captured=100.0 + f))
    trackers.on_status(CameraStatus("a", CameraState.LIVE, 102.5))
    trackers.on_status(CameraStatus("a", state, 102.5, "camera gone"))
    # captured before the status change, still in flight when it arrived: the old track goes on
    assert trackers.apply(_result("a", 3, [_box(100, 100)], captured=102.4)).detections[0].track_id == 1
    # the first frame after the gap starts afresh; the other camera is untouched
    assert trackers.apply(_result("a", 4, [_box(100, 100)], captured=110.0)).detections[0].track_id is None
    assert trackers.apply(_result("a", 5, [_box(100, 100)], captured=110.1)).detections[0].track_id == 2
    assert trackers.apply(_result("b", 3, [_box(100, 100)], captured=110.0)).detections[0].track_id == 1


def test_empty_frames_and_many_objects() -> None:
    tr = Tracker(CFG)
    assert _step(tr, 0, []) == []
    grid = [(_box(30 + 50 * i, 50 + 100 * j, 30, 60), 0.9, (i + j) % 3) for i in range(12) for j in range(4)]
    _step(tr, 1, grid)
    ids = _step(tr, 2, grid)
    assert sorted(ids) == list(range(1, len(grid) + 1))  # type: ignore[type-var]


def test_detection_refuses_a_bad_track_id() -> None:
    with pytest.raises(ValueError, match="Detection.track_id"):
        Detection(class_id=0, label="x", score=0.5, box=(0, 0, 1, 1), track_id=0)


@pytest.mark.parametrize("steps", [1, 2, 7, 40])
def test_prediction_over_a_gap_equals_one_frame_steps(steps: int) -> None:
    """The closed-form k-frame prediction is k one-frame predictions (exact while heights are steady)."""
    from pipeline.tracking import _Kalman

    rng = np.random.default_rng(steps)
    xyah = np.concatenate([rng.uniform(50, 500, (4, 2)), rng.uniform(0.3, 3, (4, 1)), rng.uniform(20, 200, (4, 1))], 1)
    mean, cov = _Kalman.initiate(xyah)
    mean[:, 4:6] = rng.normal(0, 5, (4, 2))
    m, c = mean, cov
    for _ in range(steps):
        m, c = _Kalman.predict(m, c, 1)
    mk, ck = _Kalman.predict(mean, cov, steps)
    np.testing.assert_allclose(mk, m, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(ck, c, rtol=1e-10, atol=1e-9)
    far, _ = _Kalman.predict(mean, cov, 100_000)
    np.testing.assert_allclose(far[:, :2], mean[:, :2] + 100_000 * mean[:, 4:6])


def test_born_gives_the_box_that_started_each_new_track() -> None:
    trackers = CameraTrackers(CFG)
    boxes = [_box(100, 100), _box(110, 100), _box(120, 100)]
    born = []
    for seq, box in enumerate(boxes):
        trackers.track(FrameResult(camera_id="cam", seq=seq, pts=None, capture_ts=time.time(), infer_ts=time.time(),
                                   frame_size=(640, 480), model="m",
                                   detections=(Detection(class_id=0, label="a", score=0.9, box=tuple(box)),)))
        born.append(trackers.born("cam"))
    assert born == [{}, {1: tuple(boxes[0])}, {}]  # confirmed on its second frame; started on its first
    assert trackers.born("other") == {}
