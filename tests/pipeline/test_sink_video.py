"""Video sink: annotated H.264 MP4 per camera that PyAV decodes back, timed by pts."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from engines.errors import SinkError
from pipeline.events import encode, to_event
from pipeline.messages import CameraState, CameraStatus, Detection, FrameResult
from pipeline.sinks.base import Envelope, policy_for
from pipeline.sinks.config import VideoSinkConfig
from pipeline.sinks.video import VideoSink

W, H = 96, 64
BOX = (20.0, 16.0, 60.0, 48.0)


def _result(camera: str, seq: int, *, size: tuple[int, int] = (W, H), fps: float = 10.0) -> FrameResult:
    w, h = size
    m = np.zeros((h, w), bool)
    m[16:48, 20:60] = True
    det = Detection(class_id=0, label="box", score=0.9, box=BOX, mask=mask_utils.encode(np.asfortranarray(m)))
    return FrameResult(camera_id=camera, seq=seq, pts=seq / fps, capture_ts=1000.0 + seq / fps,
                       infer_ts=1000.0 + seq / fps, frame_size=size, model="m", detections=(det,))


def _env(res: FrameResult, image: np.ndarray | None = None) -> Envelope:
    return Envelope(camera_id=res.camera_id, kind="frame", payload=encode(to_event(res)), item=res, image=image,
                    objects=len(res.detections))


def _decode(path: Path) -> tuple[list[np.ndarray], list[float]]:
    with av.open(str(path)) as c:
        frames = list(c.decode(video=0))
    return [f.to_ndarray(format="bgr24") for f in frames], [float(f.time) for f in frames]


def test_one_mp4_per_camera_decodes_with_pyav(tmp_path: Path) -> None:
    sink = VideoSink.from_config(VideoSinkConfig(type="video", dir=tmp_path, fps=10))
    gray = np.full((H, W, 3), 128, np.uint8)
    for seq in range(12):
        sink.publish(_env(_result("cam/a", seq), gray))
        sink.publish(_env(_result("cam-b", seq)))  # no pixels forwarded: drawn on a dark canvas
    sink.publish(Envelope(camera_id="cam-b", kind="status", payload=b"{}",
                          item=CameraStatus(camera_id="cam-b", state=CameraState.LIVE, ts=1.0)))
    sink.close(timeout=30)
    # named by the wall clock of the first frame (capture_ts 1000 s), not by the stream's pts
    assert sorted(p.name for p in tmp_path.glob("*.mp4")) == ["cam-b-19700101-001640.mp4", "cam_a-19700101-001640.mp4"]
    assert sink.counters.totals_sent == {"cam/a": 12, "cam-b": 12} and not sink.counters.totals_errors
    a = next(tmp_path.glob("cam_a-*.mp4"))
    frames, times = _decode(a)
    assert len(frames) == 12 and frames[0].shape == (H, W, 3)
    assert np.allclose(np.diff(times), 0.1, atol=0.002)  # timing follows pts (10 fps)
    f = frames[5].astype(int)
    inside, outside = f[24:40, 28:52].mean(axis=(0, 1)), f[2:10, 70:90].mean(axis=(0, 1))
    assert np.abs(outside - 128).max() < 8  # the frame itself
    assert np.abs(inside - outside).max() > 30  # the mask is blended in
    b_frames, _ = _decode(next(tmp_path.glob("cam-b-*.mp4")))
    assert len(b_frames) == 12 and b_frames[3][2:10, 70:90].mean() < 40


def test_size_change_starts_a_new_file_and_wide_frames_shrink(tmp_path: Path) -> None:
    sink = VideoSink(name="v", directory=tmp_path, policy=policy_for("video", maxsize=100), fps=10, max_width=64)
    for seq in range(4):
        sink.publish(_env(_result("cam", seq)))
    for seq in range(4, 8):
        sink.publish(_env(_result("cam", seq, size=(128, 64))))
    sink.close(timeout=30)
    assert len(sink.files) == 2
    shapes = [_decode(p)[0][0].shape for p in sink.files]
    assert shapes == [(42, 64, 3), (32, 64, 3)]  # 96x64 -> 64x42 (even), 128x64 -> 64x32


def test_repeated_timestamps_are_dropped_and_counted(tmp_path: Path) -> None:
    sink = VideoSink(name="v", directory=tmp_path, policy=policy_for("video", maxsize=100))
    for seq in (0, 1, 1, 2):
        sink.publish(_env(_result("cam", seq)))
    sink.close(timeout=30)
    assert sink.counters.totals_sent["cam"] == 3 and sink.counters.totals_dropped["cam", "timestamp"] == 1
    assert len(_decode(sink.files[0])[0]) == 3


def test_segments_split_by_stream_time_and_play_back_to_back(tmp_path: Path) -> None:
    sink = VideoSink(name="v", directory=tmp_path, policy=policy_for("video", maxsize=100), segment_s=0.5)
    for seq in range(12):  # 10 fps: files of 0.0-0.4 s, 0.5-0.9 s, 1.0-1.1 s
        sink.publish(_env(_result("cam", seq)))
    sink.close(timeout=30)
    assert [len(_decode(p)[0]) for p in sink.files] == [5, 5, 2]
    assert sink.counters.totals_sent["cam"] == 12


def test_stream_time_going_back_starts_a_new_file_instead_of_dropping(tmp_path: Path) -> None:
    sink = VideoSink(name="v", directory=tmp_path, policy=policy_for("video", maxsize=100))
    for seq in [*range(20), *range(6)]:  # a restarted decoder: pts start again at 0 after 1.9 s
        sink.publish(_env(_result("cam", seq)))
    sink.close(timeout=30)
    assert [len(_decode(p)[0]) for p in sink.files] == [20, 6]
    assert not sink.counters.totals_dropped


def test_keep_deletes_the_oldest_files_of_that_camera_only(tmp_path: Path) -> None:
    earlier = tmp_path / "cam-19700101-000000.mp4"  # left by an earlier run
    others = [tmp_path / "cam-x-19700101-000000.mp4", tmp_path / "notes.mp4"]
    for p in (earlier, earlier.with_suffix(".json"), *others):  # an earlier clip and its sidecar
        p.write_bytes(b"x")
    sink = VideoSink(name="v", directory=tmp_path, policy=policy_for("video", maxsize=100), segment_s=0.5, keep=2)
    for seq in range(12):
        sink.publish(_env(_result("cam", seq)))
    sink.close(timeout=30)
    assert not earlier.exists() and not earlier.with_suffix(".json").exists() and all(p.exists() for p in others)
    assert len(sink.files) == 2 and sorted(tmp_path.glob("cam-1970*.mp4")) == sink.files
    assert [len(_decode(p)[0]) for p in sink.files] == [5, 2]  # the newest two segments


def test_clips_are_written_around_triggers_only(tmp_path: Path) -> None:
    import dataclasses

    from pipeline.messages import Crossing, FrameAnalytics
    from pipeline.sinks.config import ClipConfig

    cfg = VideoSinkConfig(type="video", dir=tmp_path, queue_size=100, clips=ClipConfig(pre_s=0.5, post_s=0.35))
    sink = VideoSink.from_config(cfg)
    assert sink.segment_s is None
    crossing = Crossing(line="gate", track_id=3, class_id=0, label="box", direction="in")
    for seq in range(80):
        res = _result("cam", seq)
        res = dataclasses.replace(res, analytics=FrameAnalytics(crossings=(crossing,) if seq in (20, 60) else ()))
        sink.publish(_env(res, np.full((H, W, 3), seq * 3, np.uint8)))
    sink.close(timeout=30)
    assert len(sink.files) == 2
    for path, first in zip(sink.files, (15, 55), strict=True):
        frames, times = _decode(path)
        assert len(frames) == 9  # 0.5 s before the crossing (5 frames), it, and 0.35 s after it (3)
        assert np.allclose(np.diff(times), 0.1, atol=0.002)
        assert abs(float(frames[0][2:10, 70:90].mean()) - first * 3) < 6  # the first frame is the pre-roll's
    assert sink.counters.totals_sent["cam"] == 18 and not sink.counters.totals_dropped
    import json

    meta = json.loads(sink.files[0].with_suffix(".json").read_text())  # the clip's sidecar
    assert meta["camera"] == "cam" and meta["file"] == sink.files[0].name and meta["frames"] == 9
    assert meta["start_ts"] == 1001.5 and meta["duration_s"] == 0.8 and meta["stream_start_s"] == 1.5
    assert meta["triggers"] == [{"t": 0.5, "trigger": "crossing", "line": "gate", "direction": "in", "track_id": 3,
                                 "label": "box"}]


def test_clip_classes_must_be_the_models() -> None:
    from pipeline.sinks.config import ClipConfig, check_sink_classes

    sinks = (VideoSinkConfig(type="video", dir=Path("v"), clips=ClipConfig(classes=("person", "bycicle"))),)
    errors = check_sink_classes(sinks, ("person", "bicycle"), "m.pt")
    assert [str(e) for e in errors] == ["sinks[0].clips.classes: 'bycicle' is not a class of m.pt"]


def test_max_total_mb_deletes_the_oldest_files_of_any_camera(tmp_path: Path) -> None:
    oldest, older = tmp_path / "b-19700101-000001.mp4", tmp_path / "a-19700101-000002.mp4"
    for p in (oldest, older):
        p.write_bytes(b"x" * 5000)
    other = tmp_path / "notes.mp4"
    other.write_bytes(b"x" * 50_000)  # not named like a sink's file: never touched, never counted
    sink = VideoSink(name="v", directory=tmp_path, policy=policy_for("video", maxsize=100), segment_s=0.5,
                     max_bytes=6000)
    for seq in range(30):
        sink.publish(_env(_result("cam", seq)))
    sink.close(timeout=30)
    assert not oldest.exists() and other.exists()  # the oldest went first, whichever camera it was
    kept = [p for p in tmp_path.glob("*.mp4") if p != other]
    newest = sink.files[-1]  # written last (names sort "...42.mp4" after "...42-1.mp4")
    assert sum(p.stat().st_size for p in kept) - newest.stat().st_size <= 6000  # the bound held at each open
    assert newest in sink.files and all(p.exists() for p in sink.files)


_KILLED = """
import os, sys, time
import numpy as np
sys.path[:0] = [{tests!r}, {root!r}]
from pipeline.sinks.base import policy_for
from pipeline.sinks.video import VideoSink
from test_sink_video import _env, _result
sink = VideoSink(name="v", directory={out!r}, policy=policy_for("video", maxsize=100), keyframe_s=0.5)
for seq in range(60):
    sink.publish(_env(_result("cam", seq)))
