"""YOLO11-seg end to end beyond parity (test_ultralytics_parity.py): the Ultralytics-trained fixture
exports to ONNX with the same outputs, and a fresh yolo11n-seg.yaml trains with segpipe's trainer."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from engines.checkpoint import build_model, load_checkpoint
from tests.engines.shapes_data import make_shapes_dataset

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "ultralytics"
FIXTURE11_PT = FIXTURES / "yolo11n-seg-coco8.pt"
pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _fixture_input() -> torch.Tensor:
    """The fixture image Ultralytics letterboxed (1, 3, 224, 320), padded to 320x320 with its grey."""
    with np.load(FIXTURES / "raw11_000000000025.npz") as z:
        x = torch.from_numpy(z["input_u8"]).float() / 255
    pad = 320 - x.shape[2]
    return torch.nn.functional.pad(x, (0, 0, pad // 2, pad - pad // 2), value=114 / 255)


def test_onnx_export_matches_the_torch_model(tmp_path: Path) -> None:
    from engines.backends import BackendOptions, load_backend
    from engines.export import export

    path = export(FIXTURE11_PT, format="onnx", imgsz=320, out=tmp_path / "yolo11n.onnx")
    backend = load_backend(path, options=BackendOptions(threads=1))
    assert backend.meta.extra["model_yaml"]["yaml_file"] == "yolo11n-seg.yaml" and backend.meta.nc == 80
    x = _fixture_input()
    pred, proto = backend(x)
    with torch.no_grad():
        ref_pred, ref_proto = build_model(load_checkpoint(FIXTURE11_PT))(x)
    assert pred.shape == ref_pred.shape == (1, 4 + 80 + 32, 2100) and proto.shape == ref_proto.shape
    assert ref_pred[0, 4:84].max() > 0.25  # real detections, not an empty picture
    torch.testing.assert_close(pred[:, 4:], ref_pred[:, 4:], rtol=1e-4, atol=1e-4)  # scores, mask coefficients
    torch.testing.assert_close(pred[:, :4], ref_pred[:, :4], rtol=1e-4, atol=1e-3)  # boxes, pixels
    torch.testing.assert_close(proto, ref_proto, rtol=1e-4, atol=1e-4)


def test_fresh_yolo11_trains_a_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import engines.train.trainer as trainer
    from engines.train import train
    from engines.train.plots import read_results

    start: dict[str, torch.Tensor] = {}
    build = trainer.build_train_model

    def remember_start(*args: object, **kwargs: object) -> torch.nn.Module:
        net = build(*args, **kwargs)  # type: ignore[arg-type]
        start.update({k: v.detach().clone() for k, v in net.state_dict().items()})
        return net

    monkeypatch.setattr(trainer, "build_train_model", remember_start)
    data = make_shapes_dataset(tmp_path / "data", n=4, size=128)
    train(data=data, model="yolo11n-seg.yaml", out=tmp_path / "run", epochs=1, imgsz=64, batch=4, nbs=4,
          workers=0, device="cpu", close_mosaic=0, val=False, plots=False, warmup_epochs=0, hyp={"mosaic": 0.0})
    res = read_results(tmp_path / "run" / "results.csv")
    losses = {name: float(res[f"train/{name}"][0]) for name in ("box_loss", "seg_loss", "cls_loss", "dfl_loss")}
    assert all(math.isfinite(v) for v in losses.values()) and sum(losses.values()) > 0, losses
    last = load_checkpoint(tmp_path / "run" / "weights" / "last.pt")
    assert last.meta.model_yaml["yaml_file"] == "yolo11n-seg.yaml" and last.meta.names == ("circle", "rect")
    assert start.keys() == last.state_dict.keys()
    # The step reached the attention block, the depth-wise class branch and the prototypes.
    for key in ("model.10.m.0.attn.qkv.conv.weight", "model.23.cv3.0.0.0.conv.weight",
                "model.23.cv3.0.2.weight", "model.23.proto.cv3.conv.weight", "model.2.m.0.cv1.conv.weight"):
        assert not torch.equal(start[key], last.state_dict[key]), key
    assert all(torch.isfinite(t).all() for t in last.state_dict.values() if t.is_floating_point())
    assert not build_model(last).head.legacy
