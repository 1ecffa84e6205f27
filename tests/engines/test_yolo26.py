"""YOLO26-seg beyond the parity fixture: top-k selection rules, the NMS-free head through exports, the
CLI, a run config and the streaming pipeline, training one (its loss itself: test_loss26.py), and what
segpipe refuses (NMS-free on a model or an export without that head)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from engines import SegModel
from engines.checkpoint import load_checkpoint
from engines.errors import ModelError
from engines.export import export
from engines.ops import NMSConfig, non_max_suppression, topk_rows
from engines.train.plots import read_results
from pipeline.cli import main
from pipeline.config import parse_config
from pipeline.device_settings import DeviceSettings
from pipeline.supervisor import Supervisor
from tests.engines.shapes_data import make_shapes_dataset
from tests.helpers import read_jsonl
from tests.pipeline.media import write_clip

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "ultralytics"
YOLO26, YOLO11 = FIXTURES / "yolo26n-seg-coco8.pt", FIXTURES / "yolo11n-seg-coco8.pt"
pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py: exports compare at 1e-4


@pytest.fixture(scope="module")
def street(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The street photograph the fixture model was trained on, letterboxed into 320x320 (PNG, BGR): every
    way of running it at 320 (a dynamic or a square input) sees the same pixels."""
    with np.load(FIXTURES / "raw26_000000000025.npz") as z:
        rgb = z["input_u8"][0].transpose(1, 2, 0)  # 224 x 320, padded by Ultralytics' letterbox
    square = np.full((320, 320, 3), 114, np.uint8)
    square[48:272] = rgb[..., ::-1]
    path = tmp_path_factory.mktemp("street") / "street.png"
    cv2.imwrite(str(path), square)
    return path


def _pred(scores: list[list[float]], nm: int = 2) -> torch.Tensor:
    """A (1, 4 + nc + nm, A) output: every anchor the same box (NMS would keep one), these class scores,
    mask coefficients that name the anchor."""
    a = len(scores)
    box = torch.tensor([50.0, 50.0, 20.0, 20.0])[:, None].expand(4, a)
    coeffs = torch.arange(a, dtype=torch.float32)[None].expand(nm, a)
    return torch.cat((box, torch.tensor(scores).T, coeffs), 0)[None]


def test_topk_takes_the_best_anchor_class_pairs_without_nms() -> None:
    pred = _pred([[0.9, 0.8, 0.1], [0.2, 0.3, 0.95], [0.1, 0.1, 0.1], [0.6, 0.0, 0.0]])
    (rows,) = topk_rows(pred, NMSConfig(conf=0.25), nc=3)
    # (score, class, anchor): one anchor may give two classes; the same box is never suppressed; no more
    # pairs than anchors are taken (Ultralytics' k = min(max_det, anchors)), so (0.3, 1, 1) is not
    assert [(round(float(r[4]), 2), int(r[5]), int(r[6])) for r in rows] == [
        (0.95, 2, 1), (0.9, 0, 0), (0.8, 1, 0), (0.6, 0, 3)]
    assert torch.equal(rows[0, :4], torch.tensor([40.0, 40.0, 60.0, 60.0]))  # xyxy, as NMS rows
    assert len(non_max_suppression(pred, NMSConfig(conf=0.25), nc=3)[0]) == 2  # NMS: one box per class seen
    (rows,) = topk_rows(pred, NMSConfig(conf=0.25, classes=(1,)), nc=3)
    assert [(int(r[5]), int(r[6])) for r in rows] == [(1, 0)]  # filtered after the top-k, as there
    (rows,) = topk_rows(pred, NMSConfig(conf=0.25, agnostic=True), nc=3)
    assert [(int(r[5]), int(r[6])) for r in rows] == [(2, 1), (0, 0), (0, 3)]  # an anchor's best class only
    (rows,) = topk_rows(pred, NMSConfig(conf=0.25, max_det=2), nc=3)
    assert len(rows) == 2 and float(rows[1, 4]) == pytest.approx(0.9)
    (rows,) = topk_rows(pred[:, :, :0], NMSConfig(), nc=3)  # no anchor at all
    assert rows.shape == (0, 8)


def _same(a: object, b: object) -> None:
    assert len(a) == len(b) > 0  # type: ignore[arg-type]
    assert a.class_ids.tolist() == b.class_ids.tolist()  # type: ignore[attr-defined]
    np.testing.assert_allclose(a.boxes.numpy(), b.boxes.numpy(), atol=0.05)  # type: ignore[attr-defined]
    np.testing.assert_allclose(a.scores.numpy(), b.scores.numpy(), atol=1e-3)  # type: ignore[attr-defined]


