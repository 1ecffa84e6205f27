"""Export edge cases: an opset too old for the graph, a symlinked output, a dataset checked before exporting."""

from __future__ import annotations

from pathlib import Path

import pytest

from engines.backends import load_backend
from engines.export import export
from pipeline.cli import main as cli_main

ULTRALYTICS = Path(__file__).resolve().parents[1] / "fixtures" / "ultralytics"
YOLOV8 = ULTRALYTICS / "yolov8n-seg-coco8.pt"


@pytest.fixture(scope="module")
def yolov8() -> Path:
    if not YOLOV8.is_file():
        pytest.skip(f"fixture checkpoint {YOLOV8} is missing")
    return YOLOV8


@pytest.mark.parametrize("fmt, out", [("onnx", "m.onnx"), ("openvino", "m_openvino_model")])
def test_an_opset_too_old_for_the_graph_is_one_line(yolov8: Path, tmp_path: Path, fmt: str, out: str,
                                                     capfd: pytest.CaptureFixture[str]) -> None:
    """--opset 11 passed the 11..20 check, then the tracer's UnsupportedOperatorError (the DFL's unflatten
    needs opset 13) came out as a traceback with the whole TorchScript graph. Later the one-line error came
    after that graph all the same: ~450 lines that torch's exporter writes to the process's stdout (fd 1)
    whenever tracing fails."""
    rc = cli_main(["export", "--model", str(yolov8), "--format", fmt, "--imgsz", "64", "--opset", "11",
                   "--out", str(tmp_path / out)])
    captured = capfd.readouterr()
    err = captured.err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and captured.out == "", (err, captured.out[:300])
    assert err[0].startswith("segpipe export: error: --opset: opset 11 cannot express") and "opset 13" in err[0]
    assert list(tmp_path.iterdir()) == []


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
