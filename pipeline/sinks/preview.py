"""Live preview sink: each camera's annotated frames over HTTP, for a browser or any MJPEG client.

    /                      a page with every camera's stream and state (and picture problem)
    /cameras.json          every camera's state and figures, {"id": {"state": "live", "picture": "ok",
                           "fps": 5.0, ...}, ...}
    /cameras/<id>.mjpg     one camera, multipart/x-mixed-replace JPEGs (at most ``fps`` a second)
    /cameras/<id>.jpg      one camera's latest frame

Why it costs nothing unwatched: ``watching()`` names the cameras a client streams (or asked a snapshot
of in the last ``SNAPSHOT_GRACE_S``); the sink stage passes that set to the device stage, which copies
frames for those cameras only (``DeviceSettings.preview_watch``). ``publish`` keeps a reference to each
camera's latest frame and result; the drawing and JPEG encoding happen on the HTTP threads, once per new
frame however many clients watch it, so the sink stage's loop never waits for them.
"""

from __future__ import annotations

import base64
import hmac
import html
import json
import logging
import select
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Collection
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import quote, unquote

import cv2
import numpy as np

from engines.errors import SinkError
from pipeline.messages import CameraStatus, FrameResult
from pipeline.sinks.base import Envelope, SinkCounters
from pipeline.sinks.config import PreviewSinkConfig
from pipeline.sinks.draw import draw

log = logging.getLogger(__name__)

SNAPSHOT_GRACE_S = 10.0  # a camera stays watched this long after a snapshot (a page polling .jpg)
SNAPSHOT_WAIT_S = 3.0  # how long a snapshot of an unwatched camera waits for its first fresh frame
RATE_WINDOW_S = 5.0  # a camera's results/s are counted over this many seconds
_BOUNDARY = "segpipe-frame"


@dataclass(slots=True)
class _Camera:
    """One camera's latest frame (``seq`` counts them) and its JPEG, made once per frame."""

    state: str = "unknown"
    picture: str = "ok"  # the last status's: ok, frozen, blank, moved or blurred
    seq: int = 0
    image: np.ndarray | None = None
    result: FrameResult | None = None
    jpeg: bytes = b""
    jpeg_seq: int = 0  # the frame number jpeg shows (0: none yet)
    streams: int = 0  # clients streaming it now
    snapshot_until: float = 0.0  # monotonic time a snapshot keeps it watched to
    encode_lock: threading.Lock = field(default_factory=threading.Lock)
    # every result, watched or not: its figures on the page
    results: deque[float] = field(default_factory=lambda: deque(maxlen=256))  # monotonic times
    latency_ms: float | None = None  # capture to this sink, the last result
    objects: int | None = None  # detections in the last result
    removed: bool = False  # a reload took the camera out of the run: its streams end

    def figures(self, now: float) -> dict[str, Any]:
        recent = [t for t in self.results if now - t <= RATE_WINDOW_S]
        span = now - recent[0] if len(recent) > 1 else 0.0
        return {"state": self.state, "picture": self.picture, "fps": round((len(recent) - 1) / span, 1) if span > 0 else 0.0,
                "latency_ms": None if self.latency_ms is None else round(self.latency_ms),
                "objects": self.objects}


