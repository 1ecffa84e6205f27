"""Webhook sink cost and throughput against a local HTTP receiver in its own process.

    .venv/bin/python benchmarks/webhook_sink.py [--events 5000] [--objects 10]

Prints, for frame events of N objects with RLE masks (like the demo's):
- ``publish`` on the sink stage's thread for an event the sink lets go (no crossing, default
  ``events``), and for one it takes;
- events/s delivered, first publish to last answer, with ``events: [frame]`` and masks stripped
  (each event parsed and written again), with masks kept, and signed (``secret``);
- with ``snapshot`` (640 wide): ``publish`` of an event that fires, which reads its 1280x720 frame back
  from a shared-memory ring, shrinks it and encodes the JPEG on the sink stage's thread;
and checks the receiver got every event.
"""

from __future__ import annotations

import argparse
import http.server
import multiprocessing as mp
import socket
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.mqtt_sink import frame_events  # noqa: E402
from pipeline.sinks.base import Envelope, policy_for  # noqa: E402
from pipeline.sinks.webhook import WebhookSink  # noqa: E402


def _serve(port: int, count: mp.Value) -> None:  # type: ignore[valid-type]
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers["Content-Length"]))
            with count.get_lock():
                count.value += 1
            self.send_response(204)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_: object) -> None:
            pass

    http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=5000)
    ap.add_argument("--objects", type=int, default=10)
    args = ap.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    count = mp.Value("i", 0)
    server = mp.Process(target=_serve, args=(port, count), daemon=True)
    server.start()
    time.sleep(0.5)
    url = f"http://127.0.0.1:{port}/hook"

    plain, crossing = frame_events(args.events, args.objects), frame_events(args.events, args.objects, crossing=True)
    print(f"{args.events} frame events of {args.objects} objects, {len(plain[0].payload) / 1024:.1f} kB each")
    sink = WebhookSink(name="b", url=url, policy=policy_for("webhook", maxsize=len(plain) + 1))
    t0 = time.perf_counter()
    for env in plain:
        sink.publish(env)
    let_go = (time.perf_counter() - t0) / len(plain)
    sink.close()
    print(f"publish, an event the sink lets go (no crossing): {let_go * 1e6:.2f} us")

    for label, kw in (("masks stripped", {}), ("masks kept", {"masks": True}),
                      ("masks stripped, signed", {"secret": "s"})):
        with count.get_lock():
            count.value = 0
        sink = WebhookSink(name="b", url=url, policy=policy_for("webhook", maxsize=len(crossing) + 1), **kw)
        t0 = time.perf_counter()
        for env in crossing:
            sink.publish(env)
        taken = (time.perf_counter() - t0) / len(crossing)
        ok = sink.flush(600)
        dt = time.perf_counter() - t0
        sink.close()
        print(f"{label:24s} publish {taken * 1e6:5.2f} us; {len(crossing) / dt:7.0f} events/s delivered, "
              f"receiver got {count.value}/{len(crossing)}{'' if ok else ' (flush timed out)'}")
    _snapshots(url, crossing[:200], count)
    server.terminate()


def _snapshots(url: str, events: list[Envelope], count: mp.Value) -> None:  # type: ignore[valid-type]
    from pipeline import shm

    prefix = shm.prefix_for(90_000)
    control = shm.ControlBlock(prefix, create=True)
    writer = shm.RingWriter(prefix)
    lookup = shm.FrameLookup({e.camera_id: prefix for e in events})
    try:
        rng = np.random.default_rng(0)
        seq = writer.write(rng.integers(0, 255, (720, 1280, 3), np.uint8), pts=0.0, capture_ts=time.time())
        frames = [Envelope(camera_id=e.camera_id, kind="frame", payload=e.payload.replace(
            b'"seq":', f'"seq":{seq},"was":'.encode(), 1), item=None) for e in events]
        with count.get_lock():
            count.value = 0
        sink = WebhookSink(name="b", url=url, policy=policy_for("webhook", maxsize=len(frames) + 1),
                           snapshot=(640, 80))
        sink.use_frames(lookup)
        t0 = time.perf_counter()
        for env in frames:
            sink.publish(env)
        taken = (time.perf_counter() - t0) / len(frames)
        ok = sink.flush(600)
        sink.close()
        print(f"{'snapshot 640 wide':24s} publish {taken * 1e3:5.2f} ms; receiver got {count.value}/{len(frames)}, "
              f"{sink.counters.totals_errors['snapshot']} without a picture{'' if ok else ' (flush timed out)'}")
    finally:
        lookup.close()
        writer.close()
        control.close()
        shm.unlink_all(prefix)


if __name__ == "__main__":
    main()
