"""The metadata record every exported segpipe artifact carries, and its reader.

Imports nothing from ``pipeline``. One flat JSON-able record is written by every exporter: into ONNX
``metadata_props`` (one key per field, values JSON-encoded), TorchScript ``_extra_files``, the OpenVINO
``metadata.yaml`` and the TensorRT engine header. Loaders call :func:`meta_from_record`, which refuses
files without segpipe metadata and models of another task, naming the file.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from engines import __version__
from engines.backends.base import BackendMeta
from engines.checkpoint.meta import jsonable
from engines.errors import EngineMismatchError, ModelError

FORMAT = "segpipe-export"
FORMAT_VERSION = 1
TASK = "segment"
PRECISIONS = ("fp32", "fp16", "int8")
MAX_BATCH = 1 << 16  # "no limit": the batch axis is dynamic and nothing needs splitting
# How inputs must be prepared; written so a reader in another language can reproduce it.
PREPROCESS = {"color": "RGB", "layout": "NCHW", "scale": "1/255", "letterbox_pad": 114}


@dataclass(frozen=True, slots=True)
class ArtifactRecord:
    """What an exported artifact states about itself.

    names: class names. imgsz: (H, W) input size in pixels the artifact was exported at. stride:
    largest model stride in pixels. batch: inclusive (min, max) batch. precision: fp32|fp16|int8.
    dynamic: H and W may be any multiple of ``stride``. exporter: onnx|openvino|torchscript|tensorrt.
    model_yaml: the resolved model YAML. data: dataset YAML the weights were trained on, if known.
    source: where the weights came from. model_hash: sha256 of the source weights file. extra:
    format-specific fields (quantisation settings, TensorRT version, GPU). nms_free: the graph runs an
    end-to-end head's one-to-one branches (post-processed by top-k, not NMS).
    """

    names: tuple[str, ...]
    imgsz: tuple[int, int]
    stride: int
    batch: tuple[int, int]
    precision: str
    dynamic: bool
    exporter: str
    model_yaml: dict[str, Any] = field(default_factory=dict)
    data: str | None = None
    source: str = ""
    model_hash: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    nms_free: bool = False

    def to_json(self) -> dict[str, Any]:
        """A flat JSON-able dict (the artifact's metadata); inverse of :func:`meta_from_record`."""
        return {
            "format": FORMAT, "format_version": FORMAT_VERSION, "task": TASK, "segpipe_version": __version__,
            "names": list(self.names), "imgsz": list(self.imgsz), "stride": self.stride,
            "batch": list(self.batch), "precision": self.precision, "dynamic": self.dynamic,
            "exporter": self.exporter, "preprocess": PREPROCESS, "model_yaml": jsonable(self.model_yaml),
            "data": self.data, "source": self.source, "model_hash": self.model_hash, "nms_free": self.nms_free,
            **{k: jsonable(v) for k, v in self.extra.items()},
        }


_CORE = {"format", "format_version", "task", "names", "imgsz", "stride", "batch", "precision", "dynamic",
         "exporter", "source", "nms_free"}


def check_task(record: Mapping[str, Any], where: str) -> None:
    """Refuse a model of another task (also Ultralytics' own ``task`` key, e.g. 'detect', 'pose')."""
    task = record.get("task")
    if task is not None and task != TASK:
        raise ModelError(f"{where}: a {task!r} model, but segpipe needs a 'segment' model")


def meta_from_record(record: Mapping[str, Any], where: str, *, exporter: str) -> BackendMeta:
    """Validate the metadata read from artifact ``where`` and turn it into :class:`BackendMeta`.

    ``ModelError`` for a file without segpipe metadata, of another task, or with a bad field;
    ``EngineMismatchError`` when it was written by another exporter or a newer format version.
    """
    check_task(record, where)
    if record.get("format") != FORMAT:
        hint = " (an Ultralytics export?)" if "names" in record or "stride" in record else ""
        raise ModelError(f"{where}: no segpipe metadata{hint}; export it with `segpipe export`")
    if record.get("format_version") != FORMAT_VERSION:
        raise EngineMismatchError(f"{where}: metadata format version {record.get('format_version')!r}, "
                                  f"this segpipe reads version {FORMAT_VERSION}")
    if record.get("exporter") != exporter:
        raise EngineMismatchError(f"{where}: written by the {record.get('exporter')!r} exporter, "
                                  f"loaded as {exporter!r}")
    names = _field(record, "names", list, where)
    imgsz = _pair(record, "imgsz", where)
    batch = _pair(record, "batch", where)
    precision = _field(record, "precision", str, where)
    if precision not in PRECISIONS or not all(isinstance(n, str) for n in names) or not 1 <= batch[0] <= batch[1]:
        raise ModelError(f"{where}: corrupt segpipe metadata (names, batch or precision)")
    extra = {k: v for k, v in record.items() if k not in _CORE}
    nms_free = record.get("nms_free", False)  # absent from artifacts of segpipe before YOLO26
    if not isinstance(nms_free, bool):
        raise ModelError(f"{where}: segpipe metadata field 'nms_free' is not a bool")
    return BackendMeta(names=tuple(names), imgsz=imgsz, stride=_field(record, "stride", int, where),
                       batch_range=batch, precision=precision, dynamic=_field(record, "dynamic", bool, where),
                       task=TASK, source=str(record.get("source", "")), extra=extra, nms_free=nms_free)


def _field(record: Mapping[str, Any], key: str, typ: type, where: str) -> Any:
    v = record.get(key)
    if not isinstance(v, typ) or (typ is int and isinstance(v, bool)):
        raise ModelError(f"{where}: segpipe metadata field {key!r} is missing or not a {typ.__name__}")
    return v


def _pair(record: Mapping[str, Any], key: str, where: str) -> tuple[int, int]:
    v = record.get(key)
    if not (isinstance(v, list) and len(v) == 2 and all(isinstance(i, int) and i > 0 for i in v)):
        raise ModelError(f"{where}: segpipe metadata field {key!r} must be two positive integers, got {v!r}")
    return int(v[0]), int(v[1])


def encode_props(record: Mapping[str, Any]) -> dict[str, str]:
    """Record -> string key/value pairs (ONNX ``metadata_props``): each value JSON-encoded."""
    return {k: json.dumps(v, separators=(",", ":")) for k, v in record.items()}


def decode_props(props: Mapping[str, str]) -> dict[str, Any]:
    """Inverse of :func:`encode_props`; a value that is not JSON (foreign files) stays a string."""
    out: dict[str, Any] = {}
    for k, v in props.items():
        try:
            out[k] = json.loads(v)
        except (json.JSONDecodeError, TypeError):
            out[k] = v
    return out
