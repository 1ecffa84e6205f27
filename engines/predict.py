"""``SegModel``: the one Python entry point for inference (and the door to train/val/export).

    model = SegModel("best.pt")                 # or .onnx, *_openvino_model/, .torchscript, .engine
    dets = model("bus.jpg")[0]                   # Detections: boxes, scores, class_ids, masks, plot()
    for item, dets in model.stream("clip.mp4"):  # frames of a video or stream, one at a time
        ...
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engines.backends import Backend, BackendOptions, load_backend
from engines.errors import ConfigError
from engines.limits import check_mask_threshold
from engines.ops import NMSConfig, letterbox, postprocess
from engines.sources import SourceItem, iter_source
from engines.structures import Detections


@dataclass(frozen=True, slots=True)
class PredictConfig:
    """Inference settings; ``imgsz`` None means the model's own size, an int a square (with a dynamic
    backend, the longest side of Ultralytics' minimal-padding rectangle), a pair (h, w)."""

    imgsz: int | tuple[int, int] | None = None
    conf: float = 0.25
    iou: float = 0.7
    classes: tuple[int, ...] | None = None
    agnostic: bool = False
    max_det: int = 300
    retina_masks: bool = False
    mask_threshold: float = 0.5  # the mask probability a pixel must exceed (Ultralytics' 0.5)
    batch: int = 1
    max_frames: int = 0  # per video or stream: stop it after this many of its frames (0: all)
    vid_stride: int = 1  # per video or stream: predict on its frames 0, N, 2N, ... (numbered as in the source)

    def __post_init__(self) -> None:
        v = self.vid_stride
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError("vid_stride", f"expected an integer >= 1 (1: every frame), got {v!r}")
        check_mask_threshold(self.mask_threshold)

    @property
    def nms(self) -> NMSConfig:
        return NMSConfig(conf=self.conf, iou=self.iou, classes=self.classes, agnostic=self.agnostic,
                         max_det=self.max_det)


class SegModel:
    """A loaded segmentation model on one backend and device (``threads``: intra-op CPU threads of the
    backend's runtime, 0 = its default)."""

    def __init__(self, model: str | Path, *, device: str | torch.device | None = "cpu",
                 backend: str = "auto", half: bool = False, cuda_graph: bool = False, threads: int = 0,
                 nms_free: bool = False) -> None:
        self.path = Path(model)
        self.backend: Backend = load_backend(model, device=device, backend=backend, options=BackendOptions(
            half=half, cuda_graph=cuda_graph, threads=threads, nms_free=nms_free))

    @property
    def names(self) -> tuple[str, ...]:
        return self.backend.meta.names

    @property
    def device(self) -> torch.device:
        return self.backend.device

    def __call__(self, source: Any, **kwargs: Any) -> list[Detections]:
        """Predict on an image path, folder, glob, video, stream URL, array or list of those."""
        return [dets for _, dets in self.stream(source, **kwargs)]

    predict = __call__

    def stream(self, source: Any, **kwargs: Any) -> Iterator[tuple[SourceItem, Detections]]:
        """Lazily yield ``(item, detections)`` per frame; memory stays flat on long videos."""
        cfg = PredictConfig(**kwargs)
        pending: list[SourceItem] = []
        for item in iter_source(source, max_frames=cfg.max_frames, vid_stride=cfg.vid_stride):
            if pending and (len(pending) >= cfg.batch or item.image.shape != pending[0].image.shape):
                yield from zip(pending, self.predict_arrays([p.image for p in pending], cfg), strict=True)
                pending = []
            pending.append(item)
        if pending:
            yield from zip(pending, self.predict_arrays([p.image for p in pending], cfg), strict=True)

    def predict_arrays(self, images: list[np.ndarray], cfg: PredictConfig | None = None) -> list[Detections]:
        """Predict on BGR uint8 arrays of one shape (one engine call, split if over the batch range)."""
        cfg = cfg or PredictConfig()
        meta = self.backend.meta
        size = cfg.imgsz or meta.imgsz
        batch = torch.from_numpy(np.stack(images)).to(self.device, non_blocking=True)
        # Dynamic backends take Ultralytics' minimal-padding rectangle; fixed-shape ones a full square.
        x, infos = letterbox(batch, size=size, stride=meta.stride, auto=meta.dynamic)
        pred, proto = self.backend(x)
        return postprocess(pred, proto, infos, cfg.nms, names=self.names, retina_masks=cfg.retina_masks,
                           nms_free=meta.nms_free, mask_threshold=cfg.mask_threshold)

    def train(self, **kwargs: Any) -> Any:
        """Train starting from this model (see ``segpipe train --help``); returns the final metrics."""
        from engines.train import train

        return train(model=str(self.path), **kwargs)

    def val(self, **kwargs: Any) -> Any:
        """Validate this model on its dataset (or ``data=``); returns SegMetrics."""
        from engines.val import validate

        return validate(self.backend, **kwargs)

    def export(self, format: str, **kwargs: Any) -> Path:
        """Export to ``onnx``, ``openvino`` or ``torchscript`` (with the head this model runs); returns the
        artifact path."""
        from engines.export import export

        kwargs.setdefault("nms_free", self.backend.meta.nms_free)
        return export(self.path, format=format, **kwargs)

    def __repr__(self) -> str:
        return f"SegModel({self.backend!r})"
