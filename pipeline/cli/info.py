"""``segpipe info``: layer table, parameter count and GFLOPs of a model YAML or checkpoint.

    segpipe info --model yolov8s-seg.yaml [--nc 3] [--imgsz 640]
    segpipe info --model runs/train/weights/best.safetensors
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from engines.errors import ConfigError
from pipeline.cli.common import check_imgsz, errors_name_flags

if TYPE_CHECKING:
    from engines.nn.model import SegmentationModel

NAME = "info"
HELP = "print a model's layers, parameters and GFLOPs (model YAML such as yolov8s-seg.yaml, or a checkpoint)"

_YAML_SUFFIXES = (".yaml", ".yml")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True,
                   help="model YAML (yolov8n-seg.yaml ... yolov8x-seg.yaml, or a file), a checkpoint, or an exported "
                        "model (.onnx, *_openvino_model, .torchscript, .engine: its metadata too)")
    p.add_argument("--nc", type=int, default=None, help="number of classes (YAML models only; default: the YAML's)")
    p.add_argument("--imgsz", type=int, default=None,
                   help="square input size for the GFLOPs count (default: the model's own size, 640 for a YAML)")


def run(args: argparse.Namespace) -> int:
    from engines.backends import backend_for
    from engines.nn.info import summary
    from engines.nn.model import SegmentationModel

    check_imgsz(args.imgsz)
    path = Path(args.model)
    if args.nc is not None and path.suffix.lower() not in _YAML_SUFFIXES:
        raise ConfigError("--nc", "only applies to a model YAML; a trained model's class count is fixed")
    header = ""
    imgsz: int | tuple[int, int] = 640
    if path.suffix.lower() in _YAML_SUFFIXES:
        with errors_name_flags(args):
            model = SegmentationModel(args.model, nc=args.nc)
    elif backend_for(path) == "torch":
        from engines.checkpoint import build_model, load_checkpoint

        ckpt = load_checkpoint(path)
        model = build_model(ckpt)
        m = ckpt.meta
        imgsz = int(m.imgsz)
        header = (f"{path}: {m.source or 'segpipe checkpoint'}; task {m.task}, imgsz {m.imgsz}, stride {m.stride}, "
                  f"{len(m.names)} classes ({_names(m.names)})\n")
    else:
        model, header, imgsz = _exported(path)
    print(header + summary(model, args.imgsz or imgsz))
    return 0


def _names(names: tuple[str, ...]) -> str:
    return ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")


def _exported(path: Path) -> tuple[SegmentationModel, str, tuple[int, int]]:
    """An exported model's metadata line, and the network its recorded model YAML describes."""
    from engines.backends import backend_for, load_backend
    from engines.backends.artifact import MAX_BATCH
    from engines.errors import ModelError
    from engines.nn.model import SegmentationModel

    meta = load_backend(path).meta
    model_yaml = meta.extra.get("model_yaml")
    if not model_yaml:
        raise ModelError(f"{path}: its metadata records no model YAML (not exported by segpipe?)")
    lo, hi = meta.batch_range
    batch = f"batch {lo}..{hi}" if hi < MAX_BATCH else "any batch"
    h, w = meta.imgsz
    header = (f"{path}: {backend_for(path)} export of {meta.source or 'unknown weights'}; "
              f"{meta.precision}, imgsz {h}x{w} ({'any H, W' if meta.dynamic else 'fixed'}), {batch}, "
              f"stride {meta.stride}, {meta.nc} classes ({_names(meta.names)})\n")
    return SegmentationModel(model_yaml), header, (h, w)
