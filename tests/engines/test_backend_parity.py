"""PyTorch, ONNX Runtime, OpenVINO and TorchScript agree on CPU: raw outputs within 1e-3 (fp32) and the
same detections and masks end to end (SegModel), on real coco128 images, at batch 1 and 4, for static
and dynamic exports. Every artifact is exported once per session at imgsz 320."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from engines.backends import Backend, BackendOptions, load_backend
from engines.export import export
from engines.ops import NMSConfig, letterbox, postprocess
from engines.predict import SegModel
from engines.structures import Detections

FIXTURE_PT = Path(__file__).resolve().parents[1] / "fixtures" / "ultralytics" / "yolov8n-seg-coco8.pt"
IMGSZ = 320
ARTIFACTS = [("onnx", False), ("onnx", True), ("openvino", False), ("openvino", True), ("torchscript", False),
             ("torchscript", True)]
IDS = [f"{fmt}-{'dynamic' if dyn else 'static'}" for fmt, dyn in ARTIFACTS]


@pytest.fixture(scope="session")
def source_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Ultralytics-trained fixture checkpoint, else a randomly initialised yolov8n-seg (same graph)."""
    if FIXTURE_PT.is_file():
        return FIXTURE_PT
    from engines.checkpoint import ModelMeta, save_checkpoint
    from engines.nn import SegmentationModel

    torch.manual_seed(0)
    model = SegmentationModel("yolov8n-seg.yaml").eval()
    meta = ModelMeta(names=tuple(f"c{i}" for i in range(model.nc)), model_yaml=model.yaml, imgsz=IMGSZ, stride=32)
    return save_checkpoint(tmp_path_factory.mktemp("m") / "yolov8n-seg.safetensors", state_dict=model.state_dict(),
                           meta=meta)


@pytest.fixture(scope="session")
def artifacts(source_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("exports")
    paths = {}
    for (fmt, dynamic), name in zip(ARTIFACTS, IDS, strict=True):
        suffix = "_openvino_model" if fmt == "openvino" else f".{fmt}"
        # Static exports cap the batch at 2, so batch 4 also exercises the split.
        paths[name] = export(source_model, format=fmt, imgsz=IMGSZ, dynamic=dynamic, batch=0 if dynamic else 2,
                             out=out / f"{name}{suffix}")
    return paths


@pytest.fixture(scope="session")
def torch_backend(source_model: Path) -> Backend:
    return load_backend(source_model, options=BackendOptions(threads=1))


@pytest.fixture(scope="session")
def images(coco128_images: list[Path]) -> list[np.ndarray]:
    """Four real images the fixture model was trained on (so there are detections to compare)."""
    return [cv2.imread(str(p)) for p in coco128_images[:4]]


def _batch(images: list[np.ndarray], n: int, size: int | tuple[int, int]) -> torch.Tensor:
    x, _ = letterbox([torch.from_numpy(im) for im in images[:n]], size=size, auto=False)
    return x


@pytest.mark.parametrize("name", IDS)
@pytest.mark.parametrize("n", [1, 4])
def test_raw_outputs_match_torch(name: str, n: int, artifacts: dict[str, Path], torch_backend: Backend,
                                 images: list[np.ndarray]) -> None:
    b = load_backend(artifacts[name], options=BackendOptions(threads=1))
    assert b.meta.dynamic == name.endswith("dynamic") and b.meta.precision == "fp32"
    assert b.meta.batch_range == ((1, 2) if name.endswith("static") else (1, 1 << 16))
    # Dynamic artifacts get a non-square input they were not traced at.
    x = _batch(images, n, (256, 320) if b.meta.dynamic else IMGSZ)
    (pred, proto), (ref_pred, ref_proto) = b(x), torch_backend(x)
    assert pred.shape == ref_pred.shape and proto.shape == ref_proto.shape
    assert (pred - ref_pred).abs().max() < 1e-3
    assert (proto - ref_proto).abs().max() < 1e-3


def _same_detections(a: Detections, b: Detections) -> int:
    """Assert ``a`` and ``b`` hold the same objects (any order); returns how many."""
    assert len(a) == len(b)
    ia, ib = (np.lexsort((d.boxes[:, 0].numpy(), d.class_ids.numpy())) for d in (a, b))
    np.testing.assert_array_equal(a.class_ids.numpy()[ia], b.class_ids.numpy()[ib])
    np.testing.assert_allclose(a.boxes.numpy()[ia], b.boxes.numpy()[ib], atol=0.05)
    np.testing.assert_allclose(a.scores.numpy()[ia], b.scores.numpy()[ib], atol=1e-4)
    ma, mb = a.masks.numpy()[ia], b.masks.numpy()[ib]
    assert ma.shape == mb.shape
    # Outputs differ by ~1e-4, so only pixels sitting exactly on the 0.5 threshold may flip.
    assert (ma != mb).sum() <= max(10, 0.002 * (ma | mb).sum())
    return len(a)


@pytest.mark.parametrize("name", [i for i in IDS if i.endswith("dynamic")])
def test_segmodel_end_to_end_dynamic(name: str, artifacts: dict[str, Path], source_model: Path,
                                     coco128_images: list[Path]) -> None:
    ref, other = SegModel(source_model), SegModel(artifacts[name])
    files = [str(p) for p in coco128_images[:2]]
    found = [_same_detections(a, b) for a, b in zip(ref(files, imgsz=IMGSZ), other(files, imgsz=IMGSZ), strict=True)]
    assert sum(found) > 0 or not FIXTURE_PT.is_file()  # the trained fixture finds objects here


@pytest.mark.parametrize("name", IDS)
def test_segmodel_batch4_matches_torch_pipeline(name: str, artifacts: dict[str, Path], torch_backend: Backend,
                                                images: list[np.ndarray]) -> None:
    """Four images (resized to one frame size) in one call; the reference is the torch backend through
    the same letterbox rule (square for static artifacts) and post-processing."""
    frames = [cv2.resize(im, (640, 480)) for im in images]
    model = SegModel(artifacts[name])
    got = model.predict_arrays(frames)
    batch = torch.from_numpy(np.stack(frames))
    x, infos = letterbox(batch, size=IMGSZ, stride=32, auto=model.backend.meta.dynamic)
    pred, proto = torch_backend(x)
    want = postprocess(pred, proto, infos, NMSConfig(), names=torch_backend.meta.names)
    assert len(got) == 4
    found = [_same_detections(a, b) for a, b in zip(want, got, strict=True)]
    assert sum(found) > 0 or not FIXTURE_PT.is_file()
