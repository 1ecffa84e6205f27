"""engines.structures.Detections and engines.ops.postprocess (against Ultralytics' predictor).

Reference: tests/fixtures/ops/postprocess.npz from tests/fixtures/ops/make_refs.py, which runs
Ultralytics' own SegmentationPredictor.construct_result after its NMS.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools import mask as coco_mask

from engines.ops import NMSConfig, letterbox_geometry, postprocess
from engines.structures import Detections, class_color, empty_detections

REFS = Path(__file__).resolve().parents[1] / "fixtures" / "ops"
NAMES = ("person", "car", "dog")


def _dets(n: int = 3, shape: tuple[int, int] = (40, 60), masks: bool = True) -> Detections:
    boxes = torch.tensor([[2.0, 3.0, 20.0, 30.0], [30.0, 5.0, 58.0, 25.0], [10.0, 20.0, 40.0, 39.0]])[:n]
    m = torch.zeros((n, *shape), dtype=torch.bool)
    for i, (x1, y1, x2, y2) in enumerate(boxes.int().tolist()):
        m[i, y1:y2, x1:x2] = True
    return Detections(boxes=boxes, scores=torch.tensor([0.9, 0.5, 0.3])[:n],
                      class_ids=torch.tensor([0, 1, 0])[:n], masks=m if masks else None, orig_shape=shape,
                      names=NAMES)


def test_basic_views() -> None:
    d = _dets()
    assert len(d) == 3 and d.labels == ["person", "car", "person"]
    n = d.numpy()
    assert isinstance(n.boxes, np.ndarray) and n.masks.dtype == np.bool_ and n.class_ids.dtype == np.int64
    assert n.numpy() is not n and n.cpu() is n
    assert torch.equal(d.cpu().boxes, d.boxes)
    with pytest.raises(AttributeError):
        d.boxes = d.boxes  # type: ignore[misc]  # frozen
    e = empty_detections((10, 20), NAMES)
    assert len(e) == 0 and e.labels == [] and e.to_rle() == [] and e.masks.shape == (0, 10, 20)


BAD = [
    ({"boxes": torch.zeros((3, 5))}, r"Detections.boxes shape: expected \(n, 4\), got \(3, 5\)"),
    ({"boxes": torch.zeros((3, 4), dtype=torch.float64)}, "Detections.boxes dtype: expected float32, got 'float64'"),
    ({"scores": torch.zeros(2)}, r"Detections.scores shape: expected \(3,\), got \(2,\)"),
    ({"scores": torch.zeros(3, dtype=torch.float16)}, "Detections.scores dtype: expected float32, got 'float16'"),
    ({"class_ids": torch.zeros(3, dtype=torch.int32)}, "Detections.class_ids dtype: expected int64, got 'int32'"),
    ({"masks": torch.zeros((3, 40, 61), dtype=torch.bool)},
     r"Detections.masks shape: expected \(3, 40, 60\), got \(3, 40, 61\)"),
    ({"masks": torch.zeros((3, 40, 60), dtype=torch.uint8)}, "Detections.masks dtype: expected bool, got 'uint8'"),
    ({"orig_shape": (0, 60), "masks": None}, r"Detections.orig_shape: expected \(H, W\) > 0, got \(0, 60\)"),
    ({"scores": np.zeros(3, np.float32)}, "Detections arrays: expected all torch.Tensor or all numpy.ndarray"),
]


@pytest.mark.parametrize(("change", "match"), BAD)
def test_construction_checks(change: dict, match: str) -> None:
    d = _dets()
    fields = {"boxes": d.boxes, "scores": d.scores, "class_ids": d.class_ids, "masks": d.masks,
              "orig_shape": d.orig_shape, "names": d.names, **change}
    with pytest.raises(ValueError, match=match):
        Detections(**fields)


def test_labels_out_of_range() -> None:
    d = Detections(boxes=torch.zeros((1, 4)), scores=torch.ones(1), class_ids=torch.tensor([7]), masks=None,
                   orig_shape=(4, 4), names=NAMES)
    with pytest.raises(ValueError, match=r"expected ids in \[0, 3\), got \[7\]"):
        _ = d.labels


def test_rle_and_polygons() -> None:
    d = _dets()
    rles = d.to_rle()
    for r, m in zip(rles, d.masks.numpy(), strict=True):
        theirs = coco_mask.encode(np.asfortranarray(m.astype(np.uint8)))
        assert r == {"size": [40, 60], "counts": theirs["counts"].decode()}
    polys = d.numpy().polygons()
    assert [len(p) for p in polys] == [1, 1, 1]
    assert sorted(map(tuple, polys[0][0].tolist())) == [(2, 3), (2, 29), (19, 3), (19, 29)]
    no_masks = _dets(masks=False)
    with pytest.raises(ValueError, match="have no masks"):
        no_masks.to_rle()


def test_plot() -> None:
    d = _dets()
    img = np.full((40, 60, 3), 50, np.uint8)
    out = d.plot(img)
    assert out.shape == img.shape and out.dtype == np.uint8 and out is not img
    assert (img == 50).all()  # input untouched
    inside = d.masks[0].numpy() & ~d.masks[2].numpy()
    assert not (out[inside] == 50).all()  # masks tinted
    assert (out[0, 59] == 50).all()  # background corner untouched
    assert class_color(0) != class_color(1) and len({class_color(i) for i in range(80)}) == 80
    assert (d.numpy().plot(img) == out).all()
    assert (_dets(masks=False).plot(img) != img).any()  # boxes alone still drawn
    with pytest.raises(ValueError, match=r"plot image shape: expected \(40, 60, 3\), got \(40, 61, 3\)"):
        d.plot(np.zeros((40, 61, 3), np.uint8))


def test_plot_colours_tracked_objects_by_their_id() -> None:
    """Two people (class 0) side by side share their class colour; tracked, each has its id's colour, the
    same on every frame it is drawn."""
    d = _dets()
    img = np.full((40, 60, 3), 50, np.uint8)
    only_0 = d.masks[0].numpy() & ~d.masks[2].numpy()
    only_2 = d.masks[2].numpy() & ~d.masks[0].numpy() & ~d.masks[1].numpy()
    by_class = d.plot(img, line_width=1)
    assert (by_class[only_0][5] == by_class[only_2][5]).all()
    tracked = d.plot(img, line_width=1, track_ids=[7, None, 12])
    assert (tracked[only_0][5] != tracked[only_2][5]).any()
    assert (d.plot(img, line_width=1, track_ids=[7, 3, 12])[only_0][5] == tracked[only_0][5]).all()
    with pytest.raises(ValueError, match="2 track ids for 3 detections"):
        d.plot(img, track_ids=[1, 2])


@pytest.fixture(scope="module")
def pp_ref() -> dict[str, np.ndarray]:
    with np.load(REFS / "postprocess.npz") as z:
        return dict(z)


@pytest.mark.parametrize("retina", [False, True])
def test_postprocess_matches_ultralytics_predictor(pp_ref: dict[str, np.ndarray], retina: bool) -> None:
    pred = torch.from_numpy(pp_ref["pred"].astype(np.float32))
    protos = torch.from_numpy(pp_ref["protos"].astype(np.float32))
    conf, iou, max_det = pp_ref["cfg"].tolist()
    origs = [tuple(o) for o in pp_ref["origs"].tolist()]
    infos = [letterbox_geometry(o, size=320) for o in origs]
    dets = postprocess(pred, protos, infos, NMSConfig(conf=conf, iou=iou, max_det=int(max_det)), names=NAMES,
                       retina_masks=retina)
    assert len(dets) == 3
    for i, d in enumerate(dets):
        key = f"r{int(retina)}__{i}"
        rows = np.concatenate([d.boxes.numpy(), d.scores.numpy()[:, None], d.class_ids.numpy()[:, None]], 1)
        np.testing.assert_array_equal(rows.astype(np.float32), pp_ref[f"{key}__boxes"])
        expected = np.unpackbits(pp_ref[f"{key}__masks"], axis=-1, count=origs[i][1]).astype(bool)
        np.testing.assert_array_equal(d.masks.numpy(), expected)
        assert d.orig_shape == origs[i] and d.names == NAMES


def test_postprocess_without_masks_and_empty(pp_ref: dict[str, np.ndarray]) -> None:
    pred = torch.from_numpy(pp_ref["pred"].astype(np.float32))
    protos = torch.from_numpy(pp_ref["protos"].astype(np.float32))
    infos = [letterbox_geometry(tuple(o), size=320) for o in pp_ref["origs"].tolist()]
    with_masks = postprocess(pred, protos, infos, NMSConfig(max_det=8), names=NAMES)
    boxes_only = postprocess(pred, protos, infos, NMSConfig(max_det=8), names=NAMES, masks=False)
    for a, b in zip(with_masks, boxes_only, strict=True):
        assert b.masks is None and torch.equal(a.boxes, b.boxes[: len(a)])
    none = postprocess(pred, protos, infos, NMSConfig(conf=1.0), names=NAMES)
    assert [len(d) for d in none] == [0, 0, 0] and none[0].masks.shape == (0, *infos[0].orig_shape)
    with pytest.raises(ValueError, match="expected 2 images"):
        postprocess(pred, protos, infos[:2], NMSConfig(), names=NAMES)


@pytest.mark.parametrize("retina", [False, True])
def test_postprocess_drops_objects_with_empty_masks(retina: bool) -> None:
    """As Ultralytics' predictor: a box whose mask has no pixel is not reported."""
    pred = torch.zeros((1, 4 + 3 + 32, 2))
    pred[0, :4, 0] = torch.tensor([20.0, 20.0, 16.0, 16.0])  # xywh, input pixels
    pred[0, :4, 1] = torch.tensor([44.0, 44.0, 16.0, 16.0])
    pred[0, 4, 0], pred[0, 5, 1] = 0.9, 0.8
    pred[0, 7:, 0], pred[0, 7:, 1] = 1.0, -1.0  # positive vs negative logits everywhere
    protos = torch.ones((1, 32, 16, 16))
    info = letterbox_geometry((48, 64), size=64)
    (d,) = postprocess(pred, protos, [info], NMSConfig(), names=NAMES, retina_masks=retina)
    assert len(d) == 1 and d.class_ids.tolist() == [0] and d.masks.shape == (1, 48, 64)
    assert d.masks[0].any()


