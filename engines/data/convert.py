"""COCO instances JSON -> YOLO-seg dataset (images, labels, data YAML). Imports nothing from pipeline/.

Layout written under ``out``::

    images/<split>/...   links to (or copies of) the source images, sub-folders of file_name kept
    labels/<split>/...   one ``class x1 y1 x2 y2 ...`` line per instance, normalised to the image
    data.yaml            path: ., train/val: images/<split>, names {yolo id: name}

Masks: polygon segmentations are used as they are (several polygons of one object are joined into
one by zero-width bridges, as Ultralytics does); RLE segmentations, compressed or not, are decoded
with pycocotools and traced (outer contours through the boundary pixel centres, holes filled).
Category ids are remapped to 0..n-1 in ascending COCO id order; the data YAML lists the mapping.

``iscrowd``: a crowd annotation marks a region of many objects that COCO evaluation ignores. YOLO-seg
labels have no ignore regions, so by default crowd annotations are dropped (their pixels become
background); ``crowd="include"`` converts them as ordinary instances instead. Both are counted.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from engines.data.polygons import mask_outline, merge_polygons
from engines.errors import DataError

LOG = logging.getLogger("segpipe.data")


@dataclass(frozen=True, slots=True)
class ConvertReport:
    """What a conversion wrote: image count, labelled images, instances written, crowd annotations
    skipped / included, annotations without a usable mask, class names, the data YAML path."""

    images: int
    labelled: int
    instances: int
    crowd_skipped: int
    crowd_included: int
    no_mask: int
    names: tuple[str, ...]
    yaml_file: Path

    def summary(self) -> str:
        return (f"{self.images} images ({self.labelled} labelled), {self.instances} instances, "
                f"{len(self.names)} classes, crowd: {self.crowd_skipped} skipped / {self.crowd_included} included, "
                f"{self.no_mask} without a mask -> {self.yaml_file}")


def mask_to_polygon(mask: np.ndarray) -> np.ndarray | None:
    """Outline of a (H, W) binary mask as one (k, 2) float64 pixel polygon (holes filled), or None when
    empty; several parts are joined by zero-width bridges (``engines.data.polygons.mask_outline``)."""
    poly = mask_outline(mask, holes=False)
    return poly if len(poly) else None


def annotation_polygon(seg: Any, h: int, w: int, where: str) -> np.ndarray | None:
    """A COCO ``segmentation`` (polygon list, RLE or uncompressed RLE) -> one (k, 2) pixel polygon."""
    from pycocotools import mask as mask_utils  # only conversion needs it

    if isinstance(seg, list):
        polys = [np.asarray(p, np.float64).reshape(-1, 2) for p in seg if isinstance(p, list) and len(p) >= 6]
        return merge_polygons(polys) if polys else None
    if isinstance(seg, dict) and "counts" in seg and "size" in seg:
        if list(seg["size"]) != [h, w]:
            raise DataError(f"{where}: RLE size {seg['size']} differs from the image's {[h, w]}")
        rle = mask_utils.frPyObjects(seg, h, w) if isinstance(seg["counts"], list) else seg
        return mask_to_polygon(mask_utils.decode(rle))
    raise DataError(f"{where}: segmentation is neither a polygon list nor an RLE dict")


def _check_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise DataError(f"output {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise DataError(f"output folder {out} is not empty (pass --force to write into it)")


def _prepare_out(out: Path, split: str) -> None:
    for sub in (out / "images" / split, out / "labels" / split):  # our own outputs only (--force)
        if sub.is_symlink() or sub.is_file():
            sub.unlink()
        elif sub.is_dir():
            shutil.rmtree(sub)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create output folder {out}: {e.strerror or e}") from None


def _load_json(json_file: Path) -> dict[str, Any]:
    try:
        doc = json.loads(json_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"COCO json not found: {json_file}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{json_file}: not valid JSON ({e})") from None
    for key in ("images", "annotations", "categories"):
        if not isinstance(doc, dict) or not isinstance(doc.get(key), list):
            raise DataError(f"{json_file}: missing '{key}' list (not a COCO instances file?)")
    if not doc["categories"]:
        raise DataError(f"{json_file}: 'categories' is empty")
    return doc


def coco_to_yolo(json_file: str | os.PathLike[str], images_dir: str | os.PathLike[str],
                 out_dir: str | os.PathLike[str], *, split: str | None = None, force: bool = False,
                 copy: bool = False, crowd: str = "skip") -> ConvertReport:
    """Convert a COCO instances JSON into a YOLO-seg dataset under ``out_dir``.

    images_dir: folder holding each image's ``file_name``. split: sub-folder name (default: the JSON
    stem without ``instances_``). copy: copy images instead of symlinking them. crowd: "skip" or
    "include" (see module doc). Raises DataError for a non-empty ``out_dir`` without ``force``, a
    missing image, an image whose size disagrees with the JSON, or a malformed JSON.
    """
    if crowd not in ("skip", "include"):
        raise ValueError(f"crowd must be 'skip' or 'include', got {crowd!r}")
    json_file, images_dir, out = Path(json_file), Path(images_dir), Path(out_dir)
    doc = _load_json(json_file)
    if not images_dir.is_dir():
        raise DataError(f"images folder not found: {images_dir}")
    split = split or json_file.stem.removeprefix("instances_")
    cats = sorted(doc["categories"], key=lambda c: int(c["id"]))
    remap = {int(c["id"]): i for i, c in enumerate(cats)}
    names = tuple(str(c.get("name", f"class{c['id']}")) for c in cats)
    _check_out(out, force)
    image_ids = {im["id"] for im in doc["images"]}
    by_image: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for ann in doc["annotations"]:
        if ann.get("image_id") not in image_ids:
            raise DataError(f"{json_file}: annotation {ann.get('id')}: image_id {ann.get('image_id')!r} is not in "
                            "'images'")
        by_image[ann["image_id"]].append(ann)
    counts = {"labelled": 0, "instances": 0, "crowd_skipped": 0, "crowd_included": 0, "no_mask": 0}
    # Every image and annotation is checked before anything is written: a bad one halfway through must
    # not leave a half-converted dataset (which a rerun then refuses as "not empty").
    planned = [_label_image(im, by_image.get(im["id"], []), images_dir, remap, crowd, counts)
               for im in doc["images"]]
    _prepare_out(out, split)
    for src, rel, lines in planned:
        _write_image(src, rel, lines, out, split, copy)
    yaml_file = _write_yaml(out, split, names, cats, json_file)
    report = ConvertReport(images=len(doc["images"]), names=names, yaml_file=yaml_file, **counts)
    LOG.info("%s", report.summary())
    return report


def _label_image(im: dict[str, Any], anns: list[dict[str, Any]], images_dir: Path, remap: dict[int, int],
                 crowd: str, counts: dict[str, int]) -> tuple[Path, Path, list[str]]:
    """Check one image and its annotations; returns (source image, file_name, its label lines)."""
    rel = Path(im["file_name"])
    src = images_dir / rel
    if not src.is_file():
        raise DataError(f"image {im['file_name']} (id {im['id']}) not found in {images_dir}")
    h, w = int(im["height"]), int(im["width"])
    with Image.open(src) as pil:
        if pil.size != (w, h):
            raise DataError(f"{src}: image is {pil.size[0]}x{pil.size[1]} but the json says {w}x{h}")
    lines = []
    for ann in anns:
        where = f"annotation {ann.get('id')} of {im['file_name']}"
        if ann.get("iscrowd", 0):
            if crowd == "skip":
                counts["crowd_skipped"] += 1
                continue
            counts["crowd_included"] += 1
        if int(ann["category_id"]) not in remap:
            raise DataError(f"{where}: category_id {ann['category_id']} is not in 'categories'")
        poly = annotation_polygon(ann.get("segmentation"), h, w, where) if ann.get("segmentation") else None
        xy = None if poly is None or len(poly) < 3 else np.clip(poly / (w, h), 0.0, 1.0)
        if xy is None or np.ptp(xy, axis=0).min() == 0:  # e.g. outside the image: clipped onto its edge
            counts["no_mask"] += 1
            continue
        lines.append(f"{remap[int(ann['category_id'])]} " + " ".join(f"{v:.6f}" for v in xy.reshape(-1)))
    counts["labelled"] += bool(lines)
    counts["instances"] += len(lines)
    return src, rel, lines


def _write_image(src: Path, rel: Path, lines: list[str], out: Path, split: str, copy: bool) -> None:
    dst = out / "images" / split / rel
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists() or dst.is_symlink():
        dst.unlink()
    if copy:
        shutil.copy2(src, dst)
    else:
        dst.symlink_to(src.resolve())
    lab = (out / "labels" / split / rel).with_suffix(".txt")
    lab.parent.mkdir(parents=True, exist_ok=True)
    lab.write_text("\n".join(lines) + ("\n" if lines else ""), encoding="utf-8")


def _write_yaml(out: Path, split: str, names: tuple[str, ...], cats: list[dict[str, Any]], src: Path) -> Path:
    header = [f"# Converted from {src.name} by `segpipe convert coco`.",
              "# COCO category id -> class id: " + ", ".join(f"{c['id']}->{i}" for i, c in enumerate(cats))]
    body = ["path: .  # relative to this file", f"train: images/{split}", f"val: images/{split}", "names:"]
    body += [f"  {i}: {json.dumps(n)}" for i, n in enumerate(names)]
    yaml_file = out / "data.yaml"
    yaml_file.write_text("\n".join(header + body) + "\n", encoding="utf-8")
    return yaml_file
