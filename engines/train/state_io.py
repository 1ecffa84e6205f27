"""Resumable training state as flat named tensors (the ``extra_tensors`` of a segpipe checkpoint).

Imports only torch. Layout (all keys under ``train/``):

- ``train/model/<name>``: the raw (non-EMA) weights being optimised;
- ``train/optim/<param index>/<key>``: optimizer state per parameter (momentum buffers, Adam
  moments and step), parameters numbered in optimizer group order;
- ``train/epoch`` (epochs completed), ``train/best_fitness``, ``train/best_epoch``,
  ``train/ema_updates``, ``train/scaler_scale``, ``train/seconds`` (training time of all sessions up to
  this save, which a ``--time`` budget counts on resume): 0-d tensors.

Learning rates are not stored: the schedule recomputes them from the epoch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

PREFIX = "train/"


@dataclass(frozen=True, slots=True)
class ResumeState:
    """Scalars read back from a checkpoint: next epoch to run, best fitness so far (None: none yet)
    and its 0-based epoch (-1: none), EMA update count, AMP loss scale and seconds trained so far."""

    start_epoch: int
    best_fitness: float | None
    best_epoch: int
    ema_updates: int
    scaler_scale: float
    train_seconds: float = 0.0


def pack_state(
    *, model: nn.Module, optimizer: torch.optim.Optimizer, epoch: int, best_fitness: float | None,
    best_epoch: int = -1, ema_updates: int, scaler_scale: float, train_seconds: float = 0.0,
) -> dict[str, Tensor]:
    """Everything needed to continue after ``epoch`` (0-based, completed), as CPU tensors."""
    out: dict[str, Tensor] = {
        f"{PREFIX}model/{k}": v.detach().cpu().clone() for k, v in model.state_dict().items()
    }
    for idx, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            t = value if isinstance(value, Tensor) else torch.tensor(value)
            out[f"{PREFIX}optim/{idx}/{key}"] = t.detach().cpu().clone()
    out[f"{PREFIX}epoch"] = torch.tensor(epoch + 1, dtype=torch.int64)
    out[f"{PREFIX}best_fitness"] = torch.tensor(float("nan") if best_fitness is None else best_fitness,
                                                dtype=torch.float64)
    out[f"{PREFIX}best_epoch"] = torch.tensor(best_epoch, dtype=torch.int64)
    out[f"{PREFIX}ema_updates"] = torch.tensor(ema_updates, dtype=torch.int64)
    out[f"{PREFIX}scaler_scale"] = torch.tensor(scaler_scale, dtype=torch.float64)
    out[f"{PREFIX}seconds"] = torch.tensor(train_seconds, dtype=torch.float64)
    return out


def has_state(extra: Mapping[str, Tensor] | None) -> bool:
    """Whether a checkpoint's extra tensors hold a resumable state."""
    return extra is not None and f"{PREFIX}epoch" in extra


def restore_state(extra: dict[str, Tensor], *, model: nn.Module, optimizer: torch.optim.Optimizer) -> ResumeState:
    """Load raw weights and optimizer state in place (optimizer built exactly as when saved)."""
    weights = {k[len(PREFIX) + 6:]: v for k, v in extra.items() if k.startswith(f"{PREFIX}model/")}
    model.load_state_dict(weights, strict=True)
    sd = optimizer.state_dict()
    state: dict[int, dict[str, Tensor]] = {}
    for k, v in extra.items():
        if k.startswith(f"{PREFIX}optim/"):
            idx, key = k[len(PREFIX) + 6:].split("/", 1)
            state.setdefault(int(idx), {})[key] = v
    optimizer.load_state_dict({"state": state, "param_groups": sd["param_groups"]})
    best = float(extra[f"{PREFIX}best_fitness"])
    return ResumeState(
        start_epoch=int(extra[f"{PREFIX}epoch"]),
        best_fitness=None if best != best else best,
        best_epoch=int(extra.get(f"{PREFIX}best_epoch", torch.tensor(-1))),
        ema_updates=int(extra[f"{PREFIX}ema_updates"]),
        scaler_scale=float(extra[f"{PREFIX}scaler_scale"]),
        # A last.pt from before the time was recorded: its time is unknown, so its budget starts afresh
        # (what resuming it did then) rather than guessing.
        train_seconds=float(extra.get(f"{PREFIX}seconds", torch.tensor(0.0))),
    )
