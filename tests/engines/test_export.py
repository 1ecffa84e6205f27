"""engines.export and ``segpipe export``: metadata written, axes, fp16, INT8 (calibrated on coco128),
output paths, atomic writes, and one clear error per bad request."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import torch

from engines import __version__
from engines.backends import BackendOptions, load_backend
from engines.backends.artifact import decode_props
from engines.errors import ConfigError, DataError, ModelError
from engines.export import default_output, export, get_exporter
from engines.export.quantize import nodes_to_exclude
from engines.ops import letterbox
from pipeline.cli import main as cli_main

FIXTURE_PT = Path(__file__).resolve().parents[1] / "fixtures" / "ultralytics" / "yolov8n-seg-coco8.pt"
IMGSZ = 320


@pytest.fixture(scope="session")
def model() -> Path:
    if not FIXTURE_PT.is_file():
        pytest.skip("fixture checkpoint tests/fixtures/ultralytics/yolov8n-seg-coco8.pt is missing")
    return FIXTURE_PT


@pytest.fixture(scope="session")
def onnx_dynamic(model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export(model, format="onnx", imgsz=IMGSZ, dynamic=True, simplify=True, batch=8, opset=17,
                  out=tmp_path_factory.mktemp("x") / "m.onnx")


@pytest.fixture(scope="session")
def real_batch(coco128_images: list[Path]) -> torch.Tensor:
    x, _ = letterbox([torch.from_numpy(cv2.imread(str(p))) for p in coco128_images[:2]], size=IMGSZ)
    return x


# --- bad requests ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kw, error, match", [
    ({"format": "onx"}, ConfigError, r"--format: unknown format 'onx'; choose one of: onnx, openvino, torchscript$"),
    ({"format": "ONNX"}, ConfigError, "unknown format 'ONNX'"),  # exact names: nothing is guessed
    ({"format": "engine"}, ConfigError, "segpipe build-engine"),
    ({"format": "onnx", "imgsz": 300}, ConfigError, "--imgsz: must be a positive multiple of 32"),
    ({"format": "onnx", "imgsz": (320, 0)}, ConfigError, "--imgsz"),
    ({"format": "onnx", "imgsz": 0}, ConfigError, "--imgsz: must be a positive multiple of 32"),  # not "default"
    ({"format": "onnx", "imgsz": (320, 65536)}, ConfigError, r"--imgsz: at most 8192, got 320,65536$"),
    ({"format": "onnx", "batch": -1}, ConfigError, "--batch: must be >= 0"),
    ({"format": "onnx", "opset": 7}, ConfigError, "--opset: must be in 11..20"),
    ({"format": "onnx", "int8": True}, ConfigError, "--data: --int8 needs calibration images"),
    ({"format": "onnx", "dynamc": True}, ConfigError, "dynamc: unknown export option"),
    ({"format": "torchscript", "int8": True, "data": "d.yaml"}, ConfigError, "INT8 is available for --format onnx and openvino"),
    ({"format": "onnx", "int8": True, "data": "/nonexistent/d.yaml"}, DataError, "d.yaml"),
    ({"format": "onnx", "int8": True, "data": "d.yaml", "half": True}, ConfigError, "exclusive"),
])
def test_bad_requests(model: Path, tmp_path: Path, kw: dict, error: type[Exception], match: str) -> None:
    if kw.get("data") == "d.yaml":
        (tmp_path / "d.yaml").write_text("path: .\ntrain: images\nval: images\nnames: [a]\n")
        (tmp_path / "images").mkdir()
        cv2.imwrite(str(tmp_path / "images" / "a.jpg"), np.zeros((64, 64, 3), np.uint8))
        kw = {**kw, "data": str(tmp_path / "d.yaml")}
    with pytest.raises(error, match=match):
        export(model, out=tmp_path / "out.onnx", **kw)
    assert not (tmp_path / "out.onnx").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]  # no temp leftovers


def test_export_from_an_export_is_refused(onnx_dynamic: Path) -> None:
    with pytest.raises(ModelError, match="export from a checkpoint"):
        export(onnx_dynamic, format="openvino")


@pytest.mark.parametrize("fmt, out, existing, match", [
    # An ordinary folder as --out was deleted whole (the artifact replaces what is there).
    ("onnx", "runs", {"runs": "dir"}, r"--out: .*runs: onnx exports are named \*\.onnx"),
    ("onnx", "m.onnx", {"m.onnx": "dir"}, r"--out: .*m\.onnx is a folder; name the onnx file"),
    ("openvino", "x_openvino_model", {"x_openvino_model": "dir"}, "exists and is not an OpenVINO model folder"),
    ("openvino", "x_openvino_model", {"x_openvino_model": "file"}, "exists and is not an OpenVINO model folder"),
    # A name no backend loads back (and here a checkpoint it would have overwritten).
    ("onnx", "best.pt", {"best.pt": "file"}, r"onnx exports are named \*\.onnx"),
    ("torchscript", "m.onnx", {}, r"torchscript exports are named \*\.torchscript"),
    ("openvino", "m.xml", {}, r"openvino exports are named \*_openvino_model"),
    ("onnx", "a-file/m.onnx", {"a-file": "file"}, r"--out: cannot write .*m\.onnx"),
])
def test_output_that_would_be_clobbered_or_unloadable_is_refused(model: Path, tmp_path: Path, fmt: str, out: str,
                                                                 existing: dict[str, str], match: str) -> None:
    for name, kind in existing.items():
        if kind == "dir":
            (tmp_path / name).mkdir()
            (tmp_path / name / "keep.txt").write_text("mine")
        else:
            (tmp_path / name).write_text("mine")
    with pytest.raises(ConfigError, match=match):
        export(model, format=fmt, out=tmp_path / out)
    for name, kind in existing.items():
        assert (tmp_path / name / "keep.txt" if kind == "dir" else tmp_path / name).read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(existing)  # no temp leftovers


@pytest.mark.parametrize("fmt, int8, name", [("onnx", False, "best.onnx"), ("onnx", True, "best_int8.onnx"),
                                             ("openvino", False, "best_openvino_model"),
                                             ("torchscript", False, "best.torchscript")])
def test_default_output_beside_model(tmp_path: Path, fmt: str, int8: bool, name: str) -> None:
    (tmp_path / "best.pt").touch()
    assert default_output(tmp_path / "best.pt", get_exporter(fmt), int8=int8) == tmp_path / name


# --- ONNX ----------------------------------------------------------------------------------------------------

def test_onnx_metadata_and_axes(onnx_dynamic: Path) -> None:
    proto = onnx.load(str(onnx_dynamic))
    meta = decode_props({p.key: p.value for p in proto.metadata_props})
    assert meta["task"] == "segment" and meta["exporter"] == "onnx" and meta["segpipe_version"] == __version__
    assert len(meta["names"]) == 80 and meta["names"][0] == "person"
    assert (meta["imgsz"], meta["stride"], meta["batch"], meta["precision"], meta["dynamic"]) == (
        [IMGSZ, IMGSZ], 32, [1, 8], "fp32", True)
    assert meta["model_yaml"]["scale"] == "n" and len(meta["model_hash"]) == 64
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"]
    assert proto.opset_import[0].version == 17
    assert {o.name for o in proto.graph.output} == {"pred", "proto"}


def test_fp16_onnx_close_to_fp32(model: Path, onnx_dynamic: Path, real_batch: torch.Tensor, tmp_path: Path) -> None:
    half = export(model, format="onnx", imgsz=IMGSZ, half=True, out=tmp_path / "h.onnx")
    b = load_backend(half, options=BackendOptions(threads=1))
    assert b.meta.precision == "fp16" and not b.meta.dynamic
    inits = onnx.load(str(half)).graph.initializer
    assert sum(i.data_type == onnx.TensorProto.FLOAT16 for i in inits) > len(inits) // 2
    (p16, q16), (p32, q32) = b(real_batch), load_backend(onnx_dynamic)(real_batch)
    assert p16.dtype == torch.float32
    assert (p16[:, 4:84] - p32[:, 4:84]).abs().max() < 5e-3  # class scores
    assert (p16[:, :4] - p32[:, :4]).abs().max() < 1.0  # boxes, pixels
    assert (q16 - q32).abs().max() < 0.05


# --- INT8 ------------------------------------------------------------------------------------------------------

def _assert_same_confident_objects(pq: torch.Tensor, pf: torch.Tensor) -> None:
    """INT8 predictions ``pq`` against fp32 ``pf`` (N, 4+80+32, A): the best anchor per image has the same
    class and a close score."""
    for i in range(pf.shape[0]):
        sq, sf = pq[i, 4:84], pf[i, 4:84]
        best = sf.max(0).values.argmax()
        assert sq[:, best].argmax() == sf[:, best].argmax()
        assert abs(float(sq[:, best].max() - sf[:, best].max())) < 0.1


def test_int8_onnx(model: Path, onnx_dynamic: Path, coco128: Path, real_batch: torch.Tensor, tmp_path: Path) -> None:
    q = export(model, format="onnx", imgsz=IMGSZ, int8=True, data=str(coco128 / "coco128-seg.yaml"),
               calib_images=4, out=tmp_path / "q.onnx")
    proto = onnx.load(str(q))
    b = load_backend(q, options=BackendOptions(threads=1))
    assert b.meta.precision == "int8" and b.meta.extra["int8"]["calib_images"] == 4
    ops = {n.op_type for n in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    # The DFL stays fp32 (its weights a float initialiser, not dequantised int8); the head's output convs
    # are quantised (their weights come out of a DequantizeLinear).
    inits = {i.name: i.data_type for i in proto.graph.initializer}
    producers = {o: n.op_type for n in proto.graph.node for o in n.output}
    convs = {n.name: n for n in proto.graph.node if n.op_type == "Conv"}
    dfl = [n for name, n in convs.items() if "/dfl/" in name]
    outs = [n for name, n in convs.items() if "/cv3.0/cv3.0.2/" in name]
    assert dfl and inits.get(dfl[0].input[1]) == onnx.TensorProto.FLOAT
    assert outs and producers.get(outs[0].input[1]) == "DequantizeLinear"
    _assert_same_confident_objects(b(real_batch)[0], load_backend(onnx_dynamic)(real_batch)[0])


def test_int8_openvino_with_nncf(model: Path, onnx_dynamic: Path, coco128: Path, real_batch: torch.Tensor,
                                 tmp_path: Path) -> None:
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    import openvino as ov

    q = export(model, format="openvino", imgsz=IMGSZ, int8=True, data=str(coco128 / "coco128-seg.yaml"),
               calib_images=4, out=tmp_path / "q_openvino_model")
    b = load_backend(q, options=BackendOptions(threads=1))
    info = b.meta.extra["int8"]
    assert b.meta.precision == "int8" and info["method"] == "nncf" and info["calib_images"] == 4
    ir = ov.Core().read_model(str(q / "model.xml"))
    fq = [op for op in ir.get_ops() if op.get_type_name() == "FakeQuantize"]
    assert len(fq) > 50
    # The head's output convs stay fp32: no quantiser feeds them.
    outs = [op for op in ir.get_ops() if op.get_type_name() == "Convolution" and "/cv3.0/cv3.0.2/" in op.get_friendly_name()]
    assert outs and all(i.get_node().get_type_name() != "FakeQuantize" for o in outs
                        for i in (v.get_source_output() for v in o.inputs()))
    _assert_same_confident_objects(b(real_batch)[0], load_backend(onnx_dynamic)(real_batch)[0])


def test_int8_openvino_without_nncf_says_what_to_install(model: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("openvino")
    from engines.errors import BackendUnavailableError

    monkeypatch.setitem(__import__("sys").modules, "nncf", None)  # import nncf -> ImportError
    (tmp_path / "images").mkdir()
    cv2.imwrite(str(tmp_path / "images" / "a.jpg"), np.zeros((64, 64, 3), np.uint8))
    (tmp_path / "d.yaml").write_text("train: images\nval: images\nnames: [a]\n")
    with pytest.raises(BackendUnavailableError, match=r"needs NNCF: pip install segpipe\[openvino\]"):
        export(model, format="openvino", imgsz=IMGSZ, int8=True, data=str(tmp_path / "d.yaml"),
               out=tmp_path / "q_openvino_model")
    assert not (tmp_path / "q_openvino_model").exists()


def test_nodes_to_exclude_names_the_head_outputs(onnx_dynamic: Path) -> None:
    names = nodes_to_exclude(onnx.load(str(onnx_dynamic)))
    for part in ("/cv2.0/cv2.0.2/", "/cv3.2/cv3.2.2/", "/cv4.1/cv4.1.2/", "/proto/cv3/", "/dfl/"):
        assert any(part in n for n in names), part
    assert not any("/cv2.0/cv2.0.0/" in n or n.startswith("/model.21/") for n in names)
    decode = nodes_to_exclude(onnx.load(str(onnx_dynamic)), output_convs=False)
    assert set(decode) < set(names) and any("/dfl/" in n for n in decode)
    assert not any(part in n for n in decode for part in ("/cv2.0/cv2.0.2/", "/cv4.1/cv4.1.2/", "/proto/cv3/"))


# --- CLI ------------------------------------------------------------------------------------------------------

def test_cli_export_prints_path_and_usage(model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "m.torchscript"
    rc = cli_main(["export", "--model", str(model), "--format", "torchscript", "--imgsz", "320", "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0 and out.is_file()
    assert f"-> {out}" in text and f"segpipe predict --model {out}" in text
    assert load_backend(out).meta.imgsz == (IMGSZ, IMGSZ)


def test_cli_val_compares_the_source_at_the_export_size(model: Path, coco128: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """--val scored the checkpoint at its training size (640) against an export at --imgsz 128, and
    reported the difference of the two sizes as the export's loss."""
    import json
    import re

    images = sorted((coco128 / "images" / "train2017").glob("*.jpg"))[:8]  # the fixture's training images
    (tmp_path / "val.txt").write_text("\n".join(map(str, images)) + "\n")
    names = [ln.split(":", 1)[1].strip() for ln in (coco128 / "coco128-seg.yaml").read_text().splitlines()
             if ln.strip()[:1].isdigit() and ":" in ln]
    (tmp_path / "d.yaml").write_text(f"path: {coco128}\ntrain: {tmp_path / 'val.txt'}\nval: {tmp_path / 'val.txt'}\n"
                                     f"names: {json.dumps(names)}\n")
    assert cli_main(["export", "--model", str(model), "--format", "torchscript", "--imgsz", "128", "--val",
                     "--data", str(tmp_path / "d.yaml"), "--out", str(tmp_path / "m.torchscript")]) == 0
    change = re.search(r"mask mAP50-95 change: ([-+]\d\.\d+), box: ([-+]\d\.\d+)", capsys.readouterr().out)
    assert change and all(abs(float(v)) < 0.02 for v in change.groups()), change


