"""engines.backends: the metadata record, suffix registry, and every loader's refusals and input checks.

The artifacts here are real ONNX / TorchScript / OpenVINO files of a tiny two-conv network with the
segment head's output shapes, so each check runs in milliseconds; full-model parity is in
test_backend_parity.py.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import onnx
import pytest
import torch
import yaml
from torch import nn

from engines.backends import BackendOptions, backend_for, load_backend
from engines.backends.artifact import MAX_BATCH, ArtifactRecord, decode_props, encode_props, meta_from_record
from engines.backends.onnx_backend import output_shapes
from engines.backends.torchscript_backend import EXTRA_FILE
from engines.errors import BackendUnavailableError, EngineMismatchError, InputError, ModelError, SegpipeError

NAMES = ("cat", "dog")


class Tiny(nn.Module):
    """Segment-head-shaped outputs: pred (N, 4+2+32, A), proto (N, 32, H/4, W/4), from real convs."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.p3, self.p4, self.p5 = (nn.Conv2d(3, 38, 1) for _ in range(3))
        self.proto = nn.Conv2d(3, 32, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        levels = [conv(nn.functional.avg_pool2d(x, s)).flatten(2) for conv, s in ((self.p3, 8), (self.p4, 16),
                                                                                  (self.p5, 32))]
        return torch.cat(levels, 2), self.proto(nn.functional.avg_pool2d(x, 4))


def record(exporter: str, *, dynamic: bool = False, batch: tuple[int, int] = (1, MAX_BATCH), **extra) -> dict:
    return ArtifactRecord(names=NAMES, imgsz=(64, 64), stride=32, batch=batch, precision="fp32", dynamic=dynamic,
                          exporter=exporter, model_yaml={"nc": 2}, data="/d/x.yaml", source="tiny",
                          model_hash="abc", extra=extra).to_json()


def tiny_onnx(path: Path, meta: dict | None, *, dynamic: bool = False) -> Path:
    axes = {"images": {0: "b", 2: "h", 3: "w"} if dynamic else {0: "b"}, "pred": {0: "b", 2: "a"},
            "proto": {0: "b", 2: "ph", 3: "pw"}}
    buf = io.BytesIO()
    torch.onnx.export(Tiny().eval(), (torch.zeros(1, 3, 64, 64),), buf, dynamo=False, opset_version=17,
                      input_names=["images"], output_names=["pred", "proto"], dynamic_axes=axes)
    proto = onnx.load_from_string(buf.getvalue())
    if meta is not None:
        for k, v in encode_props(meta).items():
            e = proto.metadata_props.add()
            e.key, e.value = k, v
    onnx.save(proto, str(path))
    return path


@pytest.fixture(scope="module")
def onnx_static(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_onnx(tmp_path_factory.mktemp("b") / "tiny.onnx", record("onnx"))


@pytest.fixture(scope="module")
def onnx_dynamic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_onnx(tmp_path_factory.mktemp("b") / "tiny_dyn.onnx", record("onnx", dynamic=True, batch=(1, 3)),
                     dynamic=True)


# --- the metadata record -------------------------------------------------------------------------------

def test_a_yaml_model_is_the_same_every_load_and_leaves_the_random_state_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a = load_backend("yolov8n-seg.yaml", device="cpu")
    b = load_backend("yolov8n-seg.yaml", device="cpu")
    assert torch.equal(torch.rand(3), expected)
    x = torch.rand(1, 3, 64, 64)
    assert all(torch.equal(u, v) for u, v in zip(a(x), b(x), strict=True))


def test_record_round_trip_through_onnx_props() -> None:
    rec = record("onnx", int8={"format": "QDQ"})
    meta = meta_from_record(decode_props(encode_props(rec)), "x.onnx", exporter="onnx")
    assert (meta.names, meta.imgsz, meta.stride, meta.batch_range, meta.precision, meta.dynamic) == (
        NAMES, (64, 64), 32, (1, MAX_BATCH), "fp32", False)
    assert meta.extra["data"] == "/d/x.yaml" and meta.extra["int8"] == {"format": "QDQ"}
    assert meta.extra["preprocess"]["color"] == "RGB" and meta.nc == 2


@pytest.mark.parametrize("change, error, match", [
    ({"format": None}, ModelError, "no segpipe metadata"),
    ({"task": "detect"}, ModelError, "a 'detect' model"),
    ({"task": "pose", "format": None}, ModelError, "a 'pose' model"),
    ({"exporter": "openvino"}, EngineMismatchError, "written by the 'openvino' exporter"),
    ({"format_version": 99}, EngineMismatchError, "format version 99"),
    ({"names": "cat"}, ModelError, "'names'"),
    ({"imgsz": [64]}, ModelError, "'imgsz' must be two positive integers"),
    ({"batch": [4, 2]}, ModelError, "corrupt"),
    ({"precision": "fp8"}, ModelError, "corrupt"),
    ({"stride": True}, ModelError, "'stride'"),
    ({"dynamic": "yes"}, ModelError, "'dynamic'"),
])
def test_record_refusals(change: dict, error: type[Exception], match: str) -> None:
    rec = {k: v for k, v in {**record("onnx"), **change}.items() if v is not None}
    with pytest.raises(error, match=match):
        meta_from_record(rec, "m.onnx", exporter="onnx")


# --- registry ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path, name", [
    ("a/best.pt", "torch"), ("best.safetensors", "torch"), ("yolov8n-seg.yaml", "torch"), ("m.onnx", "onnx"),
    ("m.ONNX", "onnx"), ("best_openvino_model", "openvino"), ("best_openvino_model/", "openvino"),
    ("x/model.xml", "openvino"), ("m.torchscript", "torchscript"), ("m.engine", "tensorrt"),
])
def test_backend_for_suffix(path: str, name: str) -> None:
    assert backend_for(path) == name


