"""Which backend runs a model file, told by its name alone. Leaf module (no torch): a run config's
``model.path`` is checked with it at load, where importing the backends would slow ``--check`` down."""

from __future__ import annotations

from pathlib import Path

# backend name -> the name endings of its files (a ``*_openvino_model`` folder is OpenVINO's)
SUFFIXES: dict[str, tuple[str, ...]] = {
    "torch": (".pt", ".safetensors", ".yaml", ".yml"),
    "onnx": (".onnx",),
    "openvino": ("_openvino_model", ".xml"),
    "torchscript": (".torchscript",),
    "tensorrt": (".engine",),
}


def format_of(path: str | Path) -> str | None:
    """The backend that runs ``path`` by its name, or None when no backend knows the name."""
    lower = str(path).rstrip("/\\").lower()
    return next((name for name, ends in SUFFIXES.items() if lower.endswith(ends)), None)


def unknown_format(path: str | Path) -> str:
    """What to tell a user whose model file no backend knows by its name."""
    known = ", ".join(s for ends in SUFFIXES.values() for s in ends)
    name = str(path).rstrip("/\\")
    return f"{name}: unknown model format (expected one of: {known})"
