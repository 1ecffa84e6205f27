"""engines.nn: YOLOv8-seg and YOLO11-seg built from YAML, outputs, fusion, anchors, statistics and errors.

Full key-for-key and output parity with a real Ultralytics checkpoint is in
test_ultralytics_parity.py; here the expected counts are Ultralytics' published figures.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml

from engines.errors import ConfigError, ModelError
from engines.nn import SegmentationModel, SegTrainOutput, dist2bbox, make_anchors
from engines.nn.head import bbox2dist
from engines.nn.info import count_gflops, count_params, layer_table, model_stats, summary
from engines.nn.model import CFG_DIR, resolve_model_cfg
from engines.nn.modules import C2PSA, DFL, Bottleneck, C3k, C3k2, DWConv


@pytest.fixture(scope="module")
def nano() -> SegmentationModel:
    torch.manual_seed(0)
    return SegmentationModel("yolov8n-seg.yaml").eval()


# scale -> (params as Ultralytics builds it, published M params, published GFLOPs at 640)
PUBLISHED = {
    "n": (3_409_968, 3.4, 12.6),
    "s": (11_821_056, 11.8, 42.6),
    "m": (27_285_968, 27.3, 110.2),
    "l": (45_997_728, 46.0, 220.5),
    "x": (71_827_888, 71.8, 344.1),
}


@pytest.mark.parametrize("scale", list(PUBLISHED))
def test_scale_params_and_gflops_match_published(scale: str) -> None:
    model = SegmentationModel(f"yolov8{scale}-seg.yaml")
    params, mparams, gflops = PUBLISHED[scale]
    assert model.yaml["scale"] == scale
    assert count_params(model) == params
    assert round(count_params(model) / 1e6, 1) == mparams
    assert round(count_gflops(model, 640), 1) == gflops


# YOLO11-seg: params as Ultralytics 8.4.190 builds them (checked in the reference env of
# tests/fixtures/ultralytics/make_fixture.py), GFLOPs as the YOLO11 model card publishes them (within 0.5:
# the card's table is rounded from a slightly different count; 8.4.190's own thop count is lower still,
# 9.96 for n, as it is for YOLOv8: 12.14 against the published 12.6).
PUBLISHED11 = {
    "n": (2_876_848, 10.4),
    "s": (10_113_248, 35.5),
    "m": (22_420_896, 123.3),
    "l": (27_678_368, 142.2),
    "x": (62_142_656, 319.0),
}


@pytest.mark.parametrize("scale", list(PUBLISHED11))
def test_yolo11_scale_params_and_gflops_match_ultralytics(scale: str) -> None:
    with torch.device("meta"):  # counting only: no weights are made
        model = SegmentationModel(f"yolo11{scale}-seg.yaml")
    params, gflops = PUBLISHED11[scale]
    assert model.yaml["scale"] == scale and model.yaml["yaml_file"] == f"yolo11{scale}-seg.yaml"
    assert count_params(model) == params
    assert count_gflops(model, 640) == pytest.approx(gflops, abs=0.5)
    # As Ultralytics' parse_model: C3k blocks inside C3k2 at m/l/x only, and the depth-wise class branch.
    inner = [type(b) for m in model.modules() if isinstance(m, C3k2) for b in m.m]
    assert set(inner) == ({C3k} if scale in "mlx" else {C3k, Bottleneck})
    assert not model.head.legacy and isinstance(model.head.cv3[0][0][0], DWConv)


def test_yolo11n_keys_and_layers() -> None:
    torch.manual_seed(0)
    model = SegmentationModel("yolo11n-seg.yaml").eval()
    sd = model.state_dict()
    assert len(sd) == 561  # as in Ultralytics' yolo11n-seg checkpoints
    expect = {
        "model.2.m.0.cv1.conv.weight": (8, 16, 3, 3),  # C3k2's bottleneck is half width (e=0.5)
        "model.6.m.0.cv3.conv.weight": (64, 64, 1, 1),  # C3k
        "model.6.m.0.m.1.cv2.conv.weight": (32, 32, 3, 3),
        "model.10.m.0.attn.qkv.conv.weight": (256, 128, 1, 1),  # 2 heads, key_dim 32
        "model.10.m.0.attn.pe.conv.weight": (128, 1, 3, 3),
        "model.10.m.0.ffn.1.conv.weight": (128, 256, 1, 1),
        "model.23.cv3.0.0.0.conv.weight": (64, 1, 3, 3),  # DWConv
        "model.23.cv3.0.0.1.conv.weight": (80, 64, 1, 1),
        "model.23.cv3.2.2.bias": (80,),
        "model.23.cv4.0.0.conv.weight": (32, 64, 3, 3),
    }
    for k, shape in expect.items():
        assert tuple(sd[k].shape) == shape, k
    assert isinstance(model.model[10], C2PSA) and model.nc == 80
    pred, proto = model(torch.rand(1, 3, 64, 96))
    assert pred.shape == (1, 4 + 80 + 32, 8 * 12 + 4 * 6 + 2 * 3) and proto.shape == (1, 32, 16, 24)
    out = model.train()(torch.rand(2, 3, 64, 64))
    assert isinstance(out, SegTrainOutput) and out.coeffs.shape == (2, 32, 64 + 16 + 4)


def test_key_names_and_shapes(nano: SegmentationModel) -> None:
    sd = nano.state_dict()
    assert len(sd) == 417
    expect = {
        "model.0.conv.weight": (16, 3, 3, 3),
        "model.0.bn.running_var": (16,),
        "model.2.m.0.cv1.conv.weight": (16, 16, 3, 3),
        "model.9.cv2.conv.weight": (256, 512, 1, 1),
        "model.22.cv2.0.2.weight": (64, 64, 1, 1),
        "model.22.cv3.2.2.bias": (80,),
        "model.22.cv4.0.0.conv.weight": (32, 64, 3, 3),
        "model.22.proto.cv1.conv.weight": (64, 64, 3, 3),
        "model.22.proto.upsample.weight": (64, 64, 2, 2),
        "model.22.proto.cv3.conv.weight": (32, 64, 1, 1),
        "model.22.dfl.conv.weight": (1, 16, 1, 1),
    }
    for k, shape in expect.items():
        assert tuple(sd[k].shape) == shape, k
    assert not any("stride" in k or "anchor" in k for k in sd)  # derived, never stored
    head = nano.head
    assert (head.reg_max, head.nm, head.npr, nano.nc) == (16, 32, 64, 80)
    assert head.legacy and isinstance(head.cv3[0][0].conv, torch.nn.Conv2d) and head.cv3[0][0].conv.groups == 1
    assert torch.equal(nano.stride, torch.tensor([8.0, 16.0, 32.0]))


def test_init_matches_ultralytics_conventions(nano: SegmentationModel) -> None:
    bns = [m for m in nano.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(m.eps == 1e-3 and m.momentum == 0.03 for m in bns)
    head = nano.head
    for i, s in enumerate((8, 16, 32)):
        assert torch.all(head.cv2[i][-1].bias == 2.0)
        assert torch.allclose(head.cv3[i][-1].bias, torch.full((80,), math.log(5 / 80 / (640 / s) ** 2)))
    assert torch.equal(head.dfl.conv.weight.flatten(), torch.arange(16.0))
    assert not head.dfl.conv.weight.requires_grad


def test_eval_outputs(nano: SegmentationModel) -> None:
    x = torch.rand(2, 3, 96, 128)
    with torch.no_grad():
        pred, proto = nano(x)
    a = 12 * 16 + 6 * 8 + 3 * 4
    assert pred.shape == (2, 4 + 80 + 32, a) and proto.shape == (2, 32, 24, 32)
    scores = pred[:, 4:84]
    assert scores.min() >= 0 and scores.max() <= 1
    # Boxes are xywh in input pixels: centres lie near their anchor (within ~16 strides).
    cx, w = pred[:, 0], pred[:, 2]
    assert w.min() > 0 and cx.min() > -16 * 32 and cx.max() < 128 + 16 * 32
    # Rows of one image do not depend on the other image in the batch.
    with torch.no_grad():
        single, _ = nano(x[1:])
    torch.testing.assert_close(single[0], pred[1], rtol=1e-4, atol=1e-4)


def test_train_outputs() -> None:
    model = SegmentationModel("yolov8n-seg.yaml", nc=3).train()
    out = model(torch.rand(2, 3, 64, 96))
    assert isinstance(out, SegTrainOutput)
    assert [tuple(f.shape) for f in out.feats] == [(2, 67, 8, 12), (2, 67, 4, 6), (2, 67, 2, 3)]
    assert out.coeffs.shape == (2, 32, 96 + 24 + 6) and out.proto.shape == (2, 32, 16, 24)
    (out.feats[0].sum() + out.coeffs.sum() + out.proto.sum()).backward()
    assert model.model[0].conv.weight.grad is not None


def test_nc_override_builds_smaller_head() -> None:
    model = SegmentationModel("yolov8n-seg.yaml", nc=3).eval()
    assert model.nc == 3 and model.yaml["nc"] == 3
    assert model.state_dict()["model.22.cv3.0.2.weight"].shape == (3, 64, 1, 1)  # c3 = max(ch[0], min(nc, 100))
    with torch.no_grad():
        pred, _ = model(torch.rand(1, 3, 64, 64))
    assert pred.shape[1] == 4 + 3 + 32


def test_fuse_keeps_outputs(nano: SegmentationModel) -> None:
    import copy

    model = copy.deepcopy(nano)
    for m in model.modules():  # non-trivial BN statistics, so folding actually changes weights
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
        fused = model.fuse()
        after = fused(x)
    assert fused is model and model.is_fused()
    keys = model.state_dict().keys()
    assert "model.0.conv.bias" in keys and not any(".bn." in k for k in keys)
    for b, a in zip(before, after, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_anchor_cache_per_shape(nano: SegmentationModel) -> None:
    head = nano.head
    with torch.no_grad():
        head._anchor_cache.clear()
        nano(torch.rand(1, 3, 64, 64))
        (first,) = [a for a, _ in head._anchor_cache.values()]
        nano(torch.rand(3, 3, 64, 64))  # batch size does not matter
        assert [a for a, _ in head._anchor_cache.values()] == [first]
        nano(torch.rand(1, 3, 64, 96))
        # The first shape's grid survives (a CUDA graph captured at that shape still reads it).
        kept, other = (a for a, _ in head._anchor_cache.values())
        assert kept is first and other.shape == (2, 8 * 12 + 4 * 6 + 2 * 3)


def test_device_free_anchors_equal_arange_anchors() -> None:
    feats = [torch.zeros(2, 4, 5, 7), torch.zeros(2, 4, 3, 4, dtype=torch.float32)]
    for got, want in zip(make_anchors(feats, [8.0, 16.0], device_free=True), make_anchors(feats, [8.0, 16.0]),
                         strict=True):
        assert torch.equal(got, want)


def test_make_anchors_and_dist2bbox() -> None:
    feats = [torch.zeros(1, 1, 2, 3), torch.zeros(1, 1, 1, 2)]
    points, strides = make_anchors(feats, [8.0, 16.0])
    assert points.tolist() == [[0.5, 0.5], [1.5, 0.5], [2.5, 0.5], [0.5, 1.5], [1.5, 1.5], [2.5, 1.5],
                               [0.5, 0.5], [1.5, 0.5]]
    assert strides.flatten().tolist() == [8.0] * 6 + [16.0] * 2
    dist = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    anchor = torch.tensor([[10.0, 20.0]])
    assert dist2bbox(dist, anchor, xywh=False).tolist() == [[9.0, 18.0, 13.0, 24.0]]
    assert dist2bbox(dist, anchor, xywh=True).tolist() == [[11.0, 21.0, 4.0, 6.0]]
    assert bbox2dist(anchor, torch.tensor([[9.0, 18.0, 13.0, 24.0]]), 16).tolist() == [[1.0, 2.0, 3.0, 4.0]]


def test_dfl_is_the_expected_bin() -> None:
    logits = torch.full((1, 64, 1), -50.0)
    for side, b in enumerate((0, 3, 7, 15)):
        logits[0, side * 16 + b, 0] = 50.0
    torch.testing.assert_close(DFL(c1=16)(logits), torch.tensor([[[0.0], [3.0], [7.0], [15.0]]]))


def test_onnx_export_with_dynamic_batch(nano: SegmentationModel, tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    path = tmp_path / "m.onnx"
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(nano, (torch.rand(1, 3, 64, 96),), str(path), dynamo=False, opset_version=17,
                          input_names=["images"], output_names=["pred", "proto"],
                          dynamic_axes={"images": {0: "batch"}, "pred": {0: "batch"}, "proto": {0: "batch"}})
    x = torch.rand(3, 3, 64, 96)
    pred, proto = ort.InferenceSession(str(path)).run(None, {"images": x.numpy()})
    with torch.no_grad():
        ref_pred, ref_proto = nano(x)
    torch.testing.assert_close(torch.from_numpy(pred), ref_pred, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(torch.from_numpy(proto), ref_proto, rtol=1e-4, atol=1e-4)


def test_info_table_and_summary(nano: SegmentationModel) -> None:
    table = layer_table(nano)
    lines = table.splitlines()
    assert len(lines) == 1 + 23
    assert "Segment" in lines[-1] and "[15, 18, 21]" in lines[-1] and "[80, 32, 64, [64, 128, 256]]" in lines[-1]
    text = summary(nano, 640)
    assert "yolov8n-seg summary" in text and "3,409,968 parameters" in text and "12.6 GFLOPs" in text
    stats = model_stats(nano, 320)
    assert stats.gflops == pytest.approx(12.6319104 / 4, rel=1e-6)  # conv FLOPs scale with pixels


@pytest.mark.parametrize(
    ("cfg", "kwargs", "error", "match"),
    [
        ("yolov8q-seg.yaml", {}, ModelError, "unknown model scale 'q'"),
        ("yolov8-seg.yaml", {"scale": "z"}, ModelError, "unknown model scale 'z'"),
        ("nope-seg.yaml", {}, ModelError, "'nope-seg.yaml' not found"),
        ("yolov8n-seg.yaml", {"nc": 0}, ConfigError, "nc: number of classes must be a positive integer"),
        ("yolov8n-seg.yaml", {"nc": "3"}, ConfigError, "nc: number of classes"),
    ],
)
def test_bad_model_names(cfg: str, kwargs: dict, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        SegmentationModel(cfg, **kwargs)


def _edited(tmp_path: Path, edit: str) -> Path:
    d = yaml.safe_load((CFG_DIR / "yolov8-seg.yaml").read_text())
    if edit == "unknown module":
        d["head"][2][2] = "A2C2f"
    elif edit == "unknown modules":  # YOLOv12's head block, and an Ultralytics module segpipe lacks
        d["head"][2][2], d["backbone"][2][2] = "A2C2f", "C3"
    elif edit == "end2end":
        d["end2end"] = "yes"
    elif edit == "reg_max":
        d["reg_max"] = 0
    elif edit == "sppf args":
        d["backbone"][9][3] = [1024, 5, 3, True, 1]
    elif edit == "bad row":
        d["backbone"][1] = [-1, 1, "Conv"]
    elif edit == "bad from":
        d["head"][1][0] = [-1, 30]
    elif edit == "bad args":
        d["backbone"][0][3] = ["x", 3, 2]
    elif edit == "no head":
        del d["head"]
    elif edit == "bad scale row":
        d["scales"]["n"] = [0.33, 0.25]
    elif edit == "mixed strides":
        d["head"][1][0] = [-1, 4]
    path = tmp_path / "custom-seg.yaml"
    path.write_text(yaml.safe_dump(d))
    return path


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        ("unknown module", r"head\[2\]: unknown module 'A2C2f' \(segpipe builds YOLOv8-seg, YOLO11-seg and "
                           r"YOLO26-seg; known: "),
        ("unknown modules", r"backbone\[2\]: unknown modules 'C3', 'A2C2f'"),
        ("end2end", r"custom-seg.yaml: end2end: expected true or false, got 'yes'"),
        ("reg_max", r"custom-seg.yaml: reg_max: expected an integer number of box bins in 1..64, got 0"),
        ("sppf args", r"backbone\[9\]: bad arguments .* expected \[c2, k\] or \[c2, k, n, shortcut\]"),
        ("bad row", r"backbone\[1\]: expected \[from, repeats, module, args\]"),
        ("bad from", r"head\[1\]: 'from' \[-1, 30\] refers to a layer"),
        ("bad args", r"backbone\[0\]: bad arguments"),
        ("no head", r"head: missing or empty"),
        ("mixed strides", r"head\[1\]: bad arguments .* different strides"),
        ("bad scale row", r"custom-seg.yaml: scales.n: expected \[depth, width, max_channels\]"),
    ],
)
def test_bad_model_yaml(tmp_path: Path, edit: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        SegmentationModel(_edited(tmp_path, edit), scale="n")


def test_custom_yaml_file_and_default_scale(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text((CFG_DIR / "yolov8-seg.yaml").read_text())
    d = resolve_model_cfg(path)
    assert d["scale"] == "n" and "no model scale given" in caplog.text
    assert resolve_model_cfg("yolov8x-seg.yaml")["scale"] == "x"
    assert resolve_model_cfg("yolo11x-seg.yaml")["scale"] == "x"
    assert resolve_model_cfg(d)["scale"] == "n"  # a resolved dict (as checkpoints store it) round-trips


def test_cli_info_on_yaml(capsys: pytest.CaptureFixture[str]) -> None:
    from pipeline.cli import main as cli_main

    assert cli_main(["info", "--model", "yolov8s-seg.yaml", "--nc", "3", "--imgsz", "320"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == "yolov8s-seg summary: 216 layers, 11,791,257 parameters, 3 classes, 10.6 GFLOPs at 320x320"
    assert len(out) == 1 + 23 + 1
    assert cli_main(["info", "--model", "yolo11n-seg.yaml"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == "yolo11n-seg summary: 288 layers, 2,876,848 parameters, 80 classes, 10.4 GFLOPs at 640x640"
    assert len(out) == 1 + 24 + 1 and "C2PSA" in out[11] and "[80, 32, 64, [64, 128, 256]]" in out[-2]
    assert cli_main(["info", "model=yolov8q-seg.yaml"]) == 1
    assert "unknown model scale 'q'" in capsys.readouterr().err
    assert cli_main(["info", "--model", "yolov8n-seg.yaml", "--imgsz", "100"]) == 2
    assert capsys.readouterr().err.strip() == "segpipe info: error: --imgsz: must be a positive multiple of 32, got 100"
    assert cli_main(["info", "--model", "yolov8n-seg.yaml", "--imgsz", "65536"]) == 2  # not a 38 GB letterbox
    assert capsys.readouterr().err.strip() == "segpipe info: error: --imgsz: at most 8192, got 65536"
    assert cli_main(["info", "--model", "yolov8n-seg.yaml", "--nc", "0"]) == 2  # it was named 'nc:'
    assert capsys.readouterr().err.strip() == ("segpipe info: error: --nc: number of classes must be a positive "
                                               "integer, got 0")
