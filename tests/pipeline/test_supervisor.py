"""The supervisor with real processes: files end and the run exits by itself, crashed and hung
decoders come back, a failed stage ends the run, and no shared memory is left behind."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pipeline import shm
from pipeline.config import RunConfig, parse_config
from pipeline.messages import CameraState, CameraStatus
from pipeline.metrics import Metrics
from pipeline.supervisor import Supervisor
from tests.helpers import read_jsonl, wait_for
from tests.pipeline.media import write_clip

S = CameraState
MODEL = {"path": "yolov8n-seg.yaml", "device": "cpu", "imgsz": 64, "conf": 1e-6, "max_det": 4, "threads": 1}


def config(tmp_path: Path, cameras: list[dict[str, Any]], **extra: Any) -> RunConfig:
    raw = {"model": MODEL, "batch": {"max_batch": 4, "max_wait_ms": 5, "max_age_ms": 5000},
           "cameras": cameras, "sinks": [{"type": "jsonl", "path": str(tmp_path / "events.jsonl")}],
           "metrics": {"enabled": False}}
    raw.update(extra)
    return parse_config(raw, env={})


def events(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "events.jsonl"
    return read_jsonl(path)


def no_segments_left() -> bool:
    return shm.list_segments(f"{shm.ROOT}{os.getpid()}_") == []


def test_file_cameras_end_and_the_run_exits_by_itself(tmp_path: Path) -> None:
    a = write_clip(tmp_path / "a.mp4", frames=15, fps=30, size=(160, 120))
    b = write_clip(tmp_path / "b.mp4", frames=10, fps=30, size=(96, 64))
    # a: paced like a live camera; b: a recording processed frame by frame (lossless)
    cfg = config(tmp_path, [{"id": "a", "url": str(a)}, {"id": "b", "url": str(b), "realtime": False,
                                                          "lossless": True}])
    statuses: list[CameraStatus] = []
    metrics = Metrics(process_collector=False)
    sup = Supervisor(cfg=cfg, on_status=statuses.append, metrics=metrics)
    assert sup.run() == 0 and sup.errors == []
    for cam in ("a", "b"):
        assert [s.state for s in statuses if s.camera_id == cam] == [S.CONNECTING, S.LIVE, S.ENDED]
    evs = events(tmp_path)
    frames = [e for e in evs if e["kind"] == "frame"]
    assert {e["camera"] for e in frames} == {"a", "b"}
    assert [e["state"] for e in evs if e["kind"] == "status" and e["camera"] == "a"] == ["connecting", "live",
                                                                                         "ended"]
    for d in (d for e in frames for d in e["detections"]):
        assert d["mask"]["format"] == "rle"
    inferred = metrics.inferred.labels("a")._value.get() + metrics.inferred.labels("b")._value.get()
    assert inferred == len(frames)  # every inferred frame was published
    assert [e["seq"] for e in frames if e["camera"] == "b"] == list(range(10))  # the last one included
    assert metrics.engine_loaded and no_segments_left()


def _script(sup: Supervisor, steps: Callable[[], None], failures: list[BaseException]) -> threading.Thread:
    def run() -> None:
        try:
            steps()
        except BaseException as e:  # noqa: BLE001 - reported by the test after the supervisor stops
            failures.append(e)
        finally:
            sup.request_stop("test done")

    return threading.Thread(target=run, daemon=True)


def test_crashed_and_hung_decoders_are_restarted(tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "loop.mp4", frames=15, fps=15, size=(96, 64))
    cams = [{"id": "flaky", "url": str(clip), "loop": True, "open_timeout_s": 1, "read_timeout_s": 1,
             "heartbeat_timeout_s": 2, "reconnect": {"initial_s": 0.1, "max_s": 0.5}},
            {"id": "steady", "url": str(clip), "loop": True}]
    statuses: list[CameraStatus] = []
    metrics = Metrics(process_collector=False)
    sup = Supervisor(cfg=config(tmp_path, cams), on_status=statuses.append, metrics=metrics)
    failures: list[BaseException] = []

    def states() -> list[S]:
        return [s.state for s in statuses if s.camera_id == "flaky"]

    def steps() -> None:
        flaky, steady = sup.cameras
        wait_for(lambda: states()[-1:] == [S.LIVE], 60, "flaky live")
        first = flaky.proc.pid
        os.kill(first, signal.SIGKILL)  # a decoder crash (say, a segfault in FFmpeg)
        wait_for(lambda: states()[-3:] == [S.RECONNECTING, S.CONNECTING, S.LIVE], 30, "restart after crash")
        assert flaky.proc.pid != first and flaky.control.get("restarts") == 1
        steady_before = steady.control.get("decoded")
        os.kill(flaky.proc.pid, signal.SIGSTOP)  # a decoder stuck for good: no more heartbeats
        wait_for(lambda: flaky.control.get("restarts") == 2 and states()[-1:] == [S.LIVE], 30,
                 "restart after hang")
        assert steady.control.get("decoded") > steady_before  # the other camera kept flowing
        assert [s.state for s in statuses if s.camera_id == "steady"] == [S.CONNECTING, S.LIVE]

    script = _script(sup, steps, failures)
    sup.on_tick = lambda s: script.is_alive() or script.start() if not script.ident else None
    code = sup.run()
    script.join(5)
    if failures:
        raise failures[0]
    assert code == 0 and sup.errors == []
    assert states()[-1] is S.STOPPED
    restarts = [s.detail for s in statuses if s.camera_id == "flaky" and s.state is S.RECONNECTING]
    assert restarts[0].startswith("decoder exited with code -9; restart in")
    assert restarts[1].startswith("decoder hung for ") and "s, killed; restart in" in restarts[1]
    assert metrics.reconnects.labels("flaky")._value.get() == 2
    assert metrics.reconnects.labels("steady")._value.get() == 0
    assert no_segments_left()


@pytest.mark.parametrize("broken, message", [
    ("model", "device stage"),
    ("sink", "sink stage"),
    ("classes", "model.classes: class id 80 is not a class of yolov8n-seg.yaml (ids 0-79)"),  # would publish nothing
])
def test_a_failed_stage_ends_the_run(tmp_path: Path, broken: str, message: str) -> None:
    clip = write_clip(tmp_path / "c.mp4", frames=5, fps=15, size=(96, 64))
    extra: dict[str, Any] = {}
    if broken == "classes":
        extra["model"] = {**MODEL, "classes": [2, 80]}
    elif broken == "model":
        bad = tmp_path / "bad.safetensors"
        bad.write_bytes(b"\x00" * 64)  # exists (the config is valid) but is no model
        extra["model"] = {**MODEL, "path": str(bad)}
    else:
        (tmp_path / "file").write_text("")
        extra["sinks"] = [{"type": "jsonl", "path": str(tmp_path / "file" / "events.jsonl")}]
    statuses: list[CameraStatus] = []
    sup = Supervisor(cfg=config(tmp_path, [{"id": "c", "url": str(clip)}], **extra), on_status=statuses.append)
    t0 = time.monotonic()
    assert sup.run() == 1
    assert sup.errors and sup.errors[0].startswith(message), sup.errors
    assert "Traceback" not in sup.errors[0]
    assert time.monotonic() - t0 < 120 and no_segments_left()


def test_a_stop_while_the_model_loads_is_a_clean_exit(tmp_path: Path) -> None:
    """SIGTERM during start-up (a rolling update) kills the loading device stage on purpose: exit 0, no
    error (it ended as "device stage exited with code -9", exit 1)."""
    sup = Supervisor(cfg=_looping(tmp_path))
    loading: list[bool] = []

    def stop_once_spawned() -> None:
        wait_for(lambda: sup._device is not None and sup._device.pid is not None, 60, "the device stage")
        loading.append(not sup.ready)
        sup.request_stop("SIGTERM")

    stopper = threading.Thread(target=stop_once_spawned)
    stopper.start()
    code = sup.run()
    stopper.join()
    assert loading == [True], "the model had loaded before the stop: nothing tested"
    assert (code, sup.errors) == (0, [])
    assert sup._device.exitcode == -signal.SIGKILL and no_segments_left()


def test_status_names_the_model_a_reload_swapped_in(tmp_path: Path) -> None:
    """status() (segpipe status, /cameras) says what runs: after a model swap, the new input size (it
    kept the first model's description for the life of the run)."""
    cfg = _looping(tmp_path)
    bigger = cfg.model_copy(update={"model": cfg.model.model_copy(update={"imgsz": 96})})
    state = {"ticks": 0}

    def tick(sup: Supervisor) -> None:
        state["ticks"] += 1
        if state["ticks"] == 2:
            assert "input 64x64 (WxH)" in sup.status()["device"]
            sup.request_reload()
        if "input 96x96" in sup.status()["device"] or state["ticks"] > 60:
            sup.request_stop("test done")

    sup = Supervisor(cfg=cfg, on_tick=tick, reloader=lambda: bigger)
    assert sup.run() == 0, sup.errors
    assert sup.status()["device"].endswith("input 96x96 (WxH)") and sup.cfg.model.imgsz == 96


def _looping(tmp_path: Path) -> RunConfig:
    clip = write_clip(tmp_path / "c.mp4", frames=12, fps=15, size=(96, 64))
    return config(tmp_path, [{"id": "c", "url": str(clip), "loop": True, "realtime": False, "lossless": True}])


def test_a_device_stage_that_dies_is_started_again(tmp_path: Path) -> None:
    """A crash in the model's runtime (SIGKILL here) takes the data plane down and up again; the camera's
    decoder streams on, and a lossless one goes on frame by frame from where the dead stage left it."""
    state: dict[str, Any] = {"killed": 0, "seen": 0}

    def tick(sup: Supervisor) -> None:
        n = sum(1 for e in events(tmp_path) if e["kind"] == "frame")
        if not state["killed"] and n > 5 and "device" in sup.pids():
            state["killed"], state["seen"] = sup.pids()["device"], n
            os.kill(state["killed"], signal.SIGKILL)
        elif state["killed"] and n > state["seen"] + 10:
            sup.request_stop("test done")

    metrics = Metrics(process_collector=False)
    sup = Supervisor(cfg=_looping(tmp_path), on_tick=tick, metrics=metrics)
    timer = threading.Timer(120, lambda: sup.request_stop("timeout"))
    timer.start()
    try:
        assert sup.run() == 0 and sup.errors == []
    finally:
        timer.cancel()
    assert state["killed"] and sup._stop_reason == "test done"
    assert metrics.stage_restarts.labels("device")._value.get() == 1
    assert metrics.reconnects.labels("c")._value.get() == 0
    snapshot = sup.status()
    assert snapshot["stage_restarts"] == 1  # /cameras, and so the header of segpipe status
    from pipeline.cli.status import table

    assert table(snapshot, snapshot).splitlines()[0].endswith("; stages restarted 1x")
    seqs = [e["seq"] for e in events(tmp_path) if e["kind"] == "frame"]
    assert seqs == sorted(seqs)  # no frame published twice or out of order across the restart
    assert no_segments_left()


def test_a_stage_that_keeps_dying_ends_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pipeline.supervisor as supervisor

    monkeypatch.setattr(supervisor, "STAGE_RESTARTS", 2)
    killed: list[int] = []

    def tick(sup: Supervisor) -> None:
        pid = sup.pids().get("sinks")
        if pid and pid not in killed:
            killed.append(pid)
            os.kill(pid, signal.SIGKILL)

    sup = Supervisor(cfg=_looping(tmp_path), on_tick=tick)
    assert sup.run() == 1
    assert len(killed) == 3
    assert sup.errors[0] == "sink stage exited with code -9 (2 restarts in the last 10 min)"
    assert not sup.pids() and no_segments_left()


@pytest.mark.parametrize("role", ["device", "sinks"])
def test_a_stage_that_hangs_is_killed_and_started_again(tmp_path: Path, role: str, monkeypatch: pytest.MonkeyPatch,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    """SIGSTOP: alive but doing nothing. The device stage is hung when cameras deliver frames and none is
    inferred; a sink stage when it stops reporting. Either is killed and the data plane starts again."""
    import pipeline.supervisor as supervisor

    monkeypatch.setattr(supervisor, "STAGE_HANG_S", 3.0)
    clip = write_clip(tmp_path / "c.mp4", frames=30, fps=15, size=(96, 64))
    cfg = config(tmp_path, [{"id": "c", "url": str(clip), "loop": True}])  # paced like a live camera
    state: dict[str, Any] = {"stopped": 0, "seen": 0}

    def tick(sup: Supervisor) -> None:
        n = sum(1 for e in events(tmp_path) if e["kind"] == "frame")
        if not state["stopped"] and n > 5 and role in sup.pids():
            state["stopped"], state["seen"] = sup.pids()[role], n
            os.kill(state["stopped"], signal.SIGSTOP)
        elif state["stopped"] and sup.stage_restarts and n > state["seen"] + 5:
            sup.request_stop("test done")

    sup = Supervisor(cfg=cfg, on_tick=tick)
    timer = threading.Timer(120, lambda: sup.request_stop("timeout"))
    timer.start()
    try:
        with caplog.at_level("ERROR", logger="segpipe.supervisor"):
            assert sup.run() == 0 and sup.errors == []
    finally:
        timer.cancel()
    assert sup._stop_reason == "test done" and sup.stage_restarts == 1
    why = "no frame inferred for" if role == "device" else "no report for"
    name = "device stage" if role == "device" else "sink stage"
    assert f"error='{name} hung ({why}" in caplog.text and "and was killed'" in caplog.text
    assert no_segments_left()


def test_a_camera_roi_is_all_the_model_sees(tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "a.mp4", frames=4, fps=30, size=(160, 120))
    cfg = config(tmp_path, [{"id": "a", "url": str(clip), "realtime": False, "lossless": True,
                             "roi": [0.5, 0.25, 1.0, 1.0]},
                            {"id": "b", "url": str(clip), "realtime": False, "lossless": True}])
    assert Supervisor(cfg=cfg).run() == 0
    frames = [e for e in events(tmp_path) if e["kind"] == "frame"]
    mine = [e for e in frames if e["camera"] == "a"]
    assert len(mine) == 4 and all(e["roi"] == [80, 30, 160, 120] for e in mine)
    assert all(d["box"][0] >= 80 and d["box"][1] >= 30 for e in mine for d in e["detections"])
    assert any(e["detections"] for e in mine)
    assert all("roi" not in e for e in frames if e["camera"] == "b")


def test_reload_updates_reach_an_inbox_in_order_when_it_was_full() -> None:
    """Two quick reloads (a camera removed, then put back) met a full sink inbox: the second list, tried
    once room was made, went before the first, which then undid it (the camera removed there for good)."""
    import queue
    import types

    class Inbox:
        def __init__(self) -> None:
            self.full, self.got = True, list[object]()

        def put_nowait(self, item: object) -> None:
            if self.full:
                self.full = False  # the sink stage takes an item meanwhile: room for the next put
                raise queue.Full
            self.got.append(item)

    inbox, other = Inbox(), Inbox()
    other.full = False
    sup = types.SimpleNamespace(_updates=[(inbox, "without gate"), (other, "without gate"),
                                          (inbox, "with gate"), (other, "with gate")])
    Supervisor._send_updates(sup)  # type: ignore[arg-type]
    assert other.got == ["without gate", "with gate"] and inbox.got == []
    Supervisor._send_updates(sup)  # type: ignore[arg-type]
    assert inbox.got == ["without gate", "with gate"] and sup._updates == []