def test_crop_backed_detections_match_dense_ones() -> None:
    dense = _dets()
    crops = []
    for x1, y1, x2, y2 in dense.boxes.int().tolist():
        crops.append((x1, y1, dense.masks[len(crops), y1:y2, x1:x2].clone()))
    lazy = Detections(boxes=dense.boxes, scores=dense.scores, class_ids=dense.class_ids, crops=crops,
                      orig_shape=dense.orig_shape, names=dense.names)
    assert lazy.has_masks and lazy.to_rle() == dense.to_rle()
    assert [[p.tolist() for p in ps] for ps in lazy.polygons()] == [[p.tolist() for p in ps] for ps in dense.polygons()]
    img = np.full((*dense.orig_shape, 3), 90, np.uint8)
    assert np.array_equal(lazy.plot(img), dense.plot(img))
    assert lazy.numpy().to_rle() == dense.numpy().to_rle()
    assert torch.equal(lazy.masks, dense.masks)  # built on first read, then kept
    assert lazy.masks is lazy.masks
    with pytest.raises(ValueError, match="crops inside the 40x60 frame"):
        Detections(boxes=dense.boxes, scores=dense.scores, class_ids=dense.class_ids,
                   crops=[(50, 0, torch.ones((5, 20), dtype=torch.bool))] * 3, orig_shape=(40, 60), names=NAMES)
