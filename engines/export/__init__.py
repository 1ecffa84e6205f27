"""Export a checkpoint to an inference artifact: one small exporter class per format, one protocol.

    from engines.export import export
    path = export("best.pt", format="onnx", imgsz=640, dynamic=True)   # -> best.onnx

Imports nothing from ``pipeline``. Formats: onnx, openvino, torchscript (TensorRT engines are built by
:mod:`engines.export.tensorrt`, ``segpipe build-engine``). Every artifact carries the segpipe metadata
record that :mod:`engines.backends` reads back.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engines.errors import ConfigError

if TYPE_CHECKING:
    from engines.export.base import Exporter

# Explicit table, imported lazily (OpenVINO is slow to import): format -> (module, class).
FORMATS: dict[str, tuple[str, str]] = {
    "onnx": ("engines.export.onnx", "OnnxExporter"),
    "openvino": ("engines.export.openvino", "OpenVinoExporter"),
    "torchscript": ("engines.export.torchscript", "TorchScriptExporter"),
}

INT8_FORMATS = ("onnx", "openvino")


def get_exporter(format: str) -> Exporter:
    """The exporter for ``format`` (exact name; an unknown one is an error listing the formats)."""
    if format not in FORMATS:
        hint = " (TensorRT engines: segpipe build-engine)" if format in ("engine", "tensorrt", "trt") else ""
        raise ConfigError("--format", f"unknown format {format!r}; choose one of: {', '.join(FORMATS)}{hint}")
    module, cls = FORMATS[format]
    return getattr(importlib.import_module(module), cls)()


def default_output(model: Path, exporter: Exporter, *, int8: bool = False) -> Path:
    """``best.pt`` -> ``best.onnx`` / ``best_openvino_model`` / ``best_int8.onnx`` beside the model
    (a bundled YAML that is not a file exports into the current folder)."""
    stem = model.stem + ("_int8" if int8 else "")
    folder = model.parent if model.exists() else Path.cwd()
    return folder / f"{stem}{exporter.suffix}"


def export(model: str | os.PathLike[str], *, format: str, imgsz: int | tuple[int, int] | None = None,
           half: bool = False, dynamic: bool = False, batch: int = 0, simplify: bool = False, opset: int = 17,
           int8: bool = False, data: str | None = None, calib_images: int = 64, int8_format: str = "QDQ",
           nms_free: bool = False, out: str | os.PathLike[str] | None = None, **unknown: Any) -> Path:
    """Export ``model`` (checkpoint or model YAML) to ``format``; returns the artifact path.

    imgsz: export size (default: the model's training size). half: fp16. dynamic: any input H, W.
    batch: largest batch (0: unlimited). simplify: onnxslim. opset: ONNX opset. int8: static INT8
    calibrated on ``calib_images`` images of ``data``'s train split (onnx: ONNX Runtime QDQ or QOperator
    per ``int8_format``; openvino: NNCF). nms_free: an end-to-end (YOLO26) model's NMS-free head (its
    artifact is then post-processed by top-k, not NMS). out: output path.
    """
    from engines.export.base import ExportSpec, load_source
    from engines.limits import imgsz_hw

    if unknown:
        known = "imgsz, half, dynamic, batch, simplify, opset, int8, data, calib_images, int8_format, nms_free, out"
        raise ConfigError(next(iter(unknown)), f"unknown export option; known: {known}")
    exporter = get_exporter(format)
    if batch < 0:
        raise ConfigError("--batch", f"must be >= 0 (0 = no limit), got {batch}")
    if not 11 <= opset <= 20:
        raise ConfigError("--opset", f"must be in 11..20, got {opset}")
    if int8 and not data:
        raise ConfigError("--data", "--int8 needs calibration images: pass --data DATA.yaml")
    if int8 and format not in INT8_FORMATS:
        raise ConfigError("--int8", f"INT8 is available for --format {' and '.join(INT8_FORMATS)} "
                          "(and `segpipe build-engine --int8`)")
    if int8 and half:
        raise ConfigError("--half", "--int8 and --half are exclusive (INT8 keeps an fp32 fallback)")
    if int8_format not in ("QDQ", "QOperator"):
        raise ConfigError("--int8-format", f"expected QDQ or QOperator, got {int8_format!r}")
    dest = Path(out) if out is not None else default_output(Path(model), exporter, int8=int8)
    check_output(dest, exporter)
    if int8:
        from engines.export.calib import calibration_files

        calibration_files(data, calib_images, quiet=True)  # a bad dataset fails now, not after tracing
    src = load_source(model, nms_free=nms_free)
    spec = ExportSpec(imgsz=imgsz_hw(src.imgsz if imgsz is None else imgsz, src.stride), half=half, dynamic=dynamic, batch=batch,
                      simplify=simplify, opset=opset, int8=int8, data=data, calib_images=calib_images,
                      int8_format=int8_format, nms_free=nms_free)
    return exporter.export(src, spec, dest)


def check_output(dest: Path, exporter: Exporter) -> None:
    """Refuse an output path the export would clobber or that no backend would load back.

    The name must end in the format's suffix (``segpipe predict`` picks the runtime by it), and what is
    already there must be an earlier artifact of the format: the export replaces it whole, so an
    ordinary folder given as ``--out`` would otherwise be deleted with everything in it.
    """
    from engines.backends.openvino_backend import XML

    folder = not exporter.suffix.startswith(".")  # OpenVINO's IR is a folder, the others one file
    if not dest.name.lower().endswith(exporter.suffix):
        raise ConfigError("--out", f"{dest}: {exporter.name} exports are named *{exporter.suffix} "
                          "(segpipe picks the runtime by the name)")
    if dest.is_symlink() or not dest.exists():
        return
    if dest.is_dir() and not folder:
        raise ConfigError("--out", f"{dest} is a folder; name the {exporter.name} file, e.g. "
                          f"{dest / ('model' + exporter.suffix)}")
    if folder and not (dest.is_dir() and (dest / XML).is_file()):
        raise ConfigError("--out", f"{dest} exists and is not an OpenVINO model folder; remove it or choose "
                          "another --out")


__all__ = ["FORMATS", "check_output", "default_output", "export", "get_exporter"]