class PreviewSink:
    """Serves the cameras' latest annotated frames (see the module doc). Never blocks ``publish``."""

    def __init__(self, *, name: str, host: str = "127.0.0.1", port: int = 8090, fps: float = 5.0,
                 max_width: int = 960, quality: int = 80, max_clients: int = 16,
                 cameras: tuple[str, ...] | None = None, user: str = "segpipe", password: str | None = None) -> None:
        self.name = name
        self.counters = SinkCounters()
        self.interval = 1.0 / fps
        self.max_width, self.quality, self.max_clients = max_width, quality, max_clients
        # the Authorization header a client must send, or None when the preview has no login
        self._auth = None if password is None else \
            "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        self._cams: dict[str, _Camera] = {c: _Camera() for c in cameras or ()}
        self._cond = threading.Condition()  # guards _cams, its entries' frame fields and _clients
        self._clients = 0
        self._closed = False
        try:
            self._server = _Server((host, port), _handler(self))
        except OSError as e:
            raise SinkError(f"preview sink {name!r}: cannot listen on {host}:{port}: {e.strerror or e}") from None
        self.host, self.port = host, int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name=f"sink-{name}", daemon=True)
        self._thread.start()
        log.info("preview sink %s: serving http://%s:%d/", name, host, self.port)

    @classmethod
    def from_config(cls, cfg: PreviewSinkConfig) -> PreviewSink:
        return cls(name=cfg.sink_name, host=cfg.host, port=cfg.port, fps=cfg.fps, max_width=cfg.max_width,
                   quality=cfg.quality, max_clients=cfg.max_clients, cameras=cfg.cameras, user=cfg.user,
                   password=cfg.password)

    # ------------------------------------------------------------------------- the Sink protocol

    def publish(self, env: Envelope) -> None:
        with self._cond:
            cam = self._cams.setdefault(env.camera_id, _Camera())
            if isinstance(env.item, CameraStatus):
                cam.state, cam.picture = env.item.state.value, env.item.picture.value
                return
            if env.kind == "frame":
                cam.results.append(time.monotonic())
                if env.capture_ts is not None:
                    cam.latency_ms = (time.time() - env.capture_ts) * 1000.0
            if env.objects is not None:  # also when an event worker dropped the item (nothing draws)
                cam.objects = env.objects
            if isinstance(env.item, FrameResult) and env.image is not None:
                cam.image, cam.result, cam.seq = env.image, env.item, cam.seq + 1
                self._cond.notify_all()

    def cameras_removed(self, camera_ids: Collection[str]) -> None:
        """Forget cameras a reload took out of the run: the page, ``/cameras.json`` and the device stage's
        watch list drop them, and their open streams end (else a camera gone for good stayed on the
        wall as ``stopped`` until segpipe restarted)."""
        with self._cond:
            for camera_id in camera_ids:
                cam = self._cams.pop(camera_id, None)
                if cam is not None:
                    cam.removed, cam.image, cam.result = True, None, None
            self._cond.notify_all()

    def backlog(self) -> int:
        return 0

    def flush(self, timeout: float = 5.0) -> bool:
        return True

    def close(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()  # streaming clients end
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout)

    # ------------------------------------------------------------------------------- watching

    def watching(self) -> frozenset[str]:
        """Cameras whose frames someone wants now: streamed, or asked a snapshot of lately."""
        now = time.monotonic()
        with self._cond:
            return frozenset(c for c, cam in self._cams.items() if cam.streams or cam.snapshot_until > now)

    def cameras(self) -> dict[str, dict[str, Any]]:
        """Camera id -> its last known state and figures (results/s over the last few seconds, latency
        from capture, objects in the last result), every camera this sink has heard of."""
        now = time.monotonic()
        with self._cond:
            return {c: cam.figures(now) for c, cam in self._cams.items()}

    # ------------------------------------------------------------------------- HTTP threads

    def allowed(self, authorization: str | None) -> bool:
        """Whether a request with this Authorization header may see the cameras."""
        if self._auth is None:
            return True
        return authorization is not None and hmac.compare_digest(authorization.encode(), self._auth.encode())

    def _camera(self, camera_id: str) -> _Camera | None:
        with self._cond:
            return self._cams.get(camera_id)

    def _wait_frame(self, cam: _Camera, after: int, timeout: float) -> bool:
        """Wait until ``cam`` has a frame newer than number ``after``; False on timeout or close."""
        with self._cond:
            return self._cond.wait_for(lambda: self._closed or cam.removed or cam.seq > after, timeout) \
                and not (self._closed or cam.removed)

    def _watch(self, cam: _Camera, *, stream: bool) -> bool:
        """Count a stream (or a snapshot) of ``cam``; True when its stored frame is stale (nobody watched
        it, so the device stage sent none lately): then a fresh one is worth a short wait."""
        with self._cond:
            now = time.monotonic()
            stale = not cam.streams and cam.snapshot_until <= now
            if stream:
                if self._clients >= self.max_clients:
                    raise _Busy
                self._clients += 1
                cam.streams += 1
            else:
                cam.snapshot_until = now + SNAPSHOT_GRACE_S
            return stale

    def _encoded(self, camera_id: str, cam: _Camera) -> tuple[int, bytes]:
        """The latest frame drawn and JPEG-encoded (once per frame, whoever asks first)."""
        with cam.encode_lock:
            with self._cond:
                seq, image, result = cam.seq, cam.image, cam.result
            if seq != cam.jpeg_seq and image is not None and result is not None:
                height, width = image.shape[:2]
                scale = min(1.0, self.max_width / width)
                canvas = (cv2.resize(image, (max(int(width * scale), 1), max(int(height * scale), 1)),
                                     interpolation=cv2.INTER_AREA) if scale < 1.0 else image.copy())
                # the image may already be smaller than the frame (the device stage downscales copies)
                draw(canvas, result, scale=canvas.shape[1] / result.frame_size[0])
                ok, buf = cv2.imencode(".jpg", canvas, [cv2.IMWRITE_JPEG_QUALITY, self.quality])
                if not ok:
                    raise ValueError(f"JPEG encoding failed for camera {camera_id}")
                cam.jpeg, cam.jpeg_seq = buf.tobytes(), seq
                with self._cond:
                    if cam.seq == seq:  # the JPEG is all that is needed of it now: do not hold the frame
                        cam.image = cam.result = None
            return cam.jpeg_seq, cam.jpeg

    def _stream(self, camera_id: str, cam: _Camera, send: Any, gone: Any) -> None:
        """Send ``camera_id``'s new frames to one client until it leaves (``gone()``, or a failed send)
        or the sink closes."""
        if self._watch(cam, stream=True):
            self._wait_frame(cam, cam.seq, SNAPSHOT_WAIT_S)  # else the stored frame, however old
        try:
            shown = 0
            while not (self._closed or cam.removed or gone()):  # a camera with no new frame sends nothing to fail on
                if not self._wait_frame(cam, shown, 1.0):
                    continue
                t0 = time.monotonic()
                shown, jpeg = self._encoded(camera_id, cam)
                send(jpeg)
                self.counters.sent(camera_id)
                time.sleep(max(self.interval - (time.monotonic() - t0), 0.0))
        finally:
            with self._cond:
                self._clients -= 1
                cam.streams -= 1

    def _snapshot(self, camera_id: str, cam: _Camera) -> bytes | None:
        """The latest frame (a fresh one awaited if the stored one is stale); None if there is none."""
        if self._watch(cam, stream=False):
            self._wait_frame(cam, cam.seq, SNAPSHOT_WAIT_S)
        shown, jpeg = self._encoded(camera_id, cam)
        if shown <= 0:
            return None
        self.counters.sent(camera_id)
        return jpeg

    def page(self) -> bytes:
        """The wall: every camera's stream, its state under it (kept fresh from ``/cameras.json``): orange
        unless it is live with a picture that is ok."""
        tiles = []
        for camera_id, figures in sorted(self.cameras().items()):
            url, label = quote(camera_id, safe=""), html.escape(camera_id)
            ok = figures["picture"] == "ok"
            state = figures["state"] + ("" if ok else f", picture {figures['picture']}")
            tiles.append(f'<figure><img src="/cameras/{url}.mjpg" alt="{label}"><figcaption>{label} &middot; '
                         f'<span data-camera="{label}" class="{html.escape(figures["state"]) if ok else ""}">'
                         f'{html.escape(state)}</span> '
                         f'<small data-figures="{label}">{html.escape(_figures_line(figures))}</small>'
                         '</figcaption></figure>')
        body = "\n".join(tiles) or "<p>No camera yet.</p>"
        return (f"<!doctype html><html><head><meta charset=utf-8><title>segpipe {html.escape(self.name)}</title>"
                "<style>body{background:#111;color:#ddd;font:14px sans-serif;margin:8px}"
                "main{display:grid;grid-template-columns:repeat(auto-fill,minmax(480px,1fr));gap:8px}"
                "figure{margin:0}img{width:100%;background:#000}span:not(.live){color:#f80}small{color:#999}</style>"
                "</head>"
                f"<body><main>{body}</main><script>{_PAGE_SCRIPT}</script></body></html>\n").encode()


