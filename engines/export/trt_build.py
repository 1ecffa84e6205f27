"""The TensorRT builder calls behind :mod:`engines.export.tensorrt` (only imported once TensorRT is there).

Imports nothing from ``pipeline``. ``trt`` is passed in, never imported at module level, so this file
imports cleanly on machines without TensorRT (the classes that subclass TensorRT types are made inside
functions).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import onnx
import torch

from engines.backends.artifact import decode_props, meta_from_record
from engines.errors import ConfigError, ModelError
from engines.export.base import ExportSpec, file_hash, load_source
from engines.export.calib import calibration_batches, calibration_files
from engines.export.tensorrt import EngineSpec
from engines.limits import imgsz_hw


@dataclass(frozen=True, slots=True)
class ModelFacts:
    """What the engine cache needs to know about a source model: its size, hash and dataset."""

    imgsz: tuple[int, int]
    model_hash: str
    data: str | None


def _onnx_record(path: Path) -> dict[str, Any]:
    proto = onnx.load(str(path), load_external_data=False)
    record = decode_props({p.key: p.value for p in proto.metadata_props})
    meta_from_record(record, str(path), exporter="onnx")  # refuses foreign / other-task files
    return record


def model_facts(model: Path) -> ModelFacts:
    """Facts of a checkpoint or segpipe ``.onnx`` without building the network."""
    if not model.exists():
        raise ModelError(f"{model}: model file not found")
    if model.suffix.lower() == ".onnx":
        r = _onnx_record(model)
        return ModelFacts(imgsz=tuple(r["imgsz"]), model_hash=file_hash(model), data=r.get("data"))  # type: ignore[arg-type]
    from engines.checkpoint import load_checkpoint

    meta = load_checkpoint(model).meta
    return ModelFacts(imgsz=(meta.imgsz, meta.imgsz), model_hash=file_hash(model), data=meta.data)


def onnx_for(model: Path, spec: EngineSpec, workdir: Path) -> tuple[Path, dict[str, Any]]:
    """An fp32 ONNX of ``model`` at ``spec.imgsz`` (the file itself when it is one) and its record."""
    if model.suffix.lower() == ".onnx":
        record = _onnx_record(model)
        if record.get("precision") != "fp32":
            raise ConfigError("--model", f"{model}: build engines from an fp32 ONNX (this one is "
                              f"{record.get('precision')}); TensorRT applies --half / --int8 itself")
        if spec.nms_free and not record.get("nms_free"):
            raise ConfigError("--nms-free", f"{model} was exported with its NMS head (export it with --nms-free)")
        if not record.get("dynamic") and tuple(record["imgsz"]) != spec.imgsz:
            raise ConfigError("--imgsz", f"{model} was exported for {record['imgsz']}, asked for "
                              f"{list(spec.imgsz)} (re-export with --dynamic or that size)")
        return model, record
    from engines.export.onnx import build_onnx, save_onnx

    src = load_source(model, nms_free=spec.nms_free)
    xspec = ExportSpec(imgsz=imgsz_hw(spec.imgsz, src.stride), batch=spec.max_batch, nms_free=spec.nms_free)
    proto, rec = build_onnx(src, xspec, workdir=workdir)
    path = workdir / f"{model.stem}.onnx"
    save_onnx(proto, path)
    return path, rec.to_json()


def build_plan(trt: ModuleType, onnx_path: Path, spec: EngineSpec, *, device: torch.device,
               timing_cache: Any = None, progress: bool = True) -> bytes:
    """Parse ``onnx_path`` and build a serialised plan for ``spec`` on the current CUDA device."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: networks are always explicit-batch
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ModelError(f"{onnx_path}: TensorRT cannot parse the ONNX graph: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(spec.workspace_gb * (1 << 30)))
    inp = network.get_input(0)
    h, w = spec.imgsz
    profile = builder.create_optimization_profile()
    profile.set_shape(inp.name, (spec.min_batch, 3, h, w), (spec.opt_batch, 3, h, w), (spec.max_batch, 3, h, w))
    config.add_optimization_profile(profile)
    if spec.precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
    calibrator = None
    if spec.precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
        calibrator = make_calibrator(trt, spec, device=device, cache_file=onnx_path.with_suffix(".calib"))
        config.int8_calibrator = calibrator
        config.set_calibration_profile(profile)
    cache = _load_timing_cache(config, timing_cache)
    if progress and hasattr(trt, "IProgressMonitor"):
        config.progress_monitor = make_progress(trt)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ModelError(f"{onnx_path}: TensorRT failed to build the engine (see its log above)")
    if timing_cache is not None:
        Path(timing_cache).write_bytes(memoryview(cache.serialize()))
    return bytes(memoryview(plan))


def _load_timing_cache(config: Any, path: Any) -> Any:
    """A timing cache from ``path`` (empty when the file does not exist yet), attached to ``config``."""
    blob = Path(path).read_bytes() if path is not None and Path(path).is_file() else b""
    cache = config.create_timing_cache(blob)
    config.set_timing_cache(cache, ignore_mismatch=False)
    return cache


def make_calibrator(trt: ModuleType, spec: EngineSpec, *, device: torch.device, cache_file: Path) -> Any:
    """An ``IInt8EntropyCalibrator2`` over the calibration images, one ``opt_batch`` at a time; the
    device buffer is a torch tensor (TensorRT reads it by pointer after ``get_batch`` returns)."""
    files = calibration_files(spec.calib_data, spec.calib_images)
    batch = spec.opt_batch

    class _Calibrator(trt.IInt8EntropyCalibrator2):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.batches: Iterator[torch.Tensor] = calibration_batches(files, spec.imgsz, batch=batch)
            self.buffer: torch.Tensor | None = None

        def get_batch_size(self) -> int:
            return batch

        def get_batch(self, names: list[str]) -> list[int] | None:
            x = next(self.batches, None)
            if x is None or x.shape[0] != batch:  # TensorRT takes full batches only
                return None
            self.buffer = x.to(device).contiguous()
            torch.cuda.current_stream(device).synchronize()
            return [int(self.buffer.data_ptr())]

        def read_calibration_cache(self) -> bytes | None:
            return cache_file.read_bytes() if cache_file.is_file() else None

        def write_calibration_cache(self, cache: Any) -> None:
            cache_file.write_bytes(bytes(memoryview(cache)))

    return _Calibrator()


def make_progress(trt: ModuleType) -> Any:
    """A TensorRT progress monitor printing phase progress on stderr (builds take minutes)."""

    class _Progress(trt.IProgressMonitor):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self.steps: dict[str, int] = {}

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            self.steps[phase_name] = num_steps
            if parent_phase is None:
                print(f"  {phase_name} ...", file=sys.stderr, flush=True)

        def step_complete(self, phase_name: str, step: int) -> bool:
            total = self.steps.get(phase_name, 0)
            if total > 1 and phase_name.startswith("Building"):
                print(f"\r  {phase_name}: {step + 1}/{total}", end="", file=sys.stderr, flush=True)
            return True  # False would cancel the build

        def phase_finish(self, phase_name: str) -> None:
            self.steps.pop(phase_name, None)

    return _Progress()