while sink.counters.totals_sent.get("cam", 0) < 60:
    time.sleep(0.01)
os._exit(0)  # no close(): as if the process were killed
"""


def test_a_camera_a_reload_removes_has_its_file_closed(tmp_path: Path) -> None:
    """Its file stayed open, with its encoder and memory, until segpipe stopped."""
    from pipeline.sinks.base import Retaining

    sink = VideoSink.from_config(VideoSinkConfig(type="video", dir=tmp_path, fps=10, queue_size=100))
    assert isinstance(sink, Retaining)
    gray = np.full((H, W, 3), 128, np.uint8)
    try:
        for seq in range(12):
            sink.publish(_env(_result("gone", seq), gray))
            sink.publish(_env(_result("stays", seq), gray))
        sink.cameras_removed(["gone"])  # behind its 12 queued frames: every one is written
        assert sink.flush(30)
        gone = next(tmp_path.glob("gone-*.mp4"))
        assert len(_decode(gone)[0]) == 12  # whole and closed while the sink runs on
        assert set(sink._writers) == {"stays"}
        for seq in range(100, 103):  # put back by a later reload: a new file
            sink.publish(_env(_result("gone", seq), gray))
    finally:
        sink.close(timeout=30)
    assert len(list(tmp_path.glob("gone-*.mp4"))) == 2 and sink.counters.totals_sent["gone"] == 15


def test_a_removed_cameras_open_clip_is_closed_with_its_sidecar(tmp_path: Path) -> None:
    import dataclasses
    import json

    from pipeline.messages import Crossing, FrameAnalytics
    from pipeline.sinks.config import ClipConfig

    sink = VideoSink.from_config(VideoSinkConfig(type="video", dir=tmp_path, queue_size=100,
                                                 clips=ClipConfig(pre_s=0.2, post_s=5.0)))
    crossing = Crossing(line="gate", track_id=3, class_id=0, label="box", direction="in")
    try:
        for seq in range(10):
            res = dataclasses.replace(_result("cam", seq),
                                      analytics=FrameAnalytics(crossings=(crossing,) if seq == 5 else ()))
            sink.publish(_env(res, np.full((H, W, 3), 100, np.uint8)))
        sink.cameras_removed(["cam"])
        assert sink.flush(30)
        assert len(sink.files) == 1 and json.loads(sink.files[0].with_suffix(".json").read_text())["frames"] == 7
        assert sink.clips is not None and sink.clips.held_bytes() == 0
    finally:
        sink.close(timeout=30)


def test_a_killed_writer_leaves_a_file_that_plays(tmp_path: Path) -> None:
    import subprocess
    import sys

    code = _KILLED.format(tests=str(Path(__file__).parent), root=str(Path(__file__).parents[2]), out=str(tmp_path))
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    (path,) = tmp_path.glob("cam-*.mp4")
    frames, times = _decode(path)
    # fragments start at each keyframe (every 0.5 s = 5 frames); the open fragment and the encoder's
    # look-ahead are what a kill loses
    assert 30 <= len(frames) < 60 and np.allclose(np.diff(times), 0.1, atol=0.002)


@pytest.mark.parametrize("kw, error", [
    ({"codec": "no-such-codec"}, "encoder 'no-such-codec' is not available"),
    ({"directory": Path("/proc/segpipe-video")}, "cannot create /proc/segpipe-video"),
])
def test_setup_errors(tmp_path: Path, kw: dict, error: str) -> None:
    args = {"name": "v", "directory": tmp_path, "policy": policy_for("video")} | kw
    with pytest.raises(SinkError, match=error):
        VideoSink(**args)


def test_tracked_objects_are_coloured_by_track_id() -> None:
    import dataclasses

    from pipeline.sinks.draw import PALETTE, draw

    res = _result("cam", 0)
    nearest = []  # palette entry nearest the pixel on the box's left edge (lines are anti-aliased)
    for track_id in (None, 5, 5, 6):
        det = dataclasses.replace(res.detections[0], track_id=track_id)
        canvas = draw(np.zeros((H, W, 3), np.uint8), dataclasses.replace(res, detections=(det,)))
        pixel = canvas[int(BOX[1]) + 8, int(BOX[0])].astype(float)
        nearest.append(int(np.abs(PALETTE.astype(float) - pixel).sum(1).argmin()))
    assert nearest == [0, 5, 5, 6]  # untracked: class 0's colour; tracked: the track's own


def test_zones_and_lines_are_drawn_where_they_are() -> None:
    import dataclasses

    from pipeline.messages import FrameAnalytics
    from pipeline.sinks.draw import _LINE_COLOR, _ZONE_COLOR, draw

    shapes = {"zones": {"z": ((4.0, 4.0), (30.0, 4.0), (30.0, 30.0), (4.0, 30.0))},
              "lines": {"l": ((0.0, 56.0), (96.0, 56.0))}}
    analytics = FrameAnalytics(zone_counts={"z": 0}, crossings=(), line_totals={"l": (3, 1)}, shapes=shapes)
    res = dataclasses.replace(_result("cam", 0), detections=(), analytics=analytics)
    for scale in (1.0, 2.0):
        canvas = draw(np.zeros((int(H * scale), int(W * scale), 3), np.uint8), res, scale=scale)
        row = canvas[int(56 * scale), :, :]
        assert (np.abs(row.astype(int) - _LINE_COLOR).sum(1) < 30).mean() > 0.9  # the line spans the frame
        edge = canvas[int(20 * scale), int(30 * scale)]                          # the zone's right side
        assert np.abs(edge.astype(int) - _ZONE_COLOR).sum() < 90
        assert canvas[int(45 * scale), int(60 * scale)].sum() == 0                # nothing elsewhere


def test_the_picture_outside_a_roi_is_darkened() -> None:
    import dataclasses

    from pipeline.sinks.draw import draw

    res = dataclasses.replace(_result("cam", 0), detections=(), roi=(W // 2, 0, W, H))
    for scale in (1.0, 0.5):
        canvas = draw(np.full((int(H * scale), int(W * scale), 3), 200, np.uint8), res, scale=scale)
        half = int(W * scale) // 2
        assert (canvas[:, :half] == 100).all() and (canvas[:, half:] == 200).all()


def test_an_event_is_drawn_as_its_result() -> None:
    """draw_event (webhook snapshots, from the event's JSON) draws what draw draws from the result."""
    import dataclasses
    import json

    from pipeline.sinks.draw import draw, draw_event

    res = dataclasses.replace(_result("cam", 0), detections=(dataclasses.replace(_result("cam", 0).detections[0],
                                                                                 track_id=4),))
    for scale in (1.0, 0.5):
        size = (int(H * scale), int(W * scale), 3)
        want = draw(np.full(size, 90, np.uint8), res, scale=scale)
        got = draw_event(np.full(size, 90, np.uint8), json.loads(encode(to_event(res))), scale=scale)
        assert (got == want).all() and (want != 90).any()
