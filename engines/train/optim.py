"""Optimizer, parameter groups, LR schedule and warm-up, following YOLOv8's recipe.

Imports only torch, numpy and MuSGD (``engines.train.muon``). The schedule is a pure function of
(epoch, iteration), so resuming needs only the epoch number, not a pickled scheduler.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from engines.errors import ConfigError
from engines.train.muon import MuSGD

OPTIMIZERS = ("auto", "SGD", "MuSGD", "AdamW", "Adam")
# MuSGD trains these at 3x lr (Ultralytics): the class branches and YOLO26's semantic head.
_BOOSTED_HEADS = ("cv3", "one2one_cv3")


@dataclass(frozen=True, slots=True, kw_only=True)
class OptimizerChoice:
    """The optimizer actually used: ``auto`` resolved to a name, lr and momentum."""

    name: str
    lr0: float
    momentum: float
    warmup_bias_lr: float


def choose_optimizer(
    name: str, *, lr0: float, momentum: float, warmup_bias_lr: float, nc: int, iterations: int
) -> OptimizerChoice:
    """Resolve ``auto`` as Ultralytics 8.4: MuSGD (lr 0.01) for runs over 10k optimizer steps, else AdamW
    with an lr fitted to the class count, ``0.002 * 5 / (4 + nc)``; bias warm-up then starts at 0, as
    AdamW diverges from a 0.1 bias lr. Explicit names keep the user's lr0 and momentum."""
    canonical = {o.lower(): o for o in OPTIMIZERS}.get(name.lower())
    if canonical is None:
        raise ConfigError("optimizer", f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
    if canonical != "auto":
        return OptimizerChoice(name=canonical, lr0=lr0, momentum=momentum, warmup_bias_lr=warmup_bias_lr)
    if iterations > 10_000:
        return OptimizerChoice(name="MuSGD", lr0=0.01, momentum=0.9, warmup_bias_lr=0.0)
    return OptimizerChoice(name="AdamW", lr0=round(0.002 * 5 / (4 + nc), 6), momentum=0.9, warmup_bias_lr=0.0)


def split_parameters(model: nn.Module, *, matrices: bool = False) -> dict[str, list[nn.Parameter]]:
    """Trainable parameters in three groups: ``weight`` (decayed), ``norm`` (norm-layer weights) and
    ``bias``; decaying norms and biases only shrinks useful scales and offsets. ``matrices`` (MuSGD) adds
    a fourth, ``muon``: every 2-D or 4-D tensor, whatever its layer."""
    norms = tuple(v for k, v in vars(nn).items() if "Norm" in k and isinstance(v, type))
    groups: dict[str, list[nn.Parameter]] = {"weight": [], "norm": [], "bias": []}
    if matrices:
        groups["muon"] = []
    for module in model.modules():
        for pname, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            if matrices and p.ndim in (2, 4):
                groups["muon"].append(p)
            elif pname == "bias":
                groups["bias"].append(p)
            elif isinstance(module, norms):
                groups["norm"].append(p)
            else:
                groups["weight"].append(p)
    return groups


def build_optimizer(model: nn.Module, choice: OptimizerChoice, *, weight_decay: float) -> torch.optim.Optimizer:
    """Optimizer with groups ``[bias, weight, norm]`` (MuSGD: :func:`_musgd`); each group dict has a
    ``"group"`` name key and an ``initial_lr`` (= lr0) the schedule scales."""
    if choice.name == "MuSGD":
        return _musgd(model, choice, weight_decay=weight_decay)
    groups = split_parameters(model)
    decay = {"bias": 0.0, "weight": weight_decay, "norm": 0.0}
    params = [{"params": groups[g], "weight_decay": decay[g], "group": g, "initial_lr": choice.lr0}
              for g in ("bias", "weight", "norm")]
    if choice.name == "SGD":
        return torch.optim.SGD(params, lr=choice.lr0, momentum=choice.momentum, nesterov=True)
    cls = torch.optim.AdamW if choice.name == "AdamW" else torch.optim.Adam
    return cls(params, lr=choice.lr0, betas=(choice.momentum, 0.999))


def _musgd(model: nn.Module, choice: OptimizerChoice, *, weight_decay: float) -> MuSGD:
    """MuSGD grouped as Ultralytics': ``weight``, ``norm``, ``bias`` and ``muon`` (decayed, Muon and SGD),
    each split in two, first the head's class branches and the semantic head at 3x lr, then the rest."""
    groups = split_parameters(model, matrices=True)
    decay = {"weight": weight_decay, "norm": 0.0, "bias": 0.0, "muon": weight_decay}
    boosted = _boosted(model)
    params = []
    for name in ("weight", "norm", "bias", "muon"):
        for boost in (True, False):
            lr = choice.lr0 * (3 if boost else 1)
            params.append({"params": [p for p in groups[name] if (id(p) in boosted) == boost], "lr": lr,
                           "initial_lr": lr, "weight_decay": decay[name], "group": name,
                           "use_muon": name == "muon"})
    return MuSGD(params, lr=choice.lr0, momentum=choice.momentum, nesterov=True)


def _boosted(model: nn.Module) -> set[int]:
    """ids of the parameters MuSGD trains at 3x lr: the last layer's class branches (``cv3``, and YOLO26's
    ``one2one_cv3``) and the prototypes' semantic head (``proto.semseg``)."""
    layers = getattr(model, "model", None)
    head = layers[-1] if isinstance(layers, (nn.ModuleList, nn.Sequential)) and len(layers) else None
    ids = {id(p) for name in _BOOSTED_HEADS if isinstance(m := getattr(head, name, None), nn.Module)
           for p in m.parameters()}
    return ids | {id(p) for n, p in model.named_parameters() if "proto.semseg." in n}


def accumulation(batch: int, nbs: int = 64) -> tuple[int, float]:
    """(batches per optimizer step, weight-decay scale) for a total batch of ``batch`` images and a
    nominal batch of ``nbs``: weight decay is scaled so it acts per nominal batch."""
    accumulate = max(round(nbs / batch), 1)
    return accumulate, batch * accumulate / nbs


def lr_factor(epochs: int, lrf: float, *, cosine: bool) -> Callable[[float], float]:
    """Multiplier of lr0 at an epoch: linear or cosine from 1 down to ``lrf`` at ``epochs``."""
    if cosine:
        return lambda e: ((1 - math.cos(e * math.pi / epochs)) / 2) * (lrf - 1) + 1
    return lambda e: max(1 - e / epochs, 0) * (1.0 - lrf) + lrf


@dataclass(frozen=True, slots=True, kw_only=True)
class Schedule:
    """LR/momentum/accumulation as a function of (epoch, global iteration).

    Warm-up (first ``warmup_iters`` iterations): biases fall from ``warmup_bias_lr`` and other
    groups rise from 0 to the scheduled lr; momentum rises from ``warmup_momentum``; accumulation
    ramps from 1 to its nominal value.
    """

    factor: Callable[[float], float]
    momentum: float
    warmup_iters: int
    warmup_bias_lr: float = 0.1
    warmup_momentum: float = 0.8
    accumulate: int = 1

    def apply(self, optimizer: torch.optim.Optimizer, *, epoch: int, ni: int) -> int:
        """Set each group's lr (and momentum during warm-up); return the accumulation to use now."""
        target = self.factor(epoch)
        warm = self.warmup_iters > 0 and ni <= self.warmup_iters
        xi = [0, self.warmup_iters]
        for g in optimizer.param_groups:
            lr = g["initial_lr"] * target
            if warm:
                start = self.warmup_bias_lr if g.get("group") == "bias" else 0.0
                lr = float(np.interp(ni, xi, [start, lr]))
                m = float(np.interp(ni, xi, [self.warmup_momentum, self.momentum]))
                if "momentum" in g:
                    g["momentum"] = m
                elif "betas" in g:
                    g["betas"] = (m, g["betas"][1])
            g["lr"] = lr
        if warm:
            return max(1, int(np.interp(ni, xi, [1, self.accumulate]).round()))
        return self.accumulate


def warmup_iterations(warmup_epochs: float, *, epochs: int, batches_per_epoch: int) -> int:
    """Warm-up length in iterations; it never covers the last epoch, so short runs still train at
    their scheduled lr for at least one epoch."""
    we = min(warmup_epochs, max(epochs - 1, 0))
    return round(we * batches_per_epoch) if we > 0 else 0
