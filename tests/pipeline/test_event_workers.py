"""events.workers: N processes make the events (tracking, zones and lines, JSON), each for its share of
the cameras, and the sink stage only publishes. Real processes, real clips, the JSONL sink."""

from __future__ import annotations

import os
import signal
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import TrackingConfig, ZoneConfig, resolve_demo
from pipeline.supervisor import Supervisor
from pipeline.tracking import Tracker
from tests.pipeline.media import write_clip
from tests.pipeline.test_supervisor import config, events

FRAMES = 12


def _cameras(tmp_path: Path, n: int) -> list[dict[str, Any]]:
    out = []
    for i in range(n):
        clip = write_clip(tmp_path / f"c{i}.mp4", frames=FRAMES, size=(96, 64), start=i * 7)
        out.append({"id": f"cam{i}", "url": str(clip), "realtime": False, "lossless": True})
    return out


def _demo_config(tmp_path: Path, n: int, **extra: Any) -> Any:
    """The demo model on n short traffic clips (rendered into tmp_path), so that there are objects to track."""
    cams = [{"id": f"cam{i}", "url": f"demo://traffic?seed={i}&seconds=1.2&fps=10&size=320x192",
             "realtime": False, "lossless": True} for i in range(n)]
    model = {"path": "demo://model", "device": "cpu", "imgsz": [192, 320], "threads": 1}
    return resolve_demo(config(tmp_path, cams, model=model, **extra), cache_dir=tmp_path / "cache")


def test_workers_share_the_cameras_and_each_camera_is_tracked_in_order(tmp_path: Path) -> None:
    tracking = {"enabled": True}
    cfg = _demo_config(tmp_path, 4, tracking=tracking, events={"workers": 2})
    cams = [{"id": c.id} for c in cfg.cameras]
    seen_pids: set[str] = set()
    sup = Supervisor(cfg=cfg, on_tick=lambda s: seen_pids.update(s.pids()))
    assert sup.run() == 0, sup.errors
    assert {"events0", "events1", "sinks", "device"} <= seen_pids
    assert sorted(sup._workers.route.values()) == [0, 0, 1, 1]  # dealt evenly
    frames: dict[str, list[dict]] = defaultdict(list)
    states: dict[str, list[str]] = defaultdict(list)
    for e in events(tmp_path):
        if e["kind"] == "frame":
            frames[e["camera"]].append(e)
        else:
            states[e["camera"]].append(e["state"])
    tracker_cfg = TrackingConfig(**tracking)
    for c in cams:
        got = frames[c["id"]]
        assert [e["seq"] for e in got] == list(range(12))  # every frame, once, in order
        assert states[c["id"]][-1] == "ended"
        # the same tracker run over the published detections, in order, gives the published ids
        replay = Tracker(tracker_cfg)
        for e in got:
            dets = e["detections"]
            ids = replay.update(e["seq"], np.array([d["box"] for d in dets]).reshape(-1, 4),
                                np.array([d["score"] for d in dets]), np.array([d["class_id"] for d in dets]))
            assert ids == [d.get("track_id") for d in dets]
        started = {d["track_id"] for e in got for d in e["detections"] if d.get("track_id")}
        assert started, "no track on a camera"
        row = next(r for r in sup.status()["cameras"] if r["id"] == c["id"])
        assert row["tracks"] == len(started)  # the workers' reports reach the supervisor


def test_a_worker_that_dies_ends_the_run(tmp_path: Path) -> None:
    cams = _cameras(tmp_path, 2)
    for c in cams:
        c["loop"] = True  # never ends by itself
    cfg = config(tmp_path, cams, events={"workers": 2})
    killed: list[int] = []

    def kill_once(sup: Supervisor) -> None:
        pid = sup.pids().get("events1")
        if pid and not killed:
            killed.append(pid)
            os.kill(pid, signal.SIGKILL)

    sup = Supervisor(cfg=cfg, on_tick=kill_once)
    assert sup.run() == 1
    assert killed and sup.errors[0] == "event worker 1 exited with code -9"
    assert not sup.pids()  # every process is gone


def test_reload_reaches_every_worker(tmp_path: Path) -> None:
    """A new zone on both cameras reaches both workers; a camera added by the reload gets a worker and
    its events come out, zones applied."""
    three = _demo_config(tmp_path, 3, events={"workers": 2})
    looping = tuple(c.model_copy(update={"loop": True}) for c in three.cameras)
    cfg = three.model_copy(update={"cameras": looping[:2]})
    zone = ZoneConfig(name="all", polygon=((0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0)))
    zoned = three.model_copy(update={"cameras": tuple(c.model_copy(update={"zones": (zone,)}) for c in looping)})
    state = {"ticks": 0}

    def tick(sup: Supervisor) -> None:
        state["ticks"] += 1
        if state["ticks"] == 2:
            sup.request_reload()
        zoned_cams = {e["camera"] for e in events(tmp_path) if e["kind"] == "frame"
                      and any(d.get("zones") == ["all"] for d in e["detections"])}
        if zoned_cams == {c.id for c in zoned.cameras} or state["ticks"] > 60:
            sup.request_stop("test done")

    sup = Supervisor(cfg=cfg, on_tick=tick, reloader=lambda: zoned)
    assert sup.run() == 0, sup.errors
    assert state["ticks"] <= 60, "the new zone never reached every camera"
    assert sorted(sup._workers.route.values()) == [0, 0, 1]


def test_a_sink_stage_that_dies_under_workers_ends_the_run_without_a_hang(tmp_path: Path) -> None:
    """The workers are blocked on a sink inbox nobody reads: shutdown empties it so they can exit."""
    import time

    cams = _cameras(tmp_path, 2)
    for c in cams:
        c["loop"] = True
    cfg = config(tmp_path, cams, events={"workers": 2})
    killed: list[int] = []

    def kill_once(sup: Supervisor) -> None:
        pid = sup.pids().get("sinks")
        if pid and not killed and sup.status()["cameras"][0].get("inferred", 0) > 5:
            killed.append(pid)
            os.kill(pid, signal.SIGKILL)

    sup = Supervisor(cfg=cfg, on_tick=kill_once)
    t0 = time.monotonic()
    assert sup.run() == 1
    assert killed and sup.errors[0] == "sink stage exited with code -9"
    assert not sup.pids() and time.monotonic() - t0 < 60
