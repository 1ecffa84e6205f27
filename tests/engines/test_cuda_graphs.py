"""CUDA graphs of the torch backend: one graph per batch size, sharing one memory pool, captured while
other threads keep using the GPU (the streaming stage's upload and post-processing threads)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.gpu

MODEL = Path(__file__).resolve().parents[1] / "fixtures" / "ultralytics" / "yolov8n-seg-coco8.pt"


def _load(**options: bool):  # noqa: ANN202
    from engines.backends import BackendOptions, load_backend

    return load_backend(MODEL, device="cuda", options=BackendOptions(**options))


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    scale = b.abs().max().item()
    assert (a - b).abs().max().item() <= 2e-3 * max(scale, 1.0), ((a - b).abs().max().item(), scale)


def test_a_graph_per_batch_size_matches_eager_in_any_replay_order() -> None:
    eager, graphs = _load(half=True), _load(half=True, cuda_graph=True)
    gen = torch.Generator(device="cuda").manual_seed(0)
    for n in (1, 2, 3, 4):  # captured in this order, into one pool
        graphs(torch.rand((n, 3, 320, 320), device="cuda", generator=gen))
    assert len(graphs._graphs) == 4
    kept = []
    for n in (4, 1, 3, 2, 4, 1):  # replayed in another order, each time with new pixels
        x = torch.rand((n, 3, 320, 320), device="cuda", generator=gen)
        (pg, qg), (pe, qe) = graphs(x), eager(x)
        assert pg.shape == pe.shape and qg.shape == qe.shape and pg.is_cuda and pg.dtype == torch.float32
        _close(pg, pe)
        _close(qg, qe)
        kept.append((pg, pe))
    for pg, pe in kept:  # outputs are copies: later replays (sharing the pool) did not overwrite them
        _close(pg, pe)


def test_capture_while_another_thread_uses_the_gpu() -> None:
    graphs, eager = _load(cuda_graph=True), _load()
    stop, errors = threading.Event(), []

    def busy() -> None:  # what the stage's other threads do: allocate, copy, compute, sync, on their stream
        # (no random numbers: the CUDA generator is shared with the capture, and nothing in the
        # stage draws any)
        try:
            stream = torch.cuda.Stream()
            with torch.cuda.stream(stream):
                while not stop.is_set():
                    a = torch.linspace(0, 1, 256 * 256, device="cuda").view(256, 256)
                    (a @ a).sum().item()
                    torch.empty(1 << 20, dtype=torch.uint8).pin_memory().to("cuda", non_blocking=True)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    t = threading.Thread(target=busy)
    t.start()
    try:
        for n in (1, 2, 3):
            x = torch.rand((n, 3, 256, 256), device="cuda")
            _close(graphs(x)[0], eager(x)[0])
    finally:
        stop.set()
        t.join()
    assert not errors, errors
