"""MuSGD: Muon's orthogonalised momentum added to SGD's, the optimizer Ultralytics trains YOLO26 with (and
its ``optimizer=auto`` picks for runs over 10k steps).

Imports only torch. Muon replaces each weight matrix's momentum by the nearest semi-orthogonal matrix
(every singular value about 1, so no direction of the update dominates), found by a few Newton-Schulz
iterations in bfloat16. A conv filter bank ``(out, in, kh, kw)`` is the matrix ``(out, in*kh*kw)``.
Numerics follow Ultralytics 8.4's ``ultralytics.optim.muon`` (``tests/engines/test_musgd.py`` checks steps
against it). Ultralytics zero-pads matrices of unlike shapes into one batched call; this batches
only same-shaped ones, which is the same arithmetic.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

# Quintic Newton-Schulz coefficients: steep at zero, so small singular values grow fast; the result's
# singular values land in roughly [0.5, 1.5], which training tolerates (Keller Jordan's Muon).
_NS = (3.4445, -4.7750, 2.0315)


def orthogonalize(x: Tensor, steps: int = 5, eps: float = 1e-7) -> Tensor:
    """``(..., r, c)`` -> bfloat16 of the same shape: each matrix's ``U V^T`` (of ``U S V^T``), approximately."""
    y = x.reshape(-1, x.shape[-2], x.shape[-1]).bfloat16()
    y = y / (y.norm(dim=(-2, -1), keepdim=True) + eps)  # largest singular value <= 1, where NS converges
    tall = x.shape[-2] > x.shape[-1]
    if tall:  # iterate on the smaller Gram matrix
        y = y.mT
    a, b, c = _NS
    for _ in range(steps):
        gram = y @ y.mT
        y = torch.baddbmm(y, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), y, beta=a)
    return (y.mT if tall else y).reshape(x.shape)


def muon_updates(grads: list[Tensor], buffers: list[Tensor], *, beta: float, nesterov: bool) -> list[Tensor]:
    """Muon's update for each tensor (2-D or 4-D), in its shape and dtype; ``buffers`` (momentum, same
    shapes) are updated in place: ``m = beta * m + (1 - beta) * g``, the update orthogonalises ``m`` (or
    with Nesterov ``beta * m + (1 - beta) * g``)."""
    torch._foreach_mul_(buffers, beta)
    torch._foreach_add_(buffers, grads, alpha=1 - beta)
    if nesterov:
        moments = list(torch._foreach_mul(buffers, beta))
        torch._foreach_add_(moments, grads, alpha=1 - beta)
    else:
        moments = list(buffers)
    same: dict[tuple[Any, ...], list[int]] = {}
    for i, m in enumerate(moments):
        same.setdefault((tuple(m.shape), m.device, m.dtype), []).append(i)
    out: list[Tensor] = list(moments)
    for (shape, _, dtype), idx in same.items():
        stack = torch.stack([moments[i].reshape(shape[0], -1) for i in idx])
        # Ultralytics scales by the tensor's last two sizes: rows/cols for a matrix, kh/kw (so 1) for a conv.
        scale = max(1.0, shape[-2] / shape[-1]) ** 0.5
        ortho = orthogonalize(stack).to(dtype).mul_(scale)
        for j, i in enumerate(idx):
            out[i] = ortho[j].reshape(shape)
    return out


class MuSGD(torch.optim.Optimizer):
    """SGD (momentum, Nesterov, L2 weight decay) on every group; groups with ``use_muon`` also take a
    Muon step of ``lr * muon`` first and run their SGD step at ``lr * sgd`` with a momentum of its own.

    Weight decay enters only the SGD part. ``muon`` 0.2 and ``sgd`` 1.0 are Ultralytics' trainer's.
    State per tensor: ``momentum_buffer`` (Muon's in Muon groups) and, in Muon groups, ``momentum_buffer_SGD``.
    """

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, momentum: float = 0.0, weight_decay: float = 0.0,
                 nesterov: bool = False, use_muon: bool = False, muon: float = 0.2, sgd: float = 1.0) -> None:
        defaults = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "nesterov": nesterov,
                    "use_muon": use_muon}
        super().__init__(params, defaults)
        self.muon, self.sgd = muon, sgd

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                self._step_group(group, params)
        return loss

    def _step_group(self, group: dict[str, Any], params: list[Tensor]) -> None:
        lr, beta, nesterov, muon = group["lr"], group["momentum"], group["nesterov"], group["use_muon"]
        for p in params:
            state = self.state[p]
            if not state:
                state["momentum_buffer"] = torch.zeros_like(p)
                if muon:
                    state["momentum_buffer_SGD"] = torch.zeros_like(p)
        grads = [p.grad for p in params if p.grad is not None]
        if muon:
            updates = muon_updates(grads, [self.state[p]["momentum_buffer"] for p in params], beta=beta,
                                   nesterov=nesterov)
            torch._foreach_add_(params, updates, alpha=-lr * self.muon)
            buffers = [self.state[p]["momentum_buffer_SGD"] for p in params]
            lr *= self.sgd
        else:
            buffers = [self.state[p]["momentum_buffer"] for p in params]
        if group["weight_decay"] != 0:  # decays the weights as the Muon step left them
            grads = list(torch._foreach_add(grads, params, alpha=group["weight_decay"]))
        torch._foreach_mul_(buffers, beta)
        torch._foreach_add_(buffers, grads)
        steps = torch._foreach_add(grads, buffers, alpha=beta) if nesterov else buffers
        torch._foreach_add_(params, steps, alpha=-lr)
