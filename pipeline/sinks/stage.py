"""The sink stage: a process that turns FrameResult/CameraStatus into events and fans them out (with
``events.workers`` > 1, event workers make the events and this process only publishes them).

A camera with ``classes`` keeps only objects with those labels. With ``tracking.enabled`` it then gives
each detection its ``track_id`` (``pipeline.tracking``), then
applies the cameras' zones and counting lines (``pipeline.analytics``): this process sees every
camera's results in order, and this work takes no time from the device stage.

Why a process of its own: serialising events and talking to Redis/ZeroMQ/disk must not take time
from the device stage, and a sink library that crashes or hangs takes only this process with it.
The loop reads a bounded multiprocessing queue until STOP, serialises each item once
(``pipeline.events``), hands the bytes to every sink that wants that camera, and every
``report_every_s`` sends a ``StageStats`` (sink counters, capture-to-publish latency, own step time)
to the supervisor. On STOP it flushes and closes every sink, sends the last report and returns.
If the sinks cannot be set up it reports the error, then keeps draining the inbox until STOP so the
upstream stage never blocks on a full queue, and exits with status 1.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from pipeline.config import CameraConfig, TrackingConfig
from pipeline.events import encode, status_event, to_event
from pipeline.messages import STOP, CameraState, CameraStatus, FramePreview, FrameResult
from pipeline.metrics import StageStats
from pipeline.shm import FrameLookup
from pipeline.sinks import BUILTIN_SINKS, SinkRegistry
from pipeline.sinks.base import Envelope, Pictured, Retaining, Sink, Watched
from pipeline.sinks.config import SinkConfig, check_sink_names

if TYPE_CHECKING:
    from pipeline.analytics import Analytics
    from pipeline.tracking import CameraTrackers

log = logging.getLogger(__name__)

STAGE = "sinks"
WATCH_CHECK_S = 0.1  # how often the preview sinks' watched cameras are compared with the last ones sent
_MAX_PENDING_REPORTS = 60  # reports held while the supervisor's stats queue is full


def is_stop(item: Any) -> bool:
    """True for the STOP sentinel, also after a trip through a multiprocessing queue: unpickling
    ``object()`` yields a fresh bare ``object``, never the same one, and nothing else is sent bare."""
    return item is STOP or type(item) is object


@dataclass(frozen=True, slots=True)
class CamerasUpdate:
    """The run's cameras after a config reload (supervisor -> sink stage, through the inbox): new zones,
    lines and classes take effect from the next frame; removed cameras' tracks are dropped. rings: camera
    id -> shm prefix of every camera now, for sinks that read frames back (None: unchanged)."""

    cameras: tuple[CameraConfig, ...]
    rings: Mapping[str, str] | None = None


class EventMaker:
    """FrameResult / CameraStatus -> ``Envelope``: a camera's ``classes`` kept, track ids, zones and
    lines applied, the event serialised once. Every camera's items must come to one maker in order."""

    def __init__(self, *, tracking: TrackingConfig | None = None, cameras: Sequence[CameraConfig] = (),
                 first_track_ids: Mapping[str, int] | None = None) -> None:
        tracking = self.tracking = tracking or TrackingConfig()
        self.trackers: CameraTrackers | None = None
        if tracking.enabled:
            from pipeline.tracking import CameraTrackers, with_track_ids  # scipy: only when tracking is on

            self.trackers = CameraTrackers(tracking, first_ids=first_track_ids)
            self._with_track_ids = with_track_ids
        self.analytics: Analytics | None = None
        self._classes: dict[str, frozenset[str]] = {}
        self.update_cameras(cameras)
        self._bad: dict[tuple[str, str], int] = defaultdict(int)

    def update_cameras(self, cameras: Sequence[CameraConfig]) -> None:
        """Take the run's (new) cameras: their classes, zones and lines; forget the tracks of cameras gone.
        Analytics, once made, stays (with no camera, if a reload took every shape away) so the
        crossings it counted since the last report are still reported."""
        ids = {c.id for c in cameras}
        self._classes = {c.id: frozenset(c.classes) for c in cameras if c.classes}
        if self.trackers is not None:
            self.trackers.forget([cid for cid in self.trackers.active() if cid not in ids])
        if self.analytics is not None:
            self.analytics.update(cameras)
        elif any(c.zones or c.lines for c in cameras):
            from pipeline.analytics import Analytics

            self.analytics = Analytics(cameras, max_lost_frames=self.tracking.max_lost_frames)

    def make(self, item: FrameResult | CameraStatus, *, image: Any = None) -> Envelope | None:
        """The event of ``item`` for the sinks; None (counted) for a malformed item. Never raises for one."""
        now = time.time()
        try:
            if isinstance(item, FrameResult):
                keep = self._classes.get(item.camera_id)
                if keep is not None:  # before tracking: a filtered-out class starts no track
                    item = dataclasses.replace(item, detections=tuple(d for d in item.detections if d.label in keep))
                ids = None if self.trackers is None else self.trackers.track(item)
                if self.analytics is not None and self.analytics.covers(item.camera_id):
                    born = None if self.trackers is None else self.trackers.born(item.camera_id)
                    result = self.analytics.apply(item, ids, born)  # ids, zones and lines in one copy
                elif ids is not None:
                    result = self._with_track_ids(item, ids)
                else:
                    result = item
                return Envelope(camera_id=result.camera_id, kind="frame",
                                payload=encode(to_event(result, publish_ts=now)), item=result, image=image,
                                capture_ts=result.capture_ts, objects=len(result.detections))
            if isinstance(item, CameraStatus):
                if self.trackers is not None:
                    self.trackers.on_status(item)
                return Envelope(camera_id=item.camera_id, kind="status",
                                payload=encode(status_event(item, publish_ts=now)), item=item)
            raise TypeError(f"expected FrameResult or CameraStatus, got {type(item).__name__}")
        except (TypeError, ValueError) as e:  # a malformed message is an upstream bug: count it, keep going
            self._bad[getattr(item, "camera_id", "?"), "bad_message"] += 1
            log.error("events: dropping a malformed %s: %s", type(item).__name__, e)
            return None

    def take(self, item: Any) -> Envelope | None:
        """The event of an inbox item: a ``CamerasUpdate`` is applied (no event); a ``FramePreview``'s
        frame rides along for the drawing sinks."""
        if isinstance(item, CamerasUpdate):
            self.update_cameras(item.cameras)
            return None
        if isinstance(item, FramePreview):
            return self.make(item.result, image=item.image)
        return self.make(item)

    def report(self, stage: str, **fields: Any) -> StageStats:
        """Tracks, crossings, zone counts and malformed items since the previous report, plus ``fields``."""
        tracks, analytics = self.trackers, self.analytics
        stats = StageStats(stage=stage, dropped=dict(self._bad),
                           tracks_started=tracks.take_started() if tracks else {},
                           tracks_active=tracks.active() if tracks else {},
                           line_crossings=analytics.take_crossings() if analytics else {},
                           zone_overstays=analytics.take_overstays() if analytics else {},
                           zone_objects=analytics.zone_objects() if analytics else {},
                           zone_crowded={k: int(v) for k, v in analytics.zone_crowded().items()} if analytics else {},
                           **fields)
        self._bad.clear()
        return stats