@pytest.mark.parametrize("path, backend, error, match", [
    ("model.tflite", "auto", ModelError, "unknown model format"),
    ("missing.onnx", "auto", ModelError, "not found"),
    ("m.onnx", "coreml", SegpipeError, "unknown backend 'coreml'; choose one of"),
])
def test_load_backend_refusals(tmp_path: Path, path: str, backend: str, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        load_backend(tmp_path / path if "missing" in path else path, backend=backend)


# --- ONNX Runtime ----------------------------------------------------------------------------------------

def test_onnx_matches_torch(onnx_static: Path) -> None:
    b = load_backend(onnx_static, options=BackendOptions(threads=1))
    x = torch.rand(3, 3, 64, 64)
    pred, proto = b(x)
    ref = Tiny().eval()(x)
    assert pred.shape == output_shapes(3, 64, 64, nc=2)[0] and proto.shape == (3, 32, 16, 16)
    torch.testing.assert_close(pred, ref[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(proto, ref[1], atol=1e-5, rtol=1e-4)
    assert b.meta.names == NAMES and "tiny.onnx" in repr(b)


def test_onnx_dynamic_splits_batches_over_the_range(onnx_dynamic: Path) -> None:
    b = load_backend(onnx_dynamic)
    assert b.meta.batch_range == (1, 3) and b.meta.dynamic
    x = torch.rand(7, 3, 96, 64)  # 7 > max batch 3: run as 3 + 3 + 1
    pred, proto = b(x)
    ref = Tiny().eval()(x)
    torch.testing.assert_close(pred, ref[0], atol=1e-5, rtol=1e-4)
    assert proto.shape == (7, 32, 24, 16)


def test_onnx_without_metadata_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no segpipe metadata; export it with `segpipe export`"):
        load_backend(tiny_onnx(tmp_path / "bare.onnx", None))


def test_ultralytics_detect_onnx_is_refused(tmp_path: Path) -> None:
    # Ultralytics writes plain strings: task, names as a Python dict repr, stride.
    meta = {"task": "detect", "names": "{0: 'cat'}", "stride": "32"}
    path = tmp_path / "det.onnx"
    tiny_onnx(path, None)
    proto = onnx.load(str(path))
    for k, v in meta.items():
        e = proto.metadata_props.add()
        e.key, e.value = k, v
    onnx.save(proto, str(path))
    with pytest.raises(ModelError, match="det.onnx: a 'detect' model"):
        load_backend(path)


def test_corrupt_onnx_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "junk.onnx"
    path.write_bytes(b"not a protobuf at all" * 10)
    with pytest.raises(ModelError, match="ONNX Runtime cannot load"):
        load_backend(path)


def test_onnx_on_cuda_without_cuda(onnx_static: Path, no_cuda: None) -> None:
    with pytest.raises(BackendUnavailableError):
        load_backend(onnx_static, device="cuda")


@pytest.mark.parametrize("x, match", [
    (torch.rand(1, 3, 64, 64, dtype=torch.float64), "expected float32 or float16"),
    (torch.randint(0, 255, (1, 3, 64, 64), dtype=torch.uint8), "expected float32 or float16"),
    (torch.rand(3, 64, 64), r"expected input shape \(N, 3, H, W\)"),
    (torch.rand(1, 4, 64, 64), r"expected input shape \(N, 3, H, W\)"),
    (torch.rand(0, 3, 64, 64), "empty batch"),
    (torch.rand(1, 3, 96, 64), "exported for 64x64 inputs, got 96x64"),
    (torch.rand(1, 3, 64, 64).numpy(), "expected a torch.Tensor"),
])
def test_bad_inputs_static(onnx_static: Path, x: object, match: str) -> None:
    b = load_backend(onnx_static)
    with pytest.raises(InputError, match=match):
        b(x)  # type: ignore[arg-type]


def test_bad_input_dynamic_stride(onnx_dynamic: Path) -> None:
    with pytest.raises(InputError, match="not a multiple of stride 32"):
        load_backend(onnx_dynamic)(torch.rand(1, 3, 80, 64))


def test_fp16_input_accepted(onnx_static: Path) -> None:
    pred, _ = load_backend(onnx_static)(torch.rand(2, 3, 64, 64).half())
    assert pred.dtype == torch.float32 and pred.shape[0] == 2


# --- TorchScript -------------------------------------------------------------------------------------------

def _tiny_ts(path: Path, extra: dict[str, str]) -> Path:
    traced = torch.jit.trace(Tiny().eval(), (torch.zeros(1, 3, 64, 64),), check_trace=False)
    torch.jit.save(traced, str(path), _extra_files=extra)
    return path


def test_torchscript_round_trip(tmp_path: Path) -> None:
    path = _tiny_ts(tmp_path / "t.torchscript", {EXTRA_FILE: json.dumps(record("torchscript"))})
    b = load_backend(path)
    x = torch.rand(2, 3, 64, 64)
    torch.testing.assert_close(b(x)[0], Tiny().eval()(x)[0])
    assert b.meta.names == NAMES


@pytest.mark.parametrize("extra, error, match", [
    ({}, ModelError, "no segpipe metadata"),
    ({EXTRA_FILE: "{not json"}, ModelError, "corrupt segpipe metadata"),
    ({EXTRA_FILE: json.dumps({**record("torchscript"), "task": "pose"})}, ModelError, "a 'pose' model"),
    ({EXTRA_FILE: json.dumps(record("onnx"))}, EngineMismatchError, "loaded as 'torchscript'"),
])
def test_torchscript_refusals(tmp_path: Path, extra: dict, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        load_backend(_tiny_ts(tmp_path / "t.torchscript", extra))


def test_torchscript_not_a_module(tmp_path: Path) -> None:
    path = tmp_path / "x.torchscript"
    path.write_bytes(b"\x00" * 64)
    with pytest.raises(ModelError, match="not a TorchScript file"):
        load_backend(path)


# --- OpenVINO -----------------------------------------------------------------------------------------------

def _tiny_ir(folder: Path, onnx_path: Path, meta: dict | None) -> Path:
    import openvino as ov

    folder.mkdir()
    ov.save_model(ov.convert_model(str(onnx_path)), str(folder / "model.xml"))
    if meta is not None:
        (folder / "metadata.yaml").write_text(yaml.safe_dump(meta))
    return folder


def test_openvino_round_trip_and_async_chunks(tmp_path: Path, onnx_dynamic: Path) -> None:
    pytest.importorskip("openvino")
    folder = _tiny_ir(tmp_path / "t_openvino_model", onnx_dynamic, record("openvino", dynamic=True, batch=(1, 3)))
    b = load_backend(folder, options=BackendOptions(threads=1))
    x = torch.rand(5, 3, 64, 96)
    pred, proto = b(x)
    ref = Tiny().eval()(x)
    # OpenVINO's CPU kernels round differently (pooling, accumulation order): the 1e-3 parity bar.
    torch.testing.assert_close(pred, ref[0], atol=1e-3, rtol=0)
    torch.testing.assert_close(proto, ref[1], atol=1e-3, rtol=0)
    assert load_backend(folder / "model.xml").meta.names == NAMES  # the .xml path works too


def test_openvino_small_batches_use_every_thread(tmp_path: Path, onnx_dynamic: Path) -> None:
    """With two threads the THROUGHPUT compilation has two single-thread streams; a batch of one runs on
    the LATENCY compilation instead (same model, same answers)."""
    pytest.importorskip("openvino")
    folder = _tiny_ir(tmp_path / "t_openvino_model", onnx_dynamic, record("openvino", dynamic=True, batch=(1, 3)))
    b = load_backend(folder, options=BackendOptions(threads=2))
    assert b.jobs == 2 and b._single is not None
    x = torch.rand(3, 3, 64, 96)
    pred, proto = b(x)  # 3 >= 2 jobs: the async queue
    for i in range(3):
        p1, q1 = b(x[i:i + 1])  # 1 < 2 jobs: the latency request
        assert p1.dtype == torch.float32 and p1.shape == pred[i:i + 1].shape
        torch.testing.assert_close(p1, pred[i:i + 1], atol=1e-4, rtol=0)
        torch.testing.assert_close(q1, proto[i:i + 1], atol=1e-4, rtol=0)


@pytest.mark.parametrize("meta, error, match", [
    (None, ModelError, "no segpipe metadata"),
    ({**record("openvino"), "task": "detect"}, ModelError, "a 'detect' model"),
])
def test_openvino_refusals(tmp_path: Path, onnx_static: Path, meta: dict | None, error: type[Exception],
                           match: str) -> None:
    pytest.importorskip("openvino")
    with pytest.raises(error, match=match):
        load_backend(_tiny_ir(tmp_path / "t_openvino_model", onnx_static, meta))


def test_openvino_missing_weights(tmp_path: Path) -> None:
    folder = tmp_path / "x_openvino_model"
    folder.mkdir()
    (folder / "model.xml").write_text("<net/>")
    with pytest.raises(ModelError, match="model.bin is missing"):
        load_backend(folder)
