"""Live preview sink: real HTTP clients read a camera's annotated frames as JPEG and as an MJPEG
stream; only watched cameras cost frames, in the sink and, in a real run, in the device stage."""

from __future__ import annotations

import base64
import http.client
import json
import queue
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from engines.errors import ConfigErrors, SinkError
from pipeline.config import parse_config
from pipeline.device import DeviceSettings
from pipeline.messages import CameraState, CameraStatus, Picture
from pipeline.sinks import preview as preview_mod
from pipeline.sinks.base import Envelope
from pipeline.sinks.config import PreviewSinkConfig
from pipeline.sinks.preview import PreviewSink
from pipeline.sinks.stage import SinkStage
from pipeline.supervisor import Supervisor
from tests.conftest import free_port
from tests.helpers import wait_for
from tests.pipeline.media import write_clip
from tests.pipeline.test_sink_video import BOX, H, W, _env, _result
from tests.pipeline.test_supervisor import config

GRAY = np.full((H, W, 3), 128, np.uint8)


@pytest.fixture
def sink(monkeypatch: pytest.MonkeyPatch) -> Iterator[PreviewSink]:
    monkeypatch.setattr(preview_mod, "SNAPSHOT_WAIT_S", 0.3)
    s = PreviewSink(name="preview", port=0, fps=30, max_clients=2)  # 0: any free port (tests only)
    yield s
    s.close()


def get(sink: PreviewSink, path: str, headers: dict[str, str] | None = None) -> tuple[int, str, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", sink.port, timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        r = conn.getresponse()
        return r.status, r.getheader("Content-Type") or "", r.read()
    finally:
        conn.close()


def page(port: int) -> bytes:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/")
        return conn.getresponse().read()
    except OSError:  # not listening yet
        return b""


def status(camera: str, state: CameraState, picture: Picture = Picture.OK) -> Envelope:
    st = CameraStatus(camera_id=camera, state=state, ts=1.0, picture=picture)
    return Envelope(camera_id=camera, kind="status", payload=b"{}", item=st)


class Stream:
    """A raw MJPEG client: reads multipart parts as they come."""

    def __init__(self, port: int, path: str, *, head: bool = True) -> None:
        """head: wait for the response head (sent with the first frame)."""
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        self.buf = b""
        self.head = self._until(b"\r\n\r\n").decode() if head else ""

    def _until(self, marker: bytes) -> bytes:
        while marker not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(self.buf[:200])
            self.buf += chunk
        out, self.buf = self.buf.split(marker, 1)
        return out

    def frame(self) -> np.ndarray:
        headers = self._until(b"\r\n\r\n").decode()
        n = int(next(h for h in headers.splitlines() if h.startswith("Content-Length")).split(":")[1])
        while len(self.buf) < n + 2:
            self.buf += self.sock.recv(65536)
        jpeg, self.buf = self.buf[:n], self.buf[n + 2:]
        img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
        assert img is not None
        return img

    def close(self) -> None:
        self.sock.close()


def test_snapshot_is_the_latest_frame_drawn(sink: PreviewSink) -> None:
    sink.publish(status("cam/a", CameraState.LIVE))
    code, _, body = get(sink, "/cameras/cam%2Fa.jpg")
    assert code == 503 and b"no frame of camera 'cam/a' yet (state: live)" in body
    assert sink.watching() == {"cam/a"}  # the snapshot asked for frames: the device stage is told
    sink.publish(_env(_result("cam/a", 0), GRAY))
    code, ctype, body = get(sink, "/cameras/cam%2Fa.jpg")
    assert code == 200 and ctype == "image/jpeg"
    img = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR).astype(int)
    assert img.shape == (H, W, 3)
    x1, y1, x2, y2 = (int(v) for v in BOX)
    inside, outside = img[y1 + 6:y2 - 6, x1 + 6:x2 - 6].mean((0, 1)), img[2:10, 70:90].mean((0, 1))
    assert np.abs(outside - 128).max() < 8 and np.abs(inside - 128).max() > 30  # the mask is drawn in
    assert sink.counters.totals_sent["cam/a"] == 1


def test_page_lists_every_camera_with_its_state(sink: PreviewSink) -> None:
    sink.publish(status("gate<1>", CameraState.RECONNECTING))
    sink.publish(_env(_result("dock", 0), GRAY))
    code, ctype, body = get(sink, "/")
    page = body.decode()
    assert code == 200 and ctype.startswith("text/html")
    assert '<img src="/cameras/gate%3C1%3E.mjpg"' in page
    assert 'gate&lt;1&gt; &middot; <span data-camera="gate&lt;1&gt;" class="reconnecting">reconnecting</span>' in page
    assert '<img src="/cameras/dock.mjpg"' in page
    assert '<small data-figures="dock">0.0 fps \u00b7 1 object</small>' in page  # one result so far
    # the page keeps its captions fresh from the states and figures as JSON
    sink.publish(status("dock", CameraState.STALLED))
    code, ctype, body = get(sink, "/cameras.json")
    assert code == 200 and ctype == "application/json"
    assert json.loads(body) == {
        "gate<1>": {"state": "reconnecting", "picture": "ok", "fps": 0.0, "latency_ms": None, "objects": None},
        "dock": {"state": "stalled", "picture": "ok", "fps": 0.0, "latency_ms": None, "objects": 1}}
    # a live camera with a frozen picture: said under it, and not in a live camera's colours
    sink.publish(status("dock", CameraState.LIVE, Picture.FROZEN))
    assert json.loads(get(sink, "/cameras.json")[2])["dock"]["picture"] == "frozen"
    assert '<span data-camera="dock" class="">live, picture frozen</span>' in get(sink, "/")[2].decode()
    sink.publish(status("dock", CameraState.LIVE))
    assert '<span data-camera="dock" class="live">live</span>' in get(sink, "/")[2].decode()


