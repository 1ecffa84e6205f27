"""Parity with real Ultralytics (8.4.x) outputs, from tests/fixtures/ultralytics (see make_fixture.py).

The fixture checkpoints are a YOLOv8n-seg, a YOLO11n-seg and a YOLO26n-seg trained briefly by Ultralytics
and saved its way (fp16 pickle). YOLO26 runs its one-to-many head with NMS by default, as Ultralytics 8.4
does, and its NMS-free one-to-one head (top-k, no NMS) with ``nms_free`` (Ultralytics' ``nms=False``). Each is loaded through our restricted unpickler, run on the exact letterboxed
inputs Ultralytics fed it, and compared with its raw eval outputs and its final predict() results
(YOLO11's and YOLO26's raw outputs are kept for one image, to keep the fixture small; YOLO26's also
hold its one-to-one head's dense output and the top-k rows that head selects).

Float32 conv results depend on the thread count (a few ulp); the reference was computed with one
thread, as Ultralytics' predictor runs, so these tests do too and are then bit-exact on the
machine that made the fixture. Box coordinates are compared in grid units (pixels / stride),
where the network computes them, so another CPU's kernels still pass at 1e-4.
"""

from __future__ import annotations

import copy
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from engines.checkpoint import Checkpoint, build_model, load_checkpoint
from engines.errors import UnsafeCheckpointError
from engines.nn import SegmentationModel, make_anchors

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "ultralytics"
# Fixture set per architecture: checkpoint, raw-output files (input_u8, and pred/proto where kept), predict().
SETS = {
    "v8": ("yolov8n-seg-coco8.pt", "raw_{stem}.npz", "predict.json"),
    "11": ("yolo11n-seg-coco8.pt", "raw11_{stem}.npz", "predict11.json"),
    "26": ("yolo26n-seg-coco8.pt", "raw26_{stem}.npz", "predict26.json"),
}
CKPT = FIXTURES / SETS["v8"][0]
REFERENCES = {arch: json.loads((FIXTURES / predict).read_text()) for arch, (_, _, predict) in SETS.items()}
REFERENCE = REFERENCES["v8"]
pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py
IMAGES = sorted(REFERENCE["images"])


def _raw(name: str, arch: str = "v8") -> dict[str, np.ndarray]:
    with np.load(FIXTURES / SETS[arch][1].format(stem=Path(name).stem)) as z:
        return {k: z[k] for k in z.files}


def _has_raw(arch: str, name: str) -> bool:
    with np.load(FIXTURES / SETS[arch][1].format(stem=Path(name).stem)) as z:
        return "pred" in z.files


RAW_CASES = [(arch, name) for arch in SETS for name in sorted(REFERENCES[arch]["images"]) if _has_raw(arch, name)]
PREDICT_CASES = [(arch, name) for arch in SETS for name in sorted(REFERENCES[arch]["images"])]


@pytest.fixture(scope="module")
def loaded() -> dict[str, tuple[Checkpoint, SegmentationModel]]:
    """Checkpoint and model per architecture, loaded on first use and kept for the module."""
    return {}


def _load(loaded: dict[str, tuple[Checkpoint, SegmentationModel]], arch: str
          ) -> tuple[Checkpoint, SegmentationModel]:
    if arch not in loaded:
        ck = load_checkpoint(FIXTURES / SETS[arch][0])
        loaded[arch] = ck, build_model(ck)
    return loaded[arch]


def _forward(model: SegmentationModel, name: str, arch: str = "v8"
             ) -> tuple[dict[str, np.ndarray], torch.Tensor, torch.Tensor]:
    ref = _raw(name, arch)
    x = torch.from_numpy(ref["input_u8"]).float() / 255  # exactly what Ultralytics fed the model
    with torch.no_grad():
        pred, proto = model(x)
    return ref, pred, proto


