"""Cost of the live preview per frame, watched and not, where it is paid.

    .venv/bin/python benchmarks/preview.py [--frames 100] [--size 1280x720] [--objects 10] [--clients 4]

Device stage: a watched camera's frame is copied at the preview's max_width (960) and pickled to the
sink stage as a FramePreview; an unwatched one costs neither. Sink stage: ``publish`` only keeps a
reference. HTTP threads: each new frame is drawn and JPEG-encoded once, however many clients stream
it (``--clients`` real MJPEG clients read it here). Prints milliseconds per frame for each part.
"""

from __future__ import annotations

import argparse
import pickle
import socket
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.video_sink import _frames  # noqa: E402
from pipeline.images import shrunk  # noqa: E402
from pipeline.messages import FramePreview  # noqa: E402
from pipeline.sinks.preview import PreviewSink  # noqa: E402


def _ms(fn: object, items: list, repeat: int = 1) -> float:
    t0 = time.perf_counter()
    for _ in range(repeat):
        for it in items:
            fn(it)  # type: ignore[operator]
    return (time.perf_counter() - t0) / (len(items) * repeat) * 1000


def _client(port: int, stop: threading.Event, got: list[int]) -> None:
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"GET /cameras/cam.mjpg HTTP/1.1\r\nHost: x\r\n\r\n")
        s.settimeout(0.5)
        while not stop.is_set():
            try:
                got.append(len(s.recv(1 << 20)))
            except TimeoutError:
                continue


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=100)
    ap.add_argument("--size", default="1280x720")
    ap.add_argument("--objects", type=int, default=10)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--width", type=int, default=960)
    a = ap.parse_args()
    w, h = (int(v) for v in a.size.split("x"))
    envs = _frames(a.frames, (w, h), a.objects)
    print(f"{a.frames} frames of {w}x{h}, {a.objects} objects with masks, preview max_width {a.width}")

    copies = [shrunk(e.image, a.width) for e in envs]  # type: ignore[arg-type]
    results = [e.item for e in envs]
    copy_ms = _ms(lambda e: shrunk(e.image, a.width), envs)
    pickle_ms = _ms(lambda i: pickle.loads(pickle.dumps(FramePreview(result=results[i], image=copies[i]))),
                    list(range(len(envs))))
    plain_ms = _ms(lambda r: pickle.loads(pickle.dumps(r)), results)
    print(f"device stage, watched camera:   copy {copy_ms:.2f} ms + result with frame through the queue "
          f"{pickle_ms:.2f} ms (the result alone: {plain_ms:.2f} ms)")
    print("device stage, unwatched camera: no copy, the result alone")

    sink = PreviewSink(name="bench", port=0, fps=1000, max_width=a.width)
    try:
        small = [e.__class__(camera_id=e.camera_id, kind=e.kind, payload=e.payload, item=e.item, image=c)
                 for e, c in zip(envs, copies, strict=True)]
        publish_us = _ms(sink.publish, small) * 1000
        cam = sink._camera("cam")
        assert cam is not None

        def encode(env: object) -> None:
            sink.publish(env)  # type: ignore[arg-type]
            sink._encoded("cam", cam)

        encode_ms = _ms(encode, small) - publish_us / 1000
        print(f"sink stage: publish {publish_us:.1f} us a frame (a reference kept)")
        print(f"HTTP threads: draw + JPEG {encode_ms:.2f} ms a new frame")

        stop, got = threading.Event(), [[] for _ in range(a.clients)]
        readers = [threading.Thread(target=_client, args=(sink.port, stop, g)) for g in got]
        for t in readers:
            t.start()
        time.sleep(0.5)
        sent0 = sum(sink.counters.totals_sent.values())
        t0 = time.perf_counter()
        for env in small:
            sink.publish(env)
            time.sleep(0.02)  # a 50 frames/s camera
        dt = time.perf_counter() - t0
        sent = sum(sink.counters.totals_sent.values()) - sent0
        stop.set()
        for t in readers:
            t.join()
        print(f"{a.clients} MJPEG clients on one camera at 50 frames/s: {sent / dt:.0f} frames/s sent in all "
              f"({sent / dt / a.clients:.0f} each), {sum(map(sum, got)) / 2**20 / dt:.1f} MiB/s")
    finally:
        sink.close()


if __name__ == "__main__":
    main()