def _figures_line(figures: dict[str, Any]) -> str:
    """``5.0 fps · 120 ms · 3 objects`` (what is known of it); the page's script writes the same."""
    parts = [f"{figures['fps']:.1f} fps"]
    if figures["latency_ms"] is not None:
        parts.append(f"{figures['latency_ms']} ms")
    if figures["objects"] is not None:
        parts.append(f"{figures['objects']} object" + ("" if figures["objects"] == 1 else "s"))
    return " \u00b7 ".join(parts)


# every 2 s: each caption shows its camera's state and picture problem (orange unless live with a
# picture that is ok) and figures; a new camera reloads the page
_PAGE_SCRIPT = """
function state(f) {
  return f.picture && f.picture !== "ok" ? f.state + ", picture " + f.picture : f.state;
}
function line(f) {
  const parts = [f.fps.toFixed(1) + " fps"];
  if (f.latency_ms !== null) parts.push(f.latency_ms + " ms");
  if (f.objects !== null) parts.push(f.objects + (f.objects === 1 ? " object" : " objects"));
  return parts.join(" \u00b7 ");
}
async function refresh() {
  try {
    const cams = await (await fetch("/cameras.json", {cache: "no-store"})).json();
    const shown = document.querySelectorAll("span[data-camera]");
    if (Object.keys(cams).length !== shown.length) { location.reload(); return; }
    for (const el of shown) {
      const f = cams[el.dataset.camera];
      el.textContent = f ? state(f) : "gone"; el.className = f && state(f) === f.state ? f.state : "";
      const fig = document.querySelector(`small[data-figures="${CSS.escape(el.dataset.camera)}"]`);
      if (fig) fig.textContent = f ? line(f) : "";
    }
  } catch (e) {}
}
setInterval(refresh, 2000);
"""


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # one line, not http.server's traceback on stderr: a client gone mid-reply is routine
        log.warning("preview: request from %s failed: %s", client_address[0], sys.exc_info()[1])


