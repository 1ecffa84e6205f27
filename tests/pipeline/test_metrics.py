"""Metrics: StageStats folded into a private registry, served over real HTTP with health/readiness."""

from __future__ import annotations

import math
import socket
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from engines.errors import ConfigError
from pipeline.messages import CameraState, Picture
from pipeline.metrics import Metrics, MetricsServer, ReadinessCheck, StageStats


def _samples(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[s.name, tuple(sorted(s.labels.items()))] = s.value
    return out


def _get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.headers["Content-Type"], r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], e.read().decode()


def test_stage_stats_update_counters_gauges_and_histograms() -> None:
    m = Metrics(process_collector=False)
    m.apply(StageStats(stage="decoder:cam0", decoded={"cam0": 30}, dropped={("cam0", "ring_full"): 2},
                       reconnects={"cam0": 1}, camera_states={"cam0": CameraState.LIVE},
                       stage_latency={"decode": (0.004, 0.006)}))
    m.apply(StageStats(stage="device", inferred={"cam0": 28}, batch_sizes=(4, 8, 8), engine_loaded=True,
                       stage_latency={"infer": (0.03,)}))
    m.apply(StageStats(stage="sinks", e2e_latency={"cam0": (0.05, 0.07)}, sink_sent={("redis", "cam0"): 27},
                       sink_dropped={("redis", "cam0", "buffer_full"): 1}, sink_errors={("redis", "connection"): 3},
                       tracks_started={"cam0": 4}, tracks_active={"cam0": 3}))
    m.apply(StageStats(stage="sinks", tracks_started={"cam0": 1}, tracks_active={"cam0": 2},
                       line_crossings={("cam0", "gate", "in", "car"): 2}, zone_objects={("cam0", "dock"): 4}))
    m.apply(StageStats(stage="sinks", line_crossings={("cam0", "gate", "in", "car"): 1}, tracks_active={"cam0": 2},
                       zone_objects={("cam0", "dock"): 1}, zone_overstays={("cam0", "dock", "person"): 2},
                       zone_crowded={("cam0", "dock"): 1}, sink_backlog={"redis": 1200}))
    m.apply(StageStats(stage="decoder:cam0", decoded={"cam0": 10}))
    m.apply(StageStats(stage="supervisor", queue_fill={"sinks": 0.25, "events0": 1.0}))
    s = _samples(m.render().decode())
    cam = (("camera", "cam0"),)
    assert s["segpipe_frames_decoded_total", cam] == 40
    assert s["segpipe_frames_inferred_total", cam] == 28
    assert s["segpipe_frames_dropped_total", (("camera", "cam0"), ("reason", "ring_full"))] == 2
    assert s["segpipe_camera_reconnects_total", cam] == 1
    assert s["segpipe_camera_state", (("camera", "cam0"), ("segpipe_camera_state", "live"))] == 1
    assert s["segpipe_camera_state", (("camera", "cam0"), ("segpipe_camera_state", "stalled"))] == 0
    assert s["segpipe_batch_size_count", ()] == 3 and s["segpipe_batch_size_sum", ()] == 20
    assert s["segpipe_batch_size_bucket", (("le", "4.0"),)] == 1
    assert s["segpipe_stage_latency_seconds_count", (("stage", "decode"),)] == 2
    assert math.isclose(s["segpipe_e2e_latency_seconds_sum", cam], 0.12)
    assert s["segpipe_e2e_latency_seconds_bucket", (("camera", "cam0"), ("le", "0.05"))] == 1
    assert s["segpipe_sink_events_total", (("camera", "cam0"), ("sink", "redis"))] == 27
    assert s["segpipe_sink_dropped_total", (("camera", "cam0"), ("reason", "buffer_full"), ("sink", "redis"))] == 1
    assert s["segpipe_sink_errors_total", (("reason", "connection"), ("sink", "redis"))] == 3
    assert s["segpipe_engine_loaded", ()] == 1
    assert s["segpipe_tracks_started_total", cam] == 5 and s["segpipe_tracks_active", cam] == 2
    gate = (("camera", "cam0"), ("direction", "in"), ("label", "car"), ("line", "gate"))
    assert s["segpipe_line_crossings_total", gate] == 3
    assert s["segpipe_zone_objects", (("camera", "cam0"), ("zone", "dock"))] == 1
    assert s["segpipe_zone_overstays_total", (("camera", "cam0"), ("label", "person"), ("zone", "dock"))] == 2
    assert s["segpipe_zone_crowded", (("camera", "cam0"), ("zone", "dock"))] == 1
    assert s["segpipe_queue_fill_ratio", (("stage", "sinks"),)] == 0.25
    assert s["segpipe_queue_fill_ratio", (("stage", "events0"),)] == 1.0
    assert s["segpipe_sink_backlog", (("sink", "redis"),)] == 1200


