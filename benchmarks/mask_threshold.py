"""Mask mAP of a model at several mask thresholds, to choose ``--mask-threshold`` / ``masks.threshold``.

    .venv/bin/python benchmarks/mask_threshold.py --model engines/assets/demo-seg.pt \
        --data CALIB/data.yaml --imgsz 960 --retina-masks [--thresholds 0.5,0.45,0.4,0.35,0.3]

The model runs once over the split; its outputs are kept and scored again at each threshold (memory:
the prototypes of every image, ~18 MB an image for the demo model at 960). Choose the threshold on a set
of its own, not on the set whose figure you report. Prints one row per threshold (mask mAP50-95, mAP50,
per class) and the best.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engines.backends import load_backend  # noqa: E402
from engines.data.spec import load_data_yaml  # noqa: E402
from engines.val.validator import Validator  # noqa: E402

Outputs = list[tuple[torch.Tensor, torch.Tensor]]


def _replay(outputs: Outputs) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """An infer function that returns the model's kept outputs again, batch after batch."""
    batches = iter(outputs)
    return lambda _x: next(batches)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", default="val")
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--retina-masks", action="store_true", help="masks at the frame's resolution (what "
                    "`segpipe run` publishes with masks.resolution: frame)")
    ap.add_argument("--thresholds", default="0.5,0.45,0.4,0.35,0.3")
    args = ap.parse_args()
    thresholds = [float(t) for t in args.thresholds.split(",")]
    if not thresholds or any(not 0 < t < 1 for t in thresholds):
        raise SystemExit(f"--thresholds: each must be in (0, 1), got {args.thresholds}")

    model = load_backend(args.model, device=args.device)
    v = Validator(data=load_data_yaml(args.data), split=args.split, imgsz=args.imgsz, batch=args.batch,
                  device=model.device, verbose=False, workers=1, retina_masks=args.retina_masks)
    outputs: Outputs = []

    def infer_once(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = model(x)
        outputs.append(out)
        return out

    names = model.meta.names
    rows = []
    for i, t in enumerate(thresholds):
        v.mask_threshold = t
        m = v(infer_once if i == 0 else _replay(outputs), names)
        rows.append((t, m.seg.map, m.seg.map50, list(m.seg.maps)))
    print(f"\n{args.model} on {args.data} ({args.split}), imgsz {args.imgsz}, "
          f"{'frame' if args.retina_masks else 'input'}-resolution masks, {m.images} images")
    print(f"{'threshold':>9} {'mAP50-95':>9} {'mAP50':>7} " + " ".join(f"{n[:8]:>8}" for n in names))
    for t, mp, mp50, maps in rows:
        print(f"{t:>9.3g} {mp:>9.4f} {mp50:>7.4f} " + " ".join(f"{a:>8.3f}" for a in maps))
    best = max(rows, key=lambda r: r[1])
    print(f"best: {best[0]:g} (mask mAP50-95 {best[1]:.4f}; at 0.5: "
          f"{next((r[1] for r in rows if r[0] == 0.5), float('nan')):.4f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