def test_an_nms_free_onnx_export_runs_the_one_to_one_head(tmp_path: Path, street: Path) -> None:
    torch_free, torch_plain = SegModel(YOLO26, nms_free=True), SegModel(YOLO26)
    nms_free = torch_free.export("onnx", imgsz=320, out=tmp_path / "free.onnx")  # the head it runs
    plain = export(YOLO26, format="onnx", imgsz=320, dynamic=True, out=tmp_path / "plain.onnx")
    onnx_free, onnx_plain = SegModel(nms_free), SegModel(plain)
    assert onnx_free.backend.meta.nms_free and torch_free.backend.meta.nms_free
    assert not onnx_plain.backend.meta.nms_free and not torch_plain.backend.meta.nms_free
    _same(onnx_free(str(street), imgsz=320)[0], torch_free(str(street), imgsz=320)[0])
    _same(onnx_plain(str(street), imgsz=320)[0], torch_plain(str(street), imgsz=320)[0])
    # the artifact's head was chosen at export: asking it for the other one is an error, not a silent swap
    with pytest.raises(ModelError, match=r"plain.onnx: exported with its NMS head; .*--nms-free"):
        SegModel(plain, nms_free=True)


def test_an_engine_build_exports_the_head_it_is_asked_for(tmp_path: Path) -> None:
    """What TensorRT would parse (checked without it): the ONNX made for an NMS-free engine runs that head,
    and a plain ONNX export cannot become one."""
    from engines.errors import ConfigError
    from engines.export.tensorrt import EngineSpec
    from engines.export.trt_build import onnx_for

    path, record = onnx_for(YOLO26, EngineSpec(imgsz=(320, 320), nms_free=True), tmp_path)
    assert record["nms_free"] is True and SegModel(path).backend.meta.nms_free
    _, record = onnx_for(YOLO26, EngineSpec(imgsz=(320, 320)), tmp_path)
    assert record["nms_free"] is False
    plain = export(YOLO26, format="onnx", imgsz=320, out=tmp_path / "plain.onnx")
    with pytest.raises(ConfigError, match=r"plain.onnx was exported with its NMS head \(export it with --nms-free\)"):
        onnx_for(plain, EngineSpec(imgsz=(320, 320), nms_free=True), tmp_path)


