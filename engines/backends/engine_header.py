"""The metadata header in front of a serialised TensorRT plan, and the checks made before loading it.

Imports nothing from ``pipeline`` and not TensorRT: the header can be written, read and checked on
any machine. Layout::

    b"SEGPTRT\\x01"  (8 bytes, magic; last byte = header version)
    u64 little-endian  n = length of the JSON record
    n bytes           UTF-8 JSON: the artifact record + tensorrt_version, gpu_name, compute_capability
    ...               the TensorRT plan, to the end of the file

The header is read first and checked against this machine (TensorRT version, GPU compute capability)
so a mismatched engine is refused with both sides named instead of failing inside TensorRT.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engines.errors import EngineMismatchError, ModelError

MAGIC = b"SEGPTRT\x01"
_LEN = struct.Struct("<Q")
_MAX_HEADER = 16 * 1024 * 1024
LOG = logging.getLogger("segpipe.backends")


@dataclass(frozen=True, slots=True)
class Platform:
    """Where an engine is built or run: TensorRT version, GPU name and compute capability (major, minor)."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: tuple[int, int]

    def to_json(self) -> dict[str, Any]:
        return {"tensorrt_version": self.tensorrt_version, "gpu_name": self.gpu_name,
                "compute_capability": list(self.compute_capability)}


def write_engine(path: Path, record: Mapping[str, Any], plan: bytes | memoryview) -> Path:
    """Write header + plan atomically (temp file in the same folder, fsync, rename)."""
    body = json.dumps(dict(record), separators=(",", ":")).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(MAGIC + _LEN.pack(len(body)) + body)
            f.write(plan)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_header(path: Path) -> tuple[dict[str, Any], int]:
    """``(record, plan offset)`` of a segpipe engine file; ``ModelError`` for anything else."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(MAGIC) + _LEN.size)
            if head[: len(MAGIC) - 1] != MAGIC[:-1]:
                raise ModelError(f"{path}: no segpipe engine header (a bare TensorRT plan or another file); "
                                 "build engines with `segpipe build-engine`")
            if head[len(MAGIC) - 1 : len(MAGIC)] != MAGIC[-1:]:
                raise EngineMismatchError(f"{path}: engine header version {head[len(MAGIC) - 1]}, this segpipe "
                                          f"reads version {MAGIC[-1]}")
            (n,) = _LEN.unpack(head[len(MAGIC):])
            if n > _MAX_HEADER:
                raise ModelError(f"{path}: corrupt engine header (length {n})")
            body = f.read(n)
    except OSError as e:
        raise ModelError(f"{path}: cannot read ({e.strerror or e})") from None
    if len(body) != n:
        raise ModelError(f"{path}: truncated engine header")
    try:
        record = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ModelError(f"{path}: corrupt engine header (not JSON)") from None
    if not isinstance(record, dict):
        raise ModelError(f"{path}: corrupt engine header (not a JSON object)")
    return record, len(MAGIC) + _LEN.size + n


def check_platform(record: Mapping[str, Any], here: Platform, where: str) -> None:
    """Refuse an engine built with another TensorRT version or for another GPU architecture.

    TensorRT plans only deserialise with the exact TensorRT version that built them, and kernels are
    compiled for one compute capability; a different GPU name with the same capability loads (with a
    warning, as tactics were timed on the other card).
    """
    built = record.get("tensorrt_version")
    if built != here.tensorrt_version:
        raise EngineMismatchError(f"{where}: built with TensorRT {built}, this machine has TensorRT "
                                  f"{here.tensorrt_version}; rebuild it with `segpipe build-engine`")
    cc = tuple(record.get("compute_capability") or ())
    if cc != here.compute_capability:
        got = ".".join(map(str, cc)) or "?"
        raise EngineMismatchError(f"{where}: built for {record.get('gpu_name', '?')} (compute capability {got}), "
                                  f"this GPU is {here.gpu_name} (compute capability "
                                  f"{here.compute_capability[0]}.{here.compute_capability[1]}); rebuild it here")
    if record.get("gpu_name") != here.gpu_name:
        LOG.warning("%s: built on %s, running on %s (same architecture; speed may differ)", where,
                    record.get("gpu_name"), here.gpu_name)