def test_figures_count_every_result_watched_or_not(sink: PreviewSink) -> None:
    import dataclasses

    for seq in range(11):  # 10 frames/s for a second, none of them with a picture (nobody watches)
        res = dataclasses.replace(_result("dock", seq), capture_ts=time.time() - 0.25)
        sink.publish(dataclasses.replace(_env(res), capture_ts=res.capture_ts))
        time.sleep(0.1)
    figures = sink.cameras()["dock"]
    assert 8.0 <= figures["fps"] <= 11.0 and figures["objects"] == 1
    assert 250 <= figures["latency_ms"] <= 400
    assert sink.watching() == frozenset()  # counting them asks the device stage for nothing


def test_bad_paths_and_unknown_cameras_say_what_exists(sink: PreviewSink) -> None:
    sink.publish(status("dock", CameraState.LIVE))
    assert get(sink, "/cameras/nope.mjpg")[:3:2] == (404, b"unknown camera 'nope' (known: dock)\n")
    code, _, body = get(sink, "/metrics")
    assert code == 404 and b"/cameras/<id>.mjpg" in body


def test_stream_sends_new_frames_while_watched_and_stops_costing_when_left(sink: PreviewSink) -> None:
    sink.publish(_env(_result("dock", 0), GRAY))
    assert sink.watching() == frozenset()
    stop = threading.Event()

    def camera() -> None:  # a live camera: a new frame every 20 ms, brighter each time
        seq = 1
        while not stop.is_set():
            sink.publish(_env(_result("dock", seq), np.full((H, W, 3), min(20 + 2 * seq, 250), np.uint8)))
            seq += 1
            time.sleep(0.02)

    feeder = threading.Thread(target=camera)
    feeder.start()
    try:
        client = Stream(sink.port, "/cameras/dock.mjpg")
        assert "200 OK" in client.head and "multipart/x-mixed-replace; boundary=segpipe-frame" in client.head
        assert sink.watching() == {"dock"}
        levels = [int(client.frame()[2:10, 70:90].mean()) for _ in range(4)]
        assert levels == sorted(levels) and levels[-1] > levels[0]  # newer frames, not one repeated
        other = Stream(sink.port, "/cameras/dock.mjpg")  # two clients share one encoding per frame
        other.frame()
        third = Stream(sink.port, "/cameras/dock.mjpg")
        assert "503" in third.head  # max_clients: 2
        third.close()
        client.close()
        other.close()
        wait_for(lambda: sink.watching() == frozenset(), 10, "the preview to notice both clients left")
    finally:
        stop.set()
        feeder.join()


def test_close_ends_open_streams(sink: PreviewSink) -> None:
    sink.publish(_env(_result("dock", 0), GRAY))
    client = Stream(sink.port, "/cameras/dock.mjpg")
    client.frame()
    t0 = time.monotonic()
    sink.close()
    assert time.monotonic() - t0 < 5
    with pytest.raises((EOFError, OSError)):
        for _ in range(100):
            client.frame()
    client.close()


def test_a_camera_removed_by_a_reload_leaves_the_wall_and_its_streams_end(sink: PreviewSink) -> None:
    """A camera taken out of the run stayed on the page and in /cameras.json as stopped until restart."""
    from pipeline.sinks.base import Retaining

    assert isinstance(sink, Retaining)  # so the sink stage tells it which cameras a reload removed
    sink.publish(_env(_result("dock", 0), GRAY))
    sink.publish(status("gate", CameraState.LIVE))
    client = Stream(sink.port, "/cameras/dock.mjpg")
    client.frame()
    sink.publish(status("dock", CameraState.STOPPED))
    sink.cameras_removed(["dock"])
    with pytest.raises((EOFError, OSError)):
        for _ in range(100):
            client.frame()
    client.close()
    assert set(sink.cameras()) == {"gate"} and b"dock" not in sink.page()
    assert get(sink, "/cameras/dock.jpg")[0] == 404
    wait_for(lambda: sink.watching() == frozenset(), 10, "the removed camera to leave the watch list")
    sink.publish(_env(_result("dock", 1), GRAY))  # put back by a later reload
    assert get(sink, "/cameras/dock.jpg")[0] == 200


