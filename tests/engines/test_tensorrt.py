"""TensorRT: engine header, platform checks, cache keys and paths, batch profiles, and clear refusals when
TensorRT or a GPU is missing. Build-and-run tests are marked gpu and also skip without TensorRT."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from pathlib import Path

import pytest
import torch

from engines.backends import load_backend
from engines.backends.artifact import ArtifactRecord
from engines.backends.engine_header import MAGIC, Platform, check_platform, read_header, write_engine
from engines.errors import BackendUnavailableError, ConfigError, EngineMismatchError, ModelError
from engines.export.tensorrt import EngineSpec, cache_key, cache_path, ensure_engine
from pipeline.cli import main as cli_main

FIXTURE_PT = Path(__file__).resolve().parents[1] / "fixtures" / "ultralytics" / "yolov8n-seg-coco8.pt"
HAS_TRT = importlib.util.find_spec("tensorrt") is not None
HERE = Platform(tensorrt_version="10.3.0", gpu_name="NVIDIA A10", compute_capability=(8, 6))


def engine_record(**change: object) -> dict:
    rec = ArtifactRecord(names=("cat", "dog"), imgsz=(320, 320), stride=32, batch=(1, 16), precision="fp16",
                         dynamic=False, exporter="tensorrt", model_hash="h" * 64).to_json()
    return {**rec, **HERE.to_json(), **change}


# --- header ----------------------------------------------------------------------------------------------

def test_header_round_trip(tmp_path: Path) -> None:
    plan = bytes(range(256)) * 3
    path = write_engine(tmp_path / "m.engine", engine_record(), plan)
    record, offset = read_header(path)
    assert record == engine_record()
    assert path.read_bytes()[offset:] == plan
    assert path.read_bytes()[: len(MAGIC)] == MAGIC
    assert not [p for p in tmp_path.iterdir() if p.name != "m.engine"]  # no temp file left behind


@pytest.mark.parametrize("content, error, match", [
    (b"\x00" * 100, ModelError, "no segpipe engine header"),
    (b"", ModelError, "no segpipe engine header"),
    (MAGIC[:-1] + b"\x07" + b"\x00" * 8, EngineMismatchError, "header version 7"),
    (MAGIC + (50).to_bytes(8, "little") + b"{}", ModelError, "truncated engine header"),
    (MAGIC + (4).to_bytes(8, "little") + b"{no}", ModelError, "not JSON"),
    (MAGIC + (2).to_bytes(8, "little") + b"[]", ModelError, "not a JSON object"),
    (MAGIC + (1 << 40).to_bytes(8, "little"), ModelError, "corrupt engine header"),
])
def test_bad_headers(tmp_path: Path, content: bytes, error: type[Exception], match: str) -> None:
    path = tmp_path / "m.engine"
    path.write_bytes(content)
    with pytest.raises(error, match=match):
        read_header(path)


@pytest.mark.parametrize("change, match", [
    ({"tensorrt_version": "8.6.1"}, "built with TensorRT 8.6.1, this machine has TensorRT 10.3.0"),
    ({"gpu_name": "NVIDIA H100 80GB HBM3", "compute_capability": [9, 0]},
     r"built for NVIDIA H100 80GB HBM3 \(compute capability 9.0\), this GPU is NVIDIA A10 \(compute capability 8.6\)"),
    ({"compute_capability": None}, r"compute capability \?"),
])
def test_platform_mismatch_names_both_sides(change: dict, match: str) -> None:
    with pytest.raises(EngineMismatchError, match=match):
        check_platform(engine_record(**change), HERE, "m.engine")


def test_same_architecture_other_card_loads_with_warning(caplog: pytest.LogCaptureFixture) -> None:
    check_platform(engine_record(gpu_name="NVIDIA A40"), HERE, "m.engine")
    assert "built on NVIDIA A40, running on NVIDIA A10" in caplog.text


def test_engine_of_another_task_refused_before_tensorrt(tmp_path: Path) -> None:
    path = write_engine(tmp_path / "d.engine", engine_record(task="detect"), b"plan")
    with pytest.raises(ModelError, match="a 'detect' model"):
        load_backend(path, device="cpu")


def test_engine_without_segpipe_header(tmp_path: Path) -> None:
    path = tmp_path / "bare.engine"
    path.write_bytes(b"ftrt" + b"\x00" * 64)  # what a bare TensorRT plan starts with
    with pytest.raises(ModelError, match="build engines with `segpipe build-engine`"):
        load_backend(path, device="cpu")


@pytest.mark.skipif(HAS_TRT, reason="checks the message shown when TensorRT is absent")
def test_engine_load_without_tensorrt_says_how_to_get_it(tmp_path: Path) -> None:
    path = write_engine(tmp_path / "m.engine", engine_record(), b"plan")
    with pytest.raises(BackendUnavailableError, match=r"not installed; install it with `pip install segpipe\[tensorrt\]`"):
        load_backend(path, device="cpu")


# --- profile and cache --------------------------------------------------------------------------------

@pytest.mark.parametrize("kw, error, match", [
    ({"min_batch": 0}, ConfigError, "1 <= min <= opt <= max"),
    ({"min_batch": 4, "opt_batch": 2}, ConfigError, "min 4, opt 2, max 16"),
    ({"opt_batch": 32}, ConfigError, "opt 32, max 16"),
    ({"precision": "int4"}, ConfigError, "expected one of fp32, fp16, int8"),
    ({"workspace_gb": 0}, ConfigError, "--workspace"),
    ({"precision": "int8"}, ConfigError, "--calib-data"),
    ({"min_batch": 2, "opt_batch": 2, "max_batch": 2}, None, ""),
    ({"precision": "int8", "calib_data": "d.yaml"}, None, ""),
])
def test_profile_validation(kw: dict, error: type[Exception] | None, match: str) -> None:
    if error is None:
        EngineSpec(imgsz=(320, 320), **kw)
        return
    with pytest.raises(error, match=match):
        EngineSpec(imgsz=(320, 320), **kw)


def test_cache_key_is_stable_and_covers_what_matters() -> None:
    spec = EngineSpec(imgsz=(640, 640))
    key = cache_key("m" * 64, spec, HERE)
    assert key == cache_key("m" * 64, EngineSpec(imgsz=(640, 640)), Platform("10.3.0", "NVIDIA A10", (8, 6)))
    # Frozen reference: a key that changes across releases would silently rebuild every cached engine.
    assert key == "7d465e669c11691a57379002280eaa14e865484e0061fd2c5f1b78d0d02c5aac"
    variants = [
        cache_key("n" * 64, spec, HERE),
        cache_key("m" * 64, dataclasses.replace(spec, precision="fp32"), HERE),
        cache_key("m" * 64, dataclasses.replace(spec, imgsz=(320, 320)), HERE),
        cache_key("m" * 64, dataclasses.replace(spec, max_batch=32), HERE),
        cache_key("m" * 64, dataclasses.replace(spec, opt_batch=4), HERE),
        cache_key("m" * 64, dataclasses.replace(spec, min_batch=2), HERE),
        cache_key("m" * 64, spec, dataclasses.replace(HERE, tensorrt_version="10.4.0")),
        cache_key("m" * 64, spec, dataclasses.replace(HERE, gpu_name="NVIDIA L4", compute_capability=(8, 9))),
        cache_key("m" * 64, dataclasses.replace(spec, precision="int8", calib_data="a.yaml"), HERE),
        cache_key("m" * 64, dataclasses.replace(spec, precision="int8", calib_data="b.yaml"), HERE),
        cache_key("m" * 64, dataclasses.replace(spec, nms_free=True), HERE),
    ]
    assert len({key, *variants}) == len(variants) + 1
    assert cache_key("m" * 64, dataclasses.replace(spec, workspace_gb=8), HERE) == key


def test_cache_path_under_segpipe_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEGPIPE_CACHE", str(tmp_path))
    spec = EngineSpec(imgsz=(640, 384), precision="fp16", min_batch=1, opt_batch=4, max_batch=8)
    p = cache_path(Path("runs/best.pt"), "0123456789abcdef" * 4, spec)
    assert p == tmp_path / "engines" / "best-fp16-640x384-b1-4-8-0123456789abcdef.engine"


# --- missing TensorRT / GPU ------------------------------------------------------------------------------

@pytest.mark.skipif(HAS_TRT and torch.cuda.is_available(), reason="checks the refusal without TensorRT or GPU")
@pytest.mark.parametrize("args", [
    ["--half"],
    ["--int8", "--calib-data", "d.yaml"],
    ["--int8", "--data", "d.yaml"],  # export's spelling of the calibration set was refused as unknown
    ["int8=True", "data=d.yaml"],
])
def test_build_engine_cli_stops_at_once(capsys: pytest.CaptureFixture[str], args: list[str]) -> None:
    rc = cli_main(["build-engine", "--model", "does-not-matter.pt", *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1
    assert err[0].startswith("segpipe build-engine: error:")
    missing = "pip install segpipe[tensorrt]" if not HAS_TRT else "needs an NVIDIA GPU with CUDA"
    assert missing in err[0]


@pytest.mark.skipif(HAS_TRT and torch.cuda.is_available(), reason="checks the refusal without TensorRT or GPU")
def test_runtime_tensorrt_backend_for_checkpoint_refused(tmp_path: Path) -> None:
    pt = tmp_path / "m.pt"
    pt.write_bytes(b"PK\x03\x04")
    with pytest.raises(BackendUnavailableError, match="TensorRT|CUDA"):
        load_backend(pt, device="cpu", backend="tensorrt")
    with pytest.raises(BackendUnavailableError, match="TensorRT|CUDA"):
        ensure_engine(pt)


# --- on a GPU with TensorRT -----------------------------------------------------------------------------

@pytest.mark.gpu
def test_build_and_run_engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("tensorrt")
    if not FIXTURE_PT.is_file():
        pytest.skip("fixture checkpoint missing")
    monkeypatch.setenv("SEGPIPE_CACHE", str(tmp_path))
    path = ensure_engine(FIXTURE_PT, half=False, imgsz=320, min_batch=1, opt_batch=2, max_batch=2)
    assert path.parent == tmp_path / "engines"
    mtime = os.stat(path).st_mtime_ns
    assert ensure_engine(FIXTURE_PT, half=False, imgsz=320, min_batch=1, opt_batch=2, max_batch=2) == path
    assert os.stat(path).st_mtime_ns == mtime  # reused, not rebuilt
    trt_b = load_backend(path, device="cuda")
    ref = load_backend(FIXTURE_PT, device="cuda")
    x = torch.rand(5, 3, 320, 320, device="cuda")  # 5 > max batch 2: split
    (p1, q1), (p2, q2) = trt_b(x), ref(x)
    assert p1.device.type == "cuda" and p1.shape == p2.shape
    torch.testing.assert_close(p1, p2, atol=1e-2, rtol=1e-3)
    torch.testing.assert_close(q1, q2, atol=1e-2, rtol=1e-3)