class SinkStage:
    """Fan events out to sinks, count. Usable in-process (tests) or via ``run_sink_stage``. Its
    ``EventMaker`` makes the events of the items it is handed, unless event workers made them."""

    def __init__(self, *, sinks: Sequence[tuple[SinkConfig, Sink]], stage: str = STAGE,
                 tracking: TrackingConfig | None = None, cameras: Sequence[CameraConfig] = (),
                 watch_out: Any = None, first_track_ids: Mapping[str, int] | None = None,
                 rings: Mapping[str, str] | None = None) -> None:
        self.stage = stage
        self.sinks = list(sinks)
        # sinks that attach an event's picture read it back from the camera's ring (shm.FrameLookup)
        pictured = [sink for _, sink in self.sinks if isinstance(sink, Pictured)]
        self.frames: FrameLookup | None = None
        if pictured:
            self.frames = FrameLookup(dict(rings or {}))
            for sink in pictured:
                sink.use_frames(self.frames)
        # preview sinks name the cameras someone watches; the device stage (through ``watch_out``, its
        # command queue) then copies those cameras' frames, and no others
        self._previews = [sink for _, sink in self.sinks if isinstance(sink, Watched)]
        self.watch_out = watch_out if self._previews else None
        self._watched: frozenset[str] = frozenset()
        self._watch_due = 0.0
        self.maker = EventMaker(tracking=tracking, cameras=cameras, first_track_ids=first_track_ids)
        # the run's cameras, so that retaining sinks learn which ones a reload removed (with event workers
        # none are given at start: the stage learns them from their statuses)
        self._cameras = {c.id for c in cameras}
        self._gone: set[str] = set()  # removed by a reload and not put back since
        # sinks that clear what an earlier run left retained are told the run's cameras: ``rings`` names
        # them too (the supervisor passes it with event workers as without); given neither, they are told
        # at the first reload, and clear nothing before (a camera is cleared only once known to be gone)
        if cameras or rings is not None:
            self._hand([c.id for c in cameras] if cameras else list(rings or ()))
        self._e2e: dict[str, list[float]] = defaultdict(list)
        self._step: list[float] = []

    @classmethod
    def from_configs(cls, configs: Sequence[SinkConfig], *, registry: SinkRegistry | None = None,
                     stage: str = STAGE, tracking: TrackingConfig | None = None,
                     cameras: Sequence[CameraConfig] = (), watch_out: Any = None,
                     first_track_ids: Mapping[str, int] | None = None,
                     rings: Mapping[str, str] | None = None) -> SinkStage:
        """Build every sink (SinkError if one cannot be set up; those already built are closed)."""
        registry = registry or SinkRegistry(BUILTIN_SINKS)
        check_sink_names(list(configs))
        built: list[tuple[SinkConfig, Sink]] = []
        try:
            for cfg in configs:
                built.append((cfg, registry.build(cfg)))
        except BaseException:
            for _, sink in built:
                sink.close(timeout=1.0)
            raise
        return cls(sinks=built, stage=stage, tracking=tracking, cameras=cameras, watch_out=watch_out,
                   first_track_ids=first_track_ids, rings=rings)

    def update_cameras(self, cameras: Sequence[CameraConfig]) -> None:
        """Take a reload's cameras (``EventMaker.update_cameras``) and tell the retaining sinks which of
        this run's cameras left it. A shard replica's cameras are its own: it clears only those."""
        self.maker.update_cameras(cameras)
        ids = {c.id for c in cameras}
        gone = self._cameras - ids
        self._cameras, self._gone = ids, (self._gone | gone) - ids
        self._removed(gone)
        self._hand(ids)

    def _removed(self, camera_ids: Collection[str]) -> None:
        """Tell each retaining sink of those of ``camera_ids`` whose events it is handed."""
        for cfg, sink in self.sinks:
            mine = sorted(c for c in camera_ids if _wants(cfg, c, "frame"))
            if not mine or not isinstance(sink, Retaining):
                continue
            try:
                sink.cameras_removed(mine)
            except Exception as e:  # sinks must not raise; if one does, it fails alone
                sink.counters.error("cameras_removed")
                log.error("sink %s: cameras_removed raised %s: %s", sink.name, type(e).__name__, e)

    def _hand(self, camera_ids: Collection[str]) -> None:
        """Tell each ``Rostered`` sink which of ``camera_ids`` (the run's cameras) it is handed statuses of."""
        for cfg, sink in self.sinks:
            if not isinstance(sink, Rostered):
                continue
            try:
                sink.cameras_handed(sorted(c for c in camera_ids if _wants(cfg, c, "status")))
            except Exception as e:  # sinks must not raise; if one does, it fails alone
                sink.counters.error("cameras_handed")
                log.error("sink %s: cameras_handed raised %s: %s", sink.name, type(e).__name__, e)

    def _late(self, env: Envelope) -> bool:
        """Whether status ``env`` is a removed camera's last (``stopped``), come after the reload's
        ``CamerasUpdate``: with event workers it takes another way here, and the retained copy it leaves
        must be cleared again. Any other status says its camera is in the run."""
        stopped = not isinstance(env.item, CameraStatus) or env.item.state is CameraState.STOPPED
        if env.camera_id in self._gone and stopped:
            return True
        self._gone.discard(env.camera_id)  # running again: a reload put it back, its update on the way
        self._cameras.add(env.camera_id)
        return False

    def handle(self, item: FrameResult | CameraStatus, *, image: Any = None) -> None:
        """Make ``item``'s event and publish it. Never raises for a bad item: counts it."""
        t0 = time.perf_counter()
        env = self.maker.make(item, image=image)
        if env is not None:
            self.publish(env, started=t0)

    def take(self, item: Any) -> None:
        """One inbox item: an event made by an event worker is published; a reload's ``CamerasUpdate`` is
        applied (``update_cameras``); anything else is made into an event first (``EventMaker.make``)."""
        if isinstance(item, Envelope):
            self.publish(item)
        elif isinstance(item, CamerasUpdate):
            if item.rings is not None and self.frames is not None:
                self.frames.update(dict(item.rings))
            self.update_cameras(item.cameras)
        else:
            t0 = time.perf_counter()
            env = self.maker.take(item)
            if env is not None:
                self.publish(env, started=t0)
        self.sync_watch()

    def sync_watch(self, *, now: bool = False) -> None:
        """Send the cameras the preview sinks show to the device stage when they changed (checked at most
        every ``WATCH_CHECK_S`` unless ``now``)."""
        t = time.monotonic()
        if self.watch_out is None or (t < self._watch_due and not now):
            return
        self._watch_due = t + WATCH_CHECK_S
        watched = frozenset().union(*(sink.watching() for sink in self._previews))
        if watched != self._watched:
            self._watched = watched
            self.watch_out.put(("watch", watched))

    def publish(self, env: Envelope, *, started: float | None = None) -> None:
        """Hand ``env`` to every sink that wants it (its cameras, statuses or not)."""
        t0 = time.perf_counter() if started is None else started
        if env.capture_ts is not None:
            self._e2e[env.camera_id].append(max(time.time() - env.capture_ts, 0.0))
        late = env.kind == "status" and self._late(env)
        # a removed camera's frames that come after the reload's update (the device stage's batches in flight,
        # an event worker's queue): a sink that let go of the camera would take it up again (a new file, a
        # new stream, back on the wall) and hold it for good
        gone = env.kind != "status" and env.camera_id in self._gone
        for cfg, sink in self.sinks:
            if not _wants(cfg, env.camera_id, env.kind):
                continue
            if gone and isinstance(sink, Retaining):
                sink.counters.dropped(env.camera_id, "removed")
                continue
            try:
                sink.publish(env)
            except Exception as e:  # sinks must not raise; if one does, it fails alone
                sink.counters.error("publish")
                sink.counters.dropped(env.camera_id, "publish_error")
                log.error("sink %s: publish raised %s: %s", sink.name, type(e).__name__, e)
        if late:
            self._removed([env.camera_id])
        self._step.append(time.perf_counter() - t0)

    def report(self) -> StageStats:
        """Counts and observations since the previous report."""
        self.sync_watch(now=True)  # also while no item comes (a snapshot's watch expires)
        sent: dict[tuple[str, str], int] = {}
        dropped: dict[tuple[str, str, str], int] = {}
        errors: dict[tuple[str, str], int] = {}
        for _, sink in self.sinks:
            deltas = sink.counters.take()
            sent.update({(sink.name, cam): n for cam, n in deltas.sent.items()})
            dropped.update({(sink.name, cam, reason): n for (cam, reason), n in deltas.dropped.items()})
            errors.update({(sink.name, reason): n for reason, n in deltas.errors.items()})
        stats = self.maker.report(self.stage, sink_sent=sent, sink_dropped=dropped, sink_errors=errors,
                                  sink_backlog={sink.name: sink.backlog() for _, sink in self.sinks},
                                  e2e_latency={c: tuple(v) for c, v in self._e2e.items() if v},
                                  stage_latency={"sink": tuple(self._step)} if self._step else {})
        self._e2e.clear()
        self._step.clear()
        return stats

    def close(self, timeout: float = 5.0) -> None:
        """Flush and close every sink, each within ``timeout`` seconds."""
        for _, sink in self.sinks:
            try:
                sink.close(timeout=timeout)
            except Exception as e:
                sink.counters.error("close")
                log.error("sink %s: close raised %s: %s", sink.name, type(e).__name__, e)
        if self.frames is not None:
            self.frames.close()


