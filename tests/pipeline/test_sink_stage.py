"""The sink stage: registry, drop policies, fan-out and counters, and a real child process ended by STOP."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing as mp
import queue
import socket
import time
from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engines.errors import SinkError
from pipeline.config import CameraConfig, TrackingConfig
from pipeline.messages import STOP, CameraState, CameraStatus, Detection, FrameResult
from pipeline.metrics import StageStats
from pipeline.sinks import SinkRegistry
from pipeline.sinks.base import BoundedBuffer, DropPolicy, Envelope, Overflow, SinkCounters, policy_for
from pipeline.sinks.config import JsonlSinkConfig, MqttSinkConfig, ZmqSinkConfig, check_sink_names
from pipeline.sinks.stage import CamerasUpdate, EventMaker, SinkStage, is_stop, run_sink_stage


def _result(camera: str, seq: int, *, age_s: float = 0.0) -> FrameResult:
    now = time.time()
    return FrameResult(camera_id=camera, seq=seq, pts=None, capture_ts=now - age_s, infer_ts=now, frame_size=(8, 6),
                       model="m", detections=(Detection(class_id=0, label="a", score=0.5, box=(0, 0, 2, 2)),))


def _env(camera: str, seq: int) -> Envelope:
    return Envelope(camera_id=camera, kind="frame", payload=b"{}", item=_result(camera, seq))


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


# --------------------------------------------------------------------------------- registry, policies


def test_registry_raises_on_duplicate_and_unknown_types() -> None:
    reg = SinkRegistry()
    assert reg.types == ("zmq", "redis", "mqtt", "webhook", "jsonl", "video", "restream", "preview")
    with pytest.raises(ValueError, match="'zmq' is already registered"):
        reg.register("zmq", "elsewhere:Sink")
    with pytest.raises(ValueError, match="expected 'module:Class'"):
        reg.register("kafka", "pipeline.sinks.kafka")
    with pytest.raises(SinkError, match=r"unknown sink type 'kafka' \(known: zmq, redis, mqtt, webhook, jsonl, video, restream, preview\)"):
        reg.get("kafka")
    assert reg.get("jsonl").__name__ == "JsonlSink"


@pytest.mark.parametrize("overflow, kept, dropped", [
    (Overflow.DROP_OLDEST, [3, 4, 5], {("a", "full"): 2, ("b", "full"): 1}),
    (Overflow.DROP_NEWEST, [0, 1, 2], {("b", "full"): 2, ("a", "full"): 1}),
])
def test_bounded_buffer_drops_by_policy_and_counts_per_camera(overflow: Overflow, kept: list[int],
                                                               dropped: dict) -> None:
    counters = SinkCounters()
    buf = BoundedBuffer(policy=DropPolicy(name="full", maxsize=3, overflow=overflow), counters=counters)
    for i in range(6):
        buf.put(_env("a" if i % 2 == 0 else "b", i))
    assert [e.item.seq for e in buf.take(10, 0)] == kept
    assert dict(counters.totals_dropped) == dropped
    assert counters.take().dropped == dropped and counters.take().dropped == {}  # deltas reset


@pytest.mark.parametrize("overflow", [Overflow.DROP_OLDEST, Overflow.DROP_NEWEST])
def test_overflow_never_drops_a_removed_cameras_marker(overflow: Overflow) -> None:
    """A lost marker would hold the removed camera's file or stream open for good."""
    from pipeline.sinks.base import REMOVED

    counters = SinkCounters()
    buf = BoundedBuffer(policy=DropPolicy(name="full", maxsize=3, overflow=overflow), counters=counters)
    buf.put(_env("a", 0))
    buf.put(Envelope(camera_id="a", kind=REMOVED, payload=b"", item=None))
    for i in range(1, 6):
        buf.put(_env("b", i))
    taken = buf.take(10, 0)
    assert [e.kind for e in taken].count(REMOVED) == 1 and len(taken) == 3
    buf.requeue(taken)  # over the bound again: events go, the marker stays
    buf.done(len(taken))
    assert [e.kind for e in buf.take(10, 0)].count(REMOVED) == 1
    buf.done(3)
    only_markers = BoundedBuffer(policy=DropPolicy(name="full", maxsize=1, overflow=overflow), counters=counters)
    marks = [Envelope(camera_id=c, kind=REMOVED, payload=b"", item=None) for c in "xyz"]
    for m in marks:
        only_markers.put(m)
    only_markers.requeue(only_markers.take(3, 0))  # nothing to drop: no endless loop
    before = dict(counters.totals_dropped)
    assert only_markers.drop_all("shutdown") == 0 and dict(counters.totals_dropped) == before  # no events lost


