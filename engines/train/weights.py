"""Which network a run trains: built from a model YAML, continued from a checkpoint, or seeded with
pretrained weights by name-and-shape matching.

Imports ``engines.nn`` and ``engines.checkpoint``; nothing from ``pipeline``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from engines.checkpoint import load_checkpoint
from engines.errors import ConfigError, ModelError
from engines.nn.model import SegmentationModel

LOG = logging.getLogger("segpipe.train")

_YAML_SUFFIXES = (".yaml", ".yml")


def transfer_weights(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> tuple[int, int]:
    """Copy every tensor whose name and shape match the model's; leave the rest as initialised.

    Returns ``(transferred, total)`` counted over the model's state dict (e.g. 349/355 when only the
    class-score convolutions of the head differ).
    """
    own = model.state_dict()
    matched = {k: v for k, v in state_dict.items() if k in own and tuple(own[k].shape) == tuple(v.shape)}
    with torch.no_grad():
        for k, v in matched.items():
            own[k].copy_(v.to(own[k].dtype))
    return len(matched), len(own)


def build_train_model(model: str, *, names: tuple[str, ...], pretrained: str | None = None,
                      verbose: bool = True) -> SegmentationModel:
    """The network to train on a dataset with classes ``names``.

    ``model`` is a model YAML (fresh weights) or a checkpoint (its architecture and weights; the class
    count must match the data). ``pretrained`` seeds matching tensors from any checkpoint, which is
    how a model trained on other classes is fine-tuned. Raises ModelError for a class-count clash.
    """
    nc = len(names)
    if Path(model).suffix.lower() in _YAML_SUFFIXES:
        net = SegmentationModel(model, nc=nc)
    else:
        ckpt = load_checkpoint(model)
        have = len(ckpt.meta.names)
        if have != nc:
            yaml_name = _yaml_name(ckpt.meta.model_yaml)
            # a --single-cls model (Ultralytics carries single_cls on into fine-tuning): the fix is the flag
            hint = ("it was trained with --single-cls: add --single-cls to train it on as one class, or "
                    if ckpt.meta.train_args.get("single_cls") and have == 1 else "")
            raise ModelError(
                f"{model} predicts {have} classes but the data has {nc}; {hint}to fine-tune it on these classes "
                f"use --model {yaml_name} --pretrained {model}"
            )
        if verbose and tuple(ckpt.meta.names) != tuple(names):
            LOG.warning("%s: class names differ from the data's; training with the data's names", model)
        net = SegmentationModel(ckpt.meta.model_yaml, nc=nc)
        net.load_state_dict(dict(ckpt.state_dict), strict=True)
    if pretrained:
        n, total = transfer_weights(net, load_checkpoint(pretrained).state_dict)
        if n == 0:
            raise ModelError(f"{pretrained}: no tensor matches the model by name and shape; wrong architecture?")
        if verbose:
            print(f"Transferred {n}/{total} tensors from {pretrained}")
    return net.train()


def freeze_layers(model: SegmentationModel, freeze: int | list[int] | None) -> list[str]:
    """Stop training some layers (Ultralytics' ``freeze``): ``N`` freezes layers ``0..N-1`` of
    ``model.model``, a list freezes those layer indices; returns the names of the frozen parameters.

    Frozen parameters get ``requires_grad=False`` (before the optimizer is built, which leaves them
    out, so they stay bit-identical). As in Ultralytics, the DFL integral stays frozen whatever is
    given, and BatchNorm layers stay in train mode: running statistics of frozen layers still follow the
    data. Raises ``ConfigError("train.freeze")`` for layers the model does not have, or when nothing
    would be left to train.
    """
    n = len(model.model)
    if freeze is None or freeze == 0:
        return []
    if isinstance(freeze, int):
        if freeze > n:
            raise ConfigError("train.freeze", f"the model has {n} layers (0..{n - 1}), got {freeze}")
        layers = list(range(freeze))
    else:
        if bad := [i for i in freeze if i >= n]:
            raise ConfigError("train.freeze", f"the model has {n} layers (0..{n - 1}), got layer {bad[0]}")
        layers = sorted(freeze)
    prefixes = tuple(f"model.{i}." for i in layers)
    frozen = []
    for name, p in model.named_parameters():
        if name.startswith(prefixes):
            p.requires_grad_(False)
            frozen.append(name)
    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError("train.freeze", f"{freeze!r} freezes every layer of the model; nothing would train")
    return frozen


def _yaml_name(model_yaml: Mapping[str, object]) -> str:
    """The YAML name to suggest for a checkpoint's architecture (``yolov8n-seg.yaml``, ``yolo11s-seg.yaml``):
    a family's YAML named with the checkpoint's scale, as Ultralytics names them."""
    name = str(model_yaml.get("yaml_file") or "yolov8-seg.yaml")
    scale = model_yaml.get("scale")
    family = re.match(r"^(yolov8|yolo11)(-.*)$", Path(name).stem)
    if scale and family:
        return f"{family.group(1)}{scale}{family.group(2)}.yaml"
    return name
