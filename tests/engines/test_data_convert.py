"""COCO instances JSON -> YOLO-seg: polygons, compressed and uncompressed RLE, crowd handling,
category remapping, round trip back to masks on real coco128 objects, CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from engines.data import SegDataset, load_data_yaml, parse_label_file
from engines.data.convert import coco_to_yolo
from engines.data.polygons import merge_polygons, rasterize
from engines.errors import DataError
from pipeline.cli import main

STEMS = ("000000000009", "000000000025", "000000000030")


def _uncompressed(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE: run lengths over the column-major mask, starting with zeros."""
    flat = mask.T.reshape(-1).astype(np.uint8)
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate(([0], change, [len(flat)]))
    runs = np.diff(bounds).tolist()
    if flat[0] == 1:
        runs = [0, *runs]
    return {"size": list(mask.shape), "counts": runs}


def _coco_from_coco128(coco128: Path, tmp: Path) -> tuple[Path, Path, list[np.ndarray]]:
    """A COCO json over 3 coco128 images. Instances alternate polygon / RLE / uncompressed RLE; one
    extra crowd annotation; category ids are sparse and listed out of order. Returns the json,
    the images folder and the full-res mask of every non-crowd annotation in file order."""
    images_dir = tmp / "coco_images"
    images_dir.mkdir()
    doc = {"images": [], "annotations": [], "categories": []}
    truth, used = [], set()
    for img_id, stem in enumerate(STEMS, 1):
        src = coco128 / "images" / "train2017" / f"{stem}.jpg"
        shutil.copy(src, images_dir / src.name)
        h, w = cv2.imread(str(src)).shape[:2]
        doc["images"].append({"id": img_id, "file_name": src.name, "height": h, "width": w})
        cls, segs, _ = parse_label_file(coco128 / "labels" / "train2017" / f"{stem}.txt", nc=80)
        for k, (c, seg) in enumerate(zip(cls.tolist(), segs, strict=True)):
            poly = seg * (w, h)
            mask = rasterize([poly], h, w, 1)[0]
            if mask.sum() < 400:  # COCO's tiny slivers say little about a round trip
                continue
            kind = k % 3
            if kind == 0:
                seg_json = [poly.reshape(-1).round(2).tolist()]
            elif kind == 1:
                rle = mask_utils.encode(np.asfortranarray(mask))
                seg_json = {"size": rle["size"], "counts": rle["counts"].decode()}
            else:
                seg_json = _uncompressed(mask)
            used.add(c)
            doc["annotations"].append({"id": len(doc["annotations"]) + 1, "image_id": img_id,
                                       "category_id": 3 * c + 7, "segmentation": seg_json,
                                       "iscrowd": 0, "area": float(mask.sum()), "bbox": [0, 0, 1, 1]})
            truth.append(mask.astype(bool))
    crowd = np.zeros((doc["images"][0]["height"], doc["images"][0]["width"]), np.uint8)
    crowd[10:60, 20:90] = 1
    doc["annotations"].append({"id": 999, "image_id": 1, "category_id": 3 * min(used) + 7, "iscrowd": 1,
                               "segmentation": _uncompressed(crowd), "area": 3500.0, "bbox": [20, 10, 70, 50]})
    names = {0: "person", 1: "bicycle", 2: "car", 45: "bowl", 49: "orange", 50: "broccoli", 55: "cake",
             60: "dining table", 22: "zebra", 23: "giraffe", 58: "potted plant"}
    doc["categories"] = [{"id": 3 * c + 7, "name": names.get(c, f"c{c}")} for c in sorted(used, reverse=True)]
    js = tmp / "instances_mini2017.json"
    js.write_text(json.dumps(doc))
    return js, images_dir, truth


def test_round_trip_real_masks(coco128, tmp_path, monkeypatch):
    monkeypatch.setenv("SEGPIPE_CACHE", str(tmp_path / "cache"))
    js, images, truth = _coco_from_coco128(coco128, tmp_path)
    doc = json.loads(js.read_text())
    out = tmp_path / "yolo"
    report = coco_to_yolo(js, images, out)
    assert (report.images, report.labelled, report.instances) == (3, 3, len(truth))
    assert (report.crowd_skipped, report.crowd_included, report.no_mask) == (1, 0, 0)
    cats = sorted(doc["categories"], key=lambda c: c["id"])
    assert report.names == tuple(c["name"] for c in cats)
    spec = load_data_yaml(report.yaml_file)
    assert spec.names == report.names and spec.train == (out / "images" / "mini2017",)
    assert (out / "images" / "mini2017" / f"{STEMS[0]}.jpg").is_symlink()
    remap = {c["id"]: i for i, c in enumerate(cats)}
    expect_cls = [remap[a["category_id"]] for a in doc["annotations"] if not a["iscrowd"]]
    got_cls, ious, k = [], [], 0
    for im in doc["images"]:
        h, w = im["height"], im["width"]
        cls, segs, _ = parse_label_file(out / "labels" / "mini2017" / f"{Path(im['file_name']).stem}.txt",
                                        nc=spec.nc)
        got_cls += cls.tolist()
        for seg in segs:
            back = rasterize([seg * (w, h)], h, w, 1)[0].astype(bool)
            ious.append((back & truth[k]).sum() / (back | truth[k]).sum())
            k += 1
    assert got_cls == expect_cls and k == len(truth) >= 6
    assert min(ious) > 0.9, ious
    ds = SegDataset.from_spec(spec, "train", imgsz=320, augment=False)
    assert ds.stats.labelled == 3