def test_a_marker_is_no_event_in_the_backlog_a_failed_write_or_a_closed_sink() -> None:
    """A removed camera's marker was counted as a queued event (the sink's backlog metric), and as an
    event dropped when the write of its batch failed or when it came after close."""
    from pipeline.sinks.base import REMOVED, ThreadedSink

    counters = SinkCounters()
    buf = BoundedBuffer(policy=DropPolicy(name="full", maxsize=10, overflow=Overflow.DROP_OLDEST), counters=counters)
    buf.put(_env("a", 0))
    buf.put(Envelope(camera_id="a", kind=REMOVED, payload=b"", item=None))
    assert len(buf) == 1
    buf.requeue(buf.take(10, 0))
    assert len(buf) == 1
    buf.done(2)

    class Failing(ThreadedSink):
        def write_batch(self, envs: list[Envelope]) -> None:
            raise OSError("disk gone")

    sink = Failing(name="failing", policy=DropPolicy(name="full", maxsize=10, overflow=Overflow.DROP_OLDEST))
    sink.start()
    sink.publish(_env("a", 0))
    sink.queue_removed(["a", "b"])
    assert sink.flush(10)
    sink.close()
    sink.queue_removed(["c"])  # a sink closed meanwhile: nothing lost
    assert dict(sink.counters.totals_dropped) == {("a", "write_error"): 1}


def test_requeue_puts_back_in_front_and_drops_oldest() -> None:
    counters = SinkCounters()
    buf = BoundedBuffer(policy=DropPolicy(name="full", maxsize=3, overflow=Overflow.DROP_OLDEST), counters=counters)
    for i in range(3):
        buf.put(_env("a", i))
    taken = buf.take(2, 0)
    buf.put(_env("a", 3))
    buf.put(_env("a", 4))
    buf.requeue(taken)  # 0, 1 back in front of 2, 3, 4: two over the bound, and they are the oldest
    buf.done(len(taken))
    assert [e.item.seq for e in buf.take(10, 0)] == [2, 3, 4] and counters.totals_dropped[("a", "full")] == 2
    assert not buf.join(0.01)  # taken but not done
    buf.done(3)
    assert buf.join(0.01)