class _Busy(Exception):
    """Every stream slot is taken."""


def _handler(sink: PreviewSink) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = 60  # seconds an idle keep-alive connection (or a client that stopped reading) holds a thread

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's name
            log.debug("preview sink %s: %s", sink.name, format % args)

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            path = self.path.split("?", 1)[0]
            if not sink.allowed(self.headers.get("Authorization")):
                body = b"this preview needs a login (the sink's user and password)\n"
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="segpipe preview", charset="UTF-8"')
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            if path in ("/", "/index.html"):
                self._reply(200, sink.page(), "text/html; charset=utf-8")
                return
            if path == "/cameras.json":
                self._reply(200, json.dumps(sink.cameras()).encode(), "application/json")
                return
            stem, dot, ext = path.rpartition(".")
            if not stem.startswith("/cameras/") or not dot or ext not in ("mjpg", "jpg"):
                self._reply(404, b"not found: try /, /cameras/<id>.mjpg or /cameras/<id>.jpg\n")
                return
            camera_id = unquote(stem[len("/cameras/"):])
            cam = sink._camera(camera_id)
            if cam is None:
                known = ", ".join(sorted(sink.cameras())) or "none yet"
                self._reply(404, f"unknown camera {camera_id!r} (known: {known})\n".encode())
            elif ext == "jpg":
                jpeg = sink._snapshot(camera_id, cam)
                if jpeg is None:
                    self._reply(503, f"no frame of camera {camera_id!r} yet (state: {cam.state})\n".encode())
                else:
                    self._reply(200, jpeg, "image/jpeg")
            else:
                self._mjpeg(camera_id, cam)

        def _mjpeg(self, camera_id: str, cam: _Camera) -> None:
            def send(jpeg: bytes) -> None:
                self.wfile.write(f"--{_BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}"
                                 "\r\n\r\n".encode() + jpeg + b"\r\n")
                self.wfile.flush()

            started = False

            def start(jpeg: bytes) -> None:
                nonlocal started
                if not started:  # headers only once a frame is ready: a refused client gets a 503
                    self.send_response(200)
                    self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={_BOUNDARY}")
                    self.send_header("Cache-Control", "no-cache, no-store")
                    self.send_header("Connection", "close")
                    self.end_headers()
                    started = True
                send(jpeg)

            def gone() -> bool:  # the client closed its end (a browser tab closed)
                if not select.select([self.connection], [], [], 0)[0]:
                    return False
                try:
                    return self.connection.recv(1, socket.MSG_PEEK) == b""
                except OSError:
                    return True

            self.close_connection = True
            try:
                sink._stream(camera_id, cam, start, gone)
            except _Busy:
                self._reply(503, f"{sink.max_clients} streams already served (max_clients)\n".encode())
            except (BrokenPipeError, ConnectionResetError, TimeoutError):
                pass  # the client left

        def _reply(self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8") -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-cache")
            self.end_headers()
            self.wfile.write(body)

    return Handler
