"""COCO-style metrics against pycocotools' COCOeval on the same ground truth and detections."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from engines.val.coco import cocoeval_stats, encode_masks, gt_json, results_json, write_json
from engines.val.matching import (
    IOU_THRESHOLDS,
    box_iou_xywh,
    class_ranks,
    evaluate_image,
    greedy_match,
    mask_intersections,
    mask_iou,
)
from engines.val.metrics import MetricsAccumulator, f1_precision_recall
from engines.val.truth import ImageTruth, rasterize_polygon

NC = 4


def _blob(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """A random filled ellipse or polygon, (H, W) bool."""
    H, W = shape
    m = np.zeros(shape, np.uint8)
    cx, cy = rng.uniform(0, W), rng.uniform(0, H)
    if rng.random() < 0.5:
        axes = (int(rng.integers(2, W // 3)), int(rng.integers(2, H // 3)))
        cv2.ellipse(m, (int(cx), int(cy)), axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    else:
        r = rng.uniform(3, min(H, W) / 3)
        ang = np.sort(rng.uniform(0, 2 * np.pi, 7))
        pts = np.stack([cx + r * rng.uniform(0.4, 1, 7) * np.cos(ang),
                        cy + r * rng.uniform(0.4, 1, 7) * np.sin(ang)], 1)
        cv2.fillPoly(m, [np.round(pts).astype(np.int32)], 1)
    return m.astype(bool)


def _bbox(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return np.zeros(4)
    return np.array([xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()], np.float64)


def _jitter(rng: np.random.Generator, mask: np.ndarray, px: int) -> np.ndarray:
    dx, dy = (int(v) for v in rng.integers(-px, px + 1, 2))
    out = np.roll(mask, (dy, dx), (0, 1))
    k = int(rng.integers(0, 3))
    if k:
        op = cv2.dilate if rng.random() < 0.5 else cv2.erode
        out = op(out.astype(np.uint8), np.ones((k + 1, k + 1), np.uint8)).astype(bool)
    return out


def synthetic(seed: int, n_images: int = 14, crowd: bool = False, tie_scores: bool = False,
              ranked: bool = False):
    """Ground truth and detections with every awkward case: empty images, images without
    detections, wrong classes, duplicates, > 100 detections of one class, crowd regions.
    ranked: detections made from an instance outscore false positives (a useful score)."""
    rng = np.random.default_rng(seed)
    gts, dets = [], []
    for i in range(n_images):
        shape = (int(rng.integers(40, 90)), int(rng.integers(40, 90)))
        m = 0 if i == 1 else int(rng.integers(1, 7))
        g_masks = [_blob(rng, shape) for _ in range(m)]
        g_cls = rng.integers(0, NC, m)
        g_box = [_bbox(mk) + rng.normal(0, 0.7, 4) * (rng.random() < 0.5) for mk in g_masks]
        g_crowd = (rng.random(m) < 0.15) if crowd else np.zeros(m, bool)
        d_masks, d_box, d_cls, d_scores = [], [], [], []
        if i != 2:  # image 2 has no detections
            for mk, c, b in zip(g_masks, g_cls, g_box, strict=True):
                for _ in range(int(rng.integers(0, 4))):
                    dm = _jitter(rng, mk, 3)
                    d_masks.append(dm)
                    d_box.append(b + rng.normal(0, 2.0, 4))
                    d_cls.append(c if rng.random() < 0.85 else rng.integers(0, NC))
                    d_scores.append(rng.uniform(0.5, 1) if ranked else rng.random())
            n_fp = 130 if i == 3 else int(rng.integers(0, 5))
            for _ in range(n_fp):
                dm = _blob(rng, shape)
                d_masks.append(dm)
                d_box.append(_bbox(dm) + rng.normal(0, 1.0, 4))
                d_cls.append(0 if i == 3 else rng.integers(0, NC))
                d_scores.append(rng.uniform(0, 0.5) if ranked else rng.random() * 0.8)
        scores = np.array(d_scores, np.float64)
        if tie_scores:
            scores = np.round(scores, 1)
        gts.append(ImageTruth.from_masks(
            g_cls, np.array(g_box).reshape(-1, 4), np.array(g_masks).reshape(m, *shape), g_crowd))
        dets.append((np.array(d_box).reshape(-1, 4), scores, np.array(d_cls, np.int64),
                     np.array(d_masks, bool).reshape(-1, *shape)))
    return gts, dets


def ours(gts, dets, nc: int = NC):
    acc = MetricsAccumulator(nc)
    for i, (t, (b, s, c, mk)) in enumerate(zip(gts, dets, strict=True)):
        acc.add(evaluate_image(b, s, c, torch.from_numpy(mk), t), i)
    return acc.compute()


def theirs(tmp_path: Path, gts, dets, nc: int = NC):
    gt_path = write_json(tmp_path / "gt.json", gt_json(gts, [f"{i}.jpg" for i in range(len(gts))],
                                                       [str(c) for c in range(nc)]))
    preds = [r for i, (b, s, c, mk) in enumerate(dets) for r in results_json(i, b, s, c, mk)]
    pred_path = write_json(tmp_path / "pred.json", preds)
    return gt_path, pred_path


def _cocoeval(gt_path: Path, pred_path: Path, iou_type: str) -> COCOeval:
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_path))
        ev = COCOeval(gt, gt.loadRes(json.loads(pred_path.read_text())), iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def assert_agree(box, seg, gt_path: Path, pred_path: Path, tol: float = 1e-9) -> None:
    for ms, iou_type in ((box, "bbox"), (seg, "segm")):
        ev = _cocoeval(gt_path, pred_path, iou_type)
        assert abs(ms.map - ev.stats[0]) < tol, (iou_type, ms.map, ev.stats[0])
        assert abs(ms.map50 - ev.stats[1]) < tol, (iou_type, ms.map50, ev.stats[1])
        assert abs(ms.map75 - ev.stats[2]) < tol, (iou_type, ms.map75, ev.stats[2])
        # per class, over the classes COCOeval scored
        prec = ev.eval["precision"][:, :, :, 0, -1]
        valid = np.flatnonzero((prec > -1).all((0, 1)))
        assert tuple(valid) == ms.ap_class
        np.testing.assert_allclose(ms.ap, prec[:, :, valid].mean(1).T, atol=tol)


@pytest.mark.parametrize("seed, crowd, ties", [(0, False, False), (1, False, True), (2, True, False),
                                                (3, True, True)])
def test_matches_cocoeval_on_synthetic(tmp_path: Path, seed: int, crowd: bool, ties: bool) -> None:
    gts, dets = synthetic(seed, crowd=crowd, tie_scores=ties)
    assert sum(len(d[1]) for d in dets) > 150 and any(len(t) == 0 for t in gts)
    box, seg = ours(gts, dets)
    assert 0.05 < box.map < 0.95 and 0.05 < seg.map < 0.95  # neither trivially 0 nor 1
    assert_agree(box, seg, *theirs(tmp_path, gts, dets))


def test_perturbations_move_both(tmp_path: Path) -> None:
    """Degrading the detections changes our numbers and COCOeval's, by the same amounts."""
    gts, dets = synthetic(5, ranked=True)
    box0, seg0 = ours(gts, dets)
    shifted = [(b + 3.0, s, c, np.roll(mk, 3, axis=(1, 2))) for b, s, c, mk in dets]
    box1, seg1 = ours(gts, shifted)
    assert box1.map < box0.map - 0.02 and seg1.map < seg0.map - 0.02
    assert_agree(box1, seg1, *theirs(tmp_path, gts, shifted))
    # reversing confidence ranks reorders the PR curve: AP moves, still in agreement
    flipped = [(b, 1 - s, c, mk) for b, s, c, mk in dets]
    box2, seg2 = ours(gts, flipped)
    assert abs(box2.map - box0.map) > 0.02 and abs(seg2.map - seg0.map) > 0.02
    assert_agree(box2, seg2, *theirs(tmp_path, gts, flipped))


