"""Real H.264 test clips made with PyAV (no binary fixtures in the repo).

Each frame shows a moving bright box on a dark background and carries its own index in binary in
the top-left corner (12 black/white 8x8 blocks, so ``index % 4096``), so a test can tell which frame
it received even after lossy encoding.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from fractions import Fraction
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import av
import numpy as np

_BITS = 12  # frame index bits painted into the top-left corner


def make_frame(index: int, *, size: tuple[int, int] = (320, 240)) -> np.ndarray:
    """One synthetic BGR frame, (H, W, 3) uint8, with ``index`` painted into the top-left block."""
    w, h = size
    img = np.full((h, w, 3), 30, np.uint8)
    bw, bh = max(8, w // 6), max(8, h // 6)
    x = 96 + (index * 7) % max(1, w - bw - 96)
    y = h // 2 - bh // 2
    img[y:y + bh, x:x + bw] = (40, 200, 240)
    for bit in range(_BITS):
        img[:8, bit * 8:(bit + 1) * 8] = 255 if (index >> bit) & 1 else 0
    return img


def frame_index(image: np.ndarray) -> int:
    """Read back the index painted by ``make_frame`` (modulo 4096)."""
    bits = [image[2:6, bit * 8 + 2:bit * 8 + 6].mean() > 127 for bit in range(_BITS)]
    return sum(1 << i for i, b in enumerate(bits) if b)


def write_clip(path: Path, *, frames: int = 30, size: tuple[int, int] = (320, 240), fps: int = 15,
               gop: int = 10, start: int = 0, pts: list[int] | None = None,
               images: list[np.ndarray] | None = None, crf: int = 18) -> Path:
    """Encode ``frames`` synthetic frames as H.264 (yuv420p) into ``path`` (.mp4, .ts or .mkv).

    ``gop`` is the keyframe interval in frames: small values keep truncated files decodable.
    ``pts``: each frame's timestamp in 1/fps units (default 0, 1, 2, ...; gaps make a stalling clip).
    ``images``: encode these BGR frames instead (``frames`` and ``size`` then come from them).
    Returns ``path``.
    """
    if images is not None:
        frames, size = len(images), (images[0].shape[1], images[0].shape[0])
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.time_base = Fraction(1, fps)
        stream.options = {"preset": "ultrafast", "tune": "zerolatency", "g": str(gop),
                          "keyint_min": str(gop), "crf": str(crf)}
        for i in range(frames):
            img = images[i] if images is not None else make_frame(start + i, size=size)
            frame = av.VideoFrame.from_ndarray(img, format="bgr24")
            frame.pts = i if pts is None else pts[i]
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def truncate(src: Path, dst: Path, *, fraction: float) -> Path:
    """Copy the first ``fraction`` of ``src``'s bytes to ``dst`` (a file cut off mid-stream)."""
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


def unknown_codec(src: Path, dst: Path) -> Path:
    """Copy MP4 ``src`` to ``dst`` with its video sample entry renamed ``zzzz``: a codec that FFmpeg has no
    decoder for (a camera's own, or HEVC in a build without it)."""
    data = src.read_bytes()
    i = data.index(b"avc1", data.index(b"stsd"))
    dst.write_bytes(data[:i] + b"zzzz" + data[i + 4:])
    return dst


def stuck_timestamps(src: Path, dst: Path, *, pts: int = 900_000) -> Path:
    """Copy MPEG-TS ``src`` to ``dst`` with every video PES's PTS and DTS set to ``pts`` (90 kHz): a
    camera whose clock stands still."""
    data = bytearray(src.read_bytes())

    def stamp(ts: int, marker: int) -> bytes:
        return bytes([(marker << 4) | ((ts >> 29) & 0xE) | 1, (ts >> 22) & 0xFF, ((ts >> 14) & 0xFE) | 1,
                      (ts >> 7) & 0xFF, ((ts << 1) & 0xFE) | 1])

    for off in range(0, len(data) - 187, 188):
        if data[off] != 0x47 or not data[off + 1] & 0x40:  # a packet that starts a PES
            continue
        i = off + 4 + (1 + data[off + 4] if data[off + 3] & 0x20 else 0)  # past the adaptation field
        if data[i:i + 3] != b"\x00\x00\x01" or not 0xE0 <= data[i + 3] <= 0xEF:  # video streams only
            continue
        flags = data[i + 7] >> 6  # 2: PTS, 3: PTS and DTS
        if flags & 2:
            data[i + 9:i + 14] = stamp(pts, flags)
        if flags == 3:
            data[i + 14:i + 19] = stamp(pts, 1)
    dst.write_bytes(bytes(data))
    return dst


