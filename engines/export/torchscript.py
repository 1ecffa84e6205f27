"""TorchScript exporter: ``torch.jit.trace`` with the metadata record in ``_extra_files``.

Imports nothing from ``pipeline``. The trace records shape arithmetic (anchor grid, reshapes) as graph
ops, so a trace at one size runs at other sizes when ``dynamic`` is set; without it the metadata pins
the input to the export size and the backend refuses others.
"""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import torch

from engines.backends.torchscript_backend import EXTRA_FILE
from engines.errors import ConfigError
from engines.export.base import ExportSpec, SourceModel, atomic_path


class TorchScriptExporter:
    name = "torchscript"
    suffix = ".torchscript"

    def export(self, src: SourceModel, spec: ExportSpec, out: Path) -> Path:
        if spec.int8:
            raise ConfigError("--int8", "INT8 is available for --format onnx and openvino")
        dtype = torch.float16 if spec.half else torch.float32
        model = copy.deepcopy(src.model).to(dtype)
        x = torch.zeros((1, 3, *spec.imgsz), dtype=dtype)
        with warnings.catch_warnings():
            # tracer warnings about Python values; tests/engines/test_backend_parity.py checks the graph
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(model, (x,), check_trace=False, strict=False)
        record = src.record(spec, self.name)
        with atomic_path(out) as tmp:
            torch.jit.save(traced, str(tmp), _extra_files={EXTRA_FILE: json.dumps(record.to_json())})
        return out
