"""Exponential moving average of model weights (Polyak averaging with a warm-up ramp).

Imports only torch. The EMA copy is what validation, ``best.pt`` and ``last.pt`` hold: it
generalises better than the raw weights and smooths out the last noisy steps.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside a DistributedDataParallel/DataParallel wrapper (or the model itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel) else model


class ModelEMA:
    """EMA over every floating-point tensor of the state dict (parameters and BN statistics).

    The decay ramps as ``decay * (1 - exp(-updates / tau))`` so the first updates follow the raw
    model closely instead of dragging in the random initialisation.
    """

    def __init__(self, model: nn.Module, *, decay: float = 0.9999, tau: float = 2000.0, updates: int = 0) -> None:
        self.ema = copy.deepcopy(unwrap(model)).eval()
        for p in self.ema.parameters():
            p.requires_grad_(False)
        self.max_decay, self.tau, self.updates = decay, tau, updates
        self._pairs: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None

    def decay(self, updates: int) -> float:
        """Effective decay after ``updates`` optimizer steps."""
        return self.max_decay * (1 - math.exp(-updates / self.tau))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Blend the current model weights in: ``ema = d * ema + (1 - d) * model``."""
        self.updates += 1
        d = self.decay(self.updates)
        if self._pairs is None:  # state_dict tensors alias the live ones, so the pairing is built once
            msd = unwrap(model).state_dict()
            pairs = [(v, msd[k]) for k, v in self.ema.state_dict().items() if v.dtype.is_floating_point]
            self._pairs = [p[0] for p in pairs], [p[1] for p in pairs]
        ema_v, model_v = self._pairs
        torch._foreach_lerp_(ema_v, model_v, 1 - d)  # ema += (1 - d) * (model - ema), one kernel per op