def test_matches_cocoeval_on_coco128_polygons(tmp_path: Path, coco128: Path) -> None:
    """Real masks: coco128 label polygons as truth, perturbed polygons as detections."""
    rng = np.random.default_rng(0)
    files = sorted((coco128 / "labels" / "train2017").glob("*.txt"))[:24]
    gts, dets = [], []
    for f in files:
        img = cv2.imread(str(coco128 / "images" / "train2017" / (f.stem + ".jpg")))
        H, W = img.shape[:2]
        rows = [np.array(line.split(), np.float64) for line in f.read_text().splitlines() if line.strip()]
        cls = np.array([int(r[0]) for r in rows], np.int64)
        segs = [r[1:].reshape(-1, 2) for r in rows]
        boxes = np.array([[*(s.min(0) + s.max(0)) / 2, *(s.max(0) - s.min(0))] for s in segs]).reshape(-1, 4)
        t = ImageTruth.from_labels((H, W), cls, segs, boxes)
        gts.append(t)
        d_masks, d_box, d_cls, d_scores = [], [], [], []
        for s, c in zip(segs, cls, strict=True):
            for _ in range(int(rng.integers(0, 3))):
                px = s * (W, H) * rng.uniform(0.9, 1.1) + rng.normal(0, 4, 2)
                crop, (x0, y0, x1, y1) = rasterize_polygon(px, (H, W))
                full = np.zeros((H, W), bool)
                full[y0:y1, x0:x1] = crop
                d_masks.append(full)
                lo, hi = px.min(0), px.max(0)
                d_box.append([*lo, *(hi - lo)])
                d_cls.append(c if rng.random() < 0.9 else (c + 1) % 80)
                d_scores.append(rng.random())
        dets.append((np.array(d_box, np.float64).reshape(-1, 4), np.array(d_scores), np.array(d_cls, np.int64),
                     np.array(d_masks, bool).reshape(-1, H, W)))
    box, seg = ours(gts, dets, nc=80)
    assert 0.1 < seg.map < 0.9 and 0.1 < box.map < 0.9
    assert_agree(box, seg, *theirs(tmp_path, gts, dets, nc=80))


