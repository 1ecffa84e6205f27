"""Shared checks of the segment models with finer prototypes (test_proto_stride, test_proto_skips)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import torch

from engines.backends import BackendOptions, load_backend
from engines.checkpoint import load_checkpoint, save_checkpoint
from engines.checkpoint.meta import ModelMeta
from engines.export import export
from engines.nn import SegmentationModel
from engines.train.loss import SegLoss
from engines.train.weights import transfer_weights


def seeded_pair(source_yaml: str, target_yaml: str, *, scales: bool = False
                ) -> tuple[SegmentationModel, SegmentationModel, int, int]:
    """A ``source_yaml`` model (nc 2, seed 0) with trained-looking BatchNorm statistics (and scales when
    ``scales``), and a ``target_yaml`` model seeded from it by name and shape. Returns both in eval mode,
    the tensors transferred and the target's tensor count."""
    torch.manual_seed(0)
    source = SegmentationModel(source_yaml, nc=2)
    for m in source.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            if scales:
                m.weight.data.uniform_(0.5, 1.5)
    target = SegmentationModel(target_yaml, nc=2)
    n, total = transfer_weights(target, source.state_dict())
    return source.eval(), target.eval(), n, total


def backward_on_a_stroke(model: SegmentationModel, ratio: int = 1) -> tuple[SegmentationModel, torch.Tensor]:
    """A trainable copy of ``model`` after one loss backward on two 64x64 images (a thin stroke, a square),
    masks at ``ratio``. Returns the copy and the loss items (box, seg, cls, dfl)."""
    net = SegmentationModel(model.yaml, nc=2)
    net.load_state_dict(model.state_dict())
    net.train()
    out = net(torch.rand(2, 3, 64, 64))
    assert out.proto.shape[-2:] == (64 // model.proto_stride,) * 2
    masks = torch.zeros(2, 64 // ratio, 64 // ratio, dtype=torch.uint8)
    masks[0, 8 // ratio:40 // ratio, 12 // ratio:20 // ratio] = 1  # a thin stroke: x 12..20, y 8..40 pixels
    masks[1, 16 // ratio:48 // ratio, 16 // ratio:48 // ratio] = 1
    boxes = torch.tensor([[16.0, 24.0, 8.0, 32.0], [32.0, 32.0, 32.0, 32.0]]) / 64  # normalised xywh
    batch = SimpleNamespace(cls=torch.tensor([0.0, 1.0]), batch_idx=torch.tensor([0.0, 1.0]), masks=masks,
                            bboxes=boxes)
    loss, items = SegLoss.for_model(net)(out, batch)
    loss.backward()
    return net, items


def assert_onnx_runtime_matches(model: SegmentationModel, names: tuple[str, ...], tmp_path: Path) -> None:
    """Checkpoint -> dynamic ONNX -> ONNX Runtime gives the model's outputs, prototypes at its stride."""
    meta = ModelMeta(names=names, model_yaml=model.yaml, imgsz=64, stride=32)
    pt = save_checkpoint(tmp_path / "model.pt", state_dict=model.state_dict(), meta=meta)
    assert load_checkpoint(pt).meta.proto_stride == model.proto_stride
    onnx_path = export(pt, format="onnx", imgsz=64, dynamic=True, batch=2, opset=17, out=tmp_path / "model.onnx")
    backend = load_backend(onnx_path, device=torch.device("cpu"), options=BackendOptions())
    assert backend.meta.proto_stride == model.proto_stride
    x = torch.rand(2, 3, 96, 64)
    pred, proto = backend(x)
    with torch.no_grad():
        want_pred, want_proto = model(x)
    assert proto.shape == (2, 32, 96 // model.proto_stride, 64 // model.proto_stride)
    assert torch.allclose(proto, want_proto, atol=1e-4) and torch.allclose(pred, want_pred, atol=1e-3, rtol=1e-4)
