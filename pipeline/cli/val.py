"""segpipe val: COCO box and mask mAP of a model on a dataset split.

A segpipe checkpoint remembers its dataset and input size, so ``segpipe val --model best.pt`` needs
nothing else. Writes ``metrics.json`` to --out; --save-json adds ``predictions.json`` and
``ground_truth.json`` (COCO format) and re-scores them with pycocotools as a cross-check.
"""

from __future__ import annotations

import argparse

from pipeline.cli.common import (
    add_mask_threshold_arg,
    add_model_args,
    add_nms_free_arg,
    check_scoring_args,
    errors_name_flags,
    output_dir,
    parse_classes,
)

NAME = "val"
HELP = "validate a model: COCO box and mask mAP on a dataset split"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    p.add_argument("--data", default=None, help="data YAML (default: the dataset the model was trained on)")
    p.add_argument("--split", default="val", choices=["val", "test"], help="split to score (default val)")
    p.add_argument("--classes", default=None, metavar="I,J,...",
                   help="score only the instances of these class ids of the data")
    p.add_argument("--single-cls", action=argparse.BooleanOptionalAction, default=None,
                   help="score every class as one, 'item' (default: as the model was trained)")
    p.add_argument("--imgsz", type=int, default=None, help="input size in pixels (default: the model's)")
    p.add_argument("--batch", type=int, default=16, help="images per forward pass (default 16)")
    p.add_argument("--conf", type=float, default=0.001, help="confidence threshold (default 0.001)")
    p.add_argument("--iou", type=float, default=0.7, help="NMS IoU threshold (default 0.7)")
    p.add_argument("--max-det", type=int, default=300, help="most detections per image (default 300)")
    p.add_argument("--save-json", action="store_true",
                   help="write predictions.json + ground_truth.json (COCO) and check them with pycocotools")
    p.add_argument("--plots", action="store_true", help="PR/F1 curves, the confusion matrix (PNG and CSV) and "
                   "label/prediction image grids")
    p.add_argument("--half", action="store_true", help="fp16 inference (CUDA)")
    p.add_argument("--retina-masks", action="store_true",
                   help="score masks made straight at the image's resolution (as predict --retina-masks), not "
                   "at the model input's then resized")
    add_mask_threshold_arg(p)
    add_nms_free_arg(p, "score")
    p.add_argument("--workers", type=int, default=2, help="data loading processes (default 2)")
    p.add_argument("--out", default=None, help="output folder (default runs/val, val2, ...: the first free "
                   "one, so runs do not mix their files)")


def run(args: argparse.Namespace) -> int:
    from engines.train.config import default_out_dir
    from engines.val.coco import cocoeval_stats
    from engines.val.validator import summary_line, validate

    check_scoring_args(args)
    with output_dir(args.out or default_out_dir("runs", "val")) as out, errors_name_flags(args):  # written at the end: checked first
        metrics = validate(args.model, data=args.data, split=args.split, imgsz=args.imgsz, batch=args.batch,
                           device=args.device, conf=args.conf, iou=args.iou, max_det=args.max_det,
                           save_json=args.save_json, out_dir=out, plots=args.plots, workers=args.workers,
                           backend=args.backend, half=args.half, classes=parse_classes(args.classes),
                           single_cls=args.single_cls, nms_free=args.nms_free, retina_masks=args.retina_masks,
                           mask_threshold=args.mask_threshold)
    print(summary_line(metrics))
    sp = metrics.speed
    print(f"speed: {sp.preprocess:.1f} ms preprocess, {sp.inference:.1f} ms inference, "
          f"{sp.postprocess:.1f} ms postprocess per image")
    if args.save_json:
        ref = cocoeval_stats(out / "ground_truth.json", out / "predictions.json")
        print(f"pycocotools on predictions.json: box mAP50-95 {ref['box.map']:.4f} mAP50 {ref['box.map50']:.4f}"
              f" | mask mAP50-95 {ref['seg.map']:.4f} mAP50 {ref['seg.map50']:.4f}")
    print(f"results saved to {out}")
    return 0
