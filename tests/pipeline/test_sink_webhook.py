"""Webhook sink against a real HTTP server on a loopback port: which events go out and how they look,
signatures, a receiver that is down, overloaded, rejecting, closing idle connections or speaking TLS."""

from __future__ import annotations

import http.server
import json
import logging
import ssl
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pydantic import ValidationError

from pipeline.client import verify_webhook
from pipeline.events import encode, status_event
from pipeline.messages import CameraState, CameraStatus, Picture
from pipeline.sinks.base import Envelope, policy_for
from pipeline.sinks.config import WebhookSinkConfig, check_sink_classes
from pipeline.sinks.webhook import WebhookSink
from tests.conftest import server_port
from tests.helpers import accepts, wait_for
from tests.pipeline.media import write_clip
from tests.pipeline.test_supervisor import config


def _rle() -> dict[str, Any]:
    m = np.zeros((48, 64), np.uint8)
    m[10:30, 5:25] = 1
    rle = mask_utils.encode(np.asfortranarray(m))
    return {"format": "rle", "size": [48, 64], "counts": rle["counts"].decode()}


RLE = _rle()


def _det(label: str, zones: list[str] | None = None, track_id: int = 1) -> dict[str, Any]:
    det = {"class_id": 0, "label": label, "score": 0.9, "box": [1.0, 2.0, 30.0, 40.0], "mask": dict(RLE),
           "track_id": track_id}
    if zones is not None:
        det["zones"] = zones
    return det


def _frame(camera: str, seq: int, dets: list[dict[str, Any]] = (), crossings: list[dict[str, Any]] = ()) -> Envelope:
    event = {"version": 1, "kind": "frame", "camera": camera, "seq": seq, "pts": None, "capture_ts": 1.0,
             "infer_ts": 1.0, "publish_ts": 1.0, "frame": {"width": 64, "height": 48}, "model": "m",
             "detections": list(dets), "crossings": list(crossings)}
    return Envelope(camera_id=camera, kind="frame", payload=encode(event), item=None)


def _overstay(env: Envelope) -> Envelope:
    """``env``'s frame with an overstay of its first detection in the zone ``dock``."""
    event = json.loads(env.payload)
    det = event["detections"][0]
    event["overstays"] = [{"zone": "dock", "track_id": det["track_id"], "class_id": 0, "label": det["label"],
                           "dwell_s": 31.5}]
    return Envelope(camera_id=env.camera_id, kind="frame", payload=encode(event), item=None)


def _crowded(env: Envelope) -> Envelope:
    """``env``'s frame with the zone ``dock``'s crowding starting."""
    event = {**json.loads(env.payload), "crowding": [{"zone": "dock", "state": "start", "objects": 5}]}
    return Envelope(camera_id=env.camera_id, kind="frame", payload=encode(event), item=None)


def _crossing(label: str) -> dict[str, Any]:
    return {"line": "gate", "direction": "in", "track_id": 1, "class_id": 0, "label": label}


def _status(camera: str, state: str = "live", picture: Picture = Picture.OK, detail: str = "") -> Envelope:
    """A status as the sink stage hands it over (the event's bytes and the CameraStatus)."""
    st = CameraStatus(camera_id=camera, state=CameraState(state), ts=1.0, detail=detail, picture=picture)
    return Envelope(camera_id=camera, kind="status", payload=encode(status_event(st, publish_ts=1.0)), item=st)


