"""What a camera's ``roi`` buys: a wide picture whose objects are all in one corner, with and without it.

    .venv/bin/python benchmarks/roi.py [--seconds 10] [--fps 10] [--scale 3] [--imgsz 384,640]

Takes a 640x360 demo traffic clip (``demo://traffic``, rendered on first use) and places each frame in
the bottom-right corner of a picture ``--scale`` times as wide and high (grey elsewhere), as a wide
camera whose road fills a corner. One `segpipe run` streams that wide clip as two cameras, one with
``roi`` on the corner and one without, every frame inferred with the demo model at ``--imgsz``. The
corner of each event is then scored against the clip's ground truth (``pipeline.demo_score``: recall
of objects >= 32x32 px at mask IoU 0.5, mean mask IoU, precision) and the run's per-camera frame
rate is printed. Without the roi the model sees the corner 1/scale as large.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import yaml
from pycocotools import mask as mask_utils

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from engines.synth.writers import sidecar_path  # noqa: E402
from pipeline.demo import ensure_demo_clip, parse_demo_url  # noqa: E402
from pipeline.demo_score import load_truth, score_events  # noqa: E402


def widen(src: Path, dst: Path, scale: int) -> tuple[int, int, int, int]:
    """Write ``src`` into the bottom-right corner of frames ``scale`` times its size; returns the corner
    (x0, y0, x1, y1) in the wide frame. Frame times are kept, so the clip's ground truth still applies."""
    with av.open(str(src)) as inp:
        stream = inp.streams.video[0]
        w, h = stream.codec_context.width, stream.codec_context.height
        rate = stream.average_rate or Fraction(10)
        box = (w * (scale - 1), h * (scale - 1), w * scale, h * scale)
        with av.open(str(dst), "w") as out:
            enc = out.add_stream("libx264", rate=rate)
            enc.width, enc.height, enc.pix_fmt = w * scale, h * scale, "yuv420p"
            enc.options = {"crf": "18", "preset": "veryfast"}
            canvas = np.full((h * scale, w * scale, 3), 110, np.uint8)
            for frame in inp.decode(stream):
                canvas[box[1]:box[3], box[0]:box[2]] = frame.to_ndarray(format="rgb24")
                for packet in enc.encode(av.VideoFrame.from_ndarray(canvas, format="rgb24")):
                    out.mux(packet)
            for packet in enc.encode():
                out.mux(packet)
    return box


def in_corner(event: dict, box: tuple[int, int, int, int]) -> dict:
    """The event as the corner alone: detections whose box centre is in it, moved and cropped to it."""
    x0, y0, x1, y1 = box
    dets = []
    for d in event["detections"]:
        cx, cy = (d["box"][0] + d["box"][2]) / 2, (d["box"][1] + d["box"][3]) / 2
        if not (x0 <= cx < x1 and y0 <= cy < y1):
            continue
        full = mask_utils.decode(d["mask"])
        crop = np.asfortranarray(full[y0:y1, x0:x1])
        rle = mask_utils.encode(crop)
        rle["counts"] = rle["counts"].decode()
        bx = [d["box"][0] - x0, d["box"][1] - y0, d["box"][2] - x0, d["box"][3] - y0]
        dets.append({**d, "box": bx, "mask": rle})
    return {**event, "detections": dets}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--fps", type=float, default=10.0)
    ap.add_argument("--seed", type=int, default=21)
    ap.add_argument("--scale", type=int, default=3)
    ap.add_argument("--imgsz", default="384,640", help="model input, H,W")
    args = ap.parse_args()
    spec = parse_demo_url(f"demo://traffic?seed={args.seed}&seconds={args.seconds:g}&fps={args.fps:g}&size=640x360")
    clip = ensure_demo_clip(spec)
    truth = load_truth(sidecar_path(clip))
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        wide = tmp / "wide.mp4"
        box = widen(clip, wide, args.scale)
        W, H = 640 * args.scale, 360 * args.scale
        roi = [box[0] / W, box[1] / H, box[2] / W, box[3] / H]
        cam = {"url": str(wide), "realtime": False, "lossless": True}
        cfg = {"model": {"path": "demo://model", "device": "cpu", "imgsz": [int(v) for v in args.imgsz.split(",")]},
               "batch": {"max_batch": 2, "max_wait_ms": 5, "max_age_ms": 3_600_000},
               "cameras": [{"id": "with-roi", "roi": roi, **cam}, {"id": "whole", **cam}],
               "sinks": [{"type": "jsonl", "path": str(tmp / "events.jsonl"), "max_bytes": 2**40}],
               "metrics": {"enabled": False}}
        (tmp / "run.yaml").write_text(yaml.safe_dump(cfg))
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "pipeline", "run", str(tmp / "run.yaml"), "--no-console",
                               "--log-level", "warning"], cwd=REPO)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            sys.exit(f"segpipe run exited with {proc.returncode}")
        events: dict[str, list[dict]] = {"with-roi": [], "whole": []}
        for line in (tmp / "events.jsonl").read_text().splitlines():
            ev = json.loads(line)
            if ev["kind"] == "frame":
                events[ev["camera"]].append(ev)
    print(f"{W}x{H} picture, objects in its {box[2] - box[0]}x{box[3] - box[1]} bottom-right corner; demo model at "
          f"{args.imgsz} (H,W); one run of both cameras: {wall:.1f} s for {sum(map(len, events.values()))} frames")
    for name, evs in events.items():
        score = score_events([in_corner(e, box) for e in evs], truth)
        print(f"  {name:9s} {score}")


if __name__ == "__main__":
    main()
