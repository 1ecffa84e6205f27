"""TensorRT backend: a segpipe ``.engine`` (metadata header + plan) run on torch's CUDA stream.

Imports nothing from ``pipeline``. There is one CUDA context, torch's: input and output buffers are torch
tensors on the device (no pycuda), and ``execute_async_v3`` is enqueued on the current torch stream so
the engine orders with the letterbox before it and the post-processing after it without a sync.
The header is read and checked (TensorRT version, GPU) before TensorRT sees the plan.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from engines.backends.artifact import meta_from_record
from engines.backends.base import Backend, BackendOptions
from engines.backends.engine_header import Platform, check_platform, read_header
from engines.errors import BackendUnavailableError, EngineMismatchError, ModelError

INSTALL_HINT = ("install it with `pip install segpipe[tensorrt]` (TensorRT 10 wheels from PyPI) or run in the "
                "NVIDIA container (nvcr.io/nvidia/tensorrt)")


def require_tensorrt(what: str) -> ModuleType:
    """The ``tensorrt`` module, or ``BackendUnavailableError`` saying what is missing and how to get it."""
    try:
        return importlib.import_module("tensorrt")
    except ImportError:
        raise BackendUnavailableError(f"{what} needs TensorRT, which is not installed; {INSTALL_HINT}") from None


def require_cuda(what: str, device: torch.device | None = None) -> torch.device:
    """A CUDA device for TensorRT, or ``BackendUnavailableError``."""
    if not torch.cuda.is_available():
        raise BackendUnavailableError(f"{what} needs an NVIDIA GPU with CUDA, and none is available here "
                                      "(torch.cuda.is_available() is False)")
    if device is None or device.type != "cuda":
        if device is not None:
            raise BackendUnavailableError(f"{what} runs on a CUDA device, not {device} (use --device 0)")
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def platform_of(trt: ModuleType, device: torch.device) -> Platform:
    return Platform(tensorrt_version=str(trt.__version__), gpu_name=torch.cuda.get_device_name(device),
                    compute_capability=tuple(torch.cuda.get_device_capability(device)))  # type: ignore[arg-type]


def torch_dtype(trt: ModuleType, dt: Any) -> torch.dtype:
    table = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16,
             trt.DataType.INT8: torch.int8, trt.DataType.INT32: torch.int32}
    if dt not in table:
        raise ModelError(f"unsupported TensorRT tensor type {dt}")
    return table[dt]


class TensorRTBackend(Backend):
    """A deserialised engine with one optimisation profile; batches outside it are split or padded."""

    def __init__(self, path: Path, *, device: torch.device, options: BackendOptions) -> None:
        self.path, self.options = path, options
        record, offset = read_header(path)
        self.meta = meta_from_record(record, str(path), exporter="tensorrt")
        trt = require_tensorrt(str(path))
        self.device = require_cuda(str(path), device)
        check_platform(record, platform_of(trt, self.device), str(path))
        self._logger = trt.Logger(trt.Logger.WARNING)
        with torch.cuda.device(self.device):
            self.runtime = trt.Runtime(self._logger)
            self.engine = self.runtime.deserialize_cuda_engine(path.read_bytes()[offset:])
            if self.engine is None:
                raise EngineMismatchError(f"{path}: TensorRT could not deserialise the plan (see its log above)")
            self.context = self.engine.create_execution_context()
        self._bind_io(trt)

    def _bind_io(self, trt: ModuleType) -> None:
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        if len(inputs) != 1 or len(outputs) != 2:
            raise ModelError(f"{self.path}: expected one input and two outputs, got {inputs} -> {outputs}")
        self.input_name = inputs[0]
        self.in_dtype = torch_dtype(trt, self.engine.get_tensor_dtype(self.input_name))
        ranks = {len(self.engine.get_tensor_shape(n)): n for n in outputs}
        if set(ranks) != {3, 4}:
            raise ModelError(f"{self.path}: outputs are not (pred (N,C,A), proto (N,32,h,w))")
        self.pred_name, self.proto_name = ranks[3], ranks[4]
        self.out_dtypes = {n: torch_dtype(trt, self.engine.get_tensor_dtype(n)) for n in outputs}
        lo, _, hi = self.engine.get_tensor_profile_shape(self.input_name, 0)
        if (lo[0], hi[0]) != self.meta.batch_range:
            raise EngineMismatchError(f"{self.path}: header says batch {self.meta.batch_range}, the engine's "
                                      f"profile {lo[0]}..{hi[0]}")

    def _infer(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.to(self.in_dtype).contiguous()
        ctx = self.context
        if not ctx.set_input_shape(self.input_name, tuple(x.shape)):
            raise EngineMismatchError(f"{self.path}: input {tuple(x.shape)} is outside the engine's profile")
        ctx.set_tensor_address(self.input_name, x.data_ptr())
        # Fresh outputs per call: the caller may still hold the previous batch's (pipelined stages).
        out = {}
        for name in (self.pred_name, self.proto_name):
            out[name] = torch.empty(tuple(ctx.get_tensor_shape(name)), dtype=self.out_dtypes[name], device=self.device)
            ctx.set_tensor_address(name, out[name].data_ptr())
        # Same stream as x's producer and the outputs' consumers: ordering, not syncing, keeps buffers safe.
        stream = torch.cuda.current_stream(self.device)
        if not ctx.execute_async_v3(stream.cuda_stream):
            raise RuntimeError(f"{self.path}: TensorRT execution failed (see its log)")
        return out[self.pred_name].float(), out[self.proto_name].float()

    def close(self) -> None:
        self.context = self.engine = self.runtime = None
