"""Cost of tracking in the sink stage: ``CameraTrackers.apply`` per frame for N moving objects.

    .venv/bin/python benchmarks/tracking.py [--objects 10,50,200] [--frames 300] [--drop 0.3]

Objects cross the frame at random speeds and sizes, of 6 classes; each result has a ``--drop`` chance
of being skipped (a seq gap, as when the model falls behind). Prints microseconds per frame (median
and 95th percentile) and the id count, which equals the object count when nothing was lost. How well
ids follow real detections is measured by ``benchmarks/demo_accuracy.py`` (MOTA, IDF1).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.config import TrackingConfig  # noqa: E402
from pipeline.messages import Detection, FrameResult  # noqa: E402
from pipeline.tracking import CameraTrackers  # noqa: E402


def run(n: int, frames: int, drop: float, seed: int = 0) -> tuple[np.ndarray, int]:
    rng = np.random.default_rng(seed)
    start = rng.uniform([0, 0], [1920, 1080], (n, 2))
    vel = rng.uniform(-6, 6, (n, 2))
    size = rng.uniform(30, 120, (n, 2))
    cls = rng.integers(0, 6, n)
    trackers = CameraTrackers(TrackingConfig(enabled=True))
    times: list[float] = []
    ids: set[int] = set()
    for f in range(frames):
        if f and rng.random() < drop:
            continue
        c = start + vel * f
        boxes = np.concatenate([c - size / 2, c + size / 2], 1)
        dets = tuple(Detection(class_id=int(k), label=str(k), score=0.9, box=tuple(map(float, b)))  # type: ignore[arg-type]
                     for b, k in zip(boxes, cls, strict=True))
        result = FrameResult(camera_id="cam", seq=f, pts=None, capture_ts=0.0, infer_ts=0.0,
                             frame_size=(1920, 1080), model="m", detections=dets)
        t0 = time.perf_counter()
        out = trackers.apply(result)
        times.append(time.perf_counter() - t0)
        ids.update(d.track_id for d in out.detections if d.track_id is not None)
    return np.array(times) * 1e6, len(ids)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--objects", default="10,50,200")
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--drop", type=float, default=0.3)
    args = ap.parse_args()
    print(f"{'objects':>8} {'us/frame p50':>13} {'p95':>8} {'ids':>6}")
    for n in (int(v) for v in args.objects.split(",")):
        us, ids = run(n, args.frames, args.drop)
        print(f"{n:>8} {np.median(us):>13.0f} {np.percentile(us, 95):>8.0f} {ids:>6}")


if __name__ == "__main__":
    main()