def test_label_polygons_fill_as_pycocotools_fills_them(coco128: Path) -> None:
    """The validator's ground truth from YOLO-seg polygons: pycocotools' own rasterisation of the same
    polygons (COCO's definition), not cv2.fillPoly's, which also takes every pixel the outline touches.
    Measured on the first 30 images (184 polygons): mean IoU 0.992, median area ratio 1.000 (cv2.fillPoly,
    the rule before, on the first 60: 0.904 and 1.077; objects under 32x32 px 0.836 and 1.164)."""
    ious, ratios = [], []
    for f in sorted((coco128 / "labels" / "train2017").glob("*.txt"))[:30]:
        h, w = cv2.imread(str(coco128 / "images" / "train2017" / (f.stem + ".jpg"))).shape[:2]
        for line in f.read_text().splitlines():
            px = np.array(line.split()[1:], np.float64).reshape(-1, 2) * (w, h)
            coco = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects([px.ravel().tolist()], h, w))).astype(bool)
            crop, (x0, y0, x1, y1) = rasterize_polygon(px, (h, w))
            ours = np.zeros((h, w), bool)
            ours[y0:y1, x0:x1] = crop
            ious.append((ours & coco).sum() / max((ours | coco).sum(), 1))
            ratios.append(ours.sum() / max(coco.sum(), 1))
    assert len(ious) > 150
    assert np.mean(ious) > 0.98 and abs(np.median(ratios) - 1) < 0.01, (np.mean(ious), np.median(ratios))


def test_mask_iou_equals_pycocotools() -> None:
    gts, dets = synthetic(7, crowd=True)
    for t, (_, _, c, mk) in zip(gts, dets, strict=True):
        if not len(t) or not len(c):
            continue
        inter = mask_intersections(torch.from_numpy(mk), np.zeros(len(c), np.int64), t.__class__(
            shape=t.shape, cls=np.zeros(len(t), np.int64), boxes=t.boxes, crowd=t.crowd,
            windows=t.windows, bits=t.bits, areas=t.areas))
        got = mask_iou(inter, mk.reshape(len(mk), -1).sum(1), t)
        want = mask_utils.iou(encode_masks(mk), encode_masks(np.stack([t.full_mask(j) for j in range(len(t))])),
                              t.crowd.astype(np.uint8).tolist())
        np.testing.assert_array_equal(got, want)
        boxes = np.abs(np.random.default_rng(0).normal(20, 10, (len(c), 4)))
        np.testing.assert_array_equal(box_iou_xywh(boxes, t.boxes, t.crowd),
                                      mask_utils.iou(boxes.tolist(), t.boxes.tolist(), t.crowd.tolist()))


def test_greedy_match_prefers_higher_iou_and_skips_taken() -> None:
    iou = np.array([[0.6, 0.9], [0.8, 0.85], [0.55, 0.0]])
    tp, ig = greedy_match(iou, np.zeros(3, int), np.zeros(2, int), np.array([False, False]))
    # det 0 takes gt 1 everywhere it reaches; det 1 takes gt 0 up to 0.8; det 2 finds gt 0 taken
    # at 0.5/0.55, free at 0.85+ (where det 1 failed) but 0.55 < those thresholds
    assert tp[0].tolist() == (IOU_THRESHOLDS <= 0.9).tolist()
    assert tp[1].tolist() == (IOU_THRESHOLDS <= 0.8).tolist()
    assert not tp[2].any() and not ig.any()


