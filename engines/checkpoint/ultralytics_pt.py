"""Import an Ultralytics ``*.pt`` checkpoint (a zip pickle of ``{'model': nn.Module, ...}``).

Imports nothing from ``pipeline`` and never imports ``ultralytics``: the pickle is read by
:mod:`engines.checkpoint.unpickler`, whose inert records are walked here the way
``nn.Module.state_dict()`` would walk the real modules (``_parameters``, persistent
``_buffers``, ``_modules``), giving the same keys (``model.22.cv4.0.0.conv.weight``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor

from engines.checkpoint.meta import Checkpoint, ModelMeta, jsonable
from engines.checkpoint.unpickler import Record, read_torch_zip
from engines.errors import CheckpointError, ModelError

# Ultralytics' model class per task; anything but segment is refused by name.
_TASK_OF_CLASS = {
    "SegmentationModel": "segment", "DetectionModel": "detect", "PoseModel": "pose",
    "ClassificationModel": "classify", "OBBModel": "obb", "WorldModel": "detect", "RTDETRDetectionModel": "detect",
    "YOLOESegModel": "segment (YOLOE)", "YOLOEModel": "detect (YOLOE)",
}


def load_ultralytics_pt(path: Path) -> Checkpoint:
    """Read ``path`` (Ultralytics .pt) into a float32 state dict plus :class:`ModelMeta`."""
    obj = read_torch_zip(path)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: not an Ultralytics checkpoint (top level is {type(obj).__name__})")
    model = obj.get("ema") or obj.get("model")
    if not isinstance(model, Record):
        raise CheckpointError(f"{path}: not an Ultralytics checkpoint (no 'model' module inside)")
    attrs = model.attrs()
    cls = model.__class_name__
    task = attrs.get("task") or _TASK_OF_CLASS.get(cls, cls)
    if cls != "SegmentationModel" or task != "segment":
        raise ModelError(f"{path}: a {task} model ({cls}); segpipe needs a YOLOv8 or YOLO11 segmentation checkpoint")
    state_dict = module_state_dict(model)
    meta = _meta(path, obj, attrs)
    return Checkpoint(state_dict=state_dict, meta=meta, extra_tensors={})


def module_state_dict(root: Record) -> dict[str, Tensor]:
    """``state_dict()`` of a pickled module tree: parameters and persistent buffers by dotted name,
    floating tensors as contiguous float32 (Ultralytics saves fp16)."""
    out: dict[str, Tensor] = {}
    stack: list[tuple[str, Record]] = [("", root)]
    while stack:
        prefix, rec = stack.pop()
        attrs = rec.attrs()
        skip = attrs.get("_non_persistent_buffers_set") or set()
        for kind in ("_parameters", "_buffers"):
            for name, t in (attrs.get(kind) or {}).items():
                if t is None or (kind == "_buffers" and name in skip):
                    continue
                if not isinstance(t, Tensor):
                    raise CheckpointError(f"{prefix}{name} is a {type(t).__name__}, not a tensor")
                out[prefix + name] = (t.float() if t.is_floating_point() else t).contiguous().clone()
        children = attrs.get("_modules") or {}
        for name, child in reversed(list(children.items())):
            if child is None:
                continue
            if not isinstance(child, Record):
                raise CheckpointError(f"submodule {prefix}{name} is a {type(child).__name__}")
            stack.append((f"{prefix}{name}.", child))
    # Same order as nn.Module.state_dict(): each module's own tensors, then children depth-first.
    return out


def _meta(path: Path, obj: Mapping[str, Any], attrs: Mapping[str, Any]) -> ModelMeta:
    model_yaml = attrs.get("yaml")
    if not isinstance(model_yaml, dict):
        raise CheckpointError(f"{path}: the model has no 'yaml' architecture record")
    names = _names(attrs.get("names"), model_yaml.get("nc"), path)
    train_args = obj.get("train_args") or attrs.get("args") or {}
    if isinstance(train_args, Record):
        train_args = train_args.attrs()
    train_args = jsonable(train_args) if isinstance(train_args, Mapping) else {}
    imgsz = train_args.get("imgsz", 640)
    imgsz = int(max(imgsz)) if isinstance(imgsz, list) else int(imgsz)
    stride = attrs.get("stride")
    stride = int(stride.max()) if isinstance(stride, Tensor) else 32
    metrics = obj.get("train_metrics") or {}
    data = train_args.get("data")
    return ModelMeta(
        names=names, model_yaml=jsonable(model_yaml), imgsz=imgsz, stride=stride,
        train_args=train_args, metrics=jsonable(metrics) if isinstance(metrics, Mapping) else {},
        data=data if isinstance(data, str) else None,
        source=f"ultralytics {obj.get('version', '?')} checkpoint {path.name}",
    )


def _names(names: Any, nc: Any, path: Path) -> tuple[str, ...]:
    if isinstance(names, Mapping):
        try:
            ordered = [names[i] for i in range(len(names))]
        except KeyError:
            raise CheckpointError(f"{path}: class names are not numbered 0..{len(names) - 1}") from None
    elif isinstance(names, list | tuple):
        ordered = list(names)
    elif isinstance(nc, int):
        ordered = [f"class{i}" for i in range(nc)]
    else:
        raise CheckpointError(f"{path}: the model has neither class names nor nc")
    return tuple(str(n) for n in ordered)

