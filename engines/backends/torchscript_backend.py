"""TorchScript backend: a traced ``.torchscript`` module with its metadata in ``_extra_files``.

Imports nothing from ``pipeline``. The metadata is read together with the module (``torch.jit.load``
fills the requested extra files), so a file without ``segpipe.json`` is refused before any inference.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from engines.backends.artifact import meta_from_record
from engines.backends.base import Backend, BackendOptions
from engines.errors import ModelError

EXTRA_FILE = "segpipe.json"


class TorchScriptBackend(Backend):
    """A traced module; input cast to the dtype it was traced with (fp16 exports take fp16)."""

    def __init__(self, path: Path, *, device: torch.device, options: BackendOptions) -> None:
        self.path, self.device, self.options = path, device, options
        extra = {EXTRA_FILE: ""}
        try:
            self.module = torch.jit.load(str(path), map_location=device, _extra_files=extra).eval()
        except (RuntimeError, ValueError) as e:
            raise ModelError(f"{path}: not a TorchScript file ({str(e).splitlines()[0][:120]})") from None
        raw = extra[EXTRA_FILE]
        try:
            record = json.loads(raw) if raw else {}
        except json.JSONDecodeError:
            raise ModelError(f"{path}: corrupt segpipe metadata ({EXTRA_FILE})") from None
        self.meta = meta_from_record(record, str(path), exporter="torchscript")
        self.dtype = torch.float16 if self.meta.precision == "fp16" else torch.float32
        if options.threads and device.type == "cpu":
            # torch's thread count is process-wide; only set it when the caller asked.
            torch.set_num_threads(options.threads)

    @torch.inference_mode()
    def _infer(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pred, proto = self.module(x.to(self.dtype))
        return pred.float(), proto.float()
