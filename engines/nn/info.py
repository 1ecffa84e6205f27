"""Model statistics: parameter count, GFLOPs and the per-layer table ``segpipe info`` prints.

Imports nothing from ``pipeline``. GFLOPs are counted the way Ultralytics' published tables do (2 x
multiply-accumulates of the conv layers) on a copy of the network built on the ``meta`` device,
so the count costs no compute and no memory whatever the scale.

One convention is kept on purpose: the published figures (12.6 GFLOPs for yolov8n-seg at 640)
count the Proto's stride-2 transposed conv per *output* pixel, i.e. 4x its true cost; torch's
FlopCounterMode (and newer Ultralytics) count it per input pixel and get 12.0. We report the
published convention so ``segpipe info`` agrees with the model cards.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from engines.nn.model import SegmentationModel


@dataclass(frozen=True, slots=True)
class ModelStats:
    """Totals for one model at one input size: ``layers`` modules, ``params`` parameters,
    ``gflops`` at ``imgsz`` (a square side or ``(H, W)``, batch 1)."""

    layers: int
    params: int
    gflops: float
    imgsz: int | tuple[int, int]


def count_params(model: torch.nn.Module) -> int:
    """Number of parameter elements (including the fixed DFL conv, as Ultralytics counts them)."""
    return sum(p.numel() for p in model.parameters())


def count_gflops(model: SegmentationModel, imgsz: int | tuple[int, int] = 640) -> float:
    """GFLOPs of one eval forward of a ``(1, 3, H, W)`` input (``imgsz`` an int or ``(H, W)``).

    Built afresh on the meta device from ``model.yaml``, so weights, device and fusion state of
    ``model`` do not matter (BatchNorm costs nothing in this count either way).
    """
    h, w = (imgsz, imgsz) if isinstance(imgsz, int) else imgsz
    with torch.device("meta"):
        probe = SegmentationModel(model.yaml).eval()
        x = torch.empty(1, model.yaml.get("channels", 3), h, w)
    aten = torch.ops.aten
    conv_ops = (aten.convolution, aten._convolution, aten.convolution_overrideable)
    counter = FlopCounterMode(display=False, custom_mapping=dict.fromkeys(conv_ops, _conv_flop))
    with counter, torch.no_grad():
        probe(x)
    return counter.get_total_flops() / 1e9


def _conv_flop(x_shape: list[int], w_shape: list[int], _bias: Any, _stride: Any, _padding: Any,
               _dilation: Any, transposed: bool, *args: Any, out_shape: list[int] | None = None,
               **kwargs: Any) -> int:
    # Per output pixel for plain and transposed convs alike (see the module docstring).
    assert out_shape is not None
    return 2 * out_shape[0] * prod(out_shape[2:]) * prod(w_shape)


def model_stats(model: SegmentationModel, imgsz: int | tuple[int, int] = 640) -> ModelStats:
    """Totals for ``model``; ``layers`` counts leaf modules with parameters or activations."""
    layers = sum(1 for m in model.modules() if not list(m.children()))
    return ModelStats(layers=layers, params=count_params(model), gflops=count_gflops(model, imgsz), imgsz=imgsz)


def layer_table(model: SegmentationModel) -> str:
    """One line per YAML layer: index, from, repeats, params, module, resolved args."""
    lines = [f"{'':>3}{'from':>20}{'n':>3}{'params':>10}  {'module':<20}{'arguments'}"]
    for r in model.layers:
        src = str(r.source if isinstance(r.source, int) else list(r.source))
        lines.append(f"{r.index:>3}{src:>20}{r.repeats:>3}{r.params:>10,}  {r.module:<20}{list(r.args)}")
    return "\n".join(lines)


def summary(model: SegmentationModel, imgsz: int | tuple[int, int] = 640) -> str:
    """Layer table plus a totals line like ``yolov8s-seg: 11,821,056 parameters, 42.6 GFLOPs``."""
    s = model_stats(model, imgsz)
    h, w = (imgsz, imgsz) if isinstance(imgsz, int) else imgsz
    title = model_title(model)
    fused = " (fused)" if model.is_fused() else ""
    return (f"{layer_table(model)}\n{title} summary{fused}: {s.layers} layers, {s.params:,} parameters, "
            f"{model.nc} classes, {s.gflops:.1f} GFLOPs at {h}x{w}")


def model_title(model: SegmentationModel) -> str:
    """``yolov8s-seg`` / ``yolo11s-seg`` from the YAML file name and scale, or ``model`` when unnamed."""
    stem = str(model.yaml.get("yaml_file", "model")).rsplit("/", 1)[-1].removesuffix(".yaml")
    scale = model.yaml.get("scale") or ""
    if scale and stem.startswith("yolo") and "-" in stem:
        base, rest = stem.split("-", 1)
        if not base.endswith(scale):
            stem = f"{base}{scale}-{rest}"
    return stem
