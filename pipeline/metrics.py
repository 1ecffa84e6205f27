"""Prometheus metrics for the runtime, fed by typed ``StageStats`` messages, served over HTTP.

Depends only on ``pipeline.messages``, ``pipeline.camera`` (its final states) and prometheus_client. The ``Metrics`` object owns its
registry (never the library's global default one), so tests and several pipelines in one process do
not collide. Child processes (decoders, device stage, sink stage) cannot touch the supervisor's
registry, so each sends ``StageStats`` deltas over a queue and the supervisor calls
``Metrics.apply``. ``MetricsServer`` serves ``/metrics``, ``/healthz`` (the process answers),
``/readyz`` (every readiness check passes: by default the engine is loaded and a camera is live) and,
when given a ``status`` callable, ``/cameras`` (its JSON: what ``segpipe status`` shows).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Enum,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.process_collector import ProcessCollector

from engines.errors import ConfigError
from pipeline.camera import TERMINAL
from pipeline.messages import CameraState, Picture

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0)
"""Seconds; fine below 100 ms where a healthy pipeline lives."""
BATCH_BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64)


def _check_counts(name: str, counts: Mapping) -> None:
    for key, n in counts.items():
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"StageStats.{name}[{key!r}]: expected int >= 0, got {n!r}")


def _check_seconds(name: str, obs: Mapping[str, Sequence[float]]) -> None:
    for key, values in obs.items():
        for v in values:
            if not math.isfinite(v) or v < 0:
                raise ValueError(f"StageStats.{name}[{key!r}]: expected finite seconds >= 0, got {v!r}")


@dataclass(frozen=True, slots=True)
class StageStats:
    """What one stage counted and observed since its previous report (deltas, never totals).

    Keys are camera ids unless noted. Latencies are seconds: ``stage_latency`` by step name
    (``decode``, ``preprocess``, ``infer``, ``postprocess``, ``sink``...), ``e2e_latency`` per camera
    from capture to publish. ``camera_states`` is the latest state per camera, ``engine_loaded``
    is set by the device stage (None: no news), ``error`` reports the stage's fatal error.
    ``tracks_started`` counts track ids handed out per camera (objects that entered and were
    confirmed); ``tracks_active`` is the latest number of tracks held per camera (a gauge).
    ``line_crossings`` counts crossings per (camera, line, direction, label), ``zone_overstays`` objects
    that stayed past a zone's ``max_dwell_s`` per (camera, zone, label); ``zone_crowded`` is 1 for a
    (camera, zone) crowded now (past its ``max_objects``), else 0 (a gauge); ``zone_objects`` is the
    latest number of objects per (camera, zone) (a gauge). These three gauges are whole in every report
    of a stage: a series the stage's next report leaves out is removed. ``queue_fill`` is how full each queue
    between two stages is, 0-1, by the name of the stage that reads it (a gauge): one that stays near 1
    is read by a stage that cannot keep up.
    """

    stage: str
    ts: float = field(default_factory=time.time)
    decoded: Mapping[str, int] = field(default_factory=dict)
    inferred: Mapping[str, int] = field(default_factory=dict)
    dropped: Mapping[tuple[str, str], int] = field(default_factory=dict)  # (camera, reason)
    reconnects: Mapping[str, int] = field(default_factory=dict)
    camera_states: Mapping[str, CameraState] = field(default_factory=dict)
    batch_sizes: tuple[int, ...] = ()
    stage_latency: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    e2e_latency: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    sink_sent: Mapping[tuple[str, str], int] = field(default_factory=dict)  # (sink, camera)
    sink_dropped: Mapping[tuple[str, str, str], int] = field(default_factory=dict)  # (sink, camera, reason)
    sink_errors: Mapping[tuple[str, str], int] = field(default_factory=dict)  # (sink, reason)
    tracks_started: Mapping[str, int] = field(default_factory=dict)
    tracks_active: Mapping[str, int] = field(default_factory=dict)
    line_crossings: Mapping[tuple[str, str, str, str], int] = field(default_factory=dict)
    zone_overstays: Mapping[tuple[str, str, str], int] = field(default_factory=dict)  # (camera, zone, label)
    zone_objects: Mapping[tuple[str, str], int] = field(default_factory=dict)
    zone_crowded: Mapping[tuple[str, str], int] = field(default_factory=dict)  # (camera, zone) -> 1 crowded, 0 not
    queue_fill: Mapping[str, float] = field(default_factory=dict)
    sink_backlog: Mapping[str, int] = field(default_factory=dict)  # sink -> events not yet delivered
    engine_loaded: bool | None = None
    error: str | None = None

    def __post_init__(self) -> None:
        for name in ("decoded", "inferred", "dropped", "reconnects", "sink_sent", "sink_dropped", "sink_errors",
                     "tracks_started", "tracks_active", "line_crossings", "zone_overstays", "zone_objects",
                     "zone_crowded", "sink_backlog"):
            _check_counts(name, getattr(self, name))
        _check_seconds("stage_latency", self.stage_latency)
        _check_seconds("e2e_latency", self.e2e_latency)
        for name, v in self.queue_fill.items():
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"StageStats.queue_fill[{name!r}]: expected 0-1, got {v!r}")
        for cam, state in self.camera_states.items():
            if not isinstance(state, CameraState):
                raise ValueError(f"StageStats.camera_states[{cam!r}]: expected CameraState, got {state!r}")
        for n in self.batch_sizes:
            if not isinstance(n, int) or n < 1:
                raise ValueError(f"StageStats.batch_sizes: expected ints >= 1, got {n!r}")


class Metrics:
    """The runtime's metrics on a private registry. Thread-safe (prometheus_client's own locks)."""

    def __init__(self, *, namespace: str = "segpipe", process_collector: bool = True) -> None:
        reg = self.registry = CollectorRegistry()
        ns = namespace
        self.decoded = Counter("frames_decoded", "Frames decoded per camera (rate() gives decode fps)",
                               ["camera"], namespace=ns, registry=reg)
        self.inferred = Counter("frames_inferred", "Frames through the model per camera (rate() gives fps)",
                                ["camera"], namespace=ns, registry=reg)
        self.dropped = Counter("frames_dropped", "Frames dropped before publishing, by reason",
                               ["camera", "reason"], namespace=ns, registry=reg)
        self.reconnects = Counter("camera_reconnects", "Camera reconnect attempts", ["camera"],
                                  namespace=ns, registry=reg)
        self.camera_state = Enum("camera_state", "Current camera state", ["camera"],
                                 states=[s.value for s in CameraState], namespace=ns, registry=reg)
        self.camera_picture = Gauge("camera_picture_problem", "1 while a running camera's picture has this "
                                    "problem (frozen, blank, moved, blurred), else 0; its frames are still inferred",
                                    ["camera", "problem"], namespace=ns, registry=reg)
        self.batch_size = Histogram("batch_size", "Frames per engine call", namespace=ns, registry=reg,
                                    buckets=BATCH_BUCKETS)
        self.stage_latency = Histogram("stage_latency_seconds", "Time spent in a pipeline step", ["stage"],
                                       namespace=ns, registry=reg, buckets=LATENCY_BUCKETS)
        self.e2e_latency = Histogram("e2e_latency_seconds", "Capture to publish time per camera", ["camera"],
                                     namespace=ns, registry=reg, buckets=LATENCY_BUCKETS)
        self.sink_events = Counter("sink_events", "Events a sink delivered", ["sink", "camera"],
                                   namespace=ns, registry=reg)
        self.sink_dropped = Counter("sink_dropped", "Events a sink dropped, by reason", ["sink", "camera", "reason"],
                                    namespace=ns, registry=reg)
        self.sink_errors = Counter("sink_errors", "Sink failures (connection, write...), by reason",
                                   ["sink", "reason"], namespace=ns, registry=reg)
        self.tracks_started = Counter("tracks_started", "Track ids handed out per camera (objects seen, "
                                      "with tracking on)", ["camera"], namespace=ns, registry=reg)
        self.tracks_active = Gauge("tracks_active", "Tracks held per camera (seen or briefly lost)", ["camera"],
                                   namespace=ns, registry=reg)
        self.line_crossings = Counter("line_crossings", "Tracked objects that crossed a counting line",
                                      ["camera", "line", "direction", "label"], namespace=ns, registry=reg)
        self.zone_overstays = Counter("zone_overstays", "Tracked objects that stayed in a zone longer than "
                                      "its max_dwell_s (once per visit)", ["camera", "zone", "label"],
                                      namespace=ns, registry=reg)
        self.zone_crowded = Gauge("zone_crowded", "1 while a zone holds more objects than its max_objects (held "
                                  "1 s), else 0", ["camera", "zone"], namespace=ns, registry=reg)
        self.zone_objects = Gauge("zone_objects", "Objects inside a zone on the camera's latest frame",
                                  ["camera", "zone"], namespace=ns, registry=reg)
        self.sink_backlog = Gauge("sink_backlog", "Events a sink accepted and has not delivered yet (memory "
                                  "queue and disk spool): grows while its server is away", ["sink"],
                                  namespace=ns, registry=reg)
        self.queue_fill = Gauge("queue_fill_ratio", "How full the queue a stage reads is (0-1): near 1, that "
                                "stage cannot keep up", ["stage"], namespace=ns, registry=reg)
        self.engine_loaded_gauge = Gauge("engine_loaded", "1 once the model engine is loaded", namespace=ns,
                                         registry=reg)
        self.stage_failures = Counter("stage_failures", "Fatal errors reported by a stage", ["stage"],
                                      namespace=ns, registry=reg)
        self.stage_restarts = Counter("stage_restarts", "Times the data plane was started again after this "
                                      "stage died (device, events, sinks)", ["stage"], namespace=ns, registry=reg)
        if process_collector:
            ProcessCollector(namespace=ns, registry=reg)
        self._lock = threading.Lock()
        self._states: dict[str, CameraState] = {}
        self._whole: dict[tuple[str, str], set[Any]] = {}  # (stage, gauge) -> label tuples it reported last
        self._engine_loaded = False

    def apply(self, stats: StageStats) -> None:
        """Fold one stage report into the metrics."""
        for cam, n in stats.decoded.items():
            self.decoded.labels(cam).inc(n)
        for cam, n in stats.inferred.items():
            self.inferred.labels(cam).inc(n)
        for (cam, reason), n in stats.dropped.items():
            self.dropped.labels(cam, reason).inc(n)
        for cam, n in stats.reconnects.items():
            self.reconnects.labels(cam).inc(n)
        for cam, state in stats.camera_states.items():
            self.set_camera_state(cam, state)
        for n in stats.batch_sizes:
            self.batch_size.observe(n)
        for step, values in stats.stage_latency.items():
            child = self.stage_latency.labels(step)
            for v in values:
                child.observe(v)
        for cam, values in stats.e2e_latency.items():
            child = self.e2e_latency.labels(cam)
            for v in values:
                child.observe(v)
        for (sink, cam), n in stats.sink_sent.items():
            self.sink_events.labels(sink, cam).inc(n)
        for (sink, cam, reason), n in stats.sink_dropped.items():
            self.sink_dropped.labels(sink, cam, reason).inc(n)
        for (sink, reason), n in stats.sink_errors.items():
            self.sink_errors.labels(sink, reason).inc(n)
        for cam, n in stats.tracks_started.items():
            self.tracks_started.labels(cam).inc(n)
        self._set_whole(stats.stage, "tracks_active", self.tracks_active,
                        {(cam,): n for cam, n in stats.tracks_active.items()})
        for (cam, line, direction, label), n in stats.line_crossings.items():
            self.line_crossings.labels(cam, line, direction, label).inc(n)
        for (cam, zone, label), n in stats.zone_overstays.items():
            self.zone_overstays.labels(cam, zone, label).inc(n)
        self._set_whole(stats.stage, "zone_crowded", self.zone_crowded, stats.zone_crowded)
        self._set_whole(stats.stage, "zone_objects", self.zone_objects, stats.zone_objects)
        for sink, n in stats.sink_backlog.items():
            self.sink_backlog.labels(sink).set(n)
        for stage, v in stats.queue_fill.items():
            self.queue_fill.labels(stage).set(v)
        if stats.engine_loaded is not None:
            self.set_engine_loaded(stats.engine_loaded)
        if stats.error is not None:
            self.stage_failures.labels(stats.stage).inc()

    def _set_whole(self, stage: str, name: str, gauge: Gauge, values: Mapping[Any, int]) -> None:
        """Set a gauge that ``stage`` reports whole each time (every camera and zone it holds). A series it
        no longer reports, and no other stage does, is removed: a camera or zone taken out by a reload
        (or a camera stopped) would otherwise stay at its last value for good, crowded or with tracks."""
        for labels, n in values.items():
            gauge.labels(*labels).set(n)
        with self._lock:
            gone = self._whole.get((stage, name), set()) - set(values)
            self._whole[stage, name] = set(values)
            gone -= {k for (s, n), keys in self._whole.items() if n == name for k in keys}
        for labels in gone:
            with contextlib.suppress(KeyError):
                gauge.remove(*labels)

    def stage_restarted(self, stage: str) -> None:
        self.stage_restarts.labels(stage).inc()

    def set_camera_state(self, camera_id: str, state: CameraState) -> None:
        self.camera_state.labels(camera_id).state(state.value)
        with self._lock:
            self._states[camera_id] = state

    def set_camera_picture(self, camera_id: str, picture: Picture, state: CameraState) -> None:
        """The camera's picture problems as 0/1 gauges, one per problem; all 0 once it ended, failed or
        stopped (a camera a reload removed must not keep an alert firing)."""
        running = state not in TERMINAL
        for problem in (p for p in Picture if p is not Picture.OK):
            self.camera_picture.labels(camera_id, problem.value).set(1 if running and picture is problem else 0)

    def set_engine_loaded(self, loaded: bool) -> None:
        self.engine_loaded_gauge.set(1 if loaded else 0)
        with self._lock:
            self._engine_loaded = loaded

    @property
    def engine_loaded(self) -> bool:
        with self._lock:
            return self._engine_loaded

    def camera_states(self) -> dict[str, CameraState]:
        with self._lock:
            return dict(self._states)

    def cameras_live(self) -> int:
        """How many cameras are LIVE now."""
        with self._lock:
            return sum(s is CameraState.LIVE for s in self._states.values())

    def default_readiness(self) -> tuple[ReadinessCheck, ...]:
        """Ready = the engine is loaded and at least one camera is live (both as reported here)."""
        return (ReadinessCheck("engine_loaded", lambda: self.engine_loaded),
                ReadinessCheck("camera_live", lambda: self.cameras_live() > 0))

    def render(self) -> bytes:
        """The Prometheus text exposition of everything in the registry."""
        return generate_latest(self.registry)


@dataclass(frozen=True, slots=True)
class ReadinessCheck:
    """A named condition ``/readyz`` requires; a check that raises counts as failing."""

    name: str
    check: Callable[[], bool]


class MetricsServer:
    """HTTP server for ``/metrics``, ``/healthz`` and ``/readyz`` on a daemon thread.

    Binds 127.0.0.1 by default: exposing it (0.0.0.0 in a container) is an explicit choice.
    ``port=0`` picks a free port (``start()`` returns it).
    """

    def __init__(self, *, metrics: Metrics, host: str = "127.0.0.1", port: int = 9108,
                 readiness: Sequence[ReadinessCheck] | None = None,
                 status: Callable[[], dict] | None = None) -> None:
        self.metrics, self.host, self.port = metrics, host, port
        self.status = status
        self.readiness = tuple(metrics.default_readiness() if readiness is None else readiness)
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def failing_checks(self) -> list[str]:
        """Names of the readiness checks that do not pass now."""
        failed = []
        for rc in self.readiness:
            try:
                ok = bool(rc.check())
            except Exception as e:  # a broken check means not ready, and the log says why
                log.warning("readiness check %s raised %s: %s", rc.name, type(e).__name__, e)
                ok = False
            if not ok:
                failed.append(rc.name)
        return failed

    def start(self) -> int:
        """Start serving; returns the bound port. ConfigError when the address cannot be bound."""
        try:
            self._httpd = ThreadingHTTPServer((self.host, self.port), _make_handler(self))
        except OSError as e:
            raise ConfigError("metrics.port", f"cannot listen on {self.host}:{self.port}: {e.strerror}") from None
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="metrics-http", daemon=True)
        self._thread.start()
        return self.port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None


def _make_handler(server: MetricsServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._reply(200, server.metrics.render(), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                self._reply(200, b"ok\n")
            elif path == "/readyz":
                failed = server.failing_checks()
                if failed:
                    self._reply(503, f"not ready: {', '.join(failed)}\n".encode())
                else:
                    self._reply(200, b"ready\n")
            elif path == "/cameras" and server.status is not None:
                self._reply(200, json.dumps(server.status()).encode(), "application/json")
            else:
                self._reply(404, b"not found: try /metrics, /healthz, /readyz or /cameras\n")

        def _reply(self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8") -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - base signature
            log.debug("metrics http: " + format, *args)

    return Handler
