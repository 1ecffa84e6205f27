"""``segpipe info``: layer table, parameter count and GFLOPs of a model YAML or checkpoint.

    segpipe info --model yolov8s-seg.yaml [--nc 3] [--imgsz 640]
    segpipe info --model runs/train/weights/best.safetensors
"""

from __future__ import annotations

import argparse
from pathlib import Path

from engines.errors import ConfigError

NAME = "info"
HELP = "print a model's layers, parameters and GFLOPs (model YAML such as yolov8s-seg.yaml, or a checkpoint)"

_YAML_SUFFIXES = (".yaml", ".yml")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True,
                   help="model YAML (yolov8n-seg.yaml ... yolov8x-seg.yaml, or a file) or a checkpoint")
    p.add_argument("--nc", type=int, default=None, help="number of classes (YAML models only; default: the YAML's)")
    p.add_argument("--imgsz", type=int, default=640, help="square input size for the GFLOPs count (default 640)")


def run(args: argparse.Namespace) -> int:
    from engines.nn.info import summary
    from engines.nn.model import SegmentationModel

    if args.imgsz < 32 or args.imgsz % 32:
        raise ConfigError("--imgsz", f"must be a positive multiple of 32, got {args.imgsz}")
    path = Path(args.model)
    header = ""
    if path.suffix.lower() in _YAML_SUFFIXES:
        model = SegmentationModel(args.model, nc=args.nc)
    else:
        from engines.checkpoint import build_model, load_checkpoint

        if args.nc is not None:
            raise ConfigError("--nc", "only applies to a model YAML; a checkpoint's class count is fixed")
        ckpt = load_checkpoint(path)
        model = build_model(ckpt)
        m = ckpt.meta
        names = ", ".join(m.names[:8]) + (", ..." if len(m.names) > 8 else "")
        header = (f"{path}: {m.source or 'segpipe checkpoint'}; task {m.task}, imgsz {m.imgsz}, stride {m.stride}, "
                  f"{len(m.names)} classes ({names})\n")
    print(header + summary(model, args.imgsz))
    return 0