WHOLE_GAUGES = [  # (reports as (stage, {camera: tracks}, {(camera, zone): crowded}), series left at the end)
    # a camera removed by a reload: its tracks and crowding are gone, not held at their last value
    ([("sinks", {"a": 3, "b": 2}, {("a", "q"): 1, ("b", "q"): 1}), ("sinks", {"a": 4}, {("a", "q"): 0})],
     {"tracks": {"a": 4}, "crowded": {("a", "q"): 0}}),
    # a zone renamed by a reload
    ([("sinks", {"a": 1}, {("a", "q"): 1}), ("sinks", {"a": 1}, {("a", "dock"): 0})],
     {"tracks": {"a": 1}, "crowded": {("a", "dock"): 0}}),
    # event workers each report their own cameras: one leaves the other's alone
    ([("events0", {"a": 1}, {("a", "q"): 1}), ("events1", {"b": 2}, {}), ("events0", {"a": 5}, {("a", "q"): 0})],
     {"tracks": {"a": 5, "b": 2}, "crowded": {("a", "q"): 0}}),
    # a camera removed, then added again on the other worker before the first one's next report
    ([("events0", {"a": 1}, {}), ("events1", {"a": 2}, {}), ("events0", {}, {})], {"tracks": {"a": 2}, "crowded": {}}),
]


@pytest.mark.parametrize("reports, left", WHOLE_GAUGES, ids=["camera-removed", "zone-renamed", "workers", "moved"])
def test_gauges_reported_whole_drop_series_no_stage_reports(reports: list, left: dict) -> None:
    m = Metrics(process_collector=False)
    for stage, tracks, crowded in reports:
        m.apply(StageStats(stage=stage, tracks_active=tracks, zone_crowded=crowded,
                           zone_objects={k: 1 for k in crowded}))
    s = _samples(m.render().decode())
    assert {dict(k[1])["camera"]: v for k, v in s.items() if k[0] == "segpipe_tracks_active"} == left["tracks"]
    crowded = {(dict(k[1])["camera"], dict(k[1])["zone"]): v for k, v in s.items() if k[0] == "segpipe_zone_crowded"}
    assert crowded == left["crowded"]
    assert {(dict(k[1])["camera"], dict(k[1])["zone"]) for k in s if k[0] == "segpipe_zone_objects"} == set(crowded)


def test_picture_problems_are_gauges_that_a_stopped_camera_clears() -> None:
    m = Metrics(process_collector=False)

    def problems() -> dict[str, float]:
        s = _samples(m.render().decode())
        return {p: s["segpipe_camera_picture_problem", (("camera", "gate"), ("problem", p))]
                for p in ("frozen", "blank", "moved", "blurred")}

    m.set_camera_picture("gate", Picture.OK, CameraState.LIVE)
    assert problems() == {"frozen": 0, "blank": 0, "moved": 0, "blurred": 0}
    m.set_camera_picture("gate", Picture.FROZEN, CameraState.LIVE)
    assert problems() == {"frozen": 1, "blank": 0, "moved": 0, "blurred": 0}
    m.set_camera_picture("gate", Picture.MOVED, CameraState.RECONNECTING)  # a camera reconnecting keeps it
    assert problems() == {"frozen": 0, "blank": 0, "moved": 1, "blurred": 0}
    m.set_camera_picture("gate", Picture.BLURRED, CameraState.STOPPED)  # a reload removed it: no alert for ever
    assert problems() == {"frozen": 0, "blank": 0, "moved": 0, "blurred": 0}


