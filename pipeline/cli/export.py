"""``segpipe export``: a checkpoint to ONNX, OpenVINO IR or TorchScript, with segpipe metadata.

    segpipe export --model best.pt --format onnx --dynamic --simplify
    segpipe export --model best.pt --format onnx --int8 --data coco128-seg.yaml --val

TensorRT engines are built by ``segpipe build-engine``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from engines.errors import ConfigError
from pipeline.cli.common import add_nms_free_arg, parse_imgsz, sigterm_interrupts

NAME = "export"
HELP = "export a model to onnx, openvino or torchscript (INT8 with --int8 --data)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="checkpoint (.pt / .safetensors) or model YAML")
    p.add_argument("--format", required=True, help="onnx, openvino or torchscript")
    p.add_argument("--imgsz", default=None, help="export size: N or H,W (default: the model's training size)")
    p.add_argument("--half", action="store_true", help="fp16 weights (OpenVINO: compressed weights)")
    p.add_argument("--dynamic", action="store_true", help="accept any input H, W (multiples of 32)")
    p.add_argument("--batch", type=int, default=0, help="largest batch the artifact takes; larger batches "
                   "are split (default 0: no limit)")
    p.add_argument("--simplify", action="store_true", help="simplify the ONNX graph with onnxslim")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument("--int8", action="store_true", help="INT8 post-training static quantisation (onnx: ONNX "
                   "Runtime QDQ; openvino: NNCF)")
    p.add_argument("--data", default=None, help="data YAML: INT8 calibration images (train split) and --val")
    p.add_argument("--calib-images", type=int, default=64, help="INT8 calibration images (default 64)")
    p.add_argument("--int8-format", default="QDQ", choices=["QDQ", "QOperator"],
                   help="ONNX INT8 graph style (default QDQ; --format onnx only)")
    p.add_argument("--val", action="store_true", help="then report box/mask mAP of the model and of the "
                   "export on --data's val split")
    add_nms_free_arg(p, "export")
    p.add_argument("--out", default=None, help="output path (default: beside the model)")


def run(args: argparse.Namespace) -> int:
    from engines.export import export
    from engines.export.bench import artifact_bytes

    if args.val and not args.data:
        raise ConfigError("--val", "needs --data DATA.yaml")
    hw = parse_imgsz(args.imgsz)
    if args.val and isinstance(hw, tuple) and hw[0] != hw[1] and not args.dynamic:
        # said before exporting: validation letterboxes into square inputs, which a fixed HxW export refuses
        raise ConfigError("--val", f"scores square inputs only, got --imgsz {hw[0]},{hw[1]} (export a square "
                          "size to validate it, or add --dynamic)")
    if args.val:
        from engines.data.spec import load_data_yaml

        load_data_yaml(args.data)  # a missing or bad dataset fails now, not after the export it would score
    with sigterm_interrupts():
        path = export(args.model, format=args.format, imgsz=parse_imgsz(args.imgsz), half=args.half,
                      dynamic=args.dynamic, batch=args.batch, simplify=args.simplify, opset=args.opset,
                      int8=args.int8, data=args.data, calib_images=args.calib_images, int8_format=args.int8_format,
                      nms_free=args.nms_free, out=args.out)
    print(f"exported {args.model} -> {path} ({artifact_bytes(path) / 1e6:.1f} MB)")
    print(f"use it:  segpipe predict --model {path} --source IMAGE_OR_VIDEO")
    print(f"         python -c \"from engines import SegModel; print(SegModel('{path}')('image.jpg'))\"")
    if args.val:
        _compare(args, path)
    return 0


def _compare(args: argparse.Namespace, exported: Path) -> None:
    """Box and mask mAP on --data's val split: the export beside its reference, side by side.

    The reference of an INT8 export is the fp32 export of the same format and shape (same letterbox,
    same runtime), so the difference is the quantisation alone; otherwise it is the source model, scored
    on the export's inputs (the Scorer that ``segpipe benchmark`` uses: same size, same square letterbox).
    """
    import tempfile

    from engines.export import export
    from engines.export.bench import Scorer
    from engines.val.validator import summary_line

    with tempfile.TemporaryDirectory(prefix="segpipe-export-val-") as tmp:
        reference, label = Path(args.model), "source"
        if args.int8:
            reference = export(args.model, format=args.format, imgsz=parse_imgsz(args.imgsz), dynamic=args.dynamic,
                               batch=args.batch, simplify=args.simplify, opset=args.opset, nms_free=args.nms_free,
                               out=Path(tmp) / f"fp32{exported.suffix or '_openvino_model'}")
            label = "fp32"
        hw = parse_imgsz(args.imgsz)
        size = None if hw is None else hw if isinstance(hw, int) else max(hw)  # None: the model's own, the export's too
        score = Scorer(data=args.data, imgsz=size, batch=8, device="cpu", nms_free=args.nms_free)
        rows = [(name, score(m)) for name, m in ((label, reference), ("int8" if args.int8 else "export", exported))]
    for name, metrics in rows:
        print(f"{name:>7}: {summary_line(metrics)}")
    print(f"mask mAP50-95 change: {rows[1][1].seg.map - rows[0][1].seg.map:+.4f}, "
          f"box: {rows[1][1].box.map - rows[0][1].box.map:+.4f}")