class Receiver:
    """A real HTTP/1.1 server (keep-alive) on a fixed loopback port that can be stopped and started again.
    ``answers`` holds the statuses (and headers) of the next requests; 200 when empty. ``got`` has every
    request: (status answered, headers, body). ``hang_up``: close each connection after answering
    without saying so, as a server that drops idle keep-alive connections does."""

    def __init__(self, tls: tuple[Path, Path] | None = None) -> None:
        self.port, self.tls = server_port(), tls
        self.answers: deque[tuple[int, dict[str, str]]] = deque()
        self.got: list[tuple[int, dict[str, str], bytes]] = []
        self.connections = 0
        self.hang_up = False
        self._server: http.server.ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}/hooks/segpipe?src=test"

    def start(self) -> None:
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                receiver.connections += 1
                super().setup()

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                status, headers = receiver.answers.popleft() if receiver.answers else (200, {})
                receiver.got.append((status, {k: v for k, v in self.headers.items()}, body))
                assert self.path == "/hooks/segpipe?src=test"
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", "0")
                self.end_headers()
                if receiver.hang_up:
                    self.close_connection = True

            def log_message(self, *_: Any) -> None:
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        if self.tls is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(str(self.tls[1]), str(self.tls[0]))
            server.socket = ctx.wrap_socket(server.socket, server_side=True)
        self._server = server
        threading.Thread(target=server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def events(self, status: int = 200) -> list[dict[str, Any]]:
        return [json.loads(body) for s, _, body in list(self.got) if s == status]


@pytest.fixture
def receiver() -> Any:
    r = Receiver()
    r.start()
    yield r
    r.stop()


def _sink(url: str, **kw: Any) -> WebhookSink:
    kw.setdefault("policy", policy_for("webhook"))
    return WebhookSink(name="hook", url=url, backoff_initial_s=0.05, backoff_max_s=0.2, timeout_s=2, **kw)


def test_crossings_and_statuses_go_out_in_order_without_masks(receiver: Receiver) -> None:
    sink = _sink(receiver.url)
    sink.publish(_status("gate"))
    sink.publish(_frame("gate", 0, [_det("person")]))  # no crossing: not for this sink
    sink.publish(_frame("gate", 1, [_det("car")], [_crossing("car")]))
    sink.publish(_frame("dock", 2, []))
    sink.publish(_frame("gate", 3, [_det("person"), _det("car", track_id=2)], [_crossing("person")]))
    assert sink.flush(10)
    sink.close()
    events = receiver.events()
    assert [(e["kind"], e["camera"], e.get("seq")) for e in events] == [
        ("status", "gate", None), ("frame", "gate", 1), ("frame", "gate", 3)]
    assert all(d["mask"] is None for e in events[1:] for d in e["detections"])  # masks: false
    assert events[2]["detections"][1]["track_id"] == 2 and events[2]["crossings"][0]["label"] == "person"
    assert sink.counters.totals_sent == {"gate": 3} and not sink.counters.totals_dropped
    assert events[0]["picture"] == "ok"
    _, headers, body = receiver.got[1]
    assert headers["Content-Type"] == "application/json" and headers["X-Segpipe-Camera"] == "gate"
    assert headers["User-Agent"].startswith("segpipe/") and len(headers["Idempotency-Key"]) == 32
    assert "X-Segpipe-Signature" not in headers
    assert receiver.connections == 1  # one keep-alive connection for every request


@pytest.mark.parametrize("events, classes, want", [
    (("detection",), None, [0, 1, 2, 3, 5]),
    (("detection",), ("person",), [0, 3, 5]),
    (("zone",), None, [1, 3, 5]),
    (("zone",), ("person",), [3, 5]),
    (("crossing",), ("car",), [2]),
    (("overstay",), None, [5]),
    (("overstay",), ("car",), []),
    (("crowding",), ("car",), [6]),  # a zone's count: classes do not apply
    (("frame",), ("bottle",), [0, 1, 2, 3, 4, 5, 6]),  # every frame event, whatever is in it
])
def test_events_and_classes_choose_what_goes_out(receiver: Receiver, events: tuple[str, ...],
                                                 classes: tuple[str, ...] | None, want: list[int]) -> None:
    sink = _sink(receiver.url, events=events, classes=classes, masks=True)
    sink.publish(_frame("gate", 0, [_det("person", zones=[])]))
    sink.publish(_frame("gate", 1, [_det("car", zones=["dock"])]))
    sink.publish(_frame("gate", 2, [_det("car")], [_crossing("car")]))
    sink.publish(_frame("gate", 3, [_det("car", zones=[]), _det("person", zones=["dock"])]))
    sink.publish(_frame("gate", 4, []))
    sink.publish(_overstay(_frame("gate", 5, [_det("person", zones=["dock"])])))
    sink.publish(_crowded(_frame("gate", 6, [])))
    sink.publish(_status("gate"))  # status is not among events
    assert sink.flush(10)
    sink.close()
    assert [e["seq"] for e in receiver.events()] == want
    assert all(d["mask"] == RLE for e in receiver.events() for d in e["detections"])  # masks: true


def test_a_picture_change_is_posted_as_the_status_it_is(receiver: Receiver) -> None:
    """A camera whose picture froze (state still live) is news for whoever takes statuses, and for no
    one else."""
    sink = _sink(receiver.url)  # default events: crossing, status
    sink.publish(_status("gate", picture=Picture.FROZEN, detail="picture frozen for 30 s"))
    sink.publish(_status("gate", detail="picture back (change 3.20)"))
    quiet = _sink(receiver.url, events=("crossing",))
    quiet.publish(_status("dock", picture=Picture.BLANK, detail="picture blank (std 0.4) for 10 s"))
    assert sink.flush(10) and quiet.flush(10)
    sink.close()
    quiet.close()
    assert [(e["camera"], e["state"], e["picture"], e["detail"]) for e in receiver.events()] == [
        ("gate", "live", "frozen", "picture frozen for 30 s"), ("gate", "live", "ok", "picture back (change 3.20)")]


def test_signed_requests_verify_and_tampering_does_not(receiver: Receiver) -> None:
    sink = _sink(receiver.url, secret="s3cret")
    sink.publish(_status("gate"))
    assert sink.flush(10)
    sink.close()
    _, headers, body = receiver.got[0]
    assert headers["X-Segpipe-Signature"].startswith("sha256=")
    assert verify_webhook("s3cret", body, headers)
    assert not verify_webhook("other", body, headers)
    assert not verify_webhook("s3cret", body.replace(b"live", b"lost"), headers)
    assert not verify_webhook("s3cret", body, headers, now=time.time() + 600)  # a replay 10 minutes later
    assert not verify_webhook("s3cret", body, {})


def test_a_receiver_down_at_start_gets_everything_in_order_once_up(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pipeline.sinks.webhook")
    r = Receiver()  # not started
    sink = _sink(r.url, events=("frame",))
    try:
        for seq in range(50):
            sink.publish(_frame("gate", seq))
        wait_for(lambda: sink.counters.totals_errors["connection"] >= 2, 10, "failed attempts")
        assert sink.backlog() >= 49  # held, not dropped (one batch may be in the worker's hands)
        r.start()
        assert sink.flush(10)
        assert [e["seq"] for e in r.events()] == list(range(50))
        assert not sink.counters.totals_dropped
    finally:
        sink.close()
        r.stop()
    lines = [rec.getMessage() for rec in caplog.records]
    assert sum("unreachable" in line for line in lines) == 1 and any("reachable again" in line for line in lines)


def test_overload_answers_are_retried_after_retry_after(receiver: Receiver) -> None:
    receiver.answers.extend([(503, {"Retry-After": "1"}), (429, {}), (500, {})])
    sink = _sink(receiver.url, events=("frame",))
    t0 = time.monotonic()
    sink.publish(_frame("gate", 0))
    sink.publish(_frame("gate", 1))
    assert sink.flush(10)
    sink.close()
    assert time.monotonic() - t0 >= 1.0  # Retry-After was waited for
    assert [s for s, _, _ in receiver.got] == [503, 429, 500, 200, 200]
    assert [e["seq"] for e in receiver.events()] == [0, 1]
    keys = {h["Idempotency-Key"] for s, h, body in receiver.got if json.loads(body)["seq"] == 0}
    assert len(keys) == 1  # every retry of one event carries the same key
    assert sink.counters.totals_errors == {"http": 3} and not sink.counters.totals_dropped


def test_a_rejected_event_is_dropped_and_does_not_hold_up_the_rest(receiver: Receiver,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    receiver.answers.extend([(400, {}), (404, {})])
    sink = _sink(receiver.url, events=("frame",))
    for seq in range(4):
        sink.publish(_frame("gate", seq))
    assert sink.flush(10)
    sink.close()
    assert [e["seq"] for e in receiver.events()] == [2, 3]
    assert sink.counters.totals_dropped == {("gate", "rejected"): 2}
    assert sink.counters.totals_errors == {"rejected": 2}
    assert "answered HTTP 400 Bad Request: event dropped" in caplog.text


def test_a_receiver_closing_idle_connections_loses_nothing(receiver: Receiver) -> None:
    receiver.hang_up = True  # every answer ends its connection, unannounced
    sink = _sink(receiver.url, events=("frame",))
    for seq in range(5):
        sink.publish(_frame("gate", seq))
        time.sleep(0.05)  # each request finds the last one's connection closed
    assert sink.flush(10)
    sink.close()
    assert [e["seq"] for e in receiver.events()] == list(range(5))
    assert len(receiver.got) == 5 and not sink.counters.totals_errors
    assert receiver.connections == 5  # each request found the last connection gone, and took a new one


def test_a_spool_keeps_an_outage_across_a_restart(tmp_path: Path) -> None:
    r = Receiver()  # down
    spool = tmp_path / "spool"
    first = _sink(r.url, events=("frame",), spool_dir=spool)
    for seq in range(30):
        first.publish(_frame("gate", seq))
    wait_for(lambda: len(first.spool or ()) == 30, 10, "the events to be spooled")
    first.close()
    r.start()
    try:
        second = _sink(r.url, events=("frame",), spool_dir=spool)
        for seq in range(30, 40):
            second.publish(_frame("gate", seq))
        wait_for(lambda: second.backlog() == 0, 10, "the spool to go out")
        second.close()
        assert [e["seq"] for e in r.events()] == list(range(40))
        assert not list(spool.glob("*.spool"))
    finally:
        r.stop()


def test_https_with_a_private_ca(tls_cert: tuple[Path, Path], caplog: pytest.LogCaptureFixture) -> None:
    r = Receiver(tls=tls_cert)
    r.start()
    try:
        trusting = _sink(r.url, tls_ca=tls_cert[1])
        untrusting = _sink(r.url)
        trusting.publish(_status("gate"))
        untrusting.publish(_status("dock"))
        assert trusting.flush(10)
        wait_for(lambda: untrusting.counters.totals_errors["connection"] >= 1, 10, "the refusal")
        trusting.close()
        untrusting.close(timeout=0.5)
        assert [e["camera"] for e in r.events()] == ["gate"]
        assert untrusting.counters.totals_dropped == {("dock", "shutdown"): 1}
        assert "certificate verify failed" in caplog.text
    finally:
        r.stop()


@pytest.mark.parametrize("raw, error", [
    ({"url": "ftp://x/y"}, "expected http://HOST"),
    ({"url": "http://u:hunter2@:99999/"}, "not a valid URL"),
    ({"url": "http://x/", "headers": {"Authorization": "Bearer hunter2\r\nX-Evil: 1"}}, "line break"),
    ({"url": "http://x/", "headers": {"Content-Type": "text/plain"}}, "'Content-Type' is set by segpipe"),
    ({"url": "http://x/", "headers": {"bad name": "v"}}, "not a valid header name"),
    ({"url": "http://x/", "statuses": False}, "statuses: a webhook sink posts status events when events"),
    ({"url": "http://x/", "events": ["crossings"]}, "events.0"),
    ({"url": "http://x/", "events": []}, "at least 1 item"),
])
def test_config_errors_name_the_field_and_never_echo_secrets(raw: dict[str, Any], error: str) -> None:
    with pytest.raises(ValidationError) as info:
        WebhookSinkConfig(type="webhook", **raw)
    # what segpipe prints: each error's place and message (pydantic's own str() also shows the input)
    text = " ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in info.value.errors())
    assert error in text and "hunter2" not in text


def test_config_hides_secrets_and_derives_statuses() -> None:
    cfg = WebhookSinkConfig(type="webhook", url="https://ops:hunter2@hooks.example/x", secret="hunter2",
                            headers={"Authorization": "Bearer hunter2"})
    assert "hunter2" not in repr(cfg) and cfg.redacted_url() == "https://***@hooks.example/x"
    assert cfg.statuses and not WebhookSinkConfig(type="webhook", url="http://x/", events=["crossing"]).statuses
    errors = check_sink_classes((WebhookSinkConfig(type="webhook", url="http://x/", classes=["prson"]),),
                                ("person",), "m.pt")
    assert [str(e) for e in errors] == ["sinks[0].classes: 'prson' is not a class of m.pt"]


def test_basic_auth_from_the_url(receiver: Receiver) -> None:
    sink = _sink(receiver.url.replace("http://", "http://ops:p%40ss@"))
    sink.publish(_status("gate"))
    assert sink.flush(10)
    sink.close()
    assert receiver.got[0][1]["Authorization"] == "Basic b3BzOnBAc3M="  # ops:p@ss


def test_a_run_posts_statuses_and_frames(tmp_path: Path, receiver: Receiver) -> None:
    from pipeline.supervisor import Supervisor

    clip = write_clip(tmp_path / "cam.mp4", frames=6, fps=15, size=(96, 64))
    cfg = config(tmp_path, [{"id": "cam", "url": str(clip), "realtime": False, "lossless": True}],
                 sinks=[{"type": "webhook", "url": receiver.url, "events": ["frame", "status"]}])
    assert Supervisor(cfg=cfg).run() == 0
    events = receiver.events()
    assert sorted(e["seq"] for e in events if e["kind"] == "frame") == list(range(6))
    assert {e["state"] for e in events if e["kind"] == "status"} >= {"live", "ended"}


def test_snapshots_are_read_back_from_the_ring_while_it_holds_the_frame(receiver: Receiver) -> None:
    import base64

    import cv2

    from pipeline.shm import FrameLookup
    from tests.pipeline.rings import CameraRings

    rings = CameraRings(1, 640, nslots=4, camera_id="gate")
    frames = FrameLookup({"gate": rings.prefixes[0]})
    try:
        sink = _sink(receiver.url, snapshot=(80, 90))
        sink.use_frames(frames)
        # the events' frames are 64x48: the camera's, here twice that, shrunk to the snapshot's 80 wide
        seqs = [rings.writers[0].write(np.full((96, 128, 3), (10, 100, 200), np.uint8), pts=0.0, capture_ts=0.0)]
        sink.publish(_frame("gate", seqs[0], [_det("car")], [_crossing("car")]))
        sink.publish(_frame("gate", seqs[0], [_det("car")]))  # fires nothing: no picture is read for it
        for _ in range(4):  # the ring's four slots move on: the first frame is gone
            rings.writers[0].write(np.zeros((96, 128, 3), np.uint8), pts=0.0, capture_ts=0.0)
        sink.publish(_frame("gate", seqs[0], [_det("car")], [_crossing("car")]))
        sink.publish(_status("gate"))
        assert sink.flush(10)
        sink.close()
    finally:
        frames.close()
        rings.close()
    first, late, status = receiver.events()
    snap = first["snapshot"]
    assert (snap["format"], snap["width"], snap["height"]) == ("jpeg", 80, 60)  # shrunk to width 80
    picture = cv2.imdecode(np.frombuffer(base64.b64decode(snap["data"]), np.uint8), cv2.IMREAD_COLOR).astype(int)
    assert picture.shape == (60, 80, 3)
    # the camera's picture, with the event's detection drawn in at 80/64: its mask (frame rows 10-30,
    # columns 5-25) blended in, nothing beyond its box (frame x 1-30)
    assert np.abs(picture[5:55, 45:78].mean((0, 1)) - (10, 100, 200)).max() < 4
    assert np.abs(picture[16:34, 10:28].mean((0, 1)) - (10, 100, 200)).max() > 20
    assert all(d["mask"] is None for d in first["detections"])
    assert "snapshot" not in late and "snapshot" not in status  # overwritten: posted without one
    assert sink.counters.totals_errors == {"snapshot": 1}


@pytest.mark.parametrize("workers", [1, 2])
def test_a_run_posts_snapshots_of_the_frames_that_fire(tmp_path: Path, receiver: Receiver, workers: int) -> None:
    """The sink stage reads the pictures from the rings, whoever made the events (with event workers
    too); a live camera at 5 frames/s keeps each frame in its ring for 0.8 s."""
    import base64

    from pipeline.supervisor import Supervisor

    clip = write_clip(tmp_path / "cam.mp4", frames=8, fps=5, size=(160, 120))
    cfg = config(tmp_path, [{"id": "cam", "url": str(clip), "realtime": True}],
                 sinks=[{"type": "webhook", "url": receiver.url, "events": ["detection"],
                         "snapshot": {"width": 100}}], events={"workers": workers})
    assert cfg.sinks[0].snapshot is not None and cfg.sinks[0].snapshot.quality == 80
    assert Supervisor(cfg=cfg).run() == 0
    events = receiver.events()
    assert events and all(e["detections"] for e in events)
    pictured = [e for e in events if "snapshot" in e]
    # (a frame is overwritten only if its event takes longer than that: not on an idle machine, but CI's)
    assert len(pictured) >= len(events) / 2, f"{len(pictured)} of {len(events)} events carried their picture"
    assert all((e["snapshot"]["width"], e["snapshot"]["height"]) == (100, 75) for e in pictured)
    assert all(base64.b64decode(e["snapshot"]["data"])[:2] == b"\xff\xd8" for e in pictured)  # JPEG


def test_the_sink_stage_follows_the_rings_of_a_reload(receiver: Receiver) -> None:
    from pipeline.sinks.stage import CamerasUpdate, SinkStage
    from tests.pipeline.rings import CameraRings

    rings = CameraRings(1, 650, camera_id="gate")
    cfg = WebhookSinkConfig(type="webhook", url=receiver.url, snapshot=True)
    stage = SinkStage.from_configs([cfg], rings={})  # the camera is not there yet
    try:
        seq = rings.writers[0].write(np.zeros((48, 64, 3), np.uint8), pts=0.0, capture_ts=0.0)
        stage.take(_frame("gate", seq, [_det("car")], [_crossing("car")]))
        stage.take(CamerasUpdate(cameras=(), rings={"gate": rings.prefixes[0]}))  # a reload added it
        stage.take(_frame("gate", seq, [_det("car")], [_crossing("car")]))
    finally:
        stage.close()
        rings.close()
    assert ["snapshot" in e for e in receiver.events()] == [False, True]
    assert stage.sinks[0][1].counters.totals_errors == {"snapshot": 1}


def test_listen_takes_the_sinks_requests_and_checks_their_signature(capsys: pytest.CaptureFixture[str]) -> None:
    import http.client

    from tests.helpers import listen_beside

    port = server_port()
    url = f"http://127.0.0.1:{port}/hook"
    sink = _sink(url, secret="s3cret", events=("frame", "status"))
    forged = threading.Event()

    def send() -> None:  # once the listener is up: one forged request, then the sink's own
        wait_for(lambda: accepts(port), 10, "the listener")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("POST", "/hook", body=b'{"version":1}', headers={"X-Segpipe-Signature": "sha256=00"})
        if conn.getresponse().status == 401:
            forged.set()
        conn.close()
        sink.publish(_status("gate", "live"))
        sink.publish(_frame("gate", 7, [_det("car")]))

    try:
        assert listen_beside(send, ["--webhook", str(port), "--secret", "s3cret", "--count", "2",
                                    "--idle-timeout", "20"]) == 0
    finally:
        sink.close()
    out, err = capsys.readouterr()
    assert out.splitlines() == ["gate status=live", "gate seq=7 n=1 car#1"]
    assert forged.is_set() and "its signature does not verify with --secret" in err


@pytest.mark.parametrize("argv, error", [
    (["--webhook", "not-a-port"], "--webhook: expected [HOST:]PORT, got 'not-a-port'"),
    (["--redis", "redis://x", "--secret", "s"], "--secret: only for --webhook"),
])
def test_listen_webhook_errors_are_one_line(argv: list[str], error: str, capsys: pytest.CaptureFixture[str]) -> None:
    from pipeline.cli import main

    assert main(["listen", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"segpipe listen: error: {error}"]


def test_the_default_events_suit_cameras_without_lines(tmp_path: Path) -> None:
    """crossing and status by default: a camera without lines still gets its statuses posted, and the
    config is not refused for the crossings it cannot have (events named explicitly are checked)."""
    clip = write_clip(tmp_path / "c.mp4", frames=2, fps=15, size=(96, 64))
    cfg = config(tmp_path, [{"id": "cam", "url": str(clip)}], sinks=[{"type": "webhook", "url": "http://x/h"}])
    assert cfg.sinks[0].events == ("crossing", "status")
