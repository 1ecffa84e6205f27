"""The mutable state of a training run, shared by ``run_step`` and the hooks.

Imports torch and sibling leaf modules only. Everything a hook may read or change is a named
field here; there is no trainer object to reach into.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from engines.train.config import TrainConfig
from engines.train.ddp import Placement
from engines.train.ema import ModelEMA, unwrap
from engines.train.loss import E2ESegLoss, SegLoss
from engines.train.optim import Schedule

if TYPE_CHECKING:
    from engines.val.metrics import SegMetrics


@dataclass(slots=True)
class TrainClock:
    """Training time of a run over all its sessions: what earlier sessions spent (restored from
    ``last.pt``) plus this session's time since ``start``. The time between sessions is not training
    time: a run resumed the next day must not find its ``--time`` budget used up. ``now`` is
    injectable so budget planning can be tested without real time passing."""

    before: float = 0.0
    now: Callable[[], float] = time.monotonic
    t0: float | None = None

    def start(self) -> None:
        self.t0 = self.now()

    def session(self) -> float:
        return 0.0 if self.t0 is None else self.now() - self.t0

    def total(self) -> float:
        return self.before + self.session()


@dataclass(slots=True, kw_only=True)
class TrainState:
    """One process's view of a run.

    ``epoch`` is 0-based; ``ni`` is the global batch index (``epoch * batches_per_epoch + i``).
    ``items`` holds the last step's detached losses (``loss_fn.names``) and ``mean_items`` their
    running mean over the epoch. ``metrics``/``fitness`` are set by validation (None when an epoch
    is not validated). ``stop`` asks the loop to end after the current epoch. ``clock`` counts the
    training time checkpoints carry across a resume.
    """

    cfg: TrainConfig
    place: Placement
    out: Path
    names: tuple[str, ...]
    data_file: str
    model: nn.Module  # DistributedDataParallel-wrapped when distributed
    ema: ModelEMA | None
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    loss_fn: SegLoss | E2ESegLoss
    schedule: Schedule
    batches_per_epoch: int
    dataset: Any = None  # the training dataset (close_mosaic is called on it)
    start_epoch: int = 0
    epoch: int = 0
    ni: int = 0
    last_opt_step: int = -1
    accumulate: int = 1
    items: Tensor | None = None
    mean_items: Tensor | None = None
    images_seen: int = 0
    metrics: SegMetrics | None = None
    fitness: float | None = None
    best_fitness: float | None = None
    best_epoch: int = -1
    stop: bool = False
    clock: TrainClock = field(default_factory=TrainClock)
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return self.place.device

    @property
    def bare_model(self) -> nn.Module:
        """The model without its DDP wrapper."""
        return unwrap(self.model)

    @property
    def eval_model(self) -> nn.Module:
        """What validation and checkpoints use: the EMA when there is one."""
        return self.ema.ema if self.ema is not None else self.bare_model

    @property
    def final_epoch(self) -> bool:
        return self.epoch + 1 >= self.cfg.epochs

    def lrs(self) -> tuple[float, ...]:
        """Current learning rate of each optimizer group (bias, weight, norm)."""
        return tuple(float(g["lr"]) for g in self.optimizer.param_groups)