def test_nms_free_needs_a_model_with_that_head(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"yolo11n-seg-coco8.pt: nms_free: this model has no NMS-free"):
        SegModel(YOLO11, nms_free=True)
    with pytest.raises(ModelError, match=r"yolo11n-seg-coco8.pt: --nms-free: this model has no NMS-free"):
        export(YOLO11, format="onnx", nms_free=True, out=tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


def test_cli_predict_and_val_take_nms_free(tmp_path: Path, street: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "pred"
    assert main(["predict", "--model", str(YOLO26), "--source", str(street), "--imgsz", "320", "--nms-free",
                 "--save-txt", "--out", str(out)]) == 0
    labels = (out / "labels" / "street.txt").read_text().splitlines()
    free = SegModel(YOLO26, nms_free=True)(str(street), imgsz=320)[0]
    assert len(labels) == len(free) > 0
    capsys.readouterr()
    assert main(["predict", "--model", str(YOLO11), "--source", str(street), "--nms-free",
                 "--out", str(tmp_path / "p11")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has no NMS-free" in err[0], err


def test_training_yolo26_teaches_both_heads(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """From scratch on 16 images at 64 px (~100 steps): every loss term falls, and the one-to-one head
    (NMS-free) finds and draws the shapes about as well as the one-to-many head with NMS does. With
    --nms-free the run's own validation scored the one-to-one head: best.pt's metrics are `val --nms-free`'s."""
    data = make_shapes_dataset(tmp_path / "shapes", n=16, size=128)
    run = tmp_path / "run"
    assert main(["train", "--model", "yolo26n-seg.yaml", "--data", str(data), "--epochs", "25", "--imgsz", "64",
                 "--batch", "4", "--nbs", "4", "--workers", "0", "--device", "cpu", "--optimizer", "AdamW",
                 "--lr0", "0.01", "--warmup-epochs", "1", "--mosaic", "0", "--close-mosaic", "0", "--no-val",
                 "--no-plots", "--nms-free", "--out", str(run)]) == 0
    res = read_results(run / "results.csv")
    for name in ("box_loss", "seg_loss", "cls_loss", "l1_loss", "sem_loss"):
        first, last = res[f"train/{name}"][:3].mean(), res[f"train/{name}"][-3:].mean()
        assert last < 0.8 * first, (name, first, last)
    best = run / "weights" / "best.pt"
    capsys.readouterr()
    scores = {}
    for head in ("nms", "nms-free"):
        flag = ["--nms-free"] if head == "nms-free" else []
        assert main(["val", "--model", str(best), "--data", str(data), "--imgsz", "64", "--device", "cpu",
                     "--workers", "0", "--out", str(tmp_path / head), *flag]) == 0
        scores[head] = json.loads((tmp_path / head / "metrics.json").read_text())
    for head, m in scores.items():
        assert m["box.map50"] > 0.3 and m["seg.map50"] > 0.3, (head, m)
    recorded = load_checkpoint(best).meta.metrics
    for key in ("box.map", "seg.map", "seg.map50"):
        assert recorded[key] == pytest.approx(scores["nms-free"][key], abs=1e-6), key
    assert recorded["seg.map"] != pytest.approx(scores["nms"]["seg.map"], abs=1e-6)


def test_nms_free_training_needs_a_model_with_that_head(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = make_shapes_dataset(tmp_path / "shapes", n=2, size=64)
    capsys.readouterr()
    assert main(["train", "--model", "yolov8n-seg.yaml", "--data", str(data), "--epochs", "1", "--imgsz", "64",
                 "--workers", "0", "--device", "cpu", "--nms-free", "--out", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--nms-free" in err[0] and "no NMS-free" in err[0], err


def test_a_yolov8_with_one_bin_boxes_trains_with_the_l1_box_loss(tmp_path: Path) -> None:
    import yaml

    from engines.nn.model import CFG_DIR
    d = {**yaml.safe_load((CFG_DIR / "yolov8-seg.yaml").read_text()), "reg_max": 1}
    (tmp_path / "yolov8n-onebin-seg.yaml").write_text(yaml.safe_dump(d))
    data = make_shapes_dataset(tmp_path / "shapes", n=2, size=64)
    assert main(["train", "--model", str(tmp_path / "yolov8n-onebin-seg.yaml"), "--data", str(data), "--epochs",
                 "1", "--imgsz", "64", "--batch", "2", "--workers", "0", "--device", "cpu", "--no-plots",
                 "--out", str(tmp_path / "run")]) == 0
    res = read_results(tmp_path / "run" / "results.csv")
    assert np.isfinite(res["train/l1_loss"]).all() and "train/dfl_loss" not in res and "train/sem_loss" not in res


def test_a_run_config_streams_with_the_nms_free_head(tmp_path: Path, street: Path) -> None:
    """model.nms_free reaches the device stage: a clip of the street runs through top-k, not NMS."""
    image = cv2.imread(str(street))
    clip = write_clip(tmp_path / "street.mp4", images=[image] * 6, fps=10)
    raw = {"model": {"path": str(YOLO26), "device": "cpu", "imgsz": 320, "nms_free": True, "threads": 1},
           "cameras": [{"id": "street", "url": str(clip), "realtime": False, "lossless": True}],
           "sinks": [{"type": "jsonl", "path": str(tmp_path / "events.jsonl")}], "metrics": {"enabled": False}}
    cfg = parse_config(raw, env={})
    settings = DeviceSettings.from_config(cfg)
    assert settings.nms_free and settings.load_backend().meta.nms_free
    sup = Supervisor(cfg=cfg)
    assert sup.run() == 0 and sup.errors == []
    frames = [e for e in read_jsonl(tmp_path / "events.jsonl") if e["kind"] == "frame"]
    expected = SegModel(YOLO26, nms_free=True)(str(street), imgsz=320)[0]
    assert len(frames) == 6
    for e in frames:  # H.264 (4:2:0 colour) moves the scores a little, not which objects are found
        assert [d["class_id"] for d in e["detections"]] == expected.class_ids.tolist()
        np.testing.assert_allclose([d["score"] for d in e["detections"]], expected.scores.numpy(), atol=0.06)


def test_int8_keeps_the_one_to_one_heads_output_convs_in_fp32() -> None:
    """OpenVINO's INT8 kept the output convs of the head YOLOv8 runs in fp32, but quantised those of the
    NMS-free head an nms_free export runs."""
    from engines.export.base import ExportSpec, load_source
    from engines.export.onnx import trace_onnx
    from engines.export.quantize import nodes_to_exclude

    spec = ExportSpec(imgsz=(64, 64), nms_free=True)
    names = nodes_to_exclude(trace_onnx(load_source(YOLO26, nms_free=True), spec))
    for part in ("/one2one_cv2.0/one2one_cv2.0.2/", "/one2one_cv3.2/one2one_cv3.2.2/", "/one2one_cv4.1/one2one_cv4.1.2/",
                 "/proto/cv3/"):
        assert any(part in n for n in names), part
    assert not any("/one2one_cv2.0/one2one_cv2.0.0/" in n for n in names)
