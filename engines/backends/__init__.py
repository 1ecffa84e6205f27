"""Inference backends, chosen by artifact suffix: one protocol, one class per runtime.

    backend = load_backend("best.onnx", device="cpu")
    pred, proto = backend(x)        # x: (N, 3, H, W) float on the backend's device
"""

from engines.backends.base import Backend, BackendMeta, BackendOptions
from engines.backends.registry import available_backends, backend_for, load_backend

__all__ = ["Backend", "BackendMeta", "BackendOptions", "available_backends", "backend_for", "load_backend"]
