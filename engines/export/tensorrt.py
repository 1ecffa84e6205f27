"""TensorRT engines: build from ONNX with the TensorRT Python API, write behind a metadata header, cache.

Imports nothing from ``pipeline``. ``build_engine`` parses a segpipe ONNX (exported on the fly from a
checkpoint), sets one optimisation profile over the batch range, FP16/INT8 flags (INT8 calibrated by an
``IInt8EntropyCalibrator2`` fed from torch CUDA buffers), the workspace limit and a timing cache, and
writes ``header + plan``. ``ensure_engine`` is the runtime's door: engines live under
``$SEGPIPE_CACHE/engines`` keyed by everything that makes a plan differ, and are built once.
Everything that needs neither TensorRT nor a GPU (specs, keys, paths) is importable anywhere.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from engines.backends.engine_header import Platform, write_engine
from engines.data.cache import default_cache_root
from engines.errors import ConfigError

PRECISIONS = ("fp32", "fp16", "int8")


@dataclass(frozen=True, slots=True)
class EngineSpec:
    """What to build. imgsz: (H, W) pixels (fixed: engines are built for one size). precision:
    fp32|fp16|int8 (INT8 keeps FP16 enabled for layers that have no INT8 kernel). min/opt/max_batch:
    the optimisation profile (TensorRT tunes kernels for ``opt``). workspace_gb: builder memory pool
    limit in GiB. calib_data/calib_images: INT8 calibration set (train split of the data YAML).
    nms_free: build an end-to-end (YOLO26) model's NMS-free head (from a checkpoint; an ONNX file brings
    its own)."""

    imgsz: tuple[int, int]
    precision: str = "fp16"
    min_batch: int = 1
    opt_batch: int = 8
    max_batch: int = 16
    workspace_gb: float = 4.0
    calib_data: str | None = None
    calib_images: int = 512
    nms_free: bool = False

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError("precision", f"expected one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise ConfigError("--opt-batch", "the batch profile needs 1 <= min <= opt <= max, got "
                              f"min {self.min_batch}, opt {self.opt_batch}, max {self.max_batch}")
        if self.workspace_gb <= 0:
            raise ConfigError("--workspace", f"must be > 0 GiB, got {self.workspace_gb}")
        if self.precision == "int8" and not self.calib_data:
            raise ConfigError("--calib-data", "--int8 needs calibration images: pass --calib-data DATA.yaml")

    @property
    def batch_range(self) -> tuple[int, int]:
        return self.min_batch, self.max_batch


def cache_key(model_hash: str, spec: EngineSpec, platform: Platform) -> str:
    """sha256 (hex) over everything that makes two plans differ: model, precision, batch profile, size,
    TensorRT version, GPU (and the calibration set for INT8). Workspace is left out: it bounds the
    builder's scratch memory, and the same key with a new limit would only rebuild the same engine."""
    facts: dict[str, Any] = {"model": model_hash, "precision": spec.precision, "imgsz": list(spec.imgsz),
                             "batch": [spec.min_batch, spec.opt_batch, spec.max_batch], **platform.to_json()}
    if spec.precision == "int8":
        facts["calib"] = [spec.calib_data, spec.calib_images]
    if spec.nms_free:  # only when set: the keys of engines cached before it existed stay valid
        facts["nms_free"] = True
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()


def cache_path(model: Path, key: str, spec: EngineSpec, root: Path | None = None) -> Path:
    """``$SEGPIPE_CACHE/engines/<stem>-<precision>-<H>x<W>-b<min>-<opt>-<max>-<key16>.engine``."""
    h, w = spec.imgsz
    name = (f"{model.stem}-{spec.precision}-{h}x{w}-b{spec.min_batch}-{spec.opt_batch}-{spec.max_batch}-"
            f"{key[:16]}.engine")
    return (root or default_cache_root()) / "engines" / name


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Exclusive lock so two processes asking for the same engine build it once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(path.suffix + ".lock"), "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ensure_engine(model_path: str | os.PathLike[str], *, device: torch.device | None = None, half: bool = True,
                  int8: bool = False, imgsz: int | tuple[int, int] | None = None, min_batch: int = 1, opt_batch: int = 8,
                  max_batch: int = 16, calib_data: str | None = None, nms_free: bool = False) -> Path:
    """The cached engine for a checkpoint or ``.onnx`` (built first if absent); returns its path.

    Raises ``BackendUnavailableError`` at once without TensorRT or a GPU.
    """
    from engines.backends.tensorrt_backend import platform_of, require_cuda, require_tensorrt
    from engines.export.trt_build import model_facts

    model = Path(model_path)
    trt = require_tensorrt(f"backend tensorrt for {model}")
    dev = require_cuda(f"backend tensorrt for {model}", device)
    facts = model_facts(model)
    precision = "int8" if int8 else "fp16" if half else "fp32"
    spec = EngineSpec(imgsz=_as_hw(imgsz) if imgsz else facts.imgsz, precision=precision, min_batch=min_batch,
                      opt_batch=opt_batch, max_batch=max_batch, calib_data=calib_data or facts.data if int8 else None,
                      nms_free=nms_free)
    out = cache_path(model, cache_key(facts.model_hash, spec, platform_of(trt, dev)), spec)
    with _file_lock(out):
        if out.is_file():
            return out
        print(f"segpipe: building a TensorRT {precision} engine for {model.name} (once; cached at {out})",
              file=sys.stderr, flush=True)
        return build_engine(model, spec=spec, device=dev, out=out)


def build_engine(model_path: str | os.PathLike[str], *, spec: EngineSpec, device: torch.device | None = None,
                 out: str | os.PathLike[str] | None = None, timing_cache: str | os.PathLike[str] | None = None,
                 progress: bool = True) -> Path:
    """Build an engine for a checkpoint / model YAML / segpipe ``.onnx`` and write it to ``out``
    (default: beside the model, ``<stem>.engine``). TensorRT and the GPU are checked before any work."""
    from engines.backends.tensorrt_backend import platform_of, require_cuda, require_tensorrt
    from engines.export.trt_build import build_plan, model_facts, onnx_for

    model = Path(model_path)
    trt = require_tensorrt("building a TensorRT engine")
    dev = require_cuda("building a TensorRT engine", device)
    platform = platform_of(trt, dev)
    facts = model_facts(model)
    dest = Path(out) if out is not None else model.with_suffix(".engine")
    with tempfile.TemporaryDirectory(prefix="segpipe-trt-") as tmp:
        onnx_path, record = onnx_for(model, spec, Path(tmp))
        with torch.cuda.device(dev):
            plan = build_plan(trt, onnx_path, spec, device=dev, timing_cache=timing_cache, progress=progress)
    header = {**record, "exporter": "tensorrt", "precision": spec.precision, "batch": list(spec.batch_range),
              "dynamic": False, "imgsz": list(spec.imgsz), "model_hash": facts.model_hash,
              "engine": {**asdict(spec), "imgsz": list(spec.imgsz)}, **platform.to_json()}
    return write_engine(dest, header, plan)


def _as_hw(imgsz: int | tuple[int, int]) -> tuple[int, int]:
    """(H, W) of an imgsz given as a side or (H, W)."""
    return (int(imgsz), int(imgsz)) if isinstance(imgsz, int) else (int(imgsz[0]), int(imgsz[1]))


__all__ = ["EngineSpec", "build_engine", "cache_key", "cache_path", "ensure_engine"]
