"""What the device stage runs: its settings (from the run config) and the loaded model bundle.

Imports engines (backends, ops config) and pipeline's batching policy; nothing that runs threads.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from engines.backends import Backend
from engines.errors import ConfigError, EngineMismatchError
from engines.ops.nms import NMSConfig
from pipeline.batching import BatchPolicy

if TYPE_CHECKING:
    from pipeline.config import RunConfig


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceSettings:
    """What the device stage needs, derived from the run config in ``from_config``.

    imgsz: model input, a side (square) or (height, width) in pixels; None takes the model's own
    (its training size).
    threads: CPU intra-op threads (0: the runtime's default, one per core). On a CPU-only machine the
    decoders need cores too, and oversubscribed OpenMP threads stall each other for whole time slices.
    masks: "rle" | "polygon" | "none". mask_resolution: "frame" (prototypes resampled to frame
    pixels inside each box) | "model" (thresholded at prototype resolution, nearest-neighbour to frame).
    mask_threshold: the mask probability a pixel must exceed (Ultralytics' 0.5).
    nms_free: run an end-to-end (YOLO26) model's NMS-free head (top-k post-processing, no NMS).
    depth: batches gathered ahead of the one being inferred (and queued for post-processing). 1 keeps
    upload and inference overlapped while a frame waits at most one inference before its own: live
    video wants fresh frames, not a deep queue. Staging arenas = depth + 2.
    preview_width: when a sink draws on the frames (video), each result is emitted as a FramePreview
    with the frame downscaled to at most this width (0: full size); None sends no pixels.
    preview_watch: (width, fps) when a preview sink may ask for frames: the cameras it names in a
    ``("watch", ids)`` command get a FramePreview at most ``fps`` times a second, at most ``width`` wide.
    """

    model_path: str
    backend: str = "auto"
    device: str = "auto"
    imgsz: int | tuple[int, int] | None = None
    half: bool = False
    cuda_graph: bool = False
    threads: int = 0
    nms_free: bool = False
    nms: NMSConfig = NMSConfig()
    masks: str = "rle"
    mask_resolution: str = "frame"
    mask_threshold: float = 0.5
    batch: BatchPolicy = BatchPolicy()
    depth: int = 1
    preview_width: int | None = None
    preview_watch: tuple[int, float] | None = None

    @classmethod
    def from_config(cls, cfg: RunConfig) -> DeviceSettings:
        m = cfg.model
        return cls(model_path=m.path, backend=m.backend, device=m.device,
                   imgsz=m.input_shape() if "imgsz" in m.model_fields_set else None, half=m.half, cuda_graph=m.cuda_graph,
                   threads=m.threads, nms_free=m.nms_free, nms=NMSConfig(conf=m.conf, iou=m.iou, classes=m.classes, max_det=m.max_det),
                   masks=cfg.masks.format, mask_resolution=cfg.masks.resolution, mask_threshold=cfg.masks.threshold,
                   batch=BatchPolicy.from_config(cfg.batch), preview_width=preview_width(cfg),
                   preview_watch=preview_watch(cfg))

    def load_backend(self) -> Backend:
        """Load the model this stage runs (ModelError/BackendUnavailableError name the problem)."""
        from engines.backends import BackendOptions, load_backend

        device = None if self.device == "auto" else self.device
        if self.threads:
            torch.set_num_threads(self.threads)  # letterbox/NMS/masks here run torch ops whatever the backend
        return load_backend(self.model_path, device=device, backend=self.backend,
                            options=BackendOptions(half=self.half, cuda_graph=self.cuda_graph,
                                                   threads=self.threads, nms_free=self.nms_free))


@dataclass(frozen=True, slots=True)
class ModelBundle:
    """What a batch is inferred and post-processed with. A config reload swaps the stage's whole
    ``ModelBundle`` between two gathers; batches already gathered finish with the one they started with."""

    settings: DeviceSettings  # its model and mask fields; batching and previews stay the stage's own
    backend: Backend
    size: tuple[int, int]  # input (height, width)
    names: tuple[str, ...]
    name: str  # published as each event's "model"


def bundle_model(settings: DeviceSettings, backend: Backend) -> ModelBundle:
    """``backend`` with the input shape ``settings`` ask of it (ConfigError/EngineMismatchError when the
    model cannot take it)."""
    meta = backend.meta
    if settings.imgsz is None:
        size = tuple(meta.imgsz)
    else:
        size = (settings.imgsz, settings.imgsz) if isinstance(settings.imgsz, int) else tuple(settings.imgsz)
        if any(s % meta.stride for s in size):
            raise ConfigError("model.imgsz", f"{size[0]}x{size[1]} (HxW): each side must be a multiple of "
                                             f"{settings.model_path}'s stride {meta.stride}")
        if not meta.dynamic and tuple(meta.imgsz) != size:
            raise EngineMismatchError(f"{settings.model_path}: built for {meta.imgsz[0]}x{meta.imgsz[1]} (HxW) inputs, "
                                      f"the config asks for {size[0]}x{size[1]} (re-export at that size, or drop "
                                      "model.imgsz)")
    return ModelBundle(settings=settings, backend=backend, size=size, names=tuple(meta.names),  # type: ignore[arg-type]
                  name=Path(settings.model_path).name)


def preview_width(cfg: RunConfig) -> int | None:
    """Widest frame any drawing sink wants (0: full size), or None when no sink draws."""
    widths = [getattr(s, "max_width", None) or 0 for s in cfg.sinks if s.type in ("video", "restream")]
    if not widths:
        return None
    return 0 if 0 in widths else max(widths)


def preview_watch(cfg: RunConfig) -> tuple[int, float] | None:
    """(widest, fastest) of the preview sinks' frames, or None without one."""
    from pipeline.sinks.config import PreviewSinkConfig  # pydantic: loaded already wherever a RunConfig is

    sinks = [s for s in cfg.sinks if isinstance(s, PreviewSinkConfig)]
    if not sinks:
        return None
    return max(s.max_width for s in sinks), max(s.fps for s in sinks)