@runtime_checkable
class Rostered(Protocol):
    """A retaining sink whose server keeps what it retained across runs (MQTT): told the cameras this run
    hands it, it clears what an earlier run left of the others (a camera removed while segpipe was down)."""

    def cameras_handed(self, camera_ids: Collection[str]) -> None:
        """The cameras whose statuses this run hands the sink (at start and after each reload); like
        ``publish``, never blocks and never raises."""
        ...


def _wants(cfg: SinkConfig, camera_id: str, kind: str) -> bool:
    """Whether the sink of ``cfg`` is handed ``camera_id``'s events of ``kind`` (its cameras, statuses or not)."""
    return (cfg.cameras is None or camera_id in cfg.cameras) and (kind != "status" or cfg.statuses)


class Reporter:
    """Sends reports without ever blocking; holds a few while the supervisor's queue is full."""

    def __init__(self, out: Any) -> None:
        self.out = out
        self.pending: list[StageStats] = []

    def send(self, stats: StageStats) -> None:
        if self.out is None:
            return
        self.pending.append(stats)
        while self.pending:
            try:
                self.out.put_nowait(self.pending[0])
            except queue.Full:
                break
            self.pending.pop(0)
        if len(self.pending) > _MAX_PENDING_REPORTS:
            log.warning("sink stage: stats queue full, discarding %d old reports", len(self.pending) - 1)
            del self.pending[:-1]


