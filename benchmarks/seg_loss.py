"""Cost of the YOLOv8-seg loss (forward + backward) on real batches, by mask target resolution.

    .venv/bin/python benchmarks/seg_loss.py --data DATA.yaml [--model engines/assets/demo-seg.pt]
        [--imgsz 640] [--batch 8] [--batches 3] [--ratios 4 1] [--repeats 5] [--device cpu]
        [--baseline OLD_LOSS.py]

For each ``--ratios`` value (``segpipe train --mask-ratio``) it draws ``--batches`` batches from the real
train loader (whole images, no mosaic), runs the model on each once, then times ``SegLoss(out, batch)``
and its backward pass to the model's outputs (not through the network, whose cost does not depend on
the ratio): median milliseconds per batch over ``--repeats``, interleaved across ratios. Masks finer than
the prototypes (ratio < 4) take ``mask_loss_in_boxes``; ratio 4 is Ultralytics' default route.

``--baseline`` times another revision's loss on the same batches in the same rounds, e.g.
``git show REV:engines/train/loss.py > /tmp/loss_rev.py``, and prints both and their ratio.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from engines.train.config import TrainConfig  # noqa: E402
from engines.train.ddp import Placement, parse_devices  # noqa: E402
from engines.train.loader import fork_safe_cv2  # noqa: E402
from engines.train.trainer import seeded, setup  # noqa: E402

DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "engines" / "assets" / "demo-seg.pt"


def prepared(args: argparse.Namespace, ratio: int) -> tuple[object, list[tuple[object, object]]]:
    """(loss function, [(model outputs as leaf tensors, batch)]) for one mask ratio."""
    place = Placement(-1, 1, parse_devices(args.device)[0])
    with tempfile.TemporaryDirectory() as tmp, seeded(0, False), fork_safe_cv2():
        cfg = TrainConfig(data=args.data, model=args.model, imgsz=args.imgsz, batch=args.batch, nbs=args.batch,
                          epochs=1, workers=args.workers, device=args.device, out=tmp, plots=False, val=False,
                          hyp={"mask_ratio": ratio, "mosaic": 0.0})
        s, data, _ = setup(cfg, place, Path(tmp))
        data.set_epoch(0)
        pairs = []
        for i, batch in enumerate(data.loader):
            if i == args.batches:
                break
            with torch.no_grad():
                out = s.model(batch.images.to(place.device).float() / 255)
            leaf = SimpleNamespace(feats=[f.detach().requires_grad_() for f in out.feats],
                                   coeffs=out.coeffs.detach().requires_grad_(),
                                   proto=out.proto.detach().requires_grad_())
            pairs.append((leaf, batch))
        return s.loss_fn, pairs


def load_baseline(path: str):  # type: ignore[no-untyped-def]
    """The ``SegLoss`` class of a loss module file from another revision."""
    spec = importlib.util.spec_from_file_location("baseline_loss", path)
    if spec is None or spec.loader is None:
        sys.exit(f"--baseline: cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module.SegLoss


def timed(loss_fn, out, batch, device: torch.device) -> float:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    loss, _ = loss_fn(out, batch)
    loss.backward()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="a YOLO-seg data YAML (e.g. from segpipe synth dataset)")
    ap.add_argument("--model", default=str(DEFAULT_MODEL))
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--batches", type=int, default=3)
    ap.add_argument("--ratios", type=int, nargs="+", default=[4, 1])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--baseline", default=None, help="a loss.py from another revision to time beside this one")
    args = ap.parse_args()
    if not Path(args.data).is_file():
        sys.exit(f"--data: no such file: {args.data}")
    if args.baseline and not Path(args.baseline).is_file():
        sys.exit(f"--baseline: no such file: {args.baseline}")
    device = parse_devices(args.device)[0]
    runs = {}
    for r in args.ratios:
        loss_fn, pairs = prepared(args, r)
        runs[("this", r)] = loss_fn, pairs
        if args.baseline:
            base_cls = load_baseline(args.baseline)
            runs[("baseline", r)] = base_cls(nc=loss_fn.nc, strides=loss_fn.strides, reg_max=loss_fn.reg_max,
                                             gains=loss_fn.gains), pairs
    times: dict[tuple[str, int], list[float]] = {k: [] for k in runs}
    for rep in range(args.repeats + 1):  # the first round warms up (allocator, kernels)
        for k, (loss_fn, pairs) in runs.items():
            t = sum(timed(loss_fn, out, batch, device) for out, batch in pairs) / len(pairs)
            if rep:
                times[k].append(t)
    print(f"device {device}, threads {torch.get_num_threads()}, imgsz {args.imgsz}, batch {args.batch}, "
          f"{args.batches} batches, {args.repeats} repeats, model {args.model}")
    base = statistics.median(times[("this", args.ratios[0])])
    for (who, r), ts in times.items():
        gts = statistics.mean(len(b.cls) for _, b in runs[(who, r)][1])
        med = statistics.median(ts)
        line = (f"{who:8s} mask_ratio {r}: loss + backward {med * 1e3:8.1f} ms/batch (median; min "
                f"{min(ts) * 1e3:.1f}), {gts:.0f} gts/batch, {med / base:.2f}x this at ratio {args.ratios[0]}")
        if who == "baseline":
            line += f"; this is {med / statistics.median(times[('this', r)]):.2f}x faster"
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
