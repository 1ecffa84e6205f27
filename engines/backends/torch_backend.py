"""PyTorch backend: segpipe / Ultralytics checkpoints (or a model YAML, randomly initialised).

On CUDA: fp16, channels-last and one CUDA graph per input shape (replaying a graph removes the per-layer
launch overhead that dominates small batches). BatchNorm is folded into the convolutions.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from engines.backends.base import Backend, BackendMeta, BackendOptions
from engines.checkpoint import build_model, load_checkpoint
from engines.nn.model import SegmentationModel

if TYPE_CHECKING:
    from torch.cuda import _POOL_HANDLE


class _Graph:
    """One captured CUDA graph with its static input and outputs.

    The graphs of one backend share a memory pool: they are replayed one at a time, in stream order, and
    each replay's outputs are cloned before the next replay can start. Capture is thread-local so that
    other threads of a streaming stage (uploads, post-processing on their own streams) may keep
    working while a graph is captured.
    """

    def __init__(self, model: torch.nn.Module, x: torch.Tensor, pool: _POOL_HANDLE | None) -> None:
        self.x = x.clone()
        stream = torch.cuda.Stream(x.device)
        stream.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(stream):  # warm-up outside capture, as CUDA graphs require
            for _ in range(2):
                model(self.x)
        torch.cuda.current_stream(x.device).wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, pool=pool, capture_error_mode="thread_local"):
            self.pred, self.proto = model(self.x)

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.x.copy_(x, non_blocking=True)
        self.graph.replay()
        return self.pred.clone(), self.proto.clone()


class TorchBackend(Backend):
    def __init__(self, path: Path, *, device: torch.device, options: BackendOptions) -> None:
        self.path, self.device, self.options = path, device, options
        if options.threads and device.type == "cpu":
            torch.set_num_threads(options.threads)  # process-wide: only when the caller asked
        # Building and fusing layers draws their initial weights from torch's random stream: from a
        # forked one, so loading a model leaves the caller's random state as it was.
        with torch.random.fork_rng(devices=[]):
            if path.suffix in (".yaml", ".yml"):
                torch.manual_seed(0)  # untrained, but the same weights every run (smoke tests, benchmarks)
                model = SegmentationModel(str(path))
                names = tuple(f"class{i}" for i in range(model.nc))
                imgsz, stride, source = 640, int(model.stride.max()), "yaml"
                extra: dict[str, object] = {}
            else:
                ckpt = load_checkpoint(path)
                model = build_model(ckpt)
                m = ckpt.meta
                names, imgsz, stride, source = tuple(m.names), m.imgsz, int(m.stride), m.source
                # The exported formats carry the dataset too; validators read it from here.
                extra = {"data": m.data} if m.data else {}
                if m.train_args.get("single_cls"):  # so val scores it as trained, as Ultralytics remembers it
                    extra["single_cls"] = True
            model = model.to(device).eval()
            if options.nms_free:
                model.use_nms_free_head(f"{path}: nms_free")
            if options.fuse:
                model = model.fuse()
        self.half = options.half and device.type == "cuda"
        if self.half:
            model = model.half()
        if options.channels_last:
            # Module.to's stubs omit memory_format, which it accepts at runtime.
            model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        for p in model.parameters():
            p.requires_grad_(False)
        self.model = model
        size = (imgsz, imgsz) if isinstance(imgsz, int) else tuple(imgsz)
        self.meta = BackendMeta(names=names, imgsz=size, stride=stride, batch_range=(1, 1 << 16),
                                precision="fp16" if self.half else "fp32", dynamic=True, source=source,
                                extra=extra, nms_free=options.nms_free)
        self._graphs: dict[tuple[int, ...], _Graph] = {}
        self.use_graphs = options.cuda_graph and device.type == "cuda"
        self._pool = torch.cuda.graph_pool_handle() if self.use_graphs else None

    @torch.inference_mode()
    def _infer(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.to(torch.float16 if self.half else torch.float32)
        if self.options.channels_last or self.device.type == "cpu":  # see BackendOptions.channels_last
            x = x.contiguous(memory_format=torch.channels_last)
        if self.use_graphs:
            key = tuple(x.shape)
            if key not in self._graphs:
                self._graphs[key] = _Graph(self.model, x, self._pool)
            pred, proto = self._graphs[key](x)
        else:
            pred, proto = self.model(x)
        return pred.float(), proto.float()
