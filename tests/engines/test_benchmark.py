"""engines.export.bench and ``segpipe benchmark``: the shipped demo model on a few synthetic images,
exported and scored per format; ok, failed and skipped rows, the CSV/JSON written as rows complete,
and one line per user mistake."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from engines.errors import ConfigError
from engines.export.bench import BenchRow, parse_formats, table, val_subset
from pipeline.cli import main as cli_main

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "engines" / "assets" / "demo-seg.pt"
IMGSZ = 320


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 synthetic scenes of the demo model's classes; val is the train split (``--val-fraction 0``)."""
    from engines.synth import write_dataset

    return write_dataset(tmp_path_factory.mktemp("synth"), images=6, seed=7, size=(320, 192), val_fraction=0,
                         workers=1).data_yaml


@pytest.fixture(scope="module")
def run(data: Path, tmp_path_factory: pytest.TempPathFactory, one_thread: None) -> dict:
    """One benchmark of torch, torchscript, onnx and tensorrt, whose torchscript export cannot be written:
    a folder already stands where the file goes (a real failure, not a simulated one)."""
    import contextlib
    import io

    out = tmp_path_factory.mktemp("bench")
    (out / "demo-seg.torchscript").mkdir()
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        rc = cli_main(["benchmark", "--model", str(DEMO), "--data", str(data), "--imgsz", str(IMGSZ),
                       "--formats", "torch,torchscript,onnx,tensorrt", "--workers", "0", "--out", str(out)])
    text = stdout.getvalue()
    lines = text.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("format "))
    rows = {ln.split()[0]: ln for ln in lines[start + 1: start + 5]}
    return {"rc": rc, "text": text, "rows": rows, "out": out}


def test_torch_and_onnx_score_alike(run: dict) -> None:
    """Same inputs for both (square letterboxed batches), so the mAPs agree to float rounding."""
    got = {r["format"]: r for r in csv.DictReader((run["out"] / "benchmark.csv").open())}
    torch_row, onnx_row = got["torch"], got["onnx"]
    assert torch_row["status"] == onnx_row["status"] == "ok"
    assert float(torch_row["mask_map50_95"]) > 0.2  # the demo model finds the synthetic objects
    for key in ("box_map50_95", "mask_map50_95"):
        assert abs(float(torch_row[key]) - float(onnx_row[key])) < 0.005, key
    assert abs(float(onnx_row["mask_map_diff"])) < 0.005 and float(torch_row["mask_map_diff"]) == 0
    assert 10 < float(onnx_row["size_mb"]) < 16 and Path(onnx_row["path"]) == run["out"] / "demo-seg.onnx"
    assert all(float(onnx_row[k]) > 0 for k in ("preprocess_ms", "inference_ms", "postprocess_ms"))
    assert onnx_row["images"] == "6"


def test_table_has_a_row_per_format_in_order(run: dict) -> None:
    assert list(run["rows"]) == ["torch", "torchscript", "onnx", "tensorrt"]
    cols = run["rows"]["onnx"].split()
    assert cols[-1] == "ok" and len(cols) == 9
    saved = json.loads((run["out"] / "benchmark.json").read_text())
    assert saved["imgsz"] == IMGSZ and [r["format"] for r in saved["rows"]] == list(run["rows"])


def test_a_failed_export_is_a_row_and_the_benchmark_goes_on(run: dict) -> None:
    row = run["rows"]["torchscript"]
    assert "failed: --out:" in row and "demo-seg.torchscript is a folder" in row
    assert run["rc"] == 1 and "1 of 4 formats failed: torchscript" in run["text"]
    assert run["rows"]["onnx"].endswith(" ok")  # the format after it still ran


def test_tensorrt_without_tensorrt_or_a_gpu_is_skipped(run: dict) -> None:
    """On the CPU it is skipped whether TensorRT is installed or not, saying what is missing."""
    row = run["rows"]["tensorrt"]
    assert " skipped: " in row and ("TensorRT" in row or "CUDA" in row)
    assert row.split()[1:8] == ["-"] * 7


