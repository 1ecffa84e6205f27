"""End-to-end accuracy of the out-of-the-box demo: `segpipe run` over demo:// clips, masks scored
against the clips' ground truth (``pipeline.demo_score.score_events``), track ids against its object ids
(``pipeline.demo_score.score_tracks``), line crossings against the clips' own
(``pipeline.demo_score.score_crossings``).

    .venv/bin/python benchmarks/demo_accuracy.py [--seconds 20] [--fps 15] [--size 640x360]
        [--styles traffic,factory,mixed] [--seed 21] [--model demo://model] [--imgsz N|H,W] [--conf 0.25]
        [--resolution frame|model] [--mask-threshold P] [--live] [--camera-fps F] [--no-tracking]

One camera per style, every frame inferred (lossless file cameras, no realtime pacing; with --live
paced at the clip's rate and dropped when the model falls behind, as a live camera is; with
--camera-fps sampled to that rate, as the demo config's cameras are), events to a
JSONL sink in a temporary folder; clips are rendered into $SEGPIPE_CACHE/demo on first use. Prints per
camera and overall: recall of objects >= 32x32 px at mask IoU 0.5 (same class), mean mask IoU of the
matched ones, precision, tracking (MOTA, IDF1, id switches, with the run's default tracking settings),
crossings of two counting lines on every camera (the picture's vertical middle and a horizontal line at
60 % of its height: recall and precision of objects >= 32x32 px crossing them, same direction and
class within 1 s), and the run's wall time. The test (tests/pipeline/test_demo_accuracy.py) asserts recall >= 0.9 and
mean IoU >= 0.75 on short clips.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from engines.synth.writers import sidecar_path  # noqa: E402
from pipeline.cli.common import parse_imgsz  # noqa: E402
from pipeline.config import LineConfig  # noqa: E402
from pipeline.demo import ensure_demo_clip, parse_demo_url  # noqa: E402
from pipeline.demo_score import (  # noqa: E402
    CrossingScore,
    DemoScore,
    TrackScore,
    load_truth,
    score_crossings,
    score_events,
    score_tracks,
)

LINES = ({"name": "middle", "points": [[0.5, 0.0], [0.5, 1.0]]}, {"name": "low", "points": [[0.0, 0.6], [1.0, 0.6]]})


def run_pipeline(urls: dict[str, str], args: argparse.Namespace, tmp: Path) -> tuple[dict[str, list[dict]], float]:
    """Frame events per camera from one `segpipe run`, and its wall time in seconds."""
    model = {"path": args.model, "device": "cpu", "conf": args.conf}
    imgsz = parse_imgsz(args.imgsz)
    if imgsz:
        model["imgsz"] = list(imgsz) if isinstance(imgsz, tuple) else imgsz
    cfg = {
        "model": model,
        "masks": {"format": "rle", "resolution": args.resolution, "threshold": args.mask_threshold},
        "batch": {"max_batch": len(urls), "max_wait_ms": 5, "max_age_ms": 3_600_000},
        "cameras": [{"id": cam, "url": url, "realtime": args.live, "lossless": not args.live, "fps": args.camera_fps,
                     "lines": list(LINES) if args.tracking else []} for cam, url in urls.items()],
        "tracking": {"enabled": args.tracking},
        "sinks": [{"type": "jsonl", "path": str(tmp / "events.jsonl"), "max_bytes": 2**40}],
        "metrics": {"enabled": False},
    }
    path = tmp / "cameras.yaml"
    path.write_text(yaml.safe_dump(cfg))
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pipeline", "run", str(path), "--no-console",
                           "--log-level", "warning"], cwd=REPO)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"segpipe run exited with {proc.returncode}")
    events: dict[str, list[dict]] = {cam: [] for cam in urls}
    with open(tmp / "events.jsonl") as f:
        for line in f:
            ev = json.loads(line)
            if ev["kind"] == "frame":
                events[ev["camera"]].append(ev)
    return events, wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--fps", type=float, default=15.0)
    ap.add_argument("--size", default="640x360")
    ap.add_argument("--styles", default="traffic,factory,mixed")
    ap.add_argument("--seed", type=int, default=21, help="clip seed (the test uses 11, training data 1 and 2)")
    ap.add_argument("--model", default="demo://model")
    ap.add_argument("--imgsz", default=None, help="model input: a side or H,W (default: the model's own)")
    ap.add_argument("--conf", type=float, default=0.25)
    ap.add_argument("--resolution", default="frame", choices=["frame", "model"])
    ap.add_argument("--mask-threshold", type=float, default=0.5, help="masks.threshold (default 0.5)")
    ap.add_argument("--live", action="store_true", help="pace clips at their rate; drop what the model misses")
    ap.add_argument("--camera-fps", type=float, default=None, help="sample each clip at most this rate")
    ap.add_argument("--tracking", action=argparse.BooleanOptionalAction, default=True)
    args = ap.parse_args()
    urls = {style: f"demo://{style}?seed={args.seed}&seconds={args.seconds:g}&fps={args.fps:g}&size={args.size}"
            for style in args.styles.split(",")}
    specs = {cam: parse_demo_url(url) for cam, url in urls.items()}
    t0 = time.perf_counter()
    clips = {cam: ensure_demo_clip(spec) for cam, spec in specs.items()}
    print(f"clips ready in {time.perf_counter() - t0:.1f} s ({os.environ.get('SEGPIPE_CACHE', '~/.cache/segpipe')}/demo)")
    with tempfile.TemporaryDirectory() as tmp:
        events, wall = run_pipeline(urls, args, Path(tmp))
    frames = sum(len(v) for v in events.values())
    print(f"segpipe run: {frames} frames in {wall:.1f} s ({frames / wall:.1f} frames/s incl. start-up), "
          f"model {args.model}, imgsz {args.imgsz or 'model'}, masks at {args.resolution} resolution, "
          f"threshold {args.mask_threshold:g}")
    total, tracks, crossings = [], [], []
    for cam, evs in events.items():
        truth = load_truth(sidecar_path(clips[cam]))
        score = score_events(evs, truth)
        total.append(score)
        print(f"  {cam:8s} {score}  [{len(evs)}/{specs[cam].frames} frames streamed]")
        if args.tracking:
            tracks.append(score_tracks(evs, truth))
            print(f"  {'':8s} tracking: {tracks[-1]}")
            crossings.append(score_crossings(evs, truth, [LineConfig(**line) for line in LINES]))
            print(f"  {'':8s} lines: {crossings[-1]}")
    ious = sum(s.mean_iou * s.matched for s in total)
    overall = DemoScore(sum(s.frames for s in total), sum(s.objects for s in total), sum(s.matched for s in total),
                        ious / max(sum(s.matched for s in total), 1), sum(s.detections for s in total),
                        sum(s.false_positives for s in total))
    print(f"  overall  {overall}")
    if tracks:
        summed = TrackScore(*(sum(getattr(t, f.name) for t in tracks) for f in dataclasses.fields(TrackScore)))
        print(f"  overall  tracking: {summed}")
        counted = CrossingScore(*(sum(getattr(c, f.name) for c in crossings) for f in dataclasses.fields(CrossingScore)))
        print(f"  overall  lines: {counted}")


if __name__ == "__main__":
    main()