def serve(inbox: Any, handle: Callable[[Any], None], report: Callable[[], None], report_every_s: float) -> None:
    """A stage process's loop: ``handle`` each item of ``inbox`` until STOP, and ``report`` every
    ``report_every_s`` seconds, also while idle (the last report, after STOP, is the caller's)."""
    next_report = time.monotonic() + report_every_s
    while True:
        try:
            item = inbox.get(timeout=max(next_report - time.monotonic(), 0.001))
        except queue.Empty:
            item = None
        if item is not None:
            if is_stop(item):
                return
            handle(item)
        if time.monotonic() >= next_report:
            report()
            next_report = time.monotonic() + report_every_s


def _drain_until_stop(inbox: Any) -> None:
    while not is_stop(inbox.get()):
        pass


def run_sink_stage(*, inbox: Any, configs: Sequence[SinkConfig], stats: Any = None, stage: str = STAGE,
                   report_every_s: float = 1.0, close_timeout_s: float = 5.0,
                   tracking: TrackingConfig | None = None, cameras: Sequence[CameraConfig] = (),
                   watch_out: Any = None, first_track_ids: Mapping[str, int] | None = None,
                   rings: Mapping[str, str] | None = None) -> None:
    """Process target: publish items from ``inbox`` to the sinks in ``configs`` until STOP.

    inbox: multiprocessing queue of FrameResult / CameraStatus, ended by STOP.
    stats: optional queue receiving ``StageStats`` every ``report_every_s`` seconds and at the end.
    tracking: when enabled, detections get track ids before they are published.
    cameras: the run's cameras, for their zones and counting lines.
    watch_out: the device stage's command queue, told which cameras the preview sinks show.
    first_track_ids: camera -> its first track id (a restarted stage continues past the old ids).
    rings: camera id -> shm prefix, for sinks that read an event's frame back (webhook snapshots).
    Exits 1 (after reporting the error and draining the inbox to STOP) if a sink cannot be set up.
    """
    reporter = Reporter(stats)
    try:
        sink_stage = SinkStage.from_configs(configs, stage=stage, tracking=tracking, cameras=cameras,
                                            watch_out=watch_out, first_track_ids=first_track_ids, rings=rings)
    except Exception as e:
        reporter.send(StageStats(stage=stage, error=f"{type(e).__name__}: {e}"))
        log.error("sink stage: %s", e)
        _drain_until_stop(inbox)
        sys.exit(1)
    try:
        serve(inbox, sink_stage.take, lambda: reporter.send(sink_stage.report()), report_every_s)
    finally:
        sink_stage.close(timeout=close_timeout_s)
        reporter.send(sink_stage.report())