def test_crowd_included_copy_and_force(coco128, tmp_path):
    js, images, truth = _coco_from_coco128(coco128, tmp_path)
    out = tmp_path / "yolo"
    coco_to_yolo(js, images, out)
    with pytest.raises(DataError, match="not empty .*--force"):
        coco_to_yolo(js, images, out, crowd="include")
    report = coco_to_yolo(js, images, out, crowd="include", copy=True, force=True, split="all")
    assert report.crowd_included == 1 and report.instances == len(truth) + 1
    copied = out / "images" / "all" / f"{STEMS[0]}.jpg"
    assert copied.is_file() and not copied.is_symlink()
    assert "train: images/all" in report.yaml_file.read_text()


@pytest.mark.parametrize(("mutate", "match"), [
    (lambda d: d["images"][0].update(file_name="absent.jpg"), "absent.jpg .* not found"),
    (lambda d: d["images"][0].update(width=999), "json says 999x"),
    (lambda d: d["annotations"][0].update(category_id=12345), "category_id 12345 is not in"),
    (lambda d: d["annotations"][1].update(segmentation={"size": [1, 1], "counts": "0"}), "RLE size"),
    (lambda d: d["annotations"][0].update(segmentation="oops"), "neither a polygon list nor an RLE"),
    (lambda d: d.pop("categories"), "missing 'categories'"),
    # Found at the last image, after the others had been written: a half-converted dataset was left.
    (lambda d: d["images"][-1].update(file_name="absent.jpg"), "absent.jpg .* not found"),
    (lambda d: d["annotations"][-2].update(category_id=12345), "category_id 12345 is not in"),
    # An annotation of no listed image was dropped without a word.
    (lambda d: d["annotations"][0].update(image_id=4242), r"annotation 1: image_id 4242 is not in 'images'"),
])
def test_bad_input(coco128, tmp_path, mutate, match):
    js, images, _ = _coco_from_coco128(coco128, tmp_path)
    doc = json.loads(js.read_text())
    mutate(doc)
    js.write_text(json.dumps(doc))
    with pytest.raises(DataError, match=match):
        coco_to_yolo(js, images, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_polygon_outside_the_image_is_no_mask(coco128, tmp_path):
    """Clipped to the image, it became a zero-area instance on the image's edge."""
    js, images, truth = _coco_from_coco128(coco128, tmp_path)
    doc = json.loads(js.read_text())
    im = doc["images"][0]
    w = im["width"]
    outside = [w + 10, 10, w + 50, 10, w + 50, 40, w + 10, 40]  # right of the picture
    doc["annotations"].append({"id": 777, "image_id": im["id"], "category_id": doc["categories"][0]["id"],
                               "segmentation": [outside], "iscrowd": 0, "area": 1200.0, "bbox": [w + 10, 10, 40, 30]})
    js.write_text(json.dumps(doc))
    report = coco_to_yolo(js, images, tmp_path / "out")
    assert report.instances == len(truth) and report.no_mask == 1
    for line in (tmp_path / "out" / "labels" / "mini2017" / f"{STEMS[0]}.txt").read_text().splitlines():
        assert not {float(v) for v in line.split()[1::2]} == {1.0}  # no instance squashed onto the right edge


def test_not_json(tmp_path):
    (tmp_path / "x.json").write_text("{nope")
    with pytest.raises(DataError, match="not valid JSON"):
        coco_to_yolo(tmp_path / "x.json", tmp_path, tmp_path / "out")


def test_merge_polygons_fills_the_union():
    a = np.array([[2, 2], [10, 2], [10, 10], [2, 10]], float)
    b = np.array([[20, 4], [28, 4], [28, 12], [20, 12]], float)
    merged = merge_polygons([a, b])
    got = rasterize([merged], 16, 32, 1)[0].astype(bool)
    want = rasterize([a], 16, 32, 1)[0].astype(bool) | rasterize([b], 16, 32, 1)[0].astype(bool)
    assert (got ^ want).sum() <= 8  # only the zero-width bridge may touch a few pixel centres


def test_cli(coco128, tmp_path, capsys):
    js, images, _ = _coco_from_coco128(coco128, tmp_path)
    out = tmp_path / "yolo"
    assert main(["convert", "coco", "--json", str(js), "--images", str(images), "--out", str(out)]) == 0
    assert "3 images (3 labelled)" in capsys.readouterr().out
    rc = main(["convert", "coco", "--json", str(js), "--images", str(images), "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1 and "not empty" in err[0] and err[0].startswith("segpipe convert: error:")
    # An --out that cannot be made (under a file here) was a traceback.
    rc = main(["convert", "coco", "--json", str(js), "--images", str(images), "--out", str(js / "yolo")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and err == [f"segpipe convert: error: cannot create output folder {js / 'yolo'}: Not a directory"]
