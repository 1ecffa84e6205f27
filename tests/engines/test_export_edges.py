"""Export edge cases: opset 11, an operator the opset lacks, a symlinked output, a dataset checked before exporting."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from engines.backends import load_backend
from engines.errors import ConfigError
from engines.export import export
from engines.export.base import ExportSpec, load_source
from engines.export.onnx import trace_onnx
from pipeline.cli import main as cli_main

ULTRALYTICS = Path(__file__).resolve().parents[1] / "fixtures" / "ultralytics"
YOLOV8 = ULTRALYTICS / "yolov8n-seg-coco8.pt"


@pytest.fixture(scope="module")
def yolov8() -> Path:
    if not YOLOV8.is_file():
        pytest.skip(f"fixture checkpoint {YOLOV8} is missing")
    return YOLOV8


@pytest.mark.parametrize("fmt, out", [("onnx", "m.onnx"), ("openvino", "m_openvino_model")])
def test_opset_11_exports_and_runs_any_batch(yolov8: Path, tmp_path: Path, fmt: str, out: str) -> None:
    """--opset 11 (TensorRT 7, OpenCV's DNN) used to fail: the DFL's unflatten is written only from opset 13."""
    assert cli_main(["export", "--model", str(yolov8), "--format", fmt, "--imgsz", "64", "--opset", "11",
                     "--out", str(tmp_path / out)]) == 0
    if fmt == "onnx":
        import onnx

        assert onnx.load(str(tmp_path / out)).opset_import[0].version == 11
    reference = load_backend(str(yolov8), device="cpu")
    artifact = load_backend(str(tmp_path / out), device="cpu")
    x = torch.rand(2, 3, 64, 64)
    for got, want in zip(artifact(x), reference(x), strict=True):
        assert torch.allclose(torch.as_tensor(got), torch.as_tensor(want), atol=1e-3)


class _Unflattens(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x.unflatten(1, (3, 1)).sum(2), x


def test_an_operator_the_opset_lacks_is_one_line(yolov8: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """The tracer's UnsupportedOperatorError became a traceback, and torch's exporter writes the whole traced
    graph (~450 lines for a YOLOv8) to the process's stdout (fd 1) whenever tracing fails: now one ConfigError
    saying which opset has the operator, and nothing on stdout."""
    src = dataclasses.replace(load_source(yolov8), model=_Unflattens())
    with pytest.raises(ConfigError) as e:
        trace_onnx(src, ExportSpec(imgsz=(64, 64), opset=11))
    assert str(e.value).startswith("--opset: opset 11 cannot express") and "opset 13" in str(e.value), e.value
    assert capfd.readouterr().out == ""


@pytest.mark.parametrize("target", ["earlier_openvino_model", "/nonexistent/folder"])
def test_openvino_export_replaces_a_symlinked_output(yolov8: Path, tmp_path: Path, target: str) -> None:
    """A link as --out (e.g. latest_openvino_model -> a versioned export) passed check_output, then the
    finished IR folder could not be renamed over it: NotADirectoryError traceback, nothing written."""
    if not target.startswith("/"):
        export(yolov8, format="openvino", imgsz=64, out=tmp_path / target)
    link = tmp_path / "latest_openvino_model"
    link.symlink_to(target)
    assert export(yolov8, format="openvino", imgsz=96, out=link) == link
    assert not link.is_symlink() and load_backend(link).meta.imgsz == (96, 96)
    if not target.startswith("/"):  # the link is replaced, as os.replace replaces a file's link; its target stays
        assert "imgsz:\n- 64\n- 64\n" in (tmp_path / target / "metadata.yaml").read_text()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_val_with_a_missing_dataset_fails_before_exporting(yolov8: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """--val --data with a wrong path traced and wrote the export, and only then said the YAML was missing."""
    out = tmp_path / "m.onnx"
    rc = cli_main(["export", "--model", str(yolov8), "--format", "onnx", "--imgsz", "64", "--val", "--data",
                   str(tmp_path / "nope.yaml"), "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1 and "nope.yaml" in err[0], err
    assert not out.exists()