def test_a_taken_port_is_one_line_naming_it() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SinkError, match=rf"preview sink 'preview': cannot listen on 127.0.0.1:{port}: "):
            PreviewSink.from_config(PreviewSinkConfig(type="preview", port=port))


def test_config_refuses_a_port_given_twice_and_a_queue() -> None:
    base = {"model": {"path": "yolov8n-seg.yaml"}, "cameras": [{"id": "a", "url": "demo://factory"}]}
    with pytest.raises(ConfigErrors) as e:
        parse_config({**base, "sinks": [{"type": "preview", "port": 9108}]}, env={})
    assert "sinks[0].port: 9108 is metrics.port too" in str(e.value)
    with pytest.raises(ConfigErrors) as e:
        parse_config({**base, "metrics": {"enabled": False},
                      "sinks": [{"type": "preview"}, {"type": "preview", "name": "b"}]}, env={})
    assert "sinks[1].port: 8090 is sinks[0].port too" in str(e.value)
    with pytest.raises(ConfigErrors) as e:
        parse_config({**base, "sinks": [{"type": "preview", "port": 8091, "queue_size": 4}]}, env={})
    assert "sinks[0].queue_size: a preview sink keeps only each camera's latest frame" in str(e.value)
    cfg = parse_config({**base, "sinks": [{"type": "preview", "max_width": 640, "fps": 2},
                                          {"type": "preview", "name": "wall", "port": 8091, "max_width": 320}]},
                       env={})
    assert DeviceSettings.from_config(cfg).preview_watch == (640, 5.0)
    assert DeviceSettings.from_config(cfg).preview_width is None  # no video sink: nothing sent unwatched


@pytest.mark.parametrize("workers", [1, 2])
def test_a_real_run_streams_a_camera_once_watched(tmp_path: Path, workers: int) -> None:
    """The watch goes sink stage -> device stage; with event workers the frames pass through one."""
    clip = write_clip(tmp_path / "cam.mp4", frames=30, fps=15, size=(160, 120))
    port = free_port()
    cams = [{"id": c, "url": str(clip), "loop": True} for c in ("a", "b")]
    cfg = config(tmp_path, cams, sinks=[{"type": "preview", "port": port, "fps": 10, "max_width": 96},
                                        {"type": "jsonl", "path": str(tmp_path / "events.jsonl")}],
                 events={"workers": workers})
    sup = Supervisor(cfg=cfg)
    seen: dict[str, object] = {}

    def watch() -> None:  # a browser: the run's own thread must be the main one (signals)
        try:
            wait_for(lambda: sup.ready and page(port).count(b".mjpg") == 2, 120, "both cameras on the page")
            client = Stream(port, "/cameras/a.mjpg")
            seen["frames"] = [client.frame() for _ in range(4)]
            client.close()
        finally:
            sup.request_stop("test")

    browser = threading.Thread(target=watch)
    browser.start()
    assert sup.run() == 0 and sup.errors == []
    browser.join()
    frames = seen["frames"]
    assert isinstance(frames, list) and frames[0].shape == (72, 96, 3)  # shrunk by the device stage


def test_sink_stage_tells_the_device_stage_what_is_watched(sink: PreviewSink) -> None:
    commands: queue.Queue = queue.Queue()
    stage = SinkStage(sinks=[(PreviewSinkConfig(type="preview"), sink)], watch_out=commands)
    stage.take(_result("dock", 0))  # no frame, no watcher: nothing to say
    assert commands.empty()
    client = Stream(sink.port, "/cameras/dock.mjpg", head=False)  # known from that result; no frame yet
    wait_for(lambda: sink.watching() == {"dock"}, 10, "the stream to count")
    stage.report()  # also while no item comes
    assert commands.get_nowait() == ("watch", frozenset({"dock"}))
    client.close()
    wait_for(lambda: not sink.watching(), 10, "the client to be gone")
    time.sleep(0.11)  # WATCH_CHECK_S
    stage.take(_result("dock", 1))
    assert commands.get_nowait() == ("watch", frozenset()) and commands.empty()


def test_a_password_guards_every_page(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(preview_mod, "SNAPSHOT_WAIT_S", 0.3)
    cfg = PreviewSinkConfig(type="preview", user="ops", password="s3cret")
    assert "s3cret" not in repr(cfg)
    sink = PreviewSink(name="preview", port=0, user=cfg.user, password=cfg.password)
    try:
        sink.publish(_env(_result("dock", 0), GRAY))
        for path in ("/", "/cameras/dock.jpg", "/cameras/dock.mjpg"):
            code, _, body = get(sink, path)
            assert code == 401 and b"needs a login" in body
        wrong = "Basic " + base64.b64encode(b"ops:guess").decode()
        assert get(sink, "/", {"Authorization": wrong})[0] == 401
        right = "Basic " + base64.b64encode(b"ops:s3cret").decode()
        code, ctype, _ = get(sink, "/cameras/dock.jpg", {"Authorization": right})
        assert code == 200 and ctype == "image/jpeg"
    finally:
        sink.close()