def test_sigterm_during_export_leaves_no_temp_folder(model: Path, tmp_path: Path) -> None:
    """SIGTERM ended the process where it stood, leaving the half-written ``.m.onnx.XXXX`` folder."""
    from tests.helpers import sigterm_once

    code, err = sigterm_once(["export", "--model", str(model), "--format", "onnx", "--simplify", "--out",
                              str(tmp_path / "m.onnx")], lambda: bool(list(tmp_path.glob(".m.onnx.*"))),
                             "an export in progress")
    assert code == 143 and err.strip().splitlines()[-1] == "segpipe export: terminated", err
    # the export itself when the signal came as it was being put in place, else nothing
    assert [p.name for p in tmp_path.iterdir()] in ([], ["m.onnx"])


def test_cli_info_reads_an_exported_model(onnx_dynamic: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """It said 'not a model checkpoint': the one command that describes a model knew no exported one."""
    assert cli_main(["info", "--model", str(onnx_dynamic)]) == 0
    first, *_, last = capsys.readouterr().out.strip().splitlines()
    assert first.startswith(f"{onnx_dynamic}: onnx export of ")
    assert first.endswith("fp32, imgsz 320x320 (any H, W), batch 1..8, stride 32, 80 classes (person, bicycle, car, "
                          "motorcycle, airplane, bus, train, truck, ...)")
    assert last.startswith("yolov8n-seg summary: ") and last.endswith("3,409,968 parameters, 80 classes, 3.2 GFLOPs at 320x320")
    assert cli_main(["info", "--model", str(onnx_dynamic), "--nc", "3"]) == 2
    assert "--nc: only applies to a model YAML" in capsys.readouterr().err


@pytest.mark.parametrize("argv, match", [
    (["--format", "onx"], "segpipe export: error: --format: unknown format 'onx'; choose one of: onnx, openvino, "
                          "torchscript"),
    (["--format", "onnx", "--imgsz", "3x3x3"], "segpipe export: error: --imgsz: expected N or H,W"),
    (["--format", "onnx", "--val"], "segpipe export: error: --val: needs --data"),
    # said after the export was written, which was then of no use
    (["--format", "onnx", "--val", "--data", "d.yaml", "--imgsz", "192,320", "--out", "{tmp}/m.onnx"],
     "segpipe export: error: --val: scores square inputs only, got --imgsz 192,320"),
])
def test_cli_errors_are_one_line(model: Path, argv: list[str], match: str, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    rc = cli_main(["export", "--model", str(model), *(a.replace("{tmp}", str(tmp_path)) for a in argv)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1 and err[0].startswith(match)
    assert not (tmp_path / "m.onnx").exists()


def test_calibration_on_fewer_images_than_asked_says_so(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from engines.export.calib import calibration_files

    (tmp_path / "images").mkdir()
    for i in range(3):
        cv2.imwrite(str(tmp_path / "images" / f"{i}.jpg"), np.full((32, 32, 3), 40 * i, np.uint8))
    data = tmp_path / "data.yaml"
    data.write_text(f"path: {tmp_path}\ntrain: images\nval: images\nnames: [a]\n")
    with caplog.at_level("WARNING", logger="segpipe.export"):
        assert len(calibration_files(str(data), 8, quiet=True)) == 3
        assert not caplog.records
        assert len(calibration_files(str(data), 8)) == 3  # it calibrated on 3 without a word
    assert "INT8 calibration on all 3 images" in caplog.text and "asked for 8" in caplog.text
