"""Subscriber helpers: masks decoded from real events match what was encoded, full frame and crops."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from engines.errors import DataError
from pipeline.client import (
    box_window,
    decode_mask,
    decode_masks,
    parse_event,
    rle_counts,
    verify_webhook,
    webhook_signature,
)
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
    (json.dumps({"kind": "frame", "version": True}).encode(), "version True is not supported"),
])
def test_parse_event_rejects_foreign_data(data: bytes, error: str) -> None:
    with pytest.raises(DataError, match=error):
        parse_event(data)


@pytest.mark.parametrize("mask, error", [
    ({"format": "bitmap"}, "unknown mask format 'bitmap'"),
    ({"format": "rle", "size": [10, 10], "counts": "PZ1"}, r"RLE size \[10, 10\] does not match the frame \[37, 53\]"),
    ({"format": "rle", "counts": "PZ1"}, "RLE size None does not match"),
    # corrupt counts: pycocotools decodes these into garbage without a word, the crop path used to
    # raise UnicodeEncodeError; both paths now say what is wrong
    ({"format": "rle", "size": [37, 53], "counts": "2"}, "cover 2 pixels, size says 37x53"),
    ({"format": "rle", "size": [37, 53], "counts": "é"}, "non-ASCII"),
    ({"format": "rle", "size": [37, 53], "counts": "0 ~"}, "characters outside"),
    ({"format": "rle", "size": [37, 53], "counts": "P"}, "cut short"),
    ({"format": "rle", "size": [37, 53], "counts": 5}, "expected a string or a list of ints, got int"),
    ({"format": "rle", "size": [37, 53], "counts": [1961, -1, 1]}, "negative run"),
    ({"format": "polygon", "polygons": [[1, 1, 3, 1, 3]]}, "polygons: expected"),
    ({"format": "polygon", "polygons": [[1, 1, 3, 1]]}, "polygons: expected"),
    ({"format": "polygon"}, "polygons: expected"),
])
@pytest.mark.parametrize("window", [None, (0, 0, 10, 10)])
def test_decode_mask_errors(mask: dict, error: str, window: tuple[int, int, int, int] | None) -> None:
    with pytest.raises(DataError, match=error):
        decode_mask(mask, 37, 53, window=window)


def test_uncompressed_rle_decodes_full_and_cropped() -> None:
    mask = {"format": "rle", "size": [4, 4], "counts": [5, 2, 2, 2, 5]}  # the 2x2 square at (1, 1)
    expected = np.zeros((4, 4), bool)
    expected[1:3, 1:3] = True
    np.testing.assert_array_equal(decode_mask(mask, 4, 4), expected)
    np.testing.assert_array_equal(decode_mask(mask, 4, 4, window=(1, 1, 3, 4)), expected[1:4, 1:3])


_NOW = 1_700_000_000
_SIG = webhook_signature("s3cret", str(_NOW), b"{}")


@pytest.mark.parametrize("headers, body, ok", [
    ({"X-Segpipe-Timestamp": str(_NOW), "X-Segpipe-Signature": _SIG}, b"{}", True),
    ({"x-segpipe-timestamp": str(_NOW), "X-SEGPIPE-SIGNATURE": _SIG}, b"{}", True),  # names in any case
    ({b"x-segpipe-timestamp": str(_NOW).encode(), b"x-segpipe-signature": _SIG.encode()}, b"{}", True),  # ASGI
    ({"X-Segpipe-Timestamp": str(_NOW), "X-Segpipe-Signature": _SIG}, b"{ }", False),  # tampered body
    ({"X-Segpipe-Timestamp": str(_NOW + 1), "X-Segpipe-Signature": _SIG}, b"{}", False),  # tampered timestamp
    ({"X-Segpipe-Timestamp": str(_NOW), "X-Segpipe-Signature": _SIG.upper()}, b"{}", False),
    ({"X-Segpipe-Signature": _SIG}, b"{}", False),
    ({"X-Segpipe-Timestamp": str(_NOW)}, b"{}", False),
    # forged headers answer False instead of raising (int("²") and compare_digest("é") used to)
    ({"X-Segpipe-Timestamp": "\u00b2", "X-Segpipe-Signature": _SIG}, b"{}", False),
    ({"X-Segpipe-Timestamp": "\u0661\u0662", "X-Segpipe-Signature": _SIG}, b"{}", False),
    ({"X-Segpipe-Timestamp": str(_NOW), "X-Segpipe-Signature": "sha256=\u00e9"}, b"{}", False),
    ({"X-Segpipe-Timestamp": "-1", "X-Segpipe-Signature": _SIG}, b"{}", False),
])
def test_verify_webhook(headers: dict, body: bytes, ok: bool) -> None:
    assert verify_webhook("s3cret", body, headers, now=_NOW + 10) is ok
    assert not verify_webhook("other", body, headers, now=_NOW + 10)


@pytest.mark.parametrize("skew_s, ok", [(-300, True), (300, True), (-301, False), (301, False)])
def test_verify_webhook_tolerance(skew_s: int, ok: bool) -> None:
    headers = {"X-Segpipe-Timestamp": str(_NOW), "X-Segpipe-Signature": _SIG}
    assert verify_webhook("s3cret", b"{}", headers, now=_NOW + skew_s) is ok
    assert verify_webhook("s3cret", b"{}", headers, now=time.time()) is False  # a replay years later


def test_corrupt_rle_counts_are_reported_in_crops() -> None:
    rle = mask_utils.encode(np.asfortranarray(np.ones((8, 8), bool)))
    bad = {"format": "rle", "size": [8, 9], "counts": rle["counts"].decode()}
    with pytest.raises(DataError, match="cover 64 pixels"):
        decode_mask(bad, 8, 9, window=(0, 0, 4, 4))
