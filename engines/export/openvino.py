"""OpenVINO exporter: IR (``model.xml`` + ``model.bin``) in a ``*_openvino_model/`` folder.

Imports nothing from ``pipeline``. The graph goes through ONNX (the same traced fp32 graph the ONNX
exporter writes) and ``openvino.convert_model``; ``half`` compresses the weights to fp16; ``int8``
quantises the IR with NNCF (``engines.export.ov_int8``). ``metadata.yaml`` beside the IR holds the
segpipe record.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import yaml

from engines.backends.openvino_backend import METADATA, XML
from engines.errors import BackendUnavailableError
from engines.export.base import ExportSpec, SourceModel, atomic_path
from engines.export.onnx import build_onnx, save_onnx


class OpenVinoExporter:
    name = "openvino"
    suffix = "_openvino_model"

    def export(self, src: SourceModel, spec: ExportSpec, out: Path) -> Path:
        try:
            import openvino as ov
        except ImportError:
            raise BackendUnavailableError("--format openvino needs OpenVINO: pip install segpipe[openvino]") from None
        if spec.int8:
            from engines.export.ov_int8 import quantize_openvino, require_nncf

            require_nncf()
        with atomic_path(out) as tmp:
            tmp.mkdir()
            # fp16 here means compressed weights, INT8 a quantised IR: the traced graph itself is fp32.
            proto, record = build_onnx(src, dataclasses.replace(spec, half=False, int8=False), exporter=self.name,
                                       workdir=tmp.parent)
            onnx_path = tmp.parent / "graph.onnx"
            save_onnx(proto, onnx_path)
            model = ov.convert_model(str(onnx_path))
            if spec.batch:
                # Bound the batch dimension so the CPU plugin can plan memory for the largest batch.
                shape = model.input(0).get_partial_shape()
                shape[0] = ov.Dimension(1, spec.batch)
                model.reshape({model.input(0): shape})
            if spec.int8:
                model, info = quantize_openvino(model, proto, spec)
                record = src.record(spec, self.name, int8=info)
            ov.save_model(model, str(tmp / XML), compress_to_fp16=spec.half)
            record = dataclasses.replace(record, precision=spec.precision)
            (tmp / METADATA).write_text(yaml.safe_dump(record.to_json(), sort_keys=False), encoding="utf-8")
        return out
