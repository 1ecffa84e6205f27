"""``segpipe build-engine``: a TensorRT engine (metadata header + plan) from a checkpoint or ONNX.

    segpipe build-engine --model best.pt --half --min-batch 1 --opt-batch 8 --max-batch 16
    segpipe build-engine --model best.pt --int8 --calib-data coco128-seg.yaml --timing-cache trt.cache

Needs TensorRT (``pip install segpipe[tensorrt]`` or the NVIDIA container) and an NVIDIA GPU; without
either it stops before doing anything, saying which is missing.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from engines.errors import ConfigError
from pipeline.cli.common import add_nms_free_arg, parse_imgsz

NAME = "build-engine"
HELP = "build a TensorRT engine (fp32/fp16/int8, batch profile, timing cache)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="checkpoint (.pt / .safetensors) or a segpipe fp32 .onnx")
    p.add_argument("--device", default="0", help="GPU index or cuda:N (default 0)")
    p.add_argument("--half", action="store_true", help="FP16 kernels")
    p.add_argument("--int8", action="store_true", help="INT8 kernels, calibrated on --calib-data (implies FP16)")
    p.add_argument("--calib-data", "--data", dest="calib_data", default=None,
                   help="data YAML whose train images calibrate INT8 (also --data, as segpipe export spells it)")
    p.add_argument("--calib-images", type=int, default=512, help="INT8 calibration images (default 512)")
    p.add_argument("--imgsz", default=None, help="input size: N (square) or H,W, e.g. 384,640 for 16:9 cameras "
                   "(default: the model's training size)")
    p.add_argument("--min-batch", type=int, default=1, help="profile minimum batch (default 1)")
    p.add_argument("--opt-batch", type=int, default=8, help="profile batch kernels are tuned for (default 8)")
    p.add_argument("--max-batch", type=int, default=16, help="profile maximum batch (default 16)")
    p.add_argument("--workspace", type=float, default=4.0, help="builder memory pool limit in GiB (default 4)")
    p.add_argument("--timing-cache", default=None, help="timing cache file: loaded if present, saved after")
    add_nms_free_arg(p, "build")
    p.add_argument("--out", default=None, help="engine path (default: beside the model, <stem>.engine)")


def run(args: argparse.Namespace) -> int:
    from engines.backends.tensorrt_backend import require_cuda, require_tensorrt
    from engines.device import parse_device
    from engines.export.tensorrt import EngineSpec, build_engine
    from engines.export.trt_build import model_facts
    from engines.limits import imgsz_hw

    # What is missing is said before any model is read or exported.
    require_tensorrt("segpipe build-engine")
    if args.device == "cpu":
        raise ConfigError("--device", "TensorRT engines are built on a GPU (use --device 0)")
    device = require_cuda("segpipe build-engine", parse_device(args.device))
    imgsz = parse_imgsz(args.imgsz)
    shape = None if imgsz is None else imgsz_hw(imgsz)
    facts = model_facts(Path(args.model))
    precision = "int8" if args.int8 else "fp16" if args.half else "fp32"
    spec = EngineSpec(imgsz=shape or facts.imgsz, precision=precision,
                      min_batch=args.min_batch, opt_batch=args.opt_batch, max_batch=args.max_batch,
                      workspace_gb=args.workspace, calib_data=args.calib_data, calib_images=args.calib_images,
                      nms_free=args.nms_free)
    path = build_engine(args.model, spec=spec, device=device, out=args.out, timing_cache=args.timing_cache)
    print(f"\nbuilt {path} ({path.stat().st_size / 1e6:.1f} MB, {precision}, batch {spec.min_batch}..{spec.max_batch}, "
          f"{spec.imgsz[0]}x{spec.imgsz[1]})")
    print(f"use it:  segpipe predict --model {path} --device {args.device} --source IMAGE_OR_VIDEO")
    return 0
