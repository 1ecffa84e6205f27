"""The multi-process (DDP) path on CPU: two spawned processes, gloo, one tiny epoch."""

from __future__ import annotations

import pytest

from engines.errors import ConfigError
from engines.train.ddp import parse_devices
from tests.engines.shapes_data import make_shapes_dataset


@pytest.mark.parametrize("model", ["yolov8n-seg.yaml", "yolo26n-seg.yaml"])
def test_two_cpu_processes_train_and_rank0_saves(tmp_path, model):
    """YOLO26 too: its one-to-one branches, fed detached inputs, still give every parameter a gradient
    on every rank, as DDP requires."""
    from engines.checkpoint import load_checkpoint
    from engines.train import train
    from engines.train.plots import read_results
    from engines.val.metrics import SegMetrics

    data = make_shapes_dataset(tmp_path / "data", n=4, size=128)
    out = tmp_path / "run"
    metrics = train(data=data, out=out, model=model, epochs=1, imgsz=64, batch=4, nbs=4, workers=0, device="cpu",
                    world_size=2, plots=False, hyp={"mosaic": 0.0})
    assert isinstance(metrics, SegMetrics) and metrics.images == 4  # rank 0 validated the whole val split
    last = load_checkpoint(out / "weights" / "last.pt")
    assert last.meta.train_args["world_size"] == 2
    assert int(last.extra_tensors["train/epoch"]) == 1
    raw = [k for k in last.extra_tensors if k.startswith("train/model/")]
    assert raw and not any(k.startswith("train/model/module.") for k in raw)  # saved unwrapped from DDP
    assert (out / "weights" / "best.pt").is_file()
    assert read_results(out / "results.csv")["epoch"].tolist() == [1]  # one writer: rank 0


@pytest.mark.parametrize(("device", "world_size", "expect", "error"), [
    ("cpu", None, ["cpu"], None),
    ("cpu", 2, ["cpu", "cpu"], None),
    ("cpu,cpu", None, None, "listed twice"),
    ("x", None, None, "expected auto, cpu, a GPU index"),
])
def test_parse_devices_table(device, world_size, expect, error):
    if error:
        with pytest.raises(ConfigError, match=error):
            parse_devices(device, world_size)
        return
    assert [str(d) for d in parse_devices(device, world_size)] == expect
