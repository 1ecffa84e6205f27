"""OpenVINO backend: a ``*_openvino_model/`` folder (``model.xml`` + ``.bin`` + ``metadata.yaml``).

Imports nothing from ``pipeline``. A batch is cut into one chunk per infer request and the chunks run
concurrently through an ``AsyncInferQueue``: with the THROUGHPUT hint OpenVINO gives each request its
own CPU stream, which beats one request over the whole batch on many-core CPUs. A batch smaller than
the number of streams would leave cores idle (one image on one of two single-thread streams: 93 ms vs
65 ms for ONNX Runtime, yolov8n-seg at 640 on 2 cores), so it runs on a second compilation of the same
model with the LATENCY hint, one stream over all the threads.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from engines.backends.artifact import meta_from_record
from engines.backends.base import Backend, BackendOptions
from engines.errors import BackendUnavailableError, ModelError

METADATA = "metadata.yaml"
XML = "model.xml"


def resolve_ir(path: Path) -> tuple[Path, Path]:
    """``(model.xml, metadata.yaml)`` of an OpenVINO export folder or of an ``.xml`` path."""
    xml = path / XML if path.is_dir() else path
    if path.is_dir() and not xml.is_file():
        xmls = sorted(path.glob("*.xml"))
        if len(xmls) != 1:
            raise ModelError(f"{path}: expected one OpenVINO .xml in the folder, found {len(xmls)}")
        xml = xmls[0]
    if not xml.with_suffix(".bin").is_file():
        raise ModelError(f"{xml}: the weights file {xml.with_suffix('.bin').name} is missing")
    return xml, xml.parent / METADATA


def read_metadata(meta_file: Path) -> dict[str, Any]:
    if not meta_file.is_file():
        return {}
    try:
        record = yaml.safe_load(meta_file.read_text(encoding="utf-8"))
    except yaml.YAMLError:
        raise ModelError(f"{meta_file}: corrupt metadata (not YAML)") from None
    return record if isinstance(record, dict) else {}


class OpenVinoBackend(Backend):
    """OpenVINO on the CPU; fp32 IRs run in f32 (not bf16, which the CPU plugin picks on AMX CPUs).

    fp16 IRs (export --half) run at the plugin's choice, bf16 where the CPU has it, as Ultralytics' do:
    measured on a 2-core avx512_bf16 machine (yolov8n-seg, 8 images at 320), 86 ms a batch against 132 ms
    in f32, scores within 0.04 and boxes within 3 px of fp32 torch (0.003 and 0.2 px in f32).
    """

    def __init__(self, path: Path, *, device: torch.device, options: BackendOptions) -> None:
        import openvino as ov

        self.path, self.device, self.options = path, device, options
        if device.type != "cpu":
            raise BackendUnavailableError(f"{path}: the OpenVINO backend runs on the CPU here (use --device cpu)")
        xml, meta_file = resolve_ir(path)
        self.meta = meta_from_record(read_metadata(meta_file), str(meta_file), exporter="openvino")
        core = ov.Core()
        try:
            model = core.read_model(str(xml))
        except RuntimeError as e:
            raise ModelError(f"{xml}: OpenVINO cannot read this model ({str(e).splitlines()[0][:160]})") from None
        config: dict[str, Any] = {"PERFORMANCE_HINT": "THROUGHPUT"}
        if self.meta.precision == "fp32":
            config["INFERENCE_PRECISION_HINT"] = "f32"
        if options.threads:
            config["INFERENCE_NUM_THREADS"] = options.threads
        self.compiled = core.compile_model(model, "CPU", config)
        ranks = [o.get_partial_shape().rank.get_length() for o in self.compiled.outputs]
        if sorted(ranks) != [3, 4]:
            raise ModelError(f"{xml}: outputs are not (pred (N,C,A), proto (N,32,h,w))")
        self.pred_idx, self.proto_idx = ranks.index(3), ranks.index(4)
        self.jobs = max(1, int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        self.queue = ov.AsyncInferQueue(self.compiled, self.jobs)
        self.queue.set_callback(self._done)
        self._results: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._single: Any = None
        if self.jobs > 1:
            self._single = core.compile_model(model, "CPU", {**config, "PERFORMANCE_HINT": "LATENCY"}
                                              ).create_infer_request()

    def _done(self, request: Any, chunk: int) -> None:
        # Output tensors belong to the request and are overwritten by its next job: copy them out.
        self._results[chunk] = (request.get_output_tensor(self.pred_idx).data.copy(),
                                request.get_output_tensor(self.proto_idx).data.copy())

    def _infer(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        arr = x.float().contiguous().numpy()
        n = arr.shape[0]
        if self._single is not None and n < self.jobs:
            self._single.infer({0: arr})
            return (torch.from_numpy(self._single.get_output_tensor(self.pred_idx).data.copy()).float(),
                    torch.from_numpy(self._single.get_output_tensor(self.proto_idx).data.copy()).float())
        size = math.ceil(n / self.jobs)
        starts = range(0, n, size)
        self._results = {}
        for i, s in enumerate(starts):
            self.queue.start_async({0: arr[s : s + size]}, i)
        self.queue.wait_all()
        parts = [self._results[i] for i in range(len(starts))]
        pred = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
        proto = np.concatenate([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
        return torch.from_numpy(pred).float(), torch.from_numpy(proto).float()

    def close(self) -> None:
        self.queue = self.compiled = self._single = None  # type: ignore[assignment]