def test_registries_are_private() -> None:
    a, b = Metrics(), Metrics()  # same names twice: no clash, as with prometheus_client's global registry
    a.apply(StageStats(stage="d", decoded={"x": 1}))
    assert b"frames_decoded_total{camera=\"x\"}" in a.render()
    assert b"camera=\"x\"" not in b.render()
    assert b"segpipe_process_resident_memory_bytes" in a.render()


@pytest.mark.parametrize("kw, error", [
    ({"decoded": {"cam": -1}}, r"decoded\['cam'\]: expected int >= 0"),
    ({"sink_dropped": {("s", "c", "r"): 1.5}}, "sink_dropped"),
    ({"camera_states": {"cam": "live"}}, "expected CameraState"),
    ({"e2e_latency": {"cam": (float("nan"),)}}, "finite seconds"),
    ({"stage_latency": {"infer": (-0.1,)}}, "finite seconds"),
    ({"batch_sizes": (0,)}, "ints >= 1"),
    ({"queue_fill": {"sinks": 1.5}}, r"queue_fill\['sinks'\]: expected 0-1"),
])
def test_stage_stats_reject_bad_values(kw: dict, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        StageStats(stage="x", **kw)


@pytest.fixture
def served() -> tuple[Metrics, MetricsServer]:
    m = Metrics()
    server = MetricsServer(metrics=m, port=0)
    server.start()
    yield m, server
    server.stop()


def test_http_endpoints(served: tuple[Metrics, MetricsServer]) -> None:
    m, server = served
    assert server.host == "127.0.0.1" and server.port > 0
    m.apply(StageStats(stage="device", inferred={"cam7": 5}))
    code, ctype, body = _get(server.url + "/metrics")
    assert code == 200 and ctype.startswith("text/plain") and "version=" in ctype
    assert _samples(body)["segpipe_frames_inferred_total", (("camera", "cam7"),)] == 5
    assert _get(server.url + "/healthz")[::2] == (200, "ok\n")
    assert _get(server.url + "/nope")[0] == 404


def test_readiness_follows_engine_and_cameras(served: tuple[Metrics, MetricsServer]) -> None:
    m, server = served
    assert _get(server.url + "/readyz")[::2] == (503, "not ready: engine_loaded, camera_live\n")
    m.apply(StageStats(stage="device", engine_loaded=True))
    m.apply(StageStats(stage="decoder:a", camera_states={"a": CameraState.CONNECTING}))
    assert _get(server.url + "/readyz")[::2] == (503, "not ready: camera_live\n")
    m.apply(StageStats(stage="decoder:a", camera_states={"a": CameraState.LIVE}))
    assert _get(server.url + "/readyz")[::2] == (200, "ready\n")
    m.set_camera_state("a", CameraState.RECONNECTING)
    assert _get(server.url + "/readyz")[0] == 503
    assert _get(server.url + "/healthz")[0] == 200  # alive while not ready


def test_supervisor_supplied_checks(caplog: pytest.LogCaptureFixture) -> None:
    state = {"up": False}

    def broken() -> bool:
        raise RuntimeError("boom")

    server = MetricsServer(metrics=Metrics(), port=0, readiness=[ReadinessCheck("pipeline", lambda: state["up"])])
    server.start()
    try:
        assert _get(server.url + "/readyz")[::2] == (503, "not ready: pipeline\n")
        state["up"] = True
        assert _get(server.url + "/readyz")[0] == 200
        server.readiness = (ReadinessCheck("flaky", broken),)
        assert _get(server.url + "/readyz")[::2] == (503, "not ready: flaky\n")
        assert "boom" in caplog.text
    finally:
        server.stop()


def test_port_in_use_is_a_config_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(ConfigError, match=f"metrics.port: cannot listen on 127.0.0.1:{port}"):
            MetricsServer(metrics=Metrics(), port=port).start()