@pytest.mark.parametrize("argv, code, message", [
    (["--formats", "onnx,onx"], 2, "--formats: unknown format 'onx'; choose from: torch, torchscript, onnx, "
                                   "openvino, tensorrt"),
    (["--formats", "ONNX"], 2, "--formats: unknown format 'ONNX'"),  # nothing guessed
    (["--formats", "torch", "--int8"], 2, "--int8: benchmarks INT8 exports of onnx and openvino"),
    (["--half"], 2, "--half: fp16 inference needs a CUDA --device"),
    (["--imgsz", "100"], 2, "--imgsz: must be a positive multiple of 32"),
    (["--batch", "0"], 2, "--batch: must be >= 1"),
    (["--fraction", "0"], 2, "--fraction: must be in (0, 1]"),
    (["--max-images", "0"], 2, "--max-images: must be >= 1"),
    (["--fraction", "0.5", "--max-images", "3"], 2, "segpipe benchmark: error: argument --max-images: not allowed "
                                                   "with argument --fraction"),
    (["--device", "gpu"], 2, "--device: expected auto, cpu"),
    (["--model", "{tmp}/missing.pt"], 1, "{tmp}/missing.pt"),
    (["--model", "yolov8n-seg.yaml"], 1, "yolov8n-seg.yaml: benchmark a trained checkpoint"),
    (["--data", "{tmp}/none.yaml"], 1, "data YAML not found"),
    (["--data", "{tmp}/one-class.yaml"], 1, "demo-seg.pt predicts 6 classes, {tmp}/one-class.yaml has 1"),
])
def test_user_errors_are_one_line(argv: list[str], code: int, message: str, data: Path, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "one-class.yaml").write_text(f"path: {data.parent}\ntrain: images/train\nval: images/train\n"
                                             "names: [thing]\n")
    base = {"--model": str(DEMO), "--data": str(data), "--out": str(tmp_path / "out")}
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    for flag, value in base.items():
        if flag not in argv:
            argv += [flag, value]
    try:
        rc = cli_main(["benchmark", *argv])
    except SystemExit as e:  # a usage mistake argparse catches
        rc = e.code
    assert rc == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message.replace("{tmp}", str(tmp_path)) in err[0], err
    assert not (tmp_path / "out").exists()


def test_interrupted_benchmark_keeps_the_rows_done(data: Path, tmp_path: Path) -> None:
    """SIGTERM (as Ctrl-C) while the onnx row runs: the torch row is already in the CSV."""
    from tests.helpers import sigterm_once

    csv_file = tmp_path / "benchmark.csv"
    code, err = sigterm_once(["benchmark", "--model", str(DEMO), "--data", str(data), "--imgsz", str(IMGSZ),
                              "--formats", "torch,onnx", "--workers", "0", "--out", str(tmp_path)],
                             lambda: csv_file.is_file(), "the torch row written")
    assert code == 143 and err.strip().splitlines()[-1] == "segpipe benchmark: terminated", err
    assert [r["format"] for r in csv.DictReader(csv_file.open())] == ["torch"]
    assert not list(tmp_path.glob(".demo-seg.onnx.*"))  # the export in progress left no temp folder


@pytest.mark.parametrize("spec, int8, rows", [
    (None, False, ("torch", "torchscript", "onnx", "openvino", "tensorrt")),
    ("onnx,torch", False, ("torch", "onnx")),  # FORMATS order, the reference first
    (" onnx , openvino ", True, ("onnx", "onnx-int8", "openvino", "openvino-int8")),
    ("torch,onnx,onnx", True, ("torch", "onnx", "onnx-int8")),
])
def test_parse_formats(spec: str | None, int8: bool, rows: tuple[str, ...]) -> None:
    assert parse_formats(spec, int8=int8) == rows


@pytest.mark.parametrize("spec", ["", ",", "onnx,trt"])
def test_parse_formats_refuses(spec: str) -> None:
    with pytest.raises(ConfigError, match="^--formats: "):
        parse_formats(spec)


def test_val_subset_takes_the_first_images(data: Path) -> None:
    from engines.data.spec import load_data_yaml, resolve_images

    spec = load_data_yaml(data)
    files, _ = resolve_images(spec.val)
    assert val_subset(spec) is spec
    assert val_subset(spec, max_images=2).val == tuple(files[:2])
    assert val_subset(spec, fraction=0.5).val == tuple(files[:3])
    assert val_subset(spec, fraction=0.01).val == tuple(files[:1])  # at least one
    assert val_subset(spec, max_images=99).val == tuple(files)


def test_table_of_rows_without_scores() -> None:
    text = table([BenchRow("onnx", "failed", "RuntimeError: boom"), BenchRow("tensorrt", "skipped", "no GPU")])
    head, a, b = text.splitlines()
    assert head.split()[0] == "format" and head.endswith("status")
    assert a.split() == ["onnx", *["-"] * 7, "failed:", "RuntimeError:", "boom"]
    assert b.endswith("skipped: no GPU")


def test_a_runtime_not_installed_is_skipped(data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A runtime's package missing (simulated: ``import onnx`` fails) skips the format, naming the package."""
    import sys

    from engines.export.bench import Scorer, benchmark

    monkeypatch.delitem(sys.modules, "engines.export.onnx", raising=False)  # imported again, without onnx
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx -> ModuleNotFoundError
    (row,) = benchmark(DEMO, rows=("onnx",), scorer=Scorer(data=data, imgsz=IMGSZ), out=tmp_path)
    assert row.status == "skipped" and row.reason.startswith("onnx is not installed"), row


def test_the_scorer_runs_a_model_yaml_with_the_head_it_is_asked_for(data: Path) -> None:
    """``nms_free`` reaches every model the torch backend loads, a model YAML too (it used to be scored with
    its NMS head): a YOLOv8 YAML, which has no NMS-free head, is refused as its checkpoint would be."""
    from engines.errors import ModelError
    from engines.export.bench import Scorer

    with pytest.raises(ModelError, match="no NMS-free"):
        Scorer(data=data, imgsz=IMGSZ, nms_free=True)("yolov8n-seg.yaml")
