"""Synthetic data throughput: dataset images/s for 1 and 2 workers, and video frames/s.

    .venv/bin/python benchmarks/synth.py [--images 200] [--size 640x480] [--style mixed] [--seconds 5]

Each figure is wall time of the real writer into a temporary folder (render, label, JPEG, files), so
it includes process start-up for the multi-worker run; the single-worker run also prints its CPU time
per image, which stays meaningful when other jobs share the cores. The target it checks against: 2,000 images in
a few minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engines.synth.writers import parse_size, write_dataset, write_video  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--size", default="640x480")
    ap.add_argument("--style", default="mixed")
    ap.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    ap.add_argument("--seconds", type=float, default=5.0, help="video length (0 skips the video figure)")
    ap.add_argument("--fps", type=float, default=30.0)
    args = ap.parse_args()
    size = parse_size(args.size)
    print(f"size {size[0]}x{size[1]}, style {args.style}, {args.images} images")
    with tempfile.TemporaryDirectory() as tmp:
        for w in (int(v) for v in args.workers.split(",")):
            t, cpu = time.perf_counter(), time.process_time()
            s = write_dataset(Path(tmp) / f"w{w}", images=args.images, style=args.style, size=size, workers=w)
            dt, dcpu = time.perf_counter() - t, time.process_time() - cpu
            rate = args.images / dt
            print(
                f"dataset  workers={w}: {rate:6.1f} images/s  ({dt:.1f} s, {sum(s.instances)} instances; "
                f"2,000 images would take {2000 / rate / 60:.1f} min)"
            )
            if w == 1:  # CPU time is what an idle core would need, whatever else shares the machine
                print(f"         CPU time {1000 * dcpu / args.images:.1f} ms/image in this process")
        if args.seconds > 0:
            t = time.perf_counter()
            v = write_video(
                Path(tmp) / "clip.mp4", seconds=args.seconds, fps=args.fps, size=size, style=args.style
            )
            dt = time.perf_counter() - t
            print(
                f"video    {v.style}: {v.frames / dt:6.1f} frames/s  ({v.frames} frames in {dt:.1f} s, "
                f"{v.instances / v.frames:.1f} instances/frame)"
            )


if __name__ == "__main__":
    main()