@pytest.mark.parametrize("kw, error", [
    ({"maxsize": 0}, "DropPolicy.maxsize: expected >= 1"),
])
def test_drop_policy_checks(kw: dict, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        DropPolicy(name="x", overflow=Overflow.DROP_NEWEST, **kw)


def test_policy_defaults_live_in_one_place() -> None:
    assert policy_for("redis").maxsize == 10_000 and policy_for("redis", maxsize=5).maxsize == 5
    assert policy_for("jsonl", overflow=Overflow.DROP_NEWEST).overflow is Overflow.DROP_NEWEST
    assert ZmqSinkConfig(type="zmq").sndhwm == policy_for("zmq").maxsize


def test_duplicate_sink_names_are_config_errors(tmp_path: Path) -> None:
    cfgs = [JsonlSinkConfig(type="jsonl", path=tmp_path / "a"), JsonlSinkConfig(type="jsonl", path=tmp_path / "b")]
    with pytest.raises(Exception, match=r"sinks\[1\].name: duplicate sink name 'jsonl' \(also sinks\[0\]\)"):
        check_sink_names(cfgs)


# ------------------------------------------------------------------------------------- in-process stage


def test_fan_out_filters_and_reports(tmp_path: Path) -> None:
    all_cams = JsonlSinkConfig(type="jsonl", name="all", path=tmp_path / "all.jsonl")
    only_b = JsonlSinkConfig(type="jsonl", name="b", path=tmp_path / "b.jsonl", cameras=("b",), statuses=False)
    stage = SinkStage.from_configs([all_cams, only_b])
    stage.handle(_result("a", 1, age_s=0.05))
    stage.handle(_result("b", 2, age_s=0.05))
    stage.handle(CameraStatus(camera_id="b", state=CameraState.STALLED, ts=time.time(), detail="no frames for 5 s"))
    stage.handle("not a message")  # an upstream bug is counted, not raised
    for _, sink in stage.sinks:
        assert sink.flush(5)
    report = stage.report()
    stage.close()
    assert [(e["kind"], e["camera"]) for e in _lines(tmp_path / "all.jsonl")] == [
        ("frame", "a"), ("frame", "b"), ("status", "b")]
    assert [(e["kind"], e["seq"]) for e in _lines(tmp_path / "b.jsonl")] == [("frame", 2)]
    assert report.sink_sent == {("all", "a"): 1, ("all", "b"): 2, ("b", "b"): 1}
    assert report.dropped == {("?", "bad_message"): 1}
    assert set(report.e2e_latency) == {"a", "b"} and 0.04 < report.e2e_latency["a"][0] < 1.0
    assert len(report.stage_latency["sink"]) == 3
    assert stage.report().sink_sent == {}  # deltas


def test_tracking_gives_published_detections_ids(tmp_path: Path) -> None:
    cfg = JsonlSinkConfig(type="jsonl", name="all", path=tmp_path / "all.jsonl")
    untracked = SinkStage.from_configs([cfg], tracking=TrackingConfig(enabled=False))
    assert untracked.maker.trackers is None
    untracked.close()
    stage = SinkStage.from_configs([cfg], tracking=TrackingConfig(enabled=True))
    for seq in range(3):
        stage.handle(_result("a", seq))
        stage.handle(FrameResult(camera_id="b", seq=seq, pts=None, capture_ts=time.time(), infer_ts=time.time(),
                                 frame_size=(8, 6), model="m",
                                 detections=(Detection(class_id=0, label="a", score=0.9, box=(0, 0, 2, 2)),)))
    report = stage.report()
    assert report.tracks_started == {"b": 1} and report.tracks_active == {"a": 0, "b": 1}
    assert stage.report().tracks_started == {}  # deltas
    stage.close()
    ids = [(e["camera"], [d.get("track_id") for d in e["detections"]]) for e in _lines(tmp_path / "all.jsonl")]
    # camera a's score (0.5) is below new_track_score: it continues no track and starts none
    assert ids == [("a", [None]), ("b", [None]), ("a", [None]), ("b", [1]), ("a", [None]), ("b", [1])]


def test_zones_and_lines_apply_after_tracking(tmp_path: Path) -> None:
    from pipeline.config import CameraConfig, LineConfig, ZoneConfig

    cam = CameraConfig(id="a", url="a.mp4", lines=(LineConfig(name="mid", points=((0, 0.5), (1, 0.5))),),
                       zones=(ZoneConfig(name="top", polygon=((0, 0), (1, 0), (1, 0.5), (0, 0.5))),))
    cfg = JsonlSinkConfig(type="jsonl", name="all", path=tmp_path / "all.jsonl")
    stage = SinkStage.from_configs([cfg], tracking=TrackingConfig(enabled=True, min_hits=1),
                                   cameras=[cam, CameraConfig(id="b", url="b.mp4")])
    for seq, y in enumerate([35.0, 45.0, 55.0, 65.0]):  # a 20x20 box moving down through y=50 of a 100x100 frame
        for camera in ("a", "b"):
            stage.handle(FrameResult(camera_id=camera, seq=seq, pts=None, capture_ts=time.time(), infer_ts=time.time(),
                                     frame_size=(100, 100), model="m",
                                     detections=(Detection(class_id=0, label="box", score=0.9,
                                                           box=(40, y - 20, 60, y)),)))
    report = stage.report()
    stage.close()
    assert report.line_crossings == {("a", "mid", "out", "box"): 1}
    assert report.zone_objects == {("a", "top"): 0}
    events = [e for e in _lines(tmp_path / "all.jsonl") if e["camera"] == "a"]
    assert [e["zone_counts"]["top"] for e in events] == [1, 1, 0, 0]
    assert [len(e["crossings"]) for e in events] == [0, 0, 1, 0]
    assert events[2]["crossings"][0]["track_id"] == events[2]["detections"][0]["track_id"] == 1
    assert all("crossings" not in e for e in _lines(tmp_path / "all.jsonl") if e["camera"] == "b")


def test_camera_classes_filter_before_tracking(tmp_path: Path) -> None:
    from pipeline.config import CameraConfig

    cfg = JsonlSinkConfig(type="jsonl", name="all", path=tmp_path / "all.jsonl")
    stage = SinkStage.from_configs([cfg], tracking=TrackingConfig(enabled=True, min_hits=1),
                                   cameras=[CameraConfig(id="a", url="a.mp4", classes=("car",)),
                                            CameraConfig(id="b", url="b.mp4")])
    dets = (Detection(class_id=0, label="person", score=0.9, box=(0, 0, 2, 2)),
            Detection(class_id=1, label="car", score=0.9, box=(4, 0, 6, 2)))
    for camera in ("a", "b"):
        stage.handle(FrameResult(camera_id=camera, seq=0, pts=None, capture_ts=time.time(), infer_ts=time.time(),
                                 frame_size=(8, 6), model="m", detections=dets))
    report = stage.report()
    stage.close()
    labels = {e["camera"]: [(d["label"], d.get("track_id")) for d in e["detections"]] for e in _lines(tmp_path / "all.jsonl")}
    assert labels == {"a": [("car", 1)], "b": [("person", 1), ("car", 2)]}  # the person in a started no track
    assert report.tracks_started == {"a": 1, "b": 2}


class _Retains:
    """A sink whose server keeps each camera's last status (as MQTT's does): notes the statuses it is
    handed and the cameras it is told were removed, in order."""

    def __init__(self, name: str) -> None:
        self.name, self.counters = name, SinkCounters()
        self.got: list[tuple[str, str]] = []  # (camera, state), or (camera, "cleared")

    def publish(self, env: Envelope) -> None:
        if isinstance(env.item, CameraStatus):
            self.got.append((env.camera_id, env.item.state.value))

    def cameras_removed(self, camera_ids: Collection[str]) -> None:
        self.got += [(camera, "cleared") for camera in camera_ids]

    def backlog(self) -> int:
        return 0

    def flush(self, timeout: float = 5.0) -> bool:
        return True

    def close(self, timeout: float = 5.0) -> None:
        pass


def _status(camera: str, state: CameraState) -> CameraStatus:
    return CameraStatus(camera_id=camera, state=state, ts=time.time())


def _mqtt(name: str, **kw: Any) -> MqttSinkConfig:
    return MqttSinkConfig(type="mqtt", url="mqtt://broker", name=name, **kw)


CAMS = {c: CameraConfig(id=c, url=f"{c}.mp4") for c in "abc"}
LIVE, STOPPED = CameraState.LIVE, CameraState.STOPPED


def test_a_reload_tells_the_sinks_that_retain_statuses_which_cameras_it_removed() -> None:
    every, only_a, no_statuses = _Retains("every"), _Retains("a"), _Retains("none")
    stage = SinkStage(sinks=[(_mqtt("every"), every), (_mqtt("a", cameras=("a",)), only_a),
                             (_mqtt("none", statuses=False), no_statuses)], cameras=list(CAMS.values()))
    for camera in "abc":
        stage.handle(_status(camera, LIVE))
    for camera in "ab":  # the supervisor stops a removed camera, then sends the update
        stage.handle(_status(camera, STOPPED))
    stage.take(CamerasUpdate(cameras=(CAMS["c"],)))
    stage.take(CamerasUpdate(cameras=(CAMS["c"],)))  # told once
    stage.close()
    assert every.got == [("a", "live"), ("b", "live"), ("c", "live"), ("a", "stopped"), ("b", "stopped"),
                         ("a", "cleared"), ("b", "cleared")]
    assert only_a.got == [("a", "live"), ("a", "stopped"), ("a", "cleared")]  # b's statuses were never its
    # handed a's and b's frames: told too (a video sink's files); an MQTT sink clears only what it retained
    assert no_statuses.got == [("a", "cleared"), ("b", "cleared")]


def test_a_shard_replica_clears_only_the_cameras_it_ran() -> None:
    sink = _Retains("mqtt")
    stage = SinkStage(sinks=[(_mqtt("mqtt"), sink)], cameras=[CAMS["a"]])  # b is another replica's
    stage.handle(_status("a", LIVE))
    stage.take(CamerasUpdate(cameras=()))  # a reload took a and b out of the config
    stage.close()
    assert sink.got == [("a", "live"), ("a", "cleared")]


def test_with_event_workers_a_removed_cameras_last_status_is_cleared_again() -> None:
    sink = _Retains("mqtt")
    stage = SinkStage(sinks=[(_mqtt("mqtt"), sink)])  # with event workers the stage is given no cameras
    worker = EventMaker()

    def status(camera: str, state: CameraState) -> None:
        env = worker.make(_status(camera, state))
        assert env is not None
        stage.take(env)

    status("a", LIVE)
    status("b", LIVE)
    stage.take(CamerasUpdate(cameras=(CAMS["b"],)))  # here before a's last status, which a worker still held
    status("a", STOPPED)
    status("a", CameraState.CONNECTING)  # a later reload puts a back: its first status comes before the update
    stage.take(CamerasUpdate(cameras=(CAMS["a"], CAMS["b"])))
    status("a", LIVE)
    stage.close()
    assert sink.got == [("a", "live"), ("b", "live"), ("a", "cleared"), ("a", "stopped"), ("a", "cleared"),
                        ("a", "connecting"), ("a", "live")]


def test_a_removed_cameras_frames_after_the_update_do_not_take_it_up_again(tmp_path: Path) -> None:
    """Frames of a removed camera still in the device stage's batches (or an event worker's queue) come
    after the reload's update: the video sink opened a new file for them, held open for good."""
    from pipeline.sinks.config import VideoSinkConfig
    from pipeline.sinks.video import VideoSink

    video = VideoSink.from_config(VideoSinkConfig(type="video", dir=tmp_path / "video", fps=10, queue_size=100))
    jsonl = tmp_path / "events.jsonl"
    stage = SinkStage(sinks=[(VideoSinkConfig(type="video", dir=tmp_path / "video"), video),
                             (JsonlSinkConfig(type="jsonl", path=jsonl), SinkRegistry().build(
                                 JsonlSinkConfig(type="jsonl", path=jsonl)))], cameras=[CAMS["a"], CAMS["b"]])
    image = np.zeros((48, 64, 3), np.uint8)

    def frame(seq: int) -> None:
        stage.handle(dataclasses.replace(_result("a", seq), pts=seq / 10), image=image)

    for seq in range(3):
        frame(seq)
    stage.take(CamerasUpdate(cameras=(CAMS["b"],)))
    frame(3)  # late: its batch was in flight
    assert video.flush(30)
    assert "a" not in video._writers and len(list((tmp_path / "video").glob("a-*.mp4"))) == 1
    assert video.counters.totals_dropped == {("a", "removed"): 1}
    stage.handle(_status("a", CameraState.CONNECTING))  # a later reload puts it back
    frame(4)
    assert video.flush(30) and "a" in video._writers
    stage.close()
    assert [e["seq"] for e in _lines(jsonl) if e["kind"] == "frame"] == [0, 1, 2, 3, 4]  # others get them


def test_setup_failure_closes_sinks_already_built(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    good = ZmqSinkConfig(type="zmq", endpoint=f"tcp://127.0.0.1:{port}")
    bad = JsonlSinkConfig(type="jsonl", path=blocker / "x.jsonl")
    with pytest.raises(SinkError, match="cannot open"):
        SinkStage.from_configs([good, bad])
    SinkStage.from_configs([good]).close()  # the port was released: the first zmq sink was closed


def test_is_stop_survives_pickling() -> None:
    import pickle

    assert is_stop(STOP) and is_stop(pickle.loads(pickle.dumps(STOP)))
    assert not is_stop(None) and not is_stop(_result("a", 1))


# ---------------------------------------------------------------------------------------- child process


def _collect(stats: mp.Queue, proc: mp.Process) -> list[StageStats]:
    out = []
    while proc.is_alive() or not stats.empty():
        try:
            out.append(stats.get(timeout=0.2))
        except queue.Empty:
            pass
    return out


def test_stage_process_runs_until_stop(tmp_path: Path) -> None:
    ctx = mp.get_context("spawn")  # what a supervisor uses with CUDA around: configs and messages must pickle
    inbox, stats = ctx.Queue(maxsize=64), ctx.Queue()
    cfg = JsonlSinkConfig(type="jsonl", path=tmp_path / "events.jsonl")
    proc = ctx.Process(target=run_sink_stage, kwargs={"inbox": inbox, "configs": [cfg], "stats": stats,
                                                      "report_every_s": 0.2})
    proc.start()
    inbox.put(CameraStatus(camera_id="c", state=CameraState.LIVE, ts=time.time()))
    for i in range(40):
        inbox.put(_result("c", i))
    inbox.put(STOP)
    reports = _collect(stats, proc)
    proc.join(20)
    assert proc.exitcode == 0
    assert [e.get("seq") for e in _lines(tmp_path / "events.jsonl")] == [None, *range(40)]
    assert sum(r.sink_sent.get(("jsonl", "c"), 0) for r in reports) == 41
    assert sum(len(r.e2e_latency.get("c", ())) for r in reports) == 40


def test_stage_process_reports_setup_error_and_drains(tmp_path: Path) -> None:
    ctx = mp.get_context("spawn")
    inbox, stats = ctx.Queue(maxsize=4), ctx.Queue()
    blocker = tmp_path / "file"
    blocker.write_text("")
    cfg = JsonlSinkConfig(type="jsonl", path=blocker / "events.jsonl")
    proc = ctx.Process(target=run_sink_stage, kwargs={"inbox": inbox, "configs": [cfg], "stats": stats})
    proc.start()
    for i in range(20):  # more than the queue holds: would block forever if the stage stopped reading
        inbox.put(_result("c", i), timeout=20)
    inbox.put(STOP, timeout=20)
    reports = _collect(stats, proc)
    proc.join(20)
    assert proc.exitcode == 1
    assert len(reports) == 1 and "SinkError" in reports[0].error and "cannot open" in reports[0].error
