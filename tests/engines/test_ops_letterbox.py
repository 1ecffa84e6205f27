"""engines.ops.letterbox and engines.ops.boxes against Ultralytics' LetterBox / scale_boxes and cv2.

References: tests/fixtures/ops/{letterbox,masks}.npz, made by tests/fixtures/ops/make_refs.py with the
real ultralytics package. Pixel comparisons read real coco128 images (skipped when absent).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from engines.ops import (
    LetterboxInfo,
    clip_boxes,
    letterbox,
    letterbox_geometry,
    scale_boxes,
    xywh2xyxy,
    xyxy2xywh,
)

REFS = Path(__file__).resolve().parents[1] / "fixtures" / "ops"


@pytest.fixture(scope="module")
def lb_ref() -> dict[str, np.ndarray]:
    with np.load(REFS / "letterbox.npz") as z:
        return dict(z)


def _to_bgr255(x: torch.Tensor) -> np.ndarray:
    """(3, h, w) RGB 0-1 -> (h, w, 3) BGR float 0-255."""
    return x.permute(1, 2, 0).numpy()[..., ::-1] * 255


def test_geometry_matches_ultralytics(lb_ref: dict[str, np.ndarray]) -> None:
    shapes, settings = lb_ref["geom_shapes"].tolist(), lb_ref["geom_settings"].tolist()
    assert len(shapes) * len(settings) >= 100
    for k, (sh, sw, auto, scaleup, stride) in enumerate(settings):
        for m, shape in enumerate(shapes):
            info = letterbox_geometry(tuple(shape), size=(sh, sw), auto=bool(auto), scaleup=bool(scaleup),
                                      stride=stride)
            uh, uw, top, bottom, left, right, oh, ow = lb_ref["geom"][k, m].tolist()
            case = f"setting {settings[k]} shape {shape}"
            assert info.unpad_shape == (uh, uw), case
            assert info.pad == (left, top), case
            assert info.new_shape == (oh, ow), case
            assert oh - uh - top == bottom and ow - uw - left == right, case
            assert info.gain == lb_ref["geom_ratio"][k, m], case
            assert info.orig_shape == tuple(shape)


def test_pixels_match_ultralytics(lb_ref: dict[str, np.ndarray], coco128: Path) -> None:
    """Device bilinear vs cv2 INTER_LINEAR inside Ultralytics' LetterBox. Measured on these images:
    max difference 1 grey level, mean 0.04-0.12 levels (5-12 % of values off by one level)."""
    i = 0
    while f"pix{i}_img" in lb_ref:
        ref = lb_ref[f"pix{i}_img"].astype(np.float32)
        size, auto = lb_ref[f"pix{i}_meta"].tolist()
        img = cv2.imread(str(coco128 / "images" / "train2017" / str(lb_ref[f"pix{i}_file"])))
        x, infos = letterbox(torch.from_numpy(img)[None], size=int(size), auto=bool(auto))
        assert x.shape[2:] == ref.shape[:2] == infos[0].new_shape
        d = np.abs(_to_bgr255(x[0]) - ref)
        assert d.max() <= 1.0 + 1e-4, (i, d.max())
        assert d.mean() < 0.2, (i, d.mean())
        i += 1
    assert i == 5


def test_pixels_match_cv2_at_640_on_mixed_sizes(coco128_images: list[Path]) -> None:
    """A list of differently sized frames (down- and up-scaled) batched into one 640 input."""
    picks = [p for p in coco128_images if p.name in {"000000000009.jpg", "000000000077.jpg", "000000000078.jpg",
                                                      "000000000357.jpg", "000000000415.jpg"}]
    imgs = [cv2.imread(str(p)) for p in picks]
    x, infos = letterbox([torch.from_numpy(im) for im in imgs], size=640)
    assert x.shape == (len(imgs), 3, 640, 640) and x.dtype == torch.float32
    for im, xi, info in zip(imgs, x, infos, strict=True):
        uh, uw = info.unpad_shape
        left, top = info.pad
        ref = cv2.copyMakeBorder(cv2.resize(im, (uw, uh), interpolation=cv2.INTER_LINEAR), top, 640 - uh - top,
                                 left, 640 - uw - left, cv2.BORDER_CONSTANT, value=(114, 114, 114))
        d = np.abs(_to_bgr255(xi) - ref)
        assert d.max() <= 1.0 + 1e-4 and d.mean() < 0.2, (info, d.max(), d.mean())


def test_channels_padding_and_range() -> None:
    img = np.zeros((20, 40, 3), np.uint8)
    img[..., 0] = 255  # pure blue in BGR
    x, (info,) = letterbox(torch.from_numpy(img)[None], size=64)
    assert info == LetterboxInfo(orig_shape=(20, 40), new_shape=(64, 64), gain=1.6, pad=(0, 16),
                                 unpad_shape=(32, 64))
    content = x[0, :, 16:48]
    assert torch.equal(content[2], torch.ones_like(content[2]))  # blue lands in RGB channel 2
    assert torch.equal(content[:2], torch.zeros_like(content[:2]))
    pad = torch.cat([x[0, :, :16], x[0, :, 48:]], 1)
    assert torch.equal(pad, torch.full_like(pad, 114 / 255))
    assert float(x.min()) >= 0 and float(x.max()) <= 1


def test_batch_tensor_equals_list() -> None:
    rng = np.random.default_rng(0)
    frames = torch.from_numpy(rng.integers(0, 256, (3, 45, 70, 3), dtype=np.uint8))
    a, ia = letterbox(frames, size=96, auto=True)
    b, ib = letterbox(list(frames), size=96, auto=True)
    assert torch.equal(a, b) and ia == ib
    assert a.shape == (3, 3, 64, 96)  # auto: pad only to the next multiple of 32


def test_empty_batch() -> None:
    x, infos = letterbox([], size=(320, 480))
    assert x.shape == (0, 3, 320, 480) and infos == []
    x, infos = letterbox(torch.zeros((0, 10, 10, 3), dtype=torch.uint8), size=64)
    assert x.shape == (0, 3, 64, 64) and infos == []


@pytest.mark.parametrize(("images", "kwargs", "error", "match"), [
    (torch.zeros((2, 10, 10, 3), dtype=torch.float32), {}, ValueError, "expected dtype uint8"),
    (torch.zeros((2, 10, 10), dtype=torch.uint8), {}, ValueError, r"expected a \(N, H, W, 3\) tensor"),
    ([torch.zeros((10, 10, 4), dtype=torch.uint8)], {}, ValueError, r"images\[0\]: expected shape \(H, W, 3\)"),
    ([np.zeros((10, 10, 3), np.uint8)], {}, TypeError, r"images\[0\]: expected a torch.Tensor"),
    ([torch.zeros((10, 10, 3), dtype=torch.uint8), torch.zeros((10, 10, 3), dtype=torch.int16)], {}, ValueError,
     r"images\[1\]: expected dtype uint8"),
    ([torch.zeros((10, 30, 3), dtype=torch.uint8), torch.zeros((30, 10, 3), dtype=torch.uint8)],
     {"auto": True, "size": 64}, ValueError, "different input shapes"),
    (torch.zeros((1, 0, 10, 3), dtype=torch.uint8), {}, ValueError, "expected H, W >= 1"),
])
def test_bad_input(images: object, kwargs: dict, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        letterbox(images, **kwargs)  # type: ignore[arg-type]


def test_scale_boxes_matches_ultralytics() -> None:
    """Predictor (ratio_pad=None, per-axis gains) and validator (letterbox ratio_pad) variants."""
    with np.load(REFS / "masks.npz") as z:
        ref = dict(z)
    checked = 0
    for ci, auto in ((0, False), (1, True)):
        boxes = torch.from_numpy(ref[f"c{ci}__boxes"])
        ih, iw = ref[f"c{ci}__input"].tolist()
        oi = 0
        while f"c{ci}__o{oi}__shape" in ref:
            key = f"c{ci}__o{oi}"
            info = letterbox_geometry(tuple(ref[f"{key}__shape"].tolist()), size=(ih, iw), auto=auto)
            assert info.new_shape == (ih, iw)
            before = boxes.clone()
            assert np.array_equal(scale_boxes(boxes, info).numpy(), ref[f"{key}__boxes"]), key
            assert np.array_equal(scale_boxes(boxes, info, per_axis=False).numpy(), ref[f"{key}__boxes_val"]), key
            assert torch.equal(boxes, before)  # not modified in place
            oi += 1
            checked += 1
    assert checked == 6


def test_scale_boxes_round_trip_and_clip() -> None:
    info = letterbox_geometry((480, 640), size=320)
    frame = torch.tensor([[10.0, 20.0, 300.0, 400.0], [-5.0, -5.0, 700.0, 500.0]])
    g, (left, top) = info.gain, info.pad
    inp = frame * g + torch.tensor([left, top, left, top], dtype=torch.float32)
    back = scale_boxes(inp, info)
    assert torch.allclose(back[0], frame[0], atol=1e-3)
    assert back[1].tolist() == [0.0, 0.0, 640.0, 480.0]  # clipped to the frame
    assert clip_boxes(torch.tensor([[-1.0, 5.0, 50.0, 99.0]]), (60, 40)).tolist() == [[0.0, 5.0, 40.0, 60.0]]


def test_box_format_round_trip() -> None:
    xyxy = torch.tensor([[1.0, 2.0, 11.0, 22.0], [0.0, 0.0, 0.0, 0.0]])
    assert torch.equal(xyxy2xywh(xyxy), torch.tensor([[6.0, 12.0, 10.0, 20.0], [0.0, 0.0, 0.0, 0.0]]))
    assert torch.equal(xywh2xyxy(xyxy2xywh(xyxy)), xyxy)
    with pytest.raises(ValueError, match=r"expected shape \(\.\.\., 4\), got \(2, 3\)"):
        xywh2xyxy(torch.zeros((2, 3)))


@pytest.mark.gpu
def test_cuda_equals_cpu() -> None:
    rng = np.random.default_rng(1)
    frames = [torch.from_numpy(rng.integers(0, 256, s, dtype=np.uint8)) for s in ((480, 640, 3), (720, 1280, 3))]
    a, ia = letterbox(frames, size=640)
    b, ib = letterbox([f.cuda() for f in frames], size=640)
    assert b.is_cuda and ia == ib
    assert (a - b.cpu()).abs().max() <= 1 / 255 + 1e-6
    info = ia[1]
    boxes = torch.tensor([[10.0, 100.0, 600.0, 500.0]])
    assert torch.allclose(scale_boxes(boxes, info), scale_boxes(boxes.cuda(), info).cpu())