def corrupt(src: Path, dst: Path, *, start: float = 0.4, length: float = 0.2, seed: int = 0) -> Path:
    """Copy ``src`` to ``dst`` with a span of random bytes overwritten (a damaged recording)."""
    data = bytearray(src.read_bytes())
    a, n = int(len(data) * start), int(len(data) * length)
    data[a:a + n] = np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()
    dst.write_bytes(bytes(data))
    return dst


class _Quiet:
    """A test web server's handler that does not log every request on stderr."""

    def log_message(self, *args: Any) -> None:
        pass


@contextlib.contextmanager
def _serving(handler: Any, name: str, done: threading.Event | None = None) -> Iterator[str]:
    """``handler`` served on a free local port until the block ends (``done`` set first, for handlers that
    stream until it is); yields the URL of ``/name``."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/{name}"
    finally:
        if done is not None:
            done.set()
        server.shutdown()
        server.server_close()


def jpegs(images: list[np.ndarray]) -> list[bytes]:
    """Each BGR image as one JPEG (FFmpeg's mjpeg encoder, full-range 4:2:0, as IP cameras send them)."""
    h, w = images[0].shape[:2]
    codec = av.CodecContext.create("mjpeg", "w")
    codec.width, codec.height, codec.pix_fmt, codec.time_base = w, h, "yuvj420p", Fraction(1, 25)
    out = []
    for img in images:
        frame = av.VideoFrame.from_ndarray(img, format="bgr24").reformat(format="yuvj420p")
        out.append(b"".join(bytes(p) for p in codec.encode(frame)))
    return out


@contextlib.contextmanager
def _streaming(name: str, content_type: str, parts: list[bytes], period_s: float) -> Iterator[str]:
    """An endless HTTP response: ``parts`` again and again, one every ``period_s`` of wall time, until the
    block ends; yields the URL of ``/name``."""
    done = threading.Event()

    class Handler(_Quiet, BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.end_headers()
            start, n = time.monotonic(), 0
            with contextlib.suppress(OSError):
                while not done.wait(max(0.0, start + n * period_s - time.monotonic())):
                    self.wfile.write(parts[n % len(parts)])
                    self.wfile.flush()
                    n += 1

    with _serving(Handler, name, done) as url:
        yield url


@contextlib.contextmanager
def mjpeg_camera(images: list[np.ndarray], *, fps: float) -> Iterator[str]:
    """An MJPEG IP camera: ``images`` as JPEGs over HTTP ``multipart/x-mixed-replace`` (the
    ``/video.mjpg`` of most IP cameras), ``fps`` a second in wall time, again and again until the block
    ends; yields its URL. The format has no timestamps: FFmpeg numbers the frames at 25 a second."""
    parts = [b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n%s\r\n" % (len(j), j)
             for j in jpegs(images)]
    with _streaming("video.mjpg", "multipart/x-mixed-replace;boundary=frame", parts, 1 / fps) as url:
        yield url


@contextlib.contextmanager
def http_stream(clip: Path) -> Iterator[str]:
    """An endless live stream: ``clip``'s bytes over HTTP again and again (20 TS packets every 20 ms)
    until the block ends; yields its URL."""
    data, step = clip.read_bytes(), 188 * 20
    with _streaming("live.ts", "video/mp2t", [data[i:i + step] for i in range(0, len(data), step)], 0.02) as url:
        yield url


@contextlib.contextmanager
def http_file(path: Path) -> Iterator[str]:
    """``path`` served by a plain web server (a recording on a web server or in a bucket); yields its URL."""
    import functools
    from http.server import SimpleHTTPRequestHandler

    class Handler(_Quiet, SimpleHTTPRequestHandler):
        pass

    with _serving(functools.partial(Handler, directory=str(path.parent)), path.name) as url:
        yield url


# ----------------------------------------------------------------------------------- RTSP server
#
# FFmpeg's RTSP muxer only pushes to a server (ANNOUNCE/RECORD), it cannot serve players. So the test
# server is two real processes: this relay (a minimal RTSP server over TCP-interleaved RTP that
# accepts one publisher and serves players) and an ``ffmpeg -re ... -f rtsp`` publisher that does the
# real RTP packetisation. Kill both to take the "camera" down; start both to bring it back.

_RTSP_OK = "RTSP/1.0 200 OK\r\nCSeq: {cseq}\r\n{extra}\r\n"


def without_parameter_sets(src: Path, dst: Path, ffmpeg: str) -> Path:
    """``src`` re-encoded as H.264 MPEG-TS with its SPS, PPS and IDR NAL units removed: a stream that
    demuxes packet after packet and never decodes a frame (a camera broken at the source)."""
    subprocess.run([ffmpeg, "-hide_banner", "-loglevel", "error", "-y", "-i", str(src), "-c:v", "libx264",
                    "-g", "5", "-bsf:v", "filter_units=remove_types=5|7|8", "-f", "mpegts", str(dst)], check=True)
    return dst


def _read_request(sock_file: Any) -> tuple[str, dict[str, str], bytes] | None:
    line = sock_file.readline()
    if not line:
        return None
    method, _, rest = line.decode("latin-1").partition(" ")
    headers: dict[str, str] = {"x-url": rest.split(" ", 1)[0]}
    while True:
        h = sock_file.readline().decode("latin-1")
        if h in ("\r\n", "\n", ""):
            break
        k, _, v = h.partition(":")
        headers[k.strip().lower()] = v.strip()
    body = sock_file.read(int(headers.get("content-length", 0) or 0))
    return method, headers, body


class _Relay:
    """One publisher in, any number of players out (RTP/RTCP frames relayed byte for byte)."""

    def __init__(self) -> None:
        self.sdp: bytes | None = None
        self.players: list[Any] = []
        self.lock = threading.Lock()
        self.sdp_ready = threading.Event()

    def serve(self, conn: Any) -> None:
        f = conn.makefile("rb")
        publisher = playing = False
        try:
            while True:
                first = f.peek(1)[:1] if hasattr(f, "peek") else b""
                if first == b"$":  # interleaved RTP/RTCP frame
                    head = f.read(4)
                    payload = f.read(int.from_bytes(head[2:4], "big"))
                    if publisher:
                        self._fan_out(head + payload)
                    continue
                req = _read_request(f)
                if req is None:
                    return
                method, headers, body = req
                cseq = headers.get("cseq", "0")
                extra = ""
                if method == "ANNOUNCE":
                    publisher = True
                    self.sdp = body
                elif method == "DESCRIBE":
                    if not self.sdp_ready.wait(10) or self.sdp is None:
                        conn.sendall(f"RTSP/1.0 404 Not Found\r\nCSeq: {cseq}\r\n\r\n".encode())
                        continue
                    extra = (f"Content-Type: application/sdp\r\nContent-Base: {headers['x-url']}/\r\n"
                             f"Content-Length: {len(self.sdp)}\r\n")
                    conn.sendall((_RTSP_OK.format(cseq=cseq, extra=extra)).encode() + self.sdp)
                    continue
                elif method == "SETUP":
                    transport = headers.get("transport", "")
                    if "TCP" not in transport.upper():
                        conn.sendall(f"RTSP/1.0 461 Unsupported Transport\r\nCSeq: {cseq}\r\n\r\n".encode())
                        continue
                    extra = f"Transport: {transport}\r\nSession: 12345678;timeout=60\r\n"
                elif method == "RECORD":
                    extra = "Session: 12345678\r\n"
                    self.sdp_ready.set()
                elif method == "PLAY":
                    extra = "Session: 12345678\r\n"
                    playing = True
                elif method == "TEARDOWN":
                    conn.sendall(_RTSP_OK.format(cseq=cseq, extra="").encode())
                    return
                elif method == "OPTIONS":
                    extra = "Public: OPTIONS, DESCRIBE, ANNOUNCE, SETUP, PLAY, RECORD, TEARDOWN, GET_PARAMETER\r\n"
                conn.sendall(_RTSP_OK.format(cseq=cseq, extra=extra).encode())
                if playing:
                    with self.lock:
                        if conn not in self.players:
                            self.players.append(conn)
        except OSError:
            return
        finally:
            with self.lock:
                if conn in self.players:
                    self.players.remove(conn)
            if publisher:  # the camera is gone: drop the players too, as a real camera would
                with self.lock:
                    for p in self.players:
                        with contextlib.suppress(OSError):
                            p.shutdown(socket.SHUT_RDWR)
            conn.close()

    def _fan_out(self, frame: bytes) -> None:
        with self.lock:
            players = list(self.players)
        for p in players:
            try:
                p.sendall(frame)
            except OSError:
                with self.lock:
                    if p in self.players:
                        self.players.remove(p)


def relay_main(port: int) -> None:
    """Run the RTSP relay on 127.0.0.1:``port`` until killed."""
    relay = _Relay()
    srv = socket.create_server(("127.0.0.1", port), reuse_port=False)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=relay.serve, args=(conn,), daemon=True).start()


def start_relay(port: int, timeout: float = 15.0) -> subprocess.Popen[bytes]:
    """The RTSP relay (``relay_main``) in its own process, once it accepts connections on ``port``."""
    from tests.helpers import accepts  # here, not on top: this file also runs as the relay script

    relay = subprocess.Popen([sys.executable, __file__, "relay", str(port)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while not accepts(port):
        if time.monotonic() > deadline:
            relay.kill()
            raise RuntimeError("RTSP relay did not start")
        time.sleep(0.05)
    return relay


class RtspServer:
    """A real RTSP camera on 127.0.0.1:``port`` playing ``clip`` in a loop: relay + ffmpeg publisher.

    ``url`` is what a player opens. ``stop()`` kills both processes (the camera goes away),
    ``start()`` brings it back on the same port; ``pause()``/``resume()`` freeze the publisher
    (SIGSTOP/SIGCONT: the connection stays up but no frame arrives, a stall).
    """

    def __init__(self, clip: Path, port: int, *, ffmpeg: str = "ffmpeg") -> None:
        self.clip, self.port, self.ffmpeg = clip, port, ffmpeg
        self.url = f"rtsp://127.0.0.1:{port}/cam"
        self.relay: subprocess.Popen[bytes] | None = None
        self.publisher: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 15.0) -> None:
        self.relay = start_relay(self.port, timeout)
        self.publisher = subprocess.Popen(
            [self.ffmpeg, "-hide_banner", "-loglevel", "error", "-re", "-stream_loop", "-1", "-i", str(self.clip),
             "-c", "copy", "-f", "rtsp", "-rtsp_transport", "tcp", self.url],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self) -> None:
        for proc in (self.publisher, self.relay):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
                proc.wait(10)
        self.publisher = self.relay = None

    def pause(self) -> None:
        assert self.publisher is not None
        self.publisher.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.publisher is not None
        self.publisher.send_signal(signal.SIGCONT)


if __name__ == "__main__":
    if sys.argv[1:2] == ["relay"]:
        relay_main(int(sys.argv[2]))


@contextlib.contextmanager
def rtsp_camera(folder: Path, ffmpeg: str, *, size: tuple[int, int]) -> Iterator[RtspServer]:
    """A 2-second 15 fps clip (a keyframe every 5 frames) served over RTSP on a free port, stopped on exit."""
    from tests.conftest import free_port  # here, not on top: this file also runs as the relay script

    srv = RtspServer(write_clip(folder / "rtsp.mp4", frames=30, fps=15, size=size, gop=5), free_port(), ffmpeg=ffmpeg)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()
