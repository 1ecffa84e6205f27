"""What a checkpoint holds: ``ModelMeta`` (JSON-able facts about the model) and ``Checkpoint``.

Imports nothing from ``pipeline``; only torch and the segpipe error tree.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any

import numpy as np
from torch import Tensor

from engines import __version__
from engines.errors import CheckpointError, ModelError

TASK = "segment"


@dataclass(frozen=True, slots=True)
class ModelMeta:
    """Facts every segpipe model artifact carries (checkpoints, ONNX metadata, engine headers).

    names: class names, index = class id. model_yaml: the resolved model YAML dict (with ``scale``
    and ``nc``) the network is rebuilt from. imgsz: training/inference square size in pixels.
    stride: the largest model stride in pixels (32). task: always ``"segment"``. train_args: the
    training settings (JSON). metrics: last validation metrics (JSON). data: dataset YAML path or
    None. segpipe_version: version that wrote the file. source: where the weights came from.
    """

    names: tuple[str, ...]
    model_yaml: dict[str, Any]
    imgsz: int
    stride: int
    task: str = TASK
    train_args: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    data: str | None = None
    segpipe_version: str = __version__
    source: str = ""

    def __post_init__(self) -> None:
        if self.task != TASK:
            raise ModelError(f"a {self.task!r} model cannot be used here: segpipe needs a segmentation model")

    @property
    def proto_stride(self) -> int:
        """Input pixels per mask-prototype pixel (see :func:`yaml_proto_stride`)."""
        return yaml_proto_stride(self.model_yaml)

    @property
    def one2one(self) -> bool:
        """Has an NMS-free head (see :func:`yaml_one2one`)."""
        return yaml_one2one(self.model_yaml)


    def to_json(self) -> dict[str, Any]:
        """Plain JSON-able dict (names as a list); inverse of :meth:`from_json`."""
        return {
            "names": list(self.names), "model_yaml": jsonable(self.model_yaml), "imgsz": self.imgsz,
            "stride": self.stride, "task": self.task, "train_args": jsonable(self.train_args),
            "metrics": jsonable(self.metrics), "data": self.data, "segpipe_version": self.segpipe_version,
            "source": self.source,
        }

    @classmethod
    def from_json(cls, d: Any, where: str) -> ModelMeta:
        """Validate a metadata record read from ``where``; ``CheckpointError`` names the bad field."""
        if not isinstance(d, dict):
            raise CheckpointError(f"{where}: metadata is not a JSON object")
        if d.get("task", TASK) != TASK:
            raise ModelError(f"{where}: a {d.get('task')!r} model, but segpipe needs a 'segment' model")
        checks: dict[str, tuple[type | tuple[type, ...], bool]] = {
            "names": (list, True), "model_yaml": (dict, True), "imgsz": (int, True), "stride": (int, True),
            "train_args": (dict, False), "metrics": (dict, False), "data": ((str, type(None)), False),
            "segpipe_version": (str, False), "source": (str, False),
        }
        for key, (typ, required) in checks.items():
            if key not in d:
                if required:
                    raise CheckpointError(f"{where}: metadata lacks '{key}'")
                continue
            if not isinstance(d[key], typ) or isinstance(d[key], bool):
                raise CheckpointError(f"{where}: metadata field '{key}' has the wrong type")
        if not all(isinstance(n, str) for n in d["names"]):
            raise CheckpointError(f"{where}: metadata field 'names' must be a list of strings")
        return cls(names=tuple(d["names"]), model_yaml=d["model_yaml"], imgsz=d["imgsz"], stride=d["stride"],
                   train_args=d.get("train_args", {}), metrics=d.get("metrics", {}), data=d.get("data"),
                   segpipe_version=d.get("segpipe_version", "?"), source=d.get("source", ""))


def yaml_one2one(model_yaml: Mapping[str, Any]) -> bool:
    """Whether a resolved model YAML's head has one-to-one branches (end-to-end, YOLO26), which can run
    NMS-free."""
    return bool(model_yaml.get("end2end"))


def yaml_proto_stride(model_yaml: Mapping[str, Any]) -> int:
    """Input pixels per mask-prototype pixel of a resolved model YAML: the Segment row's 4th argument,
    4 (YOLOv8's) when it has none."""
    head = model_yaml.get("head") or []
    row = head[-1] if isinstance(head, list) and head else []
    args = row[3] if isinstance(row, list) and len(row) > 3 and isinstance(row[3], list) else []
    return int(args[3]) if len(args) > 3 else 4


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A loaded checkpoint: float32 ``state_dict`` with Ultralytics-compatible keys, its ``meta``,
    and ``extra_tensors`` (resume state such as optimizer moments; empty for imports)."""

    state_dict: Mapping[str, Tensor]
    meta: ModelMeta
    extra_tensors: Mapping[str, Tensor] = field(default_factory=dict)


def jsonable(x: Any) -> Any:
    """``x`` with paths, tuples, numpy scalars and other odd values turned into JSON types."""
    if isinstance(x, Mapping):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple | set | frozenset):
        return [jsonable(v) for v in x]
    if x is None or isinstance(x, bool | int | str):
        return x
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, PurePath):
        return str(x)
    if isinstance(x, np.generic) or (isinstance(x, Tensor) and x.numel() == 1):
        return jsonable(x.item())
    return str(x)
