"""``segpipe benchmark``: one checkpoint exported to every format, each validated, one table to choose from.

    segpipe benchmark --model best.pt --data data.yaml --imgsz 640
    segpipe benchmark --model best.pt --formats torch,onnx,openvino --int8 --max-images 50

Rows: torch (the checkpoint itself, the reference of the mask mAP difference), torchscript, onnx,
openvino, tensorrt (skipped without TensorRT and a CUDA device), and with --int8 onnx-int8 and
openvino-int8. Every format is scored on the same square letterboxed inputs (engines.export.bench).
The exports, ``benchmark.csv`` and ``benchmark.json`` go to --out; both files are rewritten as each row
completes, so an interrupted benchmark keeps the rows it finished.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from engines.export.bench import FORMATS
from pipeline.cli.common import check_scoring_args, errors_name_flags, output_dir, sigterm_interrupts

if TYPE_CHECKING:
    from engines.export.bench import BenchRow

NAME = "benchmark"
HELP = "export a checkpoint to every format, validate each: size, box/mask mAP and speed in one table"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="checkpoint (.pt / .safetensors)")
    p.add_argument("--data", default=None, help="data YAML, scored on its val split (INT8 calibrates on its "
                   "train split) (default: the dataset the model was trained on)")
    p.add_argument("--imgsz", type=int, default=None, help="square input and export size in pixels (default: "
                   "the model's)")
    p.add_argument("--device", default="cpu", help="cpu, 0, cuda:1 or auto (default: cpu)")
    p.add_argument("--half", action="store_true", help="fp16 exports and inference (CUDA)")
    p.add_argument("--int8", action="store_true", help="also INT8 exports of onnx and openvino, calibrated on "
                   "--data's train split")
    p.add_argument("--formats", default=None, help=f"comma list to benchmark (default all: {','.join(FORMATS)}; "
                   "without torch, no mask mAP difference)")
    p.add_argument("--batch", type=int, default=1, help="images per forward pass (default 1: per-image "
                   "latency, as Ultralytics' benchmark)")
    p.add_argument("--workers", type=int, default=2, help="data loading processes (default 2)")
    p.add_argument("--conf", type=float, default=0.001, help="confidence threshold (default 0.001)")
    p.add_argument("--iou", type=float, default=0.7, help="NMS IoU threshold (default 0.7)")
    part = p.add_mutually_exclusive_group()
    part.add_argument("--fraction", type=float, default=None, help="score the first FRACTION of the val "
                      "images (0-1]")
    part.add_argument("--max-images", type=int, default=None, help="score the first N val images")
    p.add_argument("--out", default=None, help="folder for the exports, benchmark.csv and benchmark.json "
                   "(default runs/benchmark, benchmark2, ...: the first free one)")


def run(args: argparse.Namespace) -> int:
    from engines.device import parse_device
    from engines.errors import ConfigError, ModelError
    from engines.export.base import load_source
    from engines.export.bench import Scorer, benchmark, parse_formats, table, val_subset, write_results
    from engines.train.config import default_out_dir
    from engines.val.validator import resolve_data

    check_scoring_args(args)
    rows = parse_formats(args.formats, int8=args.int8)
    with errors_name_flags(args):
        device = parse_device(args.device)
    model = Path(args.model)
    if model.suffix.lower() in (".yaml", ".yml"):
        raise ModelError(f"{model}: benchmark a trained checkpoint (.pt / .safetensors), not a model YAML")
    src = load_source(model)  # ModelError for a missing file, an export, a foreign checkpoint
    data = val_subset(resolve_data(args.data, src.data, str(model)).select(single_cls=src.single_cls),
                      fraction=args.fraction, max_images=args.max_images)
    if len(src.names) != data.nc:
        raise ModelError(f"{model} predicts {len(src.names)} classes, {data.yaml_file or data.root} has {data.nc}")
    imgsz = args.imgsz or src.imgsz
    if imgsz % src.stride:
        raise ConfigError("--imgsz", f"must be a multiple of the model's stride {src.stride}, got {imgsz}")
    scorer = Scorer(data=data, imgsz=imgsz, batch=args.batch, device=device, workers=args.workers,
                    half=args.half, conf=args.conf, iou=args.iou)
    settings = {"model": str(model), "data": str(data.yaml_file or data.root), "imgsz": imgsz,
                "device": str(device), "half": args.half, "batch": args.batch}
    calib = None if data.yaml_file is None else str(data.yaml_file)
    done: list[BenchRow] = []
    with output_dir(args.out or default_out_dir("runs", "benchmark")) as out, sigterm_interrupts():
        results = out / "benchmark.csv", out / "benchmark.json"
        try:
            for row in benchmark(model, rows=rows, scorer=scorer, out=out, half=args.half, data_yaml=calib):
                done.append(row)
                results = write_results(out, done, settings)
        except KeyboardInterrupt:
            if done:
                print(f"\n{table(done)}\n{len(done)} of {len(rows)} formats done, saved to {results[0]}")
            raise
    print(f"\n{table(done)}\nresults saved to {results[0]} and {results[1]}")
    failed = [r.format for r in done if r.status == "failed"]
    if failed:
        print(f"{len(failed)} of {len(done)} formats failed: {', '.join(failed)}")
        return 1
    skipped = [r.format for r in done if r.status == "skipped"]
    print(f"all {len(done)} formats ok" + (f" or skipped ({', '.join(skipped)})" if skipped else ""))
    return 0
