"""Checkpoints: load (segpipe safetensors, or Ultralytics .pt through a restricted unpickler),
save (atomic), and build the model a checkpoint describes.

Imports nothing from ``pipeline``. The format is sniffed from the content, never the suffix:
a zip is a ``torch.save`` checkpoint (Ultralytics), a safetensors header is ours.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from torch import Tensor

from engines.checkpoint.meta import Checkpoint, ModelMeta
from engines.checkpoint.segpipe_format import load_segpipe, looks_like_safetensors, save_segpipe
from engines.checkpoint.ultralytics_pt import load_ultralytics_pt
from engines.errors import CheckpointError, ConfigError, ModelError
from engines.nn.model import SegmentationModel

_ZIP_MAGIC = b"PK\x03\x04"


def load_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Load a checkpoint file; tensors float32 on CPU, keys as in ``SegmentationModel.state_dict()``.

    Raises ``CheckpointError`` (missing, empty, truncated, corrupt, unknown format),
    ``UnsafeCheckpointError`` (a pickle naming a global outside the allow-list) or ``ModelError``
    (a detect/pose/classify model).
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p}: checkpoint not found")
    if not p.is_file():
        raise CheckpointError(f"{p}: not a file")
    try:
        data = p.read_bytes()
    except OSError as e:
        raise CheckpointError(f"{p}: cannot read ({e.strerror or e})") from None
    if not data:
        raise CheckpointError(f"{p}: empty file")
    if data.startswith(_ZIP_MAGIC):
        return load_ultralytics_pt(p)
    if looks_like_safetensors(data[:9], len(data)):
        return load_segpipe(p, data)
    if data[:1] == b"\x80" and data[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        raise CheckpointError(f"{p}: a legacy (non-zip) PyTorch pickle; re-save it with torch>=1.6 or "
                              "convert it to a segpipe checkpoint")
    raise CheckpointError(f"{p}: not a model checkpoint (neither segpipe safetensors nor a PyTorch zip)")


def save_checkpoint(path: str | os.PathLike[str], *, state_dict: Mapping[str, Tensor], meta: ModelMeta,
                    extra_tensors: Mapping[str, Tensor] | None = None) -> Path:
    """Write a segpipe checkpoint atomically (temp file in the same folder, fsync, rename)."""
    return save_segpipe(Path(path), state_dict=state_dict, meta=meta, extra_tensors=extra_tensors)


def build_model(ckpt: Checkpoint) -> SegmentationModel:
    """The network ``ckpt`` describes, weights loaded, in eval mode (float32, CPU).

    Every tensor must match the rebuilt model by name and shape (checked explicitly so the error
    names what differs), else ``ModelError``.
    """
    meta = ckpt.meta
    where = meta.source or "checkpoint"
    try:
        model = SegmentationModel(meta.model_yaml, nc=len(meta.names))
    except (ConfigError, ModelError) as e:
        raise ModelError(f"{where}: unsupported model architecture ({e})") from None
    own = model.state_dict()
    missing = [k for k in own if k not in ckpt.state_dict]
    unexpected = [k for k in ckpt.state_dict if k not in own]
    wrong = [f"{k} {tuple(ckpt.state_dict[k].shape)} vs {tuple(v.shape)}"
             for k, v in own.items() if k in ckpt.state_dict and ckpt.state_dict[k].shape != v.shape]
    problems = [f"{len(x)} {what} (e.g. {x[0]})" for x, what in
                ((missing, "missing"), (unexpected, "unexpected"), (wrong, "wrong-shape")) if x]
    if problems:
        raise ModelError(f"{where}: weights do not fit {meta.model_yaml.get('yaml_file', 'the model')}: "
                         + "; ".join(problems))
    model.load_state_dict(dict(ckpt.state_dict), strict=True)
    return model.eval()


__all__ = ["Checkpoint", "ModelMeta", "build_model", "load_checkpoint", "save_checkpoint"]
