"""Multi-process data-parallel training: launch one process per device and wire them together.

Imports only torch and ``engines.device``. Processes are started with ``torch.multiprocessing``
``spawn`` (fresh interpreters: CUDA cannot be forked) and rendezvous over TCP on loopback, so
nothing is written to the environment. Rank 0 validates and saves; the others only train.
"""

from __future__ import annotations

import datetime
import os
import pickle
import socket
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from engines.device import parse_device
from engines.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Placement:
    """Where one process runs: its ``rank`` of ``world_size`` (rank -1: not distributed) and device."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        """The process that validates, saves and prints."""
        return self.rank in (-1, 0)


def parse_devices(spec: str | None, world_size: int | None = None) -> list[torch.device]:
    """Devices of a run: ``"0,1"`` -> two GPUs; ``"cpu"`` with ``world_size`` n -> n CPU processes.

    Raises ConfigError when ``world_size`` contradicts a GPU list.
    """
    parts: list[str | None] = [p.strip() for p in (spec or "").split(",") if p.strip()] or [None]
    devices = [parse_device(p) for p in parts]
    if len({str(d) for d in devices}) != len(devices):
        raise ConfigError("train.device", f"a device is listed twice in {spec!r}")
    if world_size is None or world_size == len(devices):
        return devices
    if len(devices) == 1 and devices[0].type == "cpu":
        return devices * world_size
    raise ConfigError("train.world_size", f"{world_size} processes do not match the {len(devices)} devices of {spec!r}")


def free_port() -> int:
    """A free TCP port on loopback for the rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(fn: Callable[[Placement, Any], Any], arg: Any, devices: list[torch.device]) -> Any:
    """Run ``fn(placement, arg)`` in one spawned process per device; return rank 0's result.

    ``fn`` must be a module-level function (it is pickled by name). A failure in any process raises
    here (``torch.multiprocessing.ProcessRaisedException`` carries the child's traceback).
    """
    # The result travels through a file, not a pipe: a large result would block the child on a full
    # pipe while the parent blocks in join().
    with tempfile.TemporaryDirectory(prefix="segpipe-ddp-") as tmp:
        result = Path(tmp) / "rank0.pkl"
        mp.start_processes(_entry, args=(fn, arg, devices, free_port(), str(result)), nprocs=len(devices),
                           join=True, start_method="spawn")
        return pickle.loads(result.read_bytes()) if result.is_file() else None


def _entry(rank: int, fn: Callable[[Placement, Any], Any], arg: Any, devices: list[torch.device],
           port: int, result: str) -> None:
    device = devices[rank]
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    else:  # CPU processes share the cores instead of each claiming all of them
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // len(devices)))
    # Long timeout: the other ranks wait at the epoch-end broadcast while rank 0 validates and saves.
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=len(devices),
                            timeout=datetime.timedelta(hours=3))
    try:
        out = fn(Placement(rank, len(devices), device), arg)
        if rank == 0:
            Path(result).write_bytes(pickle.dumps(out))
    finally:
        dist.destroy_process_group()


def broadcast_flag(flag: bool, place: Placement) -> bool:
    """Rank 0's value of ``flag`` on every rank (early stopping must stop all ranks together)."""
    return bool(broadcast_int(int(flag), place))


def broadcast_int(value: int, place: Placement) -> int:
    """Rank 0's ``value`` on every rank (decisions taken from one rank's clock or metrics)."""
    if not place.distributed:
        return value
    t = torch.tensor([value], dtype=torch.int64, device=place.device if place.device.type == "cuda" else "cpu")
    dist.broadcast(t, 0)
    return int(t.item())
