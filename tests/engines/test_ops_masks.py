"""engines.ops.masks against Ultralytics' process_mask / process_mask_native / scale_masks, and the
streaming crop route against the full-frame route.

References: tests/fixtures/ops/masks.npz from tests/fixtures/ops/make_refs.py (real ultralytics).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engines.ops import (
    crop_mask,
    input_mask_crops,
    letterbox_geometry,
    mask_crops,
    paste_crops,
    process_masks,
    process_masks_native,
    scale_masks,
)

REFS = Path(__file__).resolve().parents[1] / "fixtures" / "ops"
CASES = [(0, False, 4), (1, True, 2)]  # (mask case, letterbox auto, number of frames) as in make_refs.py


@pytest.fixture(scope="module")
def ref() -> dict[str, np.ndarray]:
    with np.load(REFS / "masks.npz") as z:
        return dict(z)


def _unpack(a: np.ndarray, width: int) -> np.ndarray:
    return np.unpackbits(a, axis=-1, count=width).astype(bool)


def _inputs(ref: dict[str, np.ndarray], ci: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[int, int]]:
    protos = torch.from_numpy(ref[f"c{ci}__protos"].astype(np.float32))
    coeffs = torch.from_numpy(ref[f"c{ci}__coeffs"].astype(np.float32))
    ih, iw = ref[f"c{ci}__input"].tolist()
    return protos, coeffs, torch.from_numpy(ref[f"c{ci}__boxes"]), (ih, iw)


def _smooth_protos(g: torch.Generator, mh: int, mw: int) -> torch.Tensor:
    """Blob-like prototypes: low-resolution noise upsampled, like a trained Proto head's output."""
    return F.interpolate(torch.randn(1, 32, mh // 8, mw // 8, generator=g) * 4, (mh, mw), mode="bilinear")[0]


@pytest.mark.parametrize(("ci", "auto", "n_frames"), CASES)
def test_input_resolution_masks_match_ultralytics(ref: dict[str, np.ndarray], ci: int, auto: bool,
                                                  n_frames: int) -> None:
    protos, coeffs, boxes, (ih, iw) = _inputs(ref, ci)
    up = process_masks(protos, coeffs, boxes, (ih, iw))
    assert up.dtype == torch.bool and up.shape == (12, ih, iw)
    np.testing.assert_array_equal(up.numpy(), _unpack(ref[f"c{ci}__up"], iw))
    low = process_masks(protos, coeffs, boxes, (ih, iw), upsample=False)
    assert low.shape == (12, *protos.shape[1:])
    np.testing.assert_array_equal(low.numpy(), _unpack(ref[f"c{ci}__low"], protos.shape[2]))
    for oi in range(n_frames):  # un-letterboxed to each frame: with the LetterboxInfo and inferred
        key = f"c{ci}__o{oi}"
        oh, ow = ref[f"{key}__shape"].tolist()
        info = letterbox_geometry((oh, ow), size=(ih, iw), auto=auto)
        expected = _unpack(ref[f"{key}__scaled"], ow)
        np.testing.assert_array_equal((scale_masks(up[None], (oh, ow), info=info)[0] > 0.5).numpy(), expected)
        np.testing.assert_array_equal((scale_masks(up[None], (oh, ow))[0] > 0.5).numpy(), expected)
        crops, has = input_mask_crops(protos, coeffs, boxes, info)  # the box-restricted route
        np.testing.assert_array_equal(paste_crops(crops, (oh, ow)).numpy(), expected)
        assert has == up.flatten(1).any(1).tolist()


@pytest.mark.parametrize(("ci", "auto", "n_frames"), CASES)
def test_native_masks_and_crops_match_ultralytics(ref: dict[str, np.ndarray], ci: int, auto: bool,
                                                  n_frames: int) -> None:
    """Frames chosen so Ultralytics' prototype upsample factor f is 1, 2 and 4 (padding parity)."""
    protos, coeffs, _, (ih, iw) = _inputs(ref, ci)
    for oi in range(n_frames):
        key = f"c{ci}__o{oi}"
        oh, ow = ref[f"{key}__shape"].tolist()
        frame_boxes = torch.from_numpy(ref[f"{key}__boxes"])
        expected = _unpack(ref[f"{key}__native"], ow)
        info = letterbox_geometry((oh, ow), size=(ih, iw), auto=auto)
        assert info.new_shape == (ih, iw)
        for given in (None, info):  # the letterbox inferred from the shapes, as Ultralytics, or given
            native = process_masks_native(protos, coeffs, frame_boxes, (oh, ow), info=given)
            assert native.dtype == torch.bool
            np.testing.assert_array_equal(native.numpy(), expected, err_msg=key)
            crops = mask_crops(protos, coeffs, frame_boxes, (oh, ow), info=given)
            np.testing.assert_array_equal(paste_crops(crops, (oh, ow)).numpy(), expected, err_msg=key)


@pytest.mark.parametrize(("frame", "stride"), [((384, 640), 2), ((384, 640), 4), ((378, 634), 4), ((381, 637), 2)])
def test_native_masks_follow_a_letterbox_padded_on_both_axes(frame: tuple[int, int], stride: int) -> None:
    """Rectangular val batches pad both axes (a half-stride margin), where the letterbox cannot be
    inferred from the shapes: given, the retina masks match the input-resolution ones. The frames put
    the padding on whole prototype pixels and on halves and quarters of them (f = 1, 2, 4)."""
    g = torch.Generator().manual_seed(7)
    h, w = frame
    info = letterbox_geometry(frame, size=(416, 672), scaleup=False)
    assert info.gain == 1.0 and min(info.pad) > 0
    protos = _smooth_protos(g, 416 // stride, 672 // stride)
    n = 12
    coeffs = torch.randn(n, 32, generator=g)
    xy = torch.rand(n, 2, generator=g) * torch.tensor([w * 0.7, h * 0.7])
    boxes = torch.cat([xy, xy + 40 + torch.rand(n, 2, generator=g) * torch.tensor([w * 0.3, h * 0.3])], 1)
    boxes = torch.minimum(boxes, torch.tensor([w, h, w, h], dtype=torch.float32))
    native = process_masks_native(protos, coeffs, boxes, frame, info=info)
    np.testing.assert_array_equal(paste_crops(mask_crops(protos, coeffs, boxes, frame, info=info), frame).numpy(),
                                  native.numpy())
    left, top = info.pad
    in_boxes = boxes + torch.tensor([left, top, left, top], dtype=torch.float32)
    in_crops, _ = input_mask_crops(protos, coeffs, in_boxes, info)
    iou = _iou(paste_crops(in_crops, frame), native)
    assert int(native.flatten(1).any(1).sum()) >= n - 2  # the objects are not trivially empty
    assert float(iou.min()) > 0.97, iou


def _iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    inter = (a & b).flatten(1).sum(1).double()
    union = (a | b).flatten(1).sum(1).double()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def test_crops_at_1080p_equal_the_full_frame_routes() -> None:
    """640 input letterboxed from 1920x1080; each crop is only as large as its box. Measured: both crop
    routes reproduce the full-frame routes pixel for pixel (IoU 1.0 for every object)."""
    g = torch.Generator().manual_seed(5)
    protos = _smooth_protos(g, 160, 160)
    n, (h, w) = 8, (1080, 1920)
    info = letterbox_geometry((h, w), size=640)
    coeffs = torch.randn(n, 32, generator=g)
    xy = torch.rand(n, 2, generator=g) * torch.tensor([w * 0.8, h * 0.8])
    wh = 16 + torch.rand(n, 2, generator=g) * torch.tensor([w * 0.5, h * 0.5])
    boxes = torch.cat([xy, torch.minimum(xy + wh, torch.tensor([w, h]))], 1)
    boxes[0] = torch.tensor([0.0, 0.0, w, h])  # touches every border
    boxes[1] = torch.tensor([1900.2, 1070.5, 1920.0, 1080.0])  # bottom-right corner sliver
    full = process_masks_native(protos, coeffs, boxes, (h, w))
    crops = mask_crops(protos, coeffs, boxes, (h, w))
    for i, (x0, y0, crop) in enumerate(crops):
        x1, y1, x2, y2 = boxes[i].tolist()
        assert (x0, y0) == (int(np.ceil(x1)), int(np.ceil(y1)))
        assert crop.shape == (int(np.ceil(y2)) - y0, int(np.ceil(x2)) - x0)
    assert float(_iou(paste_crops(crops, (h, w)), full).min()) > 0.99
    assert int(full.flatten(1).any(1).sum()) >= n - 2  # the objects are not trivially empty
    # Input-resolution route: boxes in input pixels, masks at 640 then un-letterboxed to 1080p.
    left, top = info.pad
    in_boxes = boxes * info.gain + torch.tensor([left, top, left, top], dtype=torch.float32)
    dense = scale_masks(process_masks(protos, coeffs, in_boxes, (640, 640))[None], (h, w), info=info)[0] > 0.5
    in_crops, has = input_mask_crops(protos, coeffs, in_boxes, info)
    assert float(_iou(paste_crops(in_crops, (h, w)), dense).min()) > 0.99
    assert sum(has) >= n - 2


@pytest.mark.parametrize("max_elems", [1 << 25, 1 << 16])  # one chunk; many chunks of a few boxes
def test_batched_crops_equal_the_per_box_loop(max_elems: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The batched route (the default on CUDA) against the per-box loop (CPU default), including empty,
    out-of-frame and whole-frame boxes; only pixels within float rounding of the threshold may differ."""
    from engines.ops import crops as crops_mod

    real = crops_mod._batched_crops
    monkeypatch.setattr(crops_mod, "_batched_crops",
                        lambda *a, **k: real(*a, **{**k, "max_elems": max_elems}))
    g = torch.Generator().manual_seed(7)
    protos = _smooth_protos(g, 96, 160)
    n, (h, w) = 12, (360, 640)
    coeffs = torch.randn(n, 32, generator=g)
    xy = torch.rand(n, 2, generator=g) * torch.tensor([w * 0.9, h * 0.9])
    boxes = torch.cat([xy, torch.minimum(xy + 4 + torch.rand(n, 2, generator=g) * 200, torch.tensor([w, h]))], 1)
    boxes[0] = torch.tensor([0.0, 0.0, w, h])
    boxes[1] = torch.tensor([100.0, 50.0, 100.0, 80.0])  # zero width
    boxes[2] = torch.tensor([700.0, 400.0, 720.0, 420.0])  # outside the frame
    loop = mask_crops(protos, coeffs, boxes, (h, w), batched=False)
    batch = mask_crops(protos, coeffs, boxes, (h, w), batched=True)
    assert len(loop) == len(batch) == n
    differ = 0
    for (x0, y0, a), (bx0, by0, b) in zip(loop, batch, strict=True):
        assert (x0, y0) == (bx0, by0) and a.shape == b.shape and b.dtype == torch.bool
        differ += int((a != b).sum())
    assert differ <= 2, differ
    assert sum(int(c.sum()) for _, _, c in loop) > 1000  # the masks are not trivially empty


def test_crop_mask_box_edges_are_half_open() -> None:
    masks = torch.ones((2, 4, 6), dtype=torch.bool)
    boxes = torch.tensor([[1.0, 0.5, 3.0, 2.0], [4.2, 3.0, 9.0, 9.0]])
    out = crop_mask(masks, boxes)
    expected0 = torch.zeros((4, 6), dtype=torch.bool)
    expected0[1, 1:3] = True  # rows 0.5 <= r < 2 -> 1; cols 1 <= c < 3 -> 1, 2
    expected1 = torch.zeros((4, 6), dtype=torch.bool)
    expected1[3, 5] = True
    assert torch.equal(out[0], expected0) and torch.equal(out[1], expected1)
    assert torch.equal(crop_mask(masks.float(), boxes), out.float())


def test_empty_and_degenerate() -> None:
    protos = torch.randn(32, 16, 16)
    none_c, none_b = torch.zeros((0, 32)), torch.zeros((0, 4))
    assert process_masks(protos, none_c, none_b, (64, 64)).shape == (0, 64, 64)
    assert process_masks(protos, none_c, none_b, (64, 64), upsample=False).shape == (0, 16, 16)
    assert process_masks_native(protos, none_c, none_b, (48, 64)).shape == (0, 48, 64)
    assert mask_crops(protos, none_c, none_b, (48, 64)) == []
    assert input_mask_crops(protos, none_c, none_b, letterbox_geometry((48, 64), size=64)) == ([], [])
    assert scale_masks(torch.zeros((1, 0, 64, 64)), (48, 64)).shape == (1, 0, 48, 64)
    boxes = torch.tensor([[10.0, 10.0, 10.0, 30.0], [70.0, 5.0, 90.0, 20.0]])  # zero width; outside the frame
    crops = mask_crops(protos, torch.randn(2, 32), boxes, (48, 64))
    assert [(x0, y0, tuple(c.shape)) for x0, y0, c in crops] == [(10, 10, (20, 0)), (64, 5, (15, 0))]
    assert not paste_crops(crops, (48, 64)).any()


def test_scale_masks_rejects_mismatched_info() -> None:
    info = letterbox_geometry((480, 640), size=320)
    with pytest.raises(ValueError, match=r"expected spatial shape \(320, 320\) \(info.new_shape\), got \(64, 64\)"):
        scale_masks(torch.zeros((1, 1, 64, 64)), (480, 640), info=info)


@pytest.mark.parametrize(("protos", "coeffs", "boxes", "match"), [
    (torch.zeros(32, 8), torch.zeros(1, 32), torch.zeros(1, 4), r"protos: expected \(nm, mh, mw\), got \(32, 8\)"),
    (torch.zeros(32, 8, 8), torch.zeros(1, 16), torch.zeros(1, 4), r"coeffs: expected \(n, 32\), got \(1, 16\)"),
    (torch.zeros(32, 8, 8), torch.zeros(2, 32), torch.zeros(1, 4), r"boxes: expected \(2, 4\), got \(1, 4\)"),
])
def test_shape_errors(protos: torch.Tensor, coeffs: torch.Tensor, boxes: torch.Tensor, match: str) -> None:
    for fn in (lambda: process_masks(protos, coeffs, boxes, (32, 32)),
               lambda: process_masks_native(protos, coeffs, boxes, (32, 32)),
               lambda: mask_crops(protos, coeffs, boxes, (32, 32)),
               lambda: input_mask_crops(protos, coeffs, boxes, letterbox_geometry((32, 32), size=32))):
        with pytest.raises(ValueError, match=match):
            fn()


@pytest.mark.gpu
def test_cuda_equals_cpu(ref: dict[str, np.ndarray]) -> None:
    protos, coeffs, boxes, (ih, iw) = _inputs(ref, 0)
    frame_boxes = torch.from_numpy(ref["c0__o1__boxes"])
    shape = tuple(ref["c0__o1__shape"].tolist())
    cpu = process_masks_native(protos, coeffs, frame_boxes, shape)
    gpu = process_masks_native(protos.cuda(), coeffs.cuda(), frame_boxes.cuda(), shape)
    assert gpu.is_cuda and (cpu != gpu.cpu()).float().mean() < 1e-4
    crops = mask_crops(protos.cuda(), coeffs.cuda(), frame_boxes.cuda(), shape)
    assert all(c.is_cuda for _, _, c in crops)
    assert (paste_crops(crops, shape).cpu() != cpu).float().mean() < 1e-4
    assert torch.equal(process_masks(protos, coeffs, boxes, (ih, iw)),
                       process_masks(protos.cuda(), coeffs.cuda(), boxes.cuda(), (ih, iw)).cpu())
