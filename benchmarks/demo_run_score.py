"""How a run of a demo config kept up and how right it was: its frame events against the clips' ground truth.

    rm -f runs/events.jsonl && .venv/bin/segpipe run configs/cameras.yaml
    .venv/bin/python benchmarks/demo_run_score.py configs/cameras.yaml runs/events.jsonl

For each ``demo://`` camera of CONFIG (clips rendered on first use, as the run does; other cameras are
skipped) it prints the frame events streamed, the objects of 32x32 px or more in those frames matched by a
detection of the same class at mask IoU 0.5 and their mean mask IoU (``pipeline.demo_score.score_events``),
and the camera's line crossings against the clip's own (``score_crossings``). EVENTS is the run's JSONL
sink file: one run's (the sink appends; remove it before the run). Frames the run dropped are not scored;
the frame counts show how many there were.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from engines.synth.writers import sidecar_path  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.demo import ensure_demo_clip, is_demo_url, parse_demo_url  # noqa: E402
from pipeline.demo_score import load_truth, score_crossings, score_events  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", type=Path)
    ap.add_argument("events", type=Path, help="the run's JSONL sink file")
    args = ap.parse_args()
    cfg = load_config(args.config)
    frames: dict[str, list[dict]] = defaultdict(list)
    with open(args.events) as f:
        for line in f:
            event = json.loads(line)
            if "detections" in event:
                frames[event["camera"]].append(event)
    totals = defaultdict(int)
    for cam in cfg.cameras:
        if not is_demo_url(cam.url):
            continue
        truth = load_truth(sidecar_path(ensure_demo_clip(parse_demo_url(cam.url))))
        events = frames[cam.id]
        s = score_events(events, truth)
        line = (f"{cam.id:12s} {s.frames:4d} frames: {s.matched}/{s.objects} objects matched, "
                f"mean mask IoU {s.mean_iou:.3f}")
        if cam.lines:
            c = score_crossings(events, truth, cam.lines)
            line += f"; crossings {c.matched} of {c.truth} true counted, {c.found} counted"
            totals["crossings"] += c.truth
            totals["counted"] += c.found
            totals["crossings_matched"] += c.matched
        print(line)
        totals["frames"] += s.frames
        totals["objects"] += s.objects
        totals["matched"] += s.matched
    print(f"{'total':12s} {totals['frames']:4d} frames: {totals['matched']}/{totals['objects']} objects matched; "
          f"crossings {totals['crossings_matched']} of {totals['crossings']} true counted, {totals['counted']} counted")
    return 0


if __name__ == "__main__":
    sys.exit(main())
