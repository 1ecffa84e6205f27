"""ONNX Runtime backend: CPU provider, or the CUDA provider with torch tensors bound in place.

Imports nothing from ``pipeline``. On CUDA the input and output buffers are torch tensors on the device,
bound to the session by pointer (IO binding), so a batch never makes a host round trip and torch's
caching allocator owns all device memory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from engines.backends.artifact import decode_props, meta_from_record
from engines.backends.base import Backend, BackendOptions
from engines.errors import BackendUnavailableError, ModelError

_ORT_DTYPES = {"tensor(float)": (torch.float32, np.float32), "tensor(float16)": (torch.float16, np.float16)}


def output_shapes(n: int, h: int, w: int, *, nc: int, nm: int = 32, strides: tuple[int, ...] = (8, 16, 32),
                  proto_stride: int = 4) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Shapes of ``(pred, proto)`` for an ``(n, 3, h, w)`` input: ``(n, 4+nc+nm, A)``, ``(n, nm, h/p, w/p)``
    (``p = proto_stride``), ``A = sum((h/s) * (w/s))`` over the model strides (h and w multiples of the
    largest)."""
    anchors = sum((h // s) * (w // s) for s in strides)
    return (n, 4 + nc + nm, anchors), (n, nm, h // proto_stride, w // proto_stride)


class OnnxBackend(Backend):
    """An exported ``.onnx`` model run by ONNX Runtime (``options.threads`` sets intra-op threads)."""

    def __init__(self, path: Path, *, device: torch.device, options: BackendOptions) -> None:
        import onnxruntime as ort

        self.path, self.device, self.options = path, device, options
        so = ort.SessionOptions()
        if options.threads:
            so.intra_op_num_threads = options.threads
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle ORT workers would otherwise spin for a while after each run, taking the cores that the
        # decoders, post-processing and torch's own pool share with them (seen as 5-10x slower torch ops).
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(path), sess_options=so, providers=self._providers(ort))
        except Exception as e:  # ORT raises its own untyped errors for corrupt or foreign files
            raise ModelError(f"{path}: ONNX Runtime cannot load this file ({str(e).splitlines()[0]})") from None
        record = decode_props(self.session.get_modelmeta().custom_metadata_map)
        self.meta = meta_from_record(record, str(path), exporter="onnx")
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 2 or inputs[0].type not in _ORT_DTYPES:
            raise ModelError(f"{path}: expected one float input and two outputs (pred, proto)")
        self.input_name = inputs[0].name
        self.in_dtype, self.in_np = _ORT_DTYPES[inputs[0].type]
        # Identify outputs by rank, not by name: pred is (N, C, A), proto (N, 32, h, w).
        by_rank = {len(o.shape): o for o in outputs}
        if set(by_rank) != {3, 4}:
            raise ModelError(f"{path}: outputs are not (pred (N,C,A), proto (N,32,h,w))")
        self.pred_out, self.proto_out = by_rank[3], by_rank[4]
        self.out_dtype = _ORT_DTYPES.get(self.pred_out.type, (torch.float32, np.float32))

    def _providers(self, ort: Any) -> list[Any]:
        if self.device.type == "cpu":
            return ["CPUExecutionProvider"]
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise BackendUnavailableError(f"{self.path}: onnxruntime here has no CUDA provider (install "
                                          "onnxruntime-gpu, or use --device cpu / --backend tensorrt)")
        return [("CUDAExecutionProvider", {"device_id": self.device.index or 0}), "CPUExecutionProvider"]

    def _infer(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.to(self.in_dtype).contiguous()
        if self.device.type == "cpu":
            pred, proto = self.session.run([self.pred_out.name, self.proto_out.name], {self.input_name: x.numpy()})
            return torch.from_numpy(pred).float(), torch.from_numpy(proto).float()
        return self._infer_cuda(x)

    def _infer_cuda(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, _, h, w = x.shape
        pred_shape, proto_shape = output_shapes(n, h, w, nc=self.meta.nc, proto_stride=self.meta.proto_stride)
        pred = torch.empty(pred_shape, dtype=self.out_dtype[0], device=self.device)
        proto = torch.empty(proto_shape, dtype=self.out_dtype[0], device=self.device)
        binding = self.session.io_binding()
        idx = self.device.index or 0
        binding.bind_input(self.input_name, "cuda", idx, self.in_np, tuple(x.shape), x.data_ptr())
        for out, t in ((self.pred_out, pred), (self.proto_out, proto)):
            binding.bind_output(out.name, "cuda", idx, self.out_dtype[1], tuple(t.shape), t.data_ptr())
        # ORT runs on its own stream: wait for torch's producer of x, and ORT waits for itself at the end.
        torch.cuda.current_stream(self.device).synchronize()
        self.session.run_with_iobinding(binding)
        return pred.float(), proto.float()

    def close(self) -> None:
        self.session = None  # type: ignore[assignment]
