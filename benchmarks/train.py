"""Training throughput (images/s) and peak RSS for yolov8n-seg on coco128-seg, and optionally the
30-epoch coco128 fit with its final mAPs.

    .venv/bin/python benchmarks/train.py [--imgsz 320] [--rect] [--batch 16] [--steps 8] [--workers 2]
        [--threads N] [--device cpu] [--model yolov8n-seg.yaml] [--hyp mask_ratio=1 mosaic=0 ...]
        [--optimizer auto|SGD|MuSGD|AdamW] [--channels-last | --no-channels-last]
    .venv/bin/python benchmarks/train.py --fit [--epochs 30] [--pretrained yolov8n-seg.pt] [--out DIR]

Throughput runs the real train step (forward, loss, backward, optimizer step with nbs = batch, EMA)
over ``--steps`` batches of the augmented (mosaic) train loader; the first step is excluded (warm-up).
``--rect`` trains each image at its own aspect ratio (``segpipe train --rect``; no mosaic): run it
beside the square run on the same data to see what padding to squares costs. ``--no-channels-last`` beside
the default on CUDA (NHWC) shows what NHWC buys; ``--optimizer`` what MuSGD's Muon step costs.
Peak RSS is this process's maximum resident set plus the largest loader worker's. ``--fit`` calls
``engines.train.train`` exactly as ``segpipe train`` does and prints box/mask mAP of best.pt.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import yaml  # noqa: E402

from engines.train import hooks as H  # noqa: E402
from engines.train.config import TrainConfig  # noqa: E402
from engines.train.ddp import Placement, parse_devices  # noqa: E402
from engines.train.loader import fork_safe_cv2  # noqa: E402
from engines.train.trainer import fit_loop, seeded, setup  # noqa: E402

COCO_YAML = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "coco128-seg" / "coco128-seg.yaml"


class _StopAfter(H.Hook):
    """Times steps 2..n and ends the run after ``n`` steps (images/s of the steady state)."""

    def __init__(self, steps: int) -> None:
        self.steps, self.done, self.images, self.images0, self.t0 = steps, 0, 0, 0, 0.0

    def after_step(self, s, stepped: bool) -> None:  # type: ignore[no-untyped-def]
        if s.device.type == "cuda":
            torch.cuda.synchronize(s.device)
        self.done += 1
        if self.done == 1:
            self.t0, self.images0 = time.perf_counter(), s.images_seen
        self.images = s.images_seen - self.images0
        if self.done >= self.steps:
            raise StopIteration


def throughput(args: argparse.Namespace) -> None:
    devices = parse_devices(args.device)
    place = Placement(-1, 1, devices[0])
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(data=str(args.data), model=args.model, imgsz=args.imgsz, rect=args.rect, batch=args.batch,
                          nbs=args.batch, epochs=100, workers=args.workers, device=args.device, out=tmp,
                          close_mosaic=0, plots=False, amp=True, hyp=args.hyp, optimizer=args.optimizer,
                          channels_last=args.channels_last)
        with seeded(0, False), fork_safe_cv2():
            s, data, _ = setup(cfg, place, Path(tmp))
            timer = _StopAfter(args.steps)
            try:
                fit_loop(s, data, [H.ScheduleHook(), H.EMAHook(), timer])
            except StopIteration:
                pass
    dt = time.perf_counter() - timer.t0
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"device {place.device}, threads {torch.get_num_threads()}, workers {args.workers}, "
          f"imgsz {args.imgsz}{' rect' if args.rect else ''}, batch {args.batch}, model {args.model}, "
          f"hyp {args.hyp or 'defaults'}, optimizer {args.optimizer}, channels_last {args.channels_last}")
    print(f"train throughput: {timer.images / dt:.2f} images/s ({dt / max(timer.done - 1, 1):.2f} s/step "
          f"over {timer.done - 1} steps after warm-up)")
    print(f"peak RSS: {own:.0f} MiB main process, {kids:.0f} MiB largest loader worker")


def fit(args: argparse.Namespace) -> None:
    from engines.train import train

    t0 = time.perf_counter()
    m = train(data=args.data, model=args.model, pretrained=args.pretrained, epochs=args.epochs,
              imgsz=args.imgsz, rect=args.rect, batch=args.batch, workers=args.workers, device=args.device, out=args.out,
              fraction=args.fraction, val=not args.no_val)
    print(f"\n{args.epochs} epochs in {(time.perf_counter() - t0) / 60:.1f} min")
    print(f"box  mAP50 {m.box.map50:.4f}  mAP50-95 {m.box.map:.4f}")
    print(f"mask mAP50 {m.seg.map50:.4f}  mAP50-95 {m.seg.map:.4f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(COCO_YAML))
    p.add_argument("--model", default="yolov8n-seg.yaml")
    p.add_argument("--pretrained", default=None, help="--fit: seed weights (e.g. yolov8n-seg.pt)")
    p.add_argument("--imgsz", type=int, default=320)
    p.add_argument("--rect", action="store_true", help="each image at its own aspect ratio (no mosaic)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=8, help="batches to time (the first is warm-up)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--hyp", nargs="*", default=[], metavar="KEY=VALUE",
                   help="augmentation settings as segpipe train takes them (e.g. mask_ratio=1 mosaic=0)")
    p.add_argument("--optimizer", default="auto", help="auto, SGD, MuSGD, AdamW or Adam")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="NHWC weights and batches (default: as segpipe train, on with CUDA)")
    p.add_argument("--fit", action="store_true", help="run the full fit and print the final mAPs")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--out", default=None, help="--fit: run folder (default runs/segment/trainN)")
    p.add_argument("--fraction", type=float, default=1.0, help="--fit: train on this fraction of coco128")
    p.add_argument("--no-val", action="store_true", help="--fit: validate only the last epoch")
    args = p.parse_args()
    if not Path(args.data).is_file():
        sys.exit(f"data YAML not found: {args.data}")
    try:
        args.hyp = {k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in args.hyp)}
    except ValueError:
        sys.exit(f"--hyp: expected KEY=VALUE items, got {args.hyp}")
    if args.threads:
        torch.set_num_threads(args.threads)
    (fit if args.fit else throughput)(args)


if __name__ == "__main__":
    main()
