"""Backend registry: artifact suffix -> backend class, imported lazily (TensorRT/OpenVINO are heavy)."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

import torch

from engines.backends.base import Backend, BackendOptions
from engines.device import parse_device
from engines.errors import ModelError
from engines.model_formats import SUFFIXES, format_of, unknown_format
from engines.registry import Registry


@dataclass(frozen=True, slots=True)
class BackendEntry:
    module: str
    cls: str
    suffixes: tuple[str, ...]


BACKENDS: Registry[BackendEntry] = Registry("backend")
BACKENDS.register("torch", BackendEntry("engines.backends.torch_backend", "TorchBackend", SUFFIXES["torch"]))
BACKENDS.register("onnx", BackendEntry("engines.backends.onnx_backend", "OnnxBackend", SUFFIXES["onnx"]))
BACKENDS.register("openvino", BackendEntry("engines.backends.openvino_backend", "OpenVinoBackend",
                                           SUFFIXES["openvino"]))
BACKENDS.register("torchscript", BackendEntry("engines.backends.torchscript_backend",
                                              "TorchScriptBackend", SUFFIXES["torchscript"]))
BACKENDS.register("tensorrt", BackendEntry("engines.backends.tensorrt_backend", "TensorRTBackend",
                                           SUFFIXES["tensorrt"]))


def available_backends() -> list[str]:
    return BACKENDS.names()


def backend_for(path: str | Path) -> str:
    """Backend name for an artifact path, by suffix (a ``*_openvino_model`` folder is OpenVINO)."""
    name = format_of(path)
    if name is None:
        raise ModelError(unknown_format(path))
    return name


def load_backend(path: str | Path, *, device: str | torch.device | None = "cpu", backend: str = "auto",
                 options: BackendOptions | None = None) -> Backend:
    """Load ``path`` with the named backend (``auto``: by suffix) on ``device``.

    ``backend="tensorrt"`` with a checkpoint or ``.onnx`` builds (or reuses from ``$SEGPIPE_CACHE/engines``)
    an engine for it first. Raises ``ModelError`` (missing/unknown/foreign file), ``EngineMismatchError``,
    ``BackendUnavailableError`` (runtime or GPU missing).
    """
    name = backend_for(path) if backend == "auto" else backend
    entry = BACKENDS.get(name)
    p, opts = Path(path), options or BackendOptions()
    if name == "tensorrt" and p.suffix.lower() != ".engine":
        # A checkpoint or ONNX file run on TensorRT: build the engine once, then reuse it from the cache.
        from engines.export.tensorrt import ensure_engine

        p = ensure_engine(p, device=parse_device(device), half=opts.half, nms_free=opts.nms_free)
    is_builtin_yaml = name == "torch" and p.suffix in (".yaml", ".yml")
    if not p.exists() and not is_builtin_yaml:
        raise ModelError(f"{path}: model file not found")
    cls: type[Backend] = getattr(importlib.import_module(entry.module), entry.cls)
    loaded = cls(p, device=parse_device(device), options=opts)  # type: ignore[call-arg]
    if opts.nms_free and not loaded.meta.nms_free:  # an artifact's head was chosen when it was exported
        raise ModelError(f"{path}: exported with its NMS head; for the NMS-free one export it with --nms-free "
                         "(end-to-end models such as YOLO26 only)")
    return loaded
