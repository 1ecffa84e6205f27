"""engines.ops.rle against pycocotools, and engines.ops.polygons."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools import mask as coco_mask

from engines.ops import mask_to_polygons, rle


def _coco(mask: np.ndarray) -> dict:
    return coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))


def _check_against_pycocotools(mask: np.ndarray) -> None:
    ours, theirs = rle.encode(mask), _coco(mask)
    assert ours == {"size": list(mask.shape), "counts": theirs["counts"].decode("ascii")}
    np.testing.assert_array_equal(rle.decode(ours), mask)
    np.testing.assert_array_equal(rle.decode(theirs), mask)  # bytes counts, as pycocotools gives
    assert rle.area(ours) == int(coco_mask.area(theirs)) == int(mask.sum())
    np.testing.assert_array_equal(coco_mask.decode({"size": ours["size"], "counts": ours["counts"].encode()}), mask)


def _special(name: str) -> np.ndarray:
    m = np.zeros((37, 53), bool)
    if name == "full":
        m[:] = True
    elif name == "borders":
        m[0, :] = m[-1, :] = m[:, 0] = m[:, -1] = True
    elif name == "corners":
        m[0, 0] = m[-1, -1] = m[0, -1] = m[-1, 0] = True
    elif name == "checker":
        m[::2, ::2] = m[1::2, 1::2] = True
    elif name == "last_pixel":
        m[-1, -1] = True
    elif name == "first_column":
        m[:, 0] = True
    return m


@pytest.mark.parametrize("name", ["empty", "full", "borders", "corners", "checker", "last_pixel", "first_column"])
def test_special_masks(name: str) -> None:
    _check_against_pycocotools(_special(name))


@pytest.mark.parametrize("shape", [(1, 1), (1, 17), (23, 1), (64, 48), (300, 451)])
def test_random_masks(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(shape[0] * 1000 + shape[1])
    for density in (0.02, 0.5, 0.97):
        _check_against_pycocotools(rng.random(shape) < density)


def test_real_coco128_masks(coco128: Path) -> None:
    """Instance polygons of real labels rasterised at the image size, one frame per instance."""
    checked = 0
    for lbl in sorted((coco128 / "labels" / "train2017").glob("*.txt"))[:6]:
        img = cv2.imread(str(coco128 / "images" / "train2017" / (lbl.stem + ".jpg")))
        h, w = img.shape[:2]
        for line in lbl.read_text().splitlines():
            xy = np.array(line.split()[1:], dtype=np.float64).reshape(-1, 2) * (w, h)
            mask = np.zeros((h, w), np.uint8)
            cv2.fillPoly(mask, [xy.round().astype(np.int32)], 1)
            _check_against_pycocotools(mask.astype(bool))
            x, y, bw, bh = cv2.boundingRect(mask)
            crop_rle = rle.encode_crop(mask[y:y + bh, x:x + bw].astype(bool), x, y, h, w)
            assert crop_rle == rle.encode(mask.astype(bool))
            checked += 1
    assert checked >= 10


@pytest.mark.parametrize(("x0", "y0", "w", "h"), [
    (0, 0, 53, 37),  # the whole frame
    (5, 0, 10, 37),  # full height: runs continue from one column into the next
    (0, 0, 1, 1),
    (52, 36, 1, 1),  # bottom-right pixel
    (40, 30, 13, 7),  # touching right and bottom borders
    (10, 10, 0, 5),  # empty crops
    (10, 10, 5, 0),
])
def test_encode_crop_equals_full_frame(x0: int, y0: int, w: int, h: int) -> None:
    rng = np.random.default_rng(x0 + 100 * y0 + w)
    for density in (0.0, 0.3, 1.0):
        crop = rng.random((h, w)) < density
        frame = np.zeros((37, 53), bool)
        frame[y0:y0 + h, x0:x0 + w] = crop
        assert rle.encode_crop(crop, x0, y0, 37, 53) == rle.encode(frame)


def test_counts_string_large_and_negative_deltas() -> None:
    counts = np.array([0, 5, 100000, 3, 600000, 7, 1234567, 1, 0, 2, 16])  # sum divisible by 3
    h, w = 3, int(counts.sum()) // 3
    theirs = coco_mask.frPyObjects({"size": [h, w], "counts": counts.tolist()}, h, w)  # compresses
    s = rle.counts_to_string(counts)
    assert s == theirs["counts"].decode("ascii")
    np.testing.assert_array_equal(rle.string_to_counts(s), counts)
    np.testing.assert_array_equal(rle.decode({"size": [h, w], "counts": s}), coco_mask.decode(theirs).astype(bool))
    huge = np.array([2**40, 1, 2**33, 2**35 + 3])  # beyond pycocotools' 32-bit counts: our own round trip
    np.testing.assert_array_equal(rle.string_to_counts(rle.counts_to_string(huge)), huge)


def test_decode_uncompressed_counts() -> None:
    mask = _special("checker")
    counts = rle.string_to_counts(rle.encode(mask)["counts"]).tolist()
    np.testing.assert_array_equal(rle.decode({"size": [37, 53], "counts": counts}), mask)
    assert rle.area({"size": [37, 53], "counts": counts}) == int(mask.sum())


@pytest.mark.parametrize(("call", "match"), [
    (lambda: rle.encode(np.zeros((2, 3, 1))), r"encode mask: expected shape \(H, W\), got \(2, 3, 1\)"),
    (lambda: rle.encode_crop(np.zeros((5, 5), bool), 8, 0, 10, 10), r"crop of shape \(5, 5\) at \(x0=8, y0=0\)"),
    (lambda: rle.encode_crop(np.zeros((5, 5), bool), -1, 0, 10, 10), "does not fit a frame of"),
    (lambda: rle.decode({"size": [2, 2], "counts": [1, 2]}), "counts sum to 3, expected H\\*W = 4"),
    (lambda: rle.decode({"counts": "1"}), "expected a 'size' of \\[H, W\\]"),
    (lambda: rle.string_to_counts("1\x7f"), "outside the COCO RLE alphabet"),
    (lambda: rle.string_to_counts("P"), "truncated"),
])
def test_errors(call, match: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=match):
        call()


def test_polygons_of_rectangle_with_offset_and_hole() -> None:
    mask = np.zeros((20, 30), bool)
    mask[2:8, 3:13] = True
    mask[4:6, 6:9] = False  # a hole: not reported
    mask[15, 25] = True  # a lone pixel: dropped (fewer than 3 vertices)
    polys = mask_to_polygons(mask)
    assert len(polys) == 1 and polys[0].dtype == np.float32
    assert sorted(map(tuple, polys[0].tolist())) == [(3, 2), (3, 7), (12, 2), (12, 7)]
    shifted = mask_to_polygons(mask[2:8, 3:13], offset=(3, 2))
    np.testing.assert_array_equal(shifted[0], polys[0])
    assert len(mask_to_polygons(mask, min_points=1)) == 2


def test_polygons_largest_first_and_empty() -> None:
    mask = np.zeros((40, 40), bool)
    mask[1:4, 1:4] = True
    mask[10:30, 10:30] = True
    polys = mask_to_polygons(mask)
    assert [len(p) for p in polys] == [4, 4] and polys[0][:, 0].max() == 29
    assert mask_to_polygons(np.zeros((5, 5), bool)) == []
    assert mask_to_polygons(np.zeros((0, 5), bool)) == []
    with pytest.raises(ValueError, match=r"expected shape \(h, w\), got \(5,\)"):
        mask_to_polygons(np.zeros(5, bool))
