"""Subscriber helpers: masks decoded from real events match what was encoded, full frame and crops."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from engines.errors import DataError
from pipeline.client import box_window, decode_mask, decode_masks, parse_event, rle_counts
from pipeline.events import encode, to_event
from pipeline.messages import Detection, FrameResult


def _runs(m: np.ndarray) -> list[int]:
    """Uncompressed COCO runs of ``m`` computed by hand (column-major, background first)."""
    flat = m.T.ravel().astype(np.int8)
    change = np.flatnonzero(np.diff(flat)) + 1
    edges = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(edges).tolist()
    return ([0] + runs) if flat[0] else runs


def _random_mask(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    m = np.zeros((h, w), bool)
    for _ in range(3):
        y, x = rng.integers(0, h), rng.integers(0, w)
        m[y:y + rng.integers(1, h), x:x + rng.integers(1, w)] = True
    return m & (rng.random((h, w)) > 0.3)


@pytest.mark.parametrize("seed", range(6))
def test_rle_counts_match_pycocotools(seed: int) -> None:
    rng = np.random.default_rng(seed)
    m = _random_mask(rng, 37, 53)
    if seed == 0:
        m[0, 0] = True  # a mask starting with foreground has an empty first run
    rle = mask_utils.encode(np.asfortranarray(m))
    assert rle_counts(rle["counts"].decode()).tolist() == _runs(m)


def _event(masks: list[np.ndarray], boxes: list[tuple[float, float, float, float]], *, fmt: str = "rle") -> dict:
    h, w = masks[0].shape
    dets = []
    for m, box in zip(masks, boxes, strict=True):
        if fmt == "rle":
            mask = mask_utils.encode(np.asfortranarray(m))
        else:
            x1, y1, x2, y2 = box
            mask = [[x1, y1, x2, y1, x2, y2, x1, y2]]
        dets.append(Detection(class_id=0, label="thing", score=0.9, box=box, mask=mask))
    res = FrameResult(camera_id="c", seq=1, pts=None, capture_ts=1.0, infer_ts=1.0, frame_size=(w, h), model="m",
                      detections=tuple(dets))
    return parse_event(encode(to_event(res)))


@pytest.mark.parametrize("box", [
    (3.2, 4.7, 20.1, 30.9),   # fractional corners round outwards
    (0.0, 0.0, 53.0, 37.0),   # the whole frame
    (-5.0, -2.0, 10.0, 8.0),  # partly outside: clipped
    (40.0, 30.0, 60.0, 50.0), # runs past the right/bottom edges
    (10.0, 10.0, 10.0, 10.0), # empty
])
def test_rle_crop_equals_full_mask_slice(box: tuple[float, float, float, float]) -> None:
    rng = np.random.default_rng(1)
    m = _random_mask(rng, 37, 53)
    event = _event([m], [box])
    full = decode_masks(event)[0]
    crop = decode_masks(event, crop=True)[0]
    x0, y0, x1, y1 = box_window(box, 37, 53)
    np.testing.assert_array_equal(full, m)
    assert crop.dtype == bool and crop.shape == (y1 - y0, x1 - x0)
    np.testing.assert_array_equal(crop, m[y0:y1, x0:x1])


def test_polygon_masks_full_and_crop_agree() -> None:
    h, w = 40, 60
    box = (10.0, 5.0, 31.0, 22.0)
    event = _event([np.zeros((h, w), bool)], [box], fmt="polygon")
    full = decode_masks(event)[0]
    crop = decode_masks(event, crop=True)[0]
    assert full.shape == (h, w) and full.sum() > 0.8 * 21 * 17
    assert not full[:4].any() and not full[:, :9].any()  # nothing outside the outline
    x0, y0, x1, y1 = box_window(box, h, w)
    np.testing.assert_array_equal(crop, full[y0:y1, x0:x1])


def test_detections_without_masks_give_none() -> None:
    res = FrameResult(camera_id="c", seq=1, pts=None, capture_ts=1.0, infer_ts=1.0, frame_size=(8, 8), model="m",
                      detections=(Detection(class_id=0, label="a", score=0.5, box=(0, 0, 2, 2)),))
    assert decode_masks(parse_event(encode(to_event(res)))) == [None]


@pytest.mark.parametrize("data, error", [
    (b"{not json", "event is not JSON"),
    (b"[1, 2]", "no kind"),
    (json.dumps({"kind": "frame", "version": 99}).encode(), "version 99 is not supported"),
    (json.dumps({"kind": "frame"}).encode(), "version None is not supported"),
    (b"\xff\xfe", "event is not JSON"),
])
def test_parse_event_rejects_foreign_data(data: bytes, error: str) -> None:
    with pytest.raises(DataError, match=error):
        parse_event(data)


@pytest.mark.parametrize("mask, error", [
    ({"format": "bitmap"}, "unknown mask format 'bitmap'"),
    ({"format": "rle", "size": [10, 10], "counts": "PZ1"}, r"RLE size \[10, 10\] does not match the frame \[37, 53\]"),
])
def test_decode_mask_errors(mask: dict, error: str) -> None:
    with pytest.raises(DataError, match=error):
        decode_mask(mask, 37, 53)


def test_corrupt_rle_counts_are_reported_in_crops() -> None:
    rle = mask_utils.encode(np.asfortranarray(np.ones((8, 8), bool)))
    bad = {"format": "rle", "size": [8, 9], "counts": rle["counts"].decode()}
    with pytest.raises(DataError, match="cover 64 pixels"):
        decode_mask(bad, 8, 9, window=(0, 0, 4, 4))
