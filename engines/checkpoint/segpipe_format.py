"""segpipe's own checkpoint format: safetensors with a JSON metadata record in the header.

Imports nothing from ``pipeline``. Layout: model tensors under their state-dict names
(``model.0.conv.weight``), extra tensors (resume state) under ``extra/<name>``, and the header's
``__metadata__["segpipe"]`` holding ``{"format", "format_version", "meta": ModelMeta JSON}``.
Reading never unpickles anything. Writing is atomic: a temporary file in the same folder is
written, fsynced and renamed over the target, so a crash or a full disk leaves either the old
file or the new one, never a truncated one.
"""

from __future__ import annotations

import json
import os
import secrets
import struct
from collections.abc import Mapping
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor

from engines.checkpoint.meta import Checkpoint, ModelMeta
from engines.errors import CheckpointError

FORMAT = "segpipe-checkpoint"
FORMAT_VERSION = 1
EXTRA = "extra/"
_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit


def looks_like_safetensors(head: bytes, size: int) -> bool:
    """Whether the first bytes are a safetensors header: u64 little-endian length then ``{``."""
    if len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return 2 <= n <= min(size - 8, _MAX_HEADER) and head[8:9] == b"{"


def read_header(data: bytes, where: str) -> dict:
    (n,) = struct.unpack("<Q", data[:8])
    if n + 8 > len(data):
        raise CheckpointError(f"{where}: truncated safetensors file (header says {n} bytes)")
    try:
        header = json.loads(data[8:8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError(f"{where}: corrupt safetensors header") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{where}: corrupt safetensors header")
    return header


def load_segpipe(path: Path, data: bytes) -> Checkpoint:
    """Parse a segpipe safetensors checkpoint already read into ``data``."""
    header = read_header(data, str(path))
    raw = (header.get("__metadata__") or {}).get("segpipe")
    if raw is None:
        raise CheckpointError(f"{path}: a safetensors file without segpipe metadata (not a segpipe checkpoint)")
    try:
        record = json.loads(raw)
    except json.JSONDecodeError:
        raise CheckpointError(f"{path}: corrupt segpipe metadata record") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise CheckpointError(f"{path}: metadata is not a {FORMAT} record")
    if record.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: {FORMAT} version {record.get('format_version')!r} is not supported "
                              f"(this segpipe reads version {FORMAT_VERSION})")
    meta = ModelMeta.from_json(record.get("meta"), str(path))
    try:
        tensors = st_load(data)
    except (SafetensorError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: corrupt or truncated tensor data ({e})") from None
    state = {k: v for k, v in tensors.items() if not k.startswith(EXTRA)}
    extra = {k[len(EXTRA):]: v for k, v in tensors.items() if k.startswith(EXTRA)}
    return Checkpoint(state_dict=state, meta=meta, extra_tensors=extra)


def save_segpipe(path: Path, *, state_dict: Mapping[str, Tensor], meta: ModelMeta,
                 extra_tensors: Mapping[str, Tensor] | None = None) -> Path:
    """Write atomically to ``path``; returns it. ``CheckpointError`` if it cannot be written."""
    tensors: dict[str, Tensor] = {}
    for k, v in state_dict.items():
        if k.startswith(EXTRA):
            raise CheckpointError(f"state dict key {k!r} collides with the '{EXTRA}' namespace")
        tensors[k] = v.detach().cpu().contiguous().clone()  # clone: safetensors refuses shared storage
    for k, v in (extra_tensors or {}).items():
        tensors[EXTRA + k] = v.detach().cpu().contiguous().clone()
    record = {"format": FORMAT, "format_version": FORMAT_VERSION, "meta": meta.to_json()}
    blob = st_save(tensors, metadata={"segpipe": json.dumps(record, allow_nan=False)})
    write_atomic(path, blob)
    return path


def write_atomic(path: Path, blob: bytes) -> None:
    """Write ``blob`` to ``path`` via fsynced temp file + rename in the same folder."""
    folder = path.parent
    if not folder.is_dir():
        raise CheckpointError(f"{path}: folder {folder} does not exist")
    # The temp file is created inside the try (not by tempfile.mkstemp before it): an interrupt that
    # lands just after its creation must find the cleanup below armed, or the file stays behind.
    tmp = folder / f".{path.name}.{secrets.token_hex(8)}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o644)  # whatever the umask: a checkpoint is an ordinary shared file
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise CheckpointError(f"{path}: cannot write checkpoint ({e.strerror or e})") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable; not possible on every platform/filesystem, so best effort.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
