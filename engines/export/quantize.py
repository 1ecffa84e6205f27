"""INT8 post-training static quantisation of an exported ONNX graph with ONNX Runtime.

Imports nothing from ``pipeline``. Activations are calibrated on letterboxed images from the dataset's
train split; weights are quantised per output channel. The DFL and the head's decode arithmetic stay
fp32 (``nodes_to_exclude(..., output_convs=False)``): quantised, they turn every box and score to noise
(measured: box and mask mAP 0). The head's output convs are quantised here: on the demo model at 640
(500 held-out images, 2 cores) keeping them fp32 as well gave the same accuracy (mask mAP50-95 -0.0021
either way against fp32) but 1.38-1.49x fp32 speed instead of 1.51-1.62x, the fp32 islands' extra
quantise/dequantise pairs costing more than the convs save. (OpenVINO fuses differently and keeps them
fp32: ``engines.export.ov_int8``.)
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from engines.errors import ConfigError
from engines.export.base import ExportSpec
from engines.export.calib import calibration_batches, calibration_files

if TYPE_CHECKING:
    import torch

FORMATS = ("QDQ", "QOperator")
# (one2one_: the NMS-free head of YOLO26, which an nms_free export runs)
_HEAD_OUTPUT_CONV = re.compile(r"/(?:one2one_)?cv[234]\.\d+\.2/|/proto/cv3/|/dfl/")
_DFL = re.compile(r"/dfl/")
_LAYER = re.compile(r"^/model\.(\d+)/")


def nodes_to_exclude(model: onnx.ModelProto, *, output_convs: bool = True) -> list[str]:
    """Names of the nodes kept in fp32: the DFL and the head's own decode nodes (softmax, concat, reshape,
    arithmetic) and, with ``output_convs``, the last conv of each head branch and the proto output conv
    (with its activation).

    Node names come from the traced module scopes (``/model.22/cv3.0/cv3.0.2/Conv``); the head is the
    highest-numbered ``model.N`` layer, and its decode nodes sit directly in its scope
    (``/model.22/Concat_3``). The branches' inner convs and SiLUs stay INT8: that is most head FLOPs.
    """
    layers = [int(m.group(1)) for n in model.graph.node if (m := _LAYER.match(n.name))]
    if not layers:
        return []
    head = f"/model.{max(layers)}/"
    inner = _HEAD_OUTPUT_CONV if output_convs else _DFL
    return [n.name for n in model.graph.node if n.name.startswith(head)
            and ("/" not in n.name[len(head):] or inner.search(n.name))]


class _Reader:
    """ONNX Runtime ``CalibrationDataReader``: one ``{input: (1,3,H,W) float32}`` dict per image."""

    def __init__(self, input_name: str, files: list[Path], imgsz: tuple[int, int]) -> None:
        self.input_name, self.files, self.imgsz = input_name, files, imgsz
        self._it: Iterator[torch.Tensor] = iter(())
        self.rewind()

    def get_next(self) -> dict[str, np.ndarray] | None:
        x = next(self._it, None)
        return None if x is None else {self.input_name: x.numpy()}

    def rewind(self) -> None:
        self._it = calibration_batches(self.files, self.imgsz, batch=1)


def quantize_onnx(model: onnx.ModelProto, spec: ExportSpec, *, workdir: Path) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """Statically quantise an fp32 ONNX model; returns the INT8 model and a record of how.

    spec.data: the dataset YAML (train split calibrates); spec.calib_images: how many images;
    spec.int8_format: "QDQ" (QuantizeLinear/DequantizeLinear pairs, fused by ORT) or "QOperator"
    (QLinearConv etc.). Scratch files go to ``workdir``.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if spec.int8_format not in FORMATS or spec.half:
        raise ConfigError("--int8", f"INT8 needs fp32 input and one of {FORMATS}, got {spec.int8_format!r}")
    files = calibration_files(spec.data, spec.calib_images)
    raw, pre, out = workdir / "fp32.onnx", workdir / "pre.onnx", workdir / "int8.onnx"
    onnx.save(model, str(raw))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # Shape inference + graph optimisation first, as ORT recommends: better per-node calibration.
        quant_pre_process(str(raw), str(pre), skip_symbolic_shape=True)
        pre_model = onnx.load(str(pre))
        excluded = nodes_to_exclude(pre_model, output_convs=False)
        input_name = pre_model.graph.input[0].name
        quantize_static(str(pre), str(out), _Reader(input_name, files, spec.imgsz),
                        quant_format=getattr(QuantFormat, spec.int8_format), per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        nodes_to_exclude=excluded, calibrate_method=CalibrationMethod.MinMax,
                        extra_options={"CalibMovingAverage": False})
    info = {"format": spec.int8_format, "per_channel": True, "activations": "uint8", "weights": "int8",
            "calibration": "minmax", "calib_data": str(spec.data), "calib_images": len(files),
            "fp32_nodes": len(excluded)}
    return onnx.load(str(out)), info
