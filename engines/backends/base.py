"""The one inference interface every runtime sits behind. Imports nothing from pipeline/.

A backend takes a device-resident float batch ``x (N, 3, H, W)`` (RGB, 0-1, letterboxed) and returns
``(pred (N, 4+nc+32, A), proto (N, 32, H/4, W/4))`` on the same device, so pre- and post-processing never
care what ran the model. Batches larger than the backend's profile are split, never refused.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from engines.checkpoint.meta import yaml_proto_stride
from engines.errors import InputError


@dataclass(frozen=True, slots=True)
class BackendMeta:
    """What a loaded artifact can do. ``imgsz`` is (H, W); ``dynamic`` means any H, W (multiples of
    ``stride``) are accepted, else only ``imgsz``. ``batch_range`` is the inclusive (min, max) batch.
    ``nms_free``: it runs an end-to-end (YOLO26) head's one-to-one branches, whose outputs are post-processed
    by top-k selection instead of NMS (``engines.ops.select_rows``)."""

    names: tuple[str, ...]
    imgsz: tuple[int, int]
    stride: int
    batch_range: tuple[int, int]
    precision: str
    dynamic: bool
    task: str = "segment"
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    nms_free: bool = False

    @property
    def nc(self) -> int:
        return len(self.names)

    @property
    def proto_stride(self) -> int:
        """Input pixels per mask-prototype pixel, from the exported model YAML (4 without one)."""
        return yaml_proto_stride(self.extra.get("model_yaml") or {})


@dataclass(frozen=True, slots=True)
class BackendOptions:
    """Per-backend knobs; each backend reads the ones it understands.

    half: fp16 weights/activations (CUDA; TensorRT/OpenVINO decide at build/export time).
    cuda_graph: capture one CUDA graph per fixed input shape (torch backend on CUDA).
    channels_last: NHWC weights and inputs (torch backend). On CPU the inputs are made NHWC anyway:
        oneDNN runs YOLOv8 convolutions ~10 % faster on them than on NCHW, and NHWC weights gain nothing.
    fuse: fold BatchNorm into convolutions (torch backend).
    threads: intra-op CPU threads (0 = runtime default).
    nms_free: run an end-to-end (YOLO26) model's NMS-free head (Ultralytics' ``nms=False``): the torch
        backend switches to it; an exported artifact must have been exported with it.
    """

    half: bool = False
    cuda_graph: bool = False
    channels_last: bool = False
    fuse: bool = True
    threads: int = 0
    nms_free: bool = False


class Backend(abc.ABC):
    """Base class: validates inputs, splits oversize batches, delegates to ``_infer``."""

    meta: BackendMeta
    device: torch.device
    path: Path

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._check_input(x)
        lo, hi = self.meta.batch_range
        n = x.shape[0]
        if n > hi:
            parts = [self._infer_padded(x[i : i + hi]) for i in range(0, n, hi)]
            return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        return self._infer_padded(x)

    def _infer_padded(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Engines with a minimum batch above 1 get zero frames appended, and the extras trimmed.
        n, lo = x.shape[0], self.meta.batch_range[0]
        if n >= lo:
            return self._infer(x)
        pad = x.new_zeros((lo - n, *x.shape[1:]))
        pred, proto = self._infer(torch.cat([x, pad]))
        return pred[:n], proto[:n]

    def _check_input(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor):
            raise InputError(f"{self.path.name}: expected a torch.Tensor batch, got {type(x).__name__}")
        if x.ndim != 4 or x.shape[1] != 3:
            raise InputError(f"{self.path.name}: expected input shape (N, 3, H, W), got {tuple(x.shape)}")
        if x.dtype not in (torch.float32, torch.float16):
            raise InputError(f"{self.path.name}: expected float32 or float16 input, got {x.dtype}")
        if x.shape[0] == 0:
            raise InputError(f"{self.path.name}: empty batch")
        h, w = int(x.shape[2]), int(x.shape[3])
        if self.meta.dynamic:
            s = self.meta.stride
            if h % s or w % s:
                raise InputError(f"{self.path.name}: input {h}x{w} is not a multiple of stride {s}")
        elif (h, w) != tuple(self.meta.imgsz):
            raise InputError(f"{self.path.name}: this model was exported for {self.meta.imgsz[0]}x"
                             f"{self.meta.imgsz[1]} inputs, got {h}x{w} (export with --dynamic for any size)")
        if x.device.type != self.device.type:
            raise InputError(f"{self.path.name}: input is on {x.device}, the model runs on {self.device}")

    @abc.abstractmethod
    def _infer(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Run one batch within ``batch_range``; outputs float32 on ``self.device``."""

    def warmup(self, batch: int = 1, imgsz: tuple[int, int] | None = None) -> None:
        """One throw-away call so the first real frame does not pay for lazy initialisation."""
        h, w = imgsz or self.meta.imgsz
        n = max(batch, self.meta.batch_range[0])
        self(torch.zeros((n, 3, h, w), device=self.device))

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release runtime resources (sessions, contexts)."""

    def __repr__(self) -> str:
        m = self.meta
        return (f"{type(self).__name__}({self.path.name}, device={self.device}, precision={m.precision}, "
                f"imgsz={m.imgsz}, batch={m.batch_range}, dynamic={m.dynamic})")
