"""Augmentation settings and geometry: Ultralytics parity (reference fixture), exact clipped boxes,
mask rasterisation, seeded image transforms."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from engines.data.augment import (
    AugmentConfig,
    hsv_jitter,
    mosaic_layout,
    random_affine,
    transform_points,
    val_letterbox,
    warp_image,
)
from engines.data.polygons import box_candidates, polygon_boxes, rasterize, resample_segments
from engines.errors import ConfigError
from engines.ops.letterbox import letterbox_geometry

REF = Path(__file__).parents[1] / "fixtures" / "data" / "ultralytics_ref.npz"


def test_defaults_are_ultralytics():
    hyp = AugmentConfig()
    assert (hyp.hsv_h, hyp.hsv_s, hyp.hsv_v) == (0.015, 0.7, 0.4)
    assert (hyp.degrees, hyp.translate, hyp.scale, hyp.shear, hyp.perspective) == (0.0, 0.1, 0.5, 0.0, 0.0)
    assert (hyp.flipud, hyp.fliplr, hyp.mosaic, hyp.close_mosaic, hyp.mask_ratio) == (0.0, 0.5, 1.0, 10, 4)
    with pytest.raises(AttributeError):
        hyp.scale = 0.9  # frozen


@pytest.mark.parametrize(("overrides", "match"), [
    ({"fliplr": 1.5}, r"hyp\.fliplr: expected a number in \[0, 1\]"),
    ({"scale": 1.0}, r"hyp\.scale"),
    ({"degrees": -1}, r"hyp\.degrees"),
    ({"mosaic": "yes"}, r"hyp\.mosaic"),
    ({"mask_ratio": 0}, r"hyp\.mask_ratio: expected a positive integer"),
    ({"close_mosaic": 2.5}, r"hyp\.close_mosaic"),
    ({"mosiac": 0.5}, r"hyp\.mosiac: unknown augmentation setting"),
])
def test_bad_settings(overrides, match):
    with pytest.raises(ConfigError, match=match):
        AugmentConfig.from_dict(overrides)


def test_from_dict_overrides():
    assert AugmentConfig.from_dict({"degrees": 10.0, "mosaic": 0.0}) == AugmentConfig(degrees=10.0, mosaic=0.0)


def test_resample_matches_ultralytics():
    ref = np.load(REF)
    for i in range(4):
        got = resample_segments([ref[f"resample_in_{i}"]], 1000)[0]
        np.testing.assert_allclose(got, ref[f"resample_out_{i}"], atol=1e-4)
        # original vertices survive exactly
        assert {tuple(p) for p in ref[f"resample_in_{i}"]} <= {tuple(p) for p in got}
    long = np.random.default_rng(0).uniform(0, 9, (1200, 2)).astype(np.float32)
    out = resample_segments([long, long[:5]])
    assert out.shape == (2, 1201, 2)  # a polygon longer than 1000 points keeps all of them


def test_polygon_boxes_match_ultralytics_segment2box():
    ref = np.load(REF)
    got = polygon_boxes(ref["seg2box_in"], 100, 80)
    np.testing.assert_allclose(got, ref["seg2box_out"], atol=1e-3)
    assert (got == 0).all(1).sum() > 0 and (got[:, 2] - got[:, 0] > 0).sum() > 20  # both kinds present


def test_polygon_boxes_exact_cases():
    tri = np.array([[[50, 10], [150, 40], [50, 70]]], np.float32)  # crosses x = 100
    # the triangle's edges meet x=100 at y=25 and y=55
    np.testing.assert_allclose(polygon_boxes(tri, 100, 80), [[50, 10, 100, 70]], atol=1e-4)
    cover = np.array([[[-10, -10], [200, -10], [200, 200], [-10, 200]]], np.float32)  # holds all corners
    np.testing.assert_allclose(polygon_boxes(cover, 100, 80), [[0, 0, 100, 80]])
    diamond = np.array([[[50, -30], [90, 10], [50, 50], [10, 10]]], np.float32)  # cut by y = 0
    np.testing.assert_allclose(polygon_boxes(diamond, 100, 80), [[10, 0, 90, 50]], atol=1e-4)
    outside = np.array([[[120, 10], [150, 10], [150, 30]]], np.float32)
    np.testing.assert_array_equal(polygon_boxes(outside, 100, 80), [[0, 0, 0, 0]])
    assert polygon_boxes(np.zeros((0, 5, 2), np.float32), 10, 10).shape == (0, 4)


def test_box_candidates_match_ultralytics():
    ref = np.load(REF)
    np.testing.assert_array_equal(box_candidates(ref["cand_b1"], ref["cand_b2"], area_thr=0.01), ref["cand_keep"])


def test_rasterize_rectangle_exact_and_circle():
    rect = np.array([[[8, 12], [40, 12], [40, 28], [8, 28]]], np.float32)  # pixels 8..39 x 12..27
    m = rasterize(rect, 64, 64, ratio=4)
    assert m.shape == (1, 16, 16) and m.dtype == np.uint8
    expect = np.zeros((16, 16), np.uint8)
    expect[3:7, 2:10] = 1  # low-res pixel centres 4j+2 inside [8,40) x [12,28)
    np.testing.assert_array_equal(m[0], expect)
    t = np.linspace(0, 2 * math.pi, 200, endpoint=False)
    circle = np.stack((100 + 60 * np.cos(t), 90 + 60 * np.sin(t)), 1)[None].astype(np.float32)
    m = rasterize(circle, 200, 240, ratio=4)[0]
    yy, xx = np.mgrid[0:50, 0:60]
    analytic = ((xx * 4 + 2 - 100) ** 2 + (yy * 4 + 2 - 90) ** 2) < 60**2
    iou = (m.astype(bool) & analytic).sum() / (m.astype(bool) | analytic).sum()
    assert iou > 0.97
    assert rasterize(np.zeros((0, 4, 2), np.float32), 32, 32, 4).shape == (0, 8, 8)


def test_random_affine_is_seeded_and_maps_centre():
    hyp = AugmentConfig(degrees=20, shear=5, perspective=0.0005)
    m1, s1 = random_affine(np.random.default_rng(3), hyp, (480, 640), (320, 320))
    m2, s2 = random_affine(np.random.default_rng(3), hyp, (480, 640), (320, 320))
    np.testing.assert_array_equal(m1, m2)
    assert s1 == s2 and 0.5 <= s1 <= 1.5
    still = AugmentConfig(translate=0.0, scale=0.0)
    m, s = random_affine(np.random.default_rng(0), still, (480, 640), (320, 320))
    assert s == 1.0
    np.testing.assert_allclose(transform_points(np.array([[320.0, 240.0], [0.0, 0.0]]), m),
                               [[160, 160], [-160, -80]], atol=1e-4)


def test_points_follow_the_warped_image():
    """A dot drawn in the image lands where transform_points sends its centre."""
    img = np.zeros((120, 160, 3), np.uint8)
    cv2.circle(img, (40, 30), 4, (255, 255, 255), -1)
    hyp = AugmentConfig(degrees=30, shear=8, perspective=0.0008)
    M, _ = random_affine(np.random.default_rng(11), hyp, img.shape[:2], (160, 160))
    out = warp_image(img, M, (160, 160))
    ys, xs = np.nonzero(out[..., 0] > 128)
    # the dot sits on pixel centres 40.5, 30.5 in continuous coordinates; cv2 maps pixel centres
    expect = transform_points(np.array([[40.0, 30.0]]), M)[0]
    assert abs(xs.mean() - expect[0]) < 1.0 and abs(ys.mean() - expect[1]) < 1.0


def test_mosaic_layout_tiles_touch_centre_and_stay_in_canvas():
    s = 320
    shapes = [(240, 320), (320, 213), (180, 320), (320, 320)]
    for seed in range(20):
        lay = mosaic_layout(np.random.default_rng(seed), s, shapes)
        covered = np.zeros((2 * s, 2 * s), np.int32)
        for (x1a, y1a, x2a, y2a, x1b, y1b, x2b, y2b), (h, w) in zip(lay, shapes, strict=True):
            assert 0 <= x1a <= x2a <= 2 * s and 0 <= y1a <= y2a <= 2 * s
            assert (x2a - x1a, y2a - y1a) == (x2b - x1b, y2b - y1b)
            assert 0 <= x1b <= x2b <= w and 0 <= y1b <= y2b <= h
            covered[y1a:y2a, x1a:x2a] += 1
        assert covered.max() == 1  # tiles never overlap
        xc, yc = lay[0][2], lay[0][3]
        assert s // 2 <= xc <= 3 * s // 2 and s // 2 <= yc <= 3 * s // 2
        assert lay[1][0] == xc and lay[2][1] == yc and lay[3][:2] == (xc, yc)


def test_hsv_jitter_seeded_and_greys_stay_grey():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
    a, b = img.copy(), img.copy()
    hsv_jitter(a, np.random.default_rng(5), 0.015, 0.7, 0.4)
    hsv_jitter(b, np.random.default_rng(5), 0.015, 0.7, 0.4)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, img)
    grey = np.full((8, 8, 3), 114, np.uint8)
    hsv_jitter(grey, np.random.default_rng(1), 0.015, 0.7, 0.4)
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()
    same = img.copy()
    hsv_jitter(same, np.random.default_rng(1), 0.0, 0.0, 0.0)
    np.testing.assert_array_equal(same, img)


def test_val_letterbox_matches_ultralytics_and_ops():
    for h0, w0, imgsz, th, tw, uh, uw, left, top, gain in np.load(REF)["letterbox"]:
        info = val_letterbox((int(h0), int(w0)), int(imgsz), (int(th), int(tw)))
        assert info.new_shape == (th, tw)
        assert abs(info.unpad_shape[0] - uh) <= 1 and abs(info.unpad_shape[1] - uw) <= 1
        assert abs(info.pad[0] - left) <= 1 and abs(info.pad[1] - top) <= 1
        assert info.gain == pytest.approx(gain, rel=5e-3)
    for shape in [(480, 640), (427, 640), (640, 359), (100, 120)]:  # square: same as the device letterbox
        ops = letterbox_geometry(shape, size=320, scaleup=True)
        ours = val_letterbox(shape, 320, (320, 320))
        assert ours == ops
