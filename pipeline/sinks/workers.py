"""Event workers: with ``events.workers: N`` > 1, N processes between the device stage and the sink
stage make the events (classes, track ids, zones and lines, JSON), each for its share of the cameras.

Why: tracking, zones and lines and serialising cost about ten times what publishing does (about 0.5
ms a frame with 10 objects against 0.08, ``benchmarks/sink_stage.py``), and one sink process does
them for every camera: about 1,700 frames/s with 10 objects, 800 with 40. A wall of cameras past
that fills the sink queue and the device stage waits. With workers the sink process only publishes.

Every item of a camera goes to the same worker, so each camera's tracks see its frames and statuses
in order. Cameras are dealt to the worker with the fewest (``EventWorkers.assign``, at start and as a
reload adds them): the device stage routes by that table, the supervisor its statuses and updates.
A worker puts the ``Envelope``s it makes on the sink stage's inbox, reports its ``StageStats``
(tracks, crossings, zone counts, its own step time) to the supervisor, and on STOP sends a last
report and exits; the
supervisor puts STOP on the sink inbox only once every worker has exited, after their events.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import queue
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pipeline.config import CameraConfig, TrackingConfig
from pipeline.messages import STOP
from pipeline.sinks.stage import EventMaker, Reporter, serve

log = logging.getLogger(__name__)


def run_event_worker(*, index: int, inbox: Any, out: Any, stats: Any = None, tracking: TrackingConfig | None = None,
                     cameras: Sequence[CameraConfig] = (), report_every_s: float = 1.0,
                     first_track_ids: Mapping[str, int] | None = None) -> None:
    """Process target: make the events of the items on ``inbox`` (FrameResult, FramePreview,
    CameraStatus, CamerasUpdate; until STOP) and put them on ``out``, the sink stage's inbox."""
    stage = f"events{index}"
    reporter = Reporter(stats)
    maker = EventMaker(tracking=tracking, cameras=cameras, first_track_ids=first_track_ids)
    steps: list[float] = []

    def handle(item: Any) -> None:
        t0 = time.perf_counter()
        env = maker.take(item)
        if env is None:
            return
        if env.image is None and env.kind == "frame":  # no sink draws: the payload is all the sinks need
            env = dataclasses.replace(env, item=None)  # (a status stays: small, and the preview shows it)
        steps.append(time.perf_counter() - t0)
        out.put(env)  # blocks while the sink stage is behind: the device stage waits, as without workers

    def report() -> None:
        reporter.send(maker.report(stage, stage_latency={"events": tuple(steps)} if steps else {}))
        steps.clear()

    try:
        serve(inbox, handle, report, report_every_s)
    finally:
        report()
        # every event is in the pipe before this process is gone (the supervisor's STOP comes after)
        out.close()
        out.join_thread()


class EventWorkers:
    """The supervisor's handle on the event worker processes and their inboxes."""

    def __init__(self, *, count: int, ctx: Any, spawn: Callable[..., Any], out: Any, stats: Any,
                 tracking: TrackingConfig, cameras: Sequence[CameraConfig], queue_size: int,
                 first_track_ids: Mapping[str, int] | None = None) -> None:
        self.out = out
        self.inboxes = [ctx.Queue(queue_size) for _ in range(count)]
        self.procs = [spawn(f"events{k}", run_event_worker, index=k, inbox=q, out=out, stats=stats,
                            tracking=tracking, cameras=cameras, first_track_ids=first_track_ids)
                      for k, q in enumerate(self.inboxes)]
        self.route: dict[str, int] = {}  # camera id -> worker index
        for cam in cameras:
            self.assign(cam.id)

    def assign(self, camera_id: str) -> int:
        """The worker of ``camera_id``: its own if it has one, else the one with the fewest cameras."""
        if camera_id not in self.route:
            load = [0] * len(self.inboxes)
            for k in self.route.values():
                load[k] += 1
            self.route[camera_id] = load.index(min(load))
        return self.route[camera_id]

    def release(self, camera_id: str) -> None:
        """Forget a camera a reload removed (its worker takes the next one added)."""
        self.route.pop(camera_id, None)

    def inbox_of(self, camera_id: str) -> Any:
        return self.inboxes[self.assign(camera_id)]

    def pids(self) -> dict[str, int]:
        return {f"events{k}": p.pid for k, p in enumerate(self.procs) if p.pid and p.is_alive()}

    def exited(self) -> str | None:
        """"event worker K exited with code C" for the first worker gone, None while all run."""
        for k, p in enumerate(self.procs):
            if not p.is_alive():
                return f"event worker {k} exited with code {p.exitcode}"
        return None

    def discard_dead_inboxes(self) -> None:
        """Empty the inboxes of workers that are gone, so the device stage never blocks on one."""
        for p, q in zip(self.procs, self.inboxes, strict=True):
            if not p.is_alive():
                discard(q)

    def stop(self, *, grace_s: float, sink_alive: Callable[[], bool], tick: Callable[[], None]) -> None:
        """STOP to every worker, then wait for all (``tick`` between waits; the sink inbox emptied
        here if the sink stage is gone), killing the ones past ``grace_s``."""
        for p, q in zip(self.procs, self.inboxes, strict=True):
            if p.is_alive():
                try:
                    q.put(STOP, timeout=5.0)
                except queue.Full:
                    log.error("event=worker_stop_failed worker=%s reason=queue_full", p.name)
        deadline = time.monotonic() + grace_s
        for p in self.procs:
            while p.is_alive() and time.monotonic() < deadline:
                if not sink_alive():
                    discard(self.out)
                tick()
                p.join(0.1)
            if p.is_alive():
                log.error("event=worker_killed worker=%s reason=stop_timeout", p.name)
                p.kill()
                p.join(5)
        for q in self.inboxes:
            q.cancel_join_thread()
            q.close()


def discard(q: Any) -> None:
    """Take and drop everything waiting in queue ``q``."""
    with contextlib.suppress(queue.Empty, OSError, ValueError):
        while True:
            q.get_nowait()