def test_crowd_absorbs_unmatched_detection() -> None:
    iou = np.array([[0.9, 0.7], [0.2, 0.8]])
    tp, ig = greedy_match(iou, np.zeros(2, int), np.zeros(2, int), np.array([False, True]))
    assert tp[0].tolist() == (IOU_THRESHOLDS <= 0.9).tolist()
    assert not tp[1].any() and ig[1].tolist() == (IOU_THRESHOLDS <= 0.8).tolist()


def test_class_ranks_and_top_100() -> None:
    assert class_ranks(np.array([2, 0, 2, 2, 0])).tolist() == [0, 0, 1, 2, 1]
    t = ImageTruth.from_masks(np.array([0]), np.array([[0.0, 0, 4, 4]]), np.ones((1, 8, 8), bool))
    boxes = np.tile([0.0, 0, 4, 4], (150, 1))
    ev = evaluate_image(boxes, np.linspace(1, 0.1, 150), np.zeros(150, int), None, t)
    assert ev.top.sum() == 100 and ev.box_tp[:, 0].sum() == 1 and ev.box_tp[0, 0]


def test_f1_precision_recall_at_best_f1() -> None:
    # class 0: 100 TPs above conf 0.5, 100 FPs below, 100 instances -> P = R = 1 at the best F1
    # class 1: 50 TPs above conf 0.5 for 100 instances, nothing else -> P = 1, R = 0.5
    conf0 = np.r_[np.linspace(0.99, 0.51, 100), np.linspace(0.49, 0.01, 100)]
    tp = np.r_[np.ones(100, bool), np.zeros(100, bool), np.ones(50, bool)]
    conf = np.r_[conf0, np.linspace(0.98, 0.52, 50)]
    cls = np.r_[np.zeros(200, int), np.ones(50, int)]
    p, r, p_curve, r_curve, f1 = f1_precision_recall(tp, conf, cls, np.array([100, 100, 0]))
    assert p == pytest.approx([1.0, 1.0], abs=0.03) and r == pytest.approx([1.0, 0.5], abs=0.03)
    assert p_curve.shape == r_curve.shape == f1.shape == (2, 1000)


def test_empty_accumulator_and_no_detections(tmp_path: Path) -> None:
    box, seg = MetricsAccumulator(3).compute()
    assert box.map == seg.map == 0.0 and box.maps == (0.0,) * 3
    t = ImageTruth.from_masks(np.array([1]), np.array([[0.0, 0, 4, 4]]), np.ones((1, 8, 8), bool))
    acc = MetricsAccumulator(3)
    acc.add(evaluate_image(np.zeros((0, 4)), np.zeros(0), np.zeros(0, int), torch.zeros(0, 8, 8, dtype=torch.bool), t), 0)
    box, seg = acc.compute()
    assert box.map == 0.0 and box.ap_class == (1,) and acc.instances.tolist() == [0, 1, 0]
    gt_path = write_json(tmp_path / "gt.json", gt_json([t], ["a.jpg"], ["a", "b", "c"]))
    pred_path = write_json(tmp_path / "pred.json", [])
    assert cocoeval_stats(gt_path, pred_path)["seg.map"] == 0.0


def test_cocoeval_stats_reads_written_pair(tmp_path: Path) -> None:
    gts, dets = synthetic(11, n_images=5)
    box, seg = ours(gts, dets)
    stats = cocoeval_stats(*theirs(tmp_path, gts, dets))
    assert stats["box.map"] == pytest.approx(box.map, abs=1e-9)
    assert stats["seg.map50"] == pytest.approx(seg.map50, abs=1e-9)


@pytest.mark.gpu
def test_cuda_masks_score_like_cpu() -> None:
    gts, dets = synthetic(13, crowd=True)
    for t, (b, s, c, mk) in zip(gts, dets, strict=True):
        cpu = evaluate_image(b, s, c, torch.from_numpy(mk), t)
        gpu = evaluate_image(b, s, c, torch.from_numpy(mk).cuda(), t)
        np.testing.assert_array_equal(cpu.mask_tp, gpu.mask_tp)
        np.testing.assert_array_equal(cpu.mask_ignored, gpu.mask_ignored)
