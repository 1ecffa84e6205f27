"""Capacity of the sink stage, the one process that tracks, applies zones and lines, serialises and
publishes every camera's results: events per second, and where each event's time goes.

    .venv/bin/python benchmarks/sink_stage.py [--cameras 16] [--objects 10,40] [--frames 200] [--size 1920x1080]

Realistic results, built once up front: N objects per frame moving across a --size frame, each with a
COCO RLE mask of its box's ellipse over the whole frame (what the device stage sends). For each object
count, four set-ups are timed on the same results, ``SinkStage.handle`` called back to back in this
process: bare (encode and publish), + tracking, + tracking and one zone and one line per camera, and
that with a ZeroMQ PUB sink instead of the JSONL file. Prints microseconds per event (median, p95) and
the events/s one sink-stage process sustains; beyond that, its inbox fills and the device stage waits.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pycocotools import mask as mask_utils  # noqa: E402

from pipeline.config import CameraConfig, LineConfig, TrackingConfig, ZoneConfig  # noqa: E402
from pipeline.messages import Detection, FrameResult  # noqa: E402
from pipeline.sinks.config import JsonlSinkConfig, ZmqSinkConfig  # noqa: E402
from pipeline.sinks.stage import SinkStage  # noqa: E402


def make_results(cameras: int, objects: int, frames: int, size: tuple[int, int], seed: int = 0) -> list[FrameResult]:
    """Frames in arrival order (camera after camera), N objects each, RLE masks over the whole frame."""
    w, h = size
    rng = np.random.default_rng(seed)
    out = []
    for cam in range(cameras):
        start = rng.uniform([0, 0], [w, h], (objects, 2))
        vel = rng.uniform(-8, 8, (objects, 2))
        wh = rng.uniform(40, 200, (objects, 2))
        for f in range(frames):
            c = np.mod(start + vel * f, [w, h])
            dets = []
            for k in range(objects):
                x1, y1 = np.clip(c[k] - wh[k] / 2, 0, [w - 2, h - 2])
                x2, y2 = np.clip(c[k] + wh[k] / 2, [x1 + 1, y1 + 1], [w, h])
                m = np.zeros((h, w), np.uint8)
                yy, xx = np.ogrid[int(y1):int(y2), int(x1):int(x2)]
                cy, cx, ry, rx = (y1 + y2) / 2, (x1 + x2) / 2, max((y2 - y1) / 2, 1), max((x2 - x1) / 2, 1)
                m[int(y1):int(y2), int(x1):int(x2)] = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
                rle = mask_utils.encode(np.asfortranarray(m))
                dets.append(Detection(class_id=k % 6, label=f"class{k % 6}", score=0.9, box=(x1, y1, x2, y2),
                                      mask={"size": rle["size"], "counts": rle["counts"].decode()}))
            out.append(FrameResult(camera_id=f"cam{cam}", seq=f, pts=f / 15, capture_ts=time.time(),
                                   infer_ts=time.time(), frame_size=size, model="m", detections=tuple(dets)))
    # interleave cameras, as the device stage's batches do
    return [out[c * frames + f] for f in range(frames) for c in range(cameras)]


def time_stage(results: list[FrameResult], stage: SinkStage) -> np.ndarray:
    times = []
    for r in results:
        t0 = time.perf_counter()
        stage.handle(r)
        times.append(time.perf_counter() - t0)
    for _, sink in stage.sinks:
        sink.flush(30)
    stage.close()
    return np.array(times) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cameras", type=int, default=16)
    ap.add_argument("--objects", default="10,40")
    ap.add_argument("--frames", type=int, default=200, help="per camera")
    ap.add_argument("--size", default="1920x1080")
    args = ap.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))
    shapes = {"zones": (ZoneConfig(name="z", polygon=((0.1, 0.1), (0.6, 0.1), (0.6, 0.9), (0.1, 0.9))),),
              "lines": (LineConfig(name="l", points=((0.5, 0.0), (0.5, 1.0))),)}
    plain = [CameraConfig(id=f"cam{i}", url="x.mp4") for i in range(args.cameras)]
    shaped = [CameraConfig(id=f"cam{i}", url="x.mp4", **shapes) for i in range(args.cameras)]
    tracking = TrackingConfig(enabled=True)
    print(f"{args.cameras} cameras x {args.frames} frames at {args.size}, one sink-stage process")
    print(f"{'objects':>7s}  {'set-up':34s} {'us/event p50':>12s} {'p95':>7s} {'events/s':>9s}")
    with tempfile.TemporaryDirectory() as tmp:
        jsonl = JsonlSinkConfig(type="jsonl", path=Path(tmp) / "events.jsonl", max_bytes=2**40)
        zmq = ZmqSinkConfig(type="zmq", endpoint="tcp://127.0.0.1:0")
        for n in (int(v) for v in args.objects.split(",")):
            results = make_results(args.cameras, n, args.frames, size)  # type: ignore[arg-type]
            setups = [("jsonl", [jsonl], None, plain), ("jsonl + tracking", [jsonl], tracking, plain),
                      ("jsonl + tracking + zone + line", [jsonl], tracking, shaped),
                      ("zmq + tracking + zone + line", [zmq], tracking, shaped)]
            for name, sinks, track, cams in setups:
                us = time_stage(results, SinkStage.from_configs(sinks, tracking=track, cameras=cams))
                print(f"{n:7d}  {name:34s} {np.median(us):12.0f} {np.percentile(us, 95):7.0f} "
                      f"{1e6 / us.mean():9.0f}")


if __name__ == "__main__":
    main()
