"""events.workers: N processes make the events (tracking, zones and lines, JSON), each for its share of
the cameras, and the sink stage only publishes. Real processes, real clips, the JSONL sink."""

from __future__ import annotations

import contextlib
import os
import signal
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline.config import TrackingConfig, ZoneConfig, resolve_demo
from pipeline.metrics import Metrics
from pipeline.supervisor import Supervisor
from pipeline.tracking import Tracker
from tests.helpers import wait_for
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


def _kill_once_then_stop(role: str, tmp_path: Path, killed: list[int]) -> Callable[[Supervisor], None]:
    """on_tick: SIGKILL ``role`` once frames flow, then stop once frame events come again after the
    restart (from new processes), or after 90 ticks."""
    state = {"ticks": 0, "events": 0}

    def tick(sup: Supervisor) -> None:
        state["ticks"] += 1
        n = sum(1 for e in events(tmp_path) if e["kind"] == "frame")
        pid = sup.pids().get(role)
        if not killed and pid and n > 5:
            killed.append(pid)
            state["events"] = n
            os.kill(pid, signal.SIGKILL)
        elif killed and sup.ready and n > state["events"] + 5 or state["ticks"] > 90:
            sup.request_stop("test done")

    return tick


@pytest.mark.parametrize("role", ["events1", "sinks"])
def test_a_stage_that_dies_under_workers_is_started_again(tmp_path: Path, role: str) -> None:
    """A worker or the sink stage killed: the device stage, workers and sink stage start again, the
    decoders stream on, and the run goes on (a dead sink's inbox no longer blocks anything)."""
    cams = _cameras(tmp_path, 2)
    for c in cams:
        c["loop"] = True  # never ends by itself
    cfg = config(tmp_path, cams, events={"workers": 2})
    killed: list[int] = []
    metrics = Metrics(process_collector=False)
    sup = Supervisor(cfg=cfg, on_tick=_kill_once_then_stop(role, tmp_path, killed), metrics=metrics)
    assert sup.run() == 0, sup.errors
    assert killed and sup.errors == []
    stage = "events" if role.startswith("events") else role
    assert metrics.stage_restarts.labels(stage)._value.get() == 1
    assert sup.pids() == {}  # every process is gone
    assert all(metrics.reconnects.labels(c["id"])._value.get() == 0 for c in cams)  # cameras untouched


@pytest.mark.parametrize("workers", [1, 2])
def test_the_preview_shows_camera_states_with_workers(tmp_path: Path, workers: int) -> None:
    """With event workers the status events reach the sink stage as worker-made envelopes: the preview's
    wall must still say each camera is live (it said "unknown" for the whole run), and how many objects it
    sees (None for the whole run: the worker drops a frame's result when nothing draws it)."""
    import json
    import urllib.request

    from tests.conftest import free_port

    cams = _cameras(tmp_path, 2)
    for c in cams:
        c["loop"] = True
    port = free_port()
    cfg = config(tmp_path, cams, events={"workers": workers},
                 sinks=[{"type": "jsonl", "path": str(tmp_path / "events.jsonl")}, {"type": "preview", "port": port}])
    seen: list[dict[str, Any]] = []

    def tick(sup: Supervisor) -> None:
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/cameras.json", timeout=2) as r:
                seen.append(json.loads(r.read()))
        done = seen and len(seen[-1]) == 2 and all(c.get("state") == "live" and c.get("objects") is not None
                                                   for c in seen[-1].values())
        if done or len(seen) > 40:
            sup.request_stop("test done")

    sup = Supervisor(cfg=cfg, on_tick=tick)
    assert sup.run() == 0, sup.errors
    assert seen and {k: v["state"] for k, v in seen[-1].items()} == {"cam0": "live", "cam1": "live"}, seen[-1:]
    assert all(isinstance(v["objects"], int) for v in seen[-1].values()), seen[-1:]


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




def _gone(pid: int) -> bool:
    """Whether process ``pid`` has ended (a zombie, not yet reaped by its parent, writes nothing more)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in "ZX"
    except (OSError, IndexError):
        return True


def test_track_ids_after_a_restart_never_name_an_earlier_object(tmp_path: Path) -> None:
    """The restarted sink stage's trackers start past every id handed out before (reported or not)."""
    one = _demo_config(tmp_path, 1, tracking={"enabled": True})
    cfg = one.model_copy(update={"cameras": tuple(c.model_copy(update={"loop": True}) for c in one.cameras)})
    state: dict[str, int] = {"ticks": 0, "at": 0}

    def ids(evs: list[dict[str, Any]]) -> list[int]:
        return [d["track_id"] for e in evs if e["kind"] == "frame" for d in e["detections"] if d.get("track_id")]

    def tick(sup: Supervisor) -> None:
        state["ticks"] += 1
        evs = events(tmp_path)
        if not state["at"] and ids(evs) and "sinks" in sup.pids():
            pid = sup.pids()["sinks"]
            os.kill(pid, signal.SIGKILL)
            # counted once it is dead: counted before the kill, the events it wrote meanwhile (old ids)
            # were taken for the restarted stage's
            wait_for(lambda: _gone(pid), 10, "the killed sink stage to die")
            state["at"] = len(events(tmp_path))
        elif state["at"] and ids(evs[state["at"]:]) or state["ticks"] > 90:
            sup.request_stop("test done")

    sup = Supervisor(cfg=cfg, on_tick=tick)
    assert sup.run() == 0, sup.errors
    evs = events(tmp_path)
    before, after = ids(evs[:state["at"]]), ids(evs[state["at"]:])
    assert before and after, "no track on one side of the restart"
    assert min(after) > max(before) and min(after) > 1000