def _strides(input_hw: tuple[int, ...]) -> np.ndarray:
    feats = [torch.empty(1, 1, input_hw[0] // s, input_hw[1] // s) for s in (8, 16, 32)]
    return make_anchors(feats, [8.0, 16.0, 32.0])[1].T.numpy()  # (1, A) pixels per grid unit


@pytest.mark.parametrize(("arch", "name"), RAW_CASES)
def test_raw_outputs_match(loaded: dict, arch: str, name: str) -> None:
    ref, pred, proto = _forward(_load(loaded, arch)[1], name, arch)
    assert pred.shape == ref["pred"].shape and proto.shape == ref["proto"].shape
    strides = _strides(ref["input_u8"].shape[2:])
    ours, theirs = pred.numpy(), ref["pred"]
    assert np.abs(ours[:, :4] / strides - theirs[:, :4] / strides).max() < 1e-4
    assert np.abs(ours[:, 4:] - theirs[:, 4:]).max() < 1e-4
    assert np.abs(proto.numpy() - ref["proto"]).max() < 1e-4
    assert theirs[0, 4:84].max() > REFERENCES[arch]["predict"]["conf"]  # the fixture has real detections


@pytest.fixture(scope="module")
def nms_free26(loaded: dict) -> SegmentationModel:
    """The YOLO26 fixture model running its one-to-one (NMS-free) head."""
    model = copy.deepcopy(_load(loaded, "26")[1])
    model.end2end = True
    return model


def test_yolo26_nms_free_head_matches(nms_free26: SegmentationModel) -> None:
    """The one-to-one branches' dense output."""
    name = next(n for a, n in RAW_CASES if a == "26")
    ref, pred, proto = _forward(nms_free26, name, "26")
    strides = _strides(ref["input_u8"].shape[2:])
    assert np.abs(pred.numpy()[:, :4] / strides - ref["pred_o2o"][:, :4] / strides).max() < 1e-4
    assert np.abs(pred.numpy()[:, 4:] - ref["pred_o2o"][:, 4:]).max() < 1e-4
    assert np.abs(proto.numpy() - ref["proto"]).max() < 1e-4
    assert np.abs(pred.numpy()[:, 4:84] - ref["pred"][:, 4:84]).max() > 0.1  # not the one-to-many head's


def test_yolo26_topk_matches_its_head(nms_free26: SegmentationModel) -> None:
    """segpipe's top-k over the dense one-to-one output picks the rows Ultralytics' end-to-end head does."""
    from engines.ops import NMSConfig, topk_rows

    name = next(n for a, n in RAW_CASES if a == "26")
    ref, pred, _ = _forward(nms_free26, name, "26")
    theirs = ref["topk"][0]  # (300, 6 + 32): every candidate, scores down to ~0
    (rows,) = topk_rows(pred, NMSConfig(conf=0.0, max_det=300), nc=80)
    assert rows.shape == theirs.shape
    confident = theirs[:, 4] > 0.01  # below that, near-equal scores may swap places
    assert confident.sum() >= 5
    # pixels: 1e-4 of a grid unit of the coarsest level (32 px), as test_raw_outputs_match allows
    np.testing.assert_allclose(rows.numpy()[confident, :4], theirs[confident, :4], atol=32e-4)
    np.testing.assert_allclose(rows.numpy()[confident, 4:], theirs[confident, 4:], atol=1e-4)


def test_yolo26_fixture_is_yolo26(loaded: dict) -> None:
    ckpt, model = _load(loaded, "26")
    assert ckpt.meta.model_yaml["yaml_file"] == "yolo26n-seg.yaml" and ckpt.meta.one2one
    assert model.head.one2one and not model.end2end  # the NMS head by default, as Ultralytics 8.4
    assert model.head.reg_max == 1 and type(model.head.proto).__name__ == "Proto26"
    assert sum(p.numel() for p in model.parameters()) == 3_126_280  # Ultralytics' summary of yolo26n-seg


def test_yolo11_fixture_is_yolo11(loaded: dict) -> None:
    ckpt, model = _load(loaded, "11")
    assert ckpt.meta.model_yaml["yaml_file"] == "yolo11n-seg.yaml" and ckpt.meta.model_yaml["scale"] == "n"
    assert len(ckpt.state_dict) == 561 and not model.head.legacy
    assert [type(m).__name__ for m in model.model].count("C3k2") == 8


@pytest.mark.parametrize("arch", list(SETS))
def test_fused_outputs_match(loaded: dict, arch: str) -> None:
    fused = copy.deepcopy(_load(loaded, arch)[1]).fuse()
    ref, pred, _ = _forward(fused, next(n for a, n in RAW_CASES if a == arch), arch)
    # Folding BN reorders float math; boxes are in pixels (up to ~320), hence the looser bound.
    assert np.abs(pred.numpy()[:, 4:] - ref["pred"][:, 4:]).max() < 1e-4
    assert np.abs(pred.numpy()[:, :4] - ref["pred"][:, :4]).max() < 1e-3


def test_letterbox_matches_ultralytics(coco128: Path) -> None:
    import cv2

    from engines.ops import letterbox

    for name in IMAGES:
        im = cv2.imread(str(coco128 / "images" / "train2017" / name))
        batch, infos = letterbox([torch.from_numpy(im)], size=320, stride=32, auto=True)
        ref = torch.from_numpy(_raw(name)["input_u8"]).float()
        assert list(infos[0].orig_shape) == REFERENCE["images"][name]["orig_shape"]
        assert batch.shape == ref.shape, name
        # engines.ops resizes with torch (on the device), Ultralytics with cv2: same geometry and
        # padding, pixel values within one grey level.
        diff = (batch * 255 - ref).abs()
        assert diff.max() <= 1.0 + 1e-3 and diff.mean() < 0.25, (name, float(diff.max()), float(diff.mean()))


@pytest.mark.parametrize("retina", [False, True], ids=["default", "retina"])
@pytest.mark.parametrize(("arch", "name"), PREDICT_CASES + [("26-nms-free", n) for n in IMAGES])
def test_final_detections_match(loaded: dict, nms_free26: SegmentationModel, arch: str, name: str,
                                 retina: bool) -> None:
    from pycocotools import mask as mask_utils

    from engines.ops import NMSConfig, letterbox_geometry, postprocess

    nms_free = arch == "26-nms-free"
    arch, mode = ("26", "nms_free_") if nms_free else (arch, "")
    ckpt, model = _load(loaded, arch)
    model = nms_free26 if nms_free else model
    reference = REFERENCES[arch]
    settings, ref = reference["predict"], reference["images"][name][mode + ("retina" if retina else "default")]
    ref_input, pred, proto = _forward(model, name, arch)
    info = letterbox_geometry(tuple(reference["images"][name]["orig_shape"]), size=settings["imgsz"],
                              stride=32, auto=True)
    assert info.new_shape == tuple(ref_input["input_u8"].shape[2:])
    cfg = NMSConfig(conf=settings["conf"], iou=settings["iou"], max_det=settings["max_det"])
    (det,) = postprocess(pred, proto, [info], cfg, names=ckpt.meta.names, retina_masks=retina,
                         nms_free=nms_free)
    assert len(ref["scores"]) > 0
    assert len(det) == len(ref["scores"])
    np.testing.assert_allclose(det.boxes.numpy(), np.array(ref["boxes_xyxy"]), atol=1e-2)
    np.testing.assert_allclose(det.scores.numpy(), np.array(ref["scores"]), atol=1e-4)
    assert det.class_ids.tolist() == ref["classes"]
    ref_masks = np.stack([mask_utils.decode({"size": r["size"], "counts": r["counts"].encode()})
                          for r in ref["masks_rle"]]).astype(bool)
    ours = det.masks.numpy()
    assert ours.shape == ref_masks.shape
    # Sub-1e-4 logit differences may flip a pixel that sits exactly on the 0.5 threshold; nothing more.
    differing = (ours != ref_masks).reshape(len(ours), -1).sum(1)
    assert differing.max() <= 2, differing
    if not retina:
        _check_input_masks(pred, proto, cfg, ref, nms_free=nms_free)


def _check_input_masks(pred: torch.Tensor, proto: torch.Tensor, cfg: object, ref: dict, *, nms_free: bool) -> None:
    """Masks at the model input, which is what Ultralytics' Results.masks hold without retina."""
    from pycocotools import mask as mask_utils

    from engines.ops import process_masks, select_rows

    (rows,) = select_rows(pred, cfg, nc=80, nms_free=nms_free)
    masks = process_masks(proto[0], rows[:, 6:], rows[:, :4], _input_hw(proto), upsample=True).numpy()
    ref_masks = np.stack([mask_utils.decode({"size": r["size"], "counts": r["counts"].encode()})
                          for r in ref["input_masks_rle"]]).astype(bool)
    assert masks.shape == ref_masks.shape
    assert (masks != ref_masks).reshape(len(masks), -1).sum(1).max() <= 2


def _input_hw(proto: torch.Tensor) -> tuple[int, int]:
    return proto.shape[-2] * 4, proto.shape[-1] * 4


def test_tampered_checkpoint_is_refused(tmp_path: Path) -> None:
    """The real fixture with one global swapped for os.system is refused, naming it."""
    tampered = tmp_path / "tampered.pt"
    with zipfile.ZipFile(CKPT) as src, zipfile.ZipFile(tampered, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename.endswith("/data.pkl"):
                assert b"ccollections\nOrderedDict\n" in data
                data = data.replace(b"ccollections\nOrderedDict\n", b"cposix\nsystem\n", 1)
            dst.writestr(item, data)
    with pytest.raises(UnsafeCheckpointError, match="refusing to unpickle global 'posix.system'"):
        load_checkpoint(tampered)
