"""What a model swap costs a running stream: `segpipe run` on demo cameras, a new model section sent by
SIGHUP mid-run, and the gaps between each camera's consecutive results before and around the swap.

    .venv/bin/python benchmarks/reload.py [--cameras 2] [--fps 5] [--imgsz 288,480] [--model demo://model]

The cameras are looping demo clips sampled at --fps (realtime), so results come every 1/fps s while the
model keeps up. After --warm seconds the config's model.conf changes (the same weights: a new model
section all the same, loaded beside the running one and swapped in between two batches); the run goes
on for --after seconds. Prints the warm-up time the device stage reports, frames published per camera,
and per camera the median and largest gap between results before the swap and the largest in the
3 seconds after the SIGHUP.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cameras", type=int, default=2)
    ap.add_argument("--fps", type=float, default=5.0)
    ap.add_argument("--imgsz", default="288,480")
    ap.add_argument("--model", default="demo://model")
    ap.add_argument("--warm", type=float, default=12.0, help="seconds before the SIGHUP")
    ap.add_argument("--after", type=float, default=6.0, help="seconds after it")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        events, log, path = Path(tmp) / "events.jsonl", Path(tmp) / "stderr.log", Path(tmp) / "cameras.yaml"
        imgsz = [int(v) for v in args.imgsz.split(",")]
        cfg = {"model": {"path": args.model, "device": "cpu", "imgsz": imgsz if len(imgsz) == 2 else imgsz[0]},
               "cameras": [{"id": f"cam{i}", "url": f"demo://traffic?seed={i + 1}&seconds=10&fps=15&size=640x360",
                            "loop": True, "fps": args.fps} for i in range(args.cameras)],
               "sinks": [{"type": "jsonl", "path": str(events)}], "metrics": {"enabled": False},
               "tracking": {"enabled": True}}
        path.write_text(yaml.safe_dump(cfg))
        with open(log, "w") as err:
            proc = subprocess.Popen([sys.executable, "-m", "pipeline", "run", str(path), "--no-console"],
                                    cwd=REPO, stdout=subprocess.DEVNULL, stderr=err)
        time.sleep(args.warm)
        cfg["model"]["conf"] = 0.3
        path.write_text(yaml.safe_dump(cfg))
        t_hup = time.time()
        proc.send_signal(signal.SIGHUP)
        time.sleep(args.after)
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        text = log.read_text()
        frames = [e for e in map(json.loads, events.read_text().splitlines()) if e["kind"] == "frame"]
    swapped = re.search(r"event=model_swapped .*swapped in ([0-9.]+) s", text)
    print(f"model swap: {'warm-up ' + swapped.group(1) + ' s' if swapped else 'NOT swapped'}; "
          f"{args.cameras} cameras sampled at {args.fps:g} frames/s")
    for cam in sorted({e["camera"] for e in frames}):
        ts = sorted(e["publish_ts"] for e in frames if e["camera"] == cam)
        gaps = [(b - a, a) for a, b in zip(ts, ts[1:], strict=False)]
        before = sorted(g for g, t in gaps if t < t_hup - 1)
        around = [g for g, t in gaps if t_hup - 0.5 < t < t_hup + 3]
        print(f"  {cam}: {len(ts)} results; gap median {before[len(before) // 2] * 1000:.0f} ms, largest "
              f"{before[-1] * 1000:.0f} ms before the swap, {max(around) * 1000:.0f} ms around it")


if __name__ == "__main__":
    main()
