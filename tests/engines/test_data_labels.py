"""Label parsing and checks, the split summary, and the label cache (writable and read-only datasets)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import cv2
import numpy as np
import pytest

from engines.data import cache as cache_mod
from engines.data.cache import load_split
from engines.data.labels import image_shape, parse_label_file
from engines.errors import DataError

SQUARE = "0 0.1 0.1 0.5 0.1 0.5 0.5 0.1 0.5"


def _write(root: Path, items: dict[str, str | None], size: tuple[int, int] = (48, 64)) -> Path:
    """Images ``images/train/<name>.png`` (h, w = size) with label text (None: no label file)."""
    for name, text in items.items():
        im = root / "images" / "train" / f"{name}.png"
        im.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(im), np.full((*size, 3), 90, np.uint8))
        if text is not None:
            lb = root / "labels" / "train" / f"{name}.txt"
            lb.parent.mkdir(parents=True, exist_ok=True)
            lb.write_text(text)
    return root / "images" / "train"


def test_parse_polygons_boxes_duplicates_and_tolerance(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("\ufeff" + SQUARE + "\n\n2 0.5 0.5 0.2 0.4\n" + SQUARE + "\n1 -0.005 0 1.004 0 0.5 1\n")
    cls, segs, dup = parse_label_file(f, nc=3)
    assert cls.tolist() == [0, 2, 1] and dup == 1
    np.testing.assert_allclose(segs[0], [[0.1, 0.1], [0.5, 0.1], [0.5, 0.5], [0.1, 0.5]], atol=1e-7)
    # a plain box line becomes its 4-corner polygon
    np.testing.assert_allclose(segs[1], [[0.4, 0.3], [0.6, 0.3], [0.6, 0.7], [0.4, 0.7]], atol=1e-7)
    assert segs[2].min() == 0.0 and segs[2].max() == 1.0  # within tolerance: clipped
    assert all(s.dtype == np.float32 for s in segs)


@pytest.mark.parametrize(("line", "match"), [
    ("3 0.1 0.1 0.5 0.1 0.5 0.5", r"a\.txt:2: class id 3 is not a valid class \(nc=3"),
    ("-1 0.1 0.1 0.5 0.1 0.5 0.5", "class id -1"),
    ("1.5 0.1 0.1 0.5 0.1 0.5 0.5", "class id 1.5"),
    ("0 0.1 0.1 1.2 0.1 0.5 0.5", r"a\.txt:2: coordinate 1.2 outside 0-1"),
    ("0 0.1 -0.02 0.5 0.1 0.5 0.5", "coordinate -0.02 outside"),
    ("0 0.1 0.1 0.5 0.1 0.5", "got 5 coordinates"),
    ("0 0.1 0.1", "got 2 coordinates"),
    ("0 0.1 x 0.5 0.1 0.5 0.5", "non-numeric"),
    ("0 0.1 nan 0.5 0.1 0.5 0.5", "nan or inf"),
])
def test_parse_errors_name_file_and_line(tmp_path, line, match):
    f = tmp_path / "a.txt"
    f.write_text(SQUARE + "\n" + line + "\n")
    with pytest.raises(DataError, match=match):
        parse_label_file(f, nc=3)


def test_image_shape_and_decode_errors(tmp_path):
    good = tmp_path / "g.jpg"
    cv2.imwrite(str(good), np.zeros((30, 50, 3), np.uint8))
    assert image_shape(good) == (30, 50)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    with pytest.raises(DataError, match=r"bad\.jpg: image cannot be decoded"):
        image_shape(bad)
    trunc = tmp_path / "trunc.jpg"
    trunc.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    with pytest.raises(DataError, match=r"trunc\.jpg"):
        image_shape(trunc)
    tiny = tmp_path / "tiny.png"
    cv2.imwrite(str(tiny), np.zeros((5, 40, 3), np.uint8))
    with pytest.raises(DataError, match="under 10"):
        image_shape(tiny)


def test_split_summary_counts(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGPIPE_CACHE", str(tmp_path / "cache"))
    src = _write(tmp_path / "ds", {"a": SQUARE, "b": SQUARE + "\n" + SQUARE + "\n" + SQUARE, "c": "", "d": None})
    listing = tmp_path / "ds" / "list.txt"
    listing.write_text("".join(f"images/train/{n}.png\n" for n in "abcd") + "images/train/gone.png\n")
    split = load_split([listing], nc=1, split="train")
    assert split.stats.summary() == ("train: 4 images, 2 labelled, 2 background, 1 missing, 0 corrupt, "
                                     "2 duplicate labels removed")
    labs = {lab.im_file.name: lab for lab in split.labels}
    assert labs["a.png"].shape == (48, 64) and len(labs["b.png"]) == 1 and len(labs["d.png"]) == 0
    np.testing.assert_allclose(labs["a.png"].boxes, [[0.3, 0.3, 0.4, 0.4]], atol=1e-6)
    assert [lab.im_file for lab in split.labels] == sorted(src.glob("*.png"))


def test_corrupt_raises_or_is_skipped_and_counted(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGPIPE_CACHE", str(tmp_path / "cache"))
    src = _write(tmp_path / "ds", {"a": SQUARE, "b": "7 0.1 0.1 0.5 0.1 0.5 0.5"})
    with pytest.raises(DataError, match=r"b\.txt:1: class id 7"):
        load_split([src], nc=2, split="train")
    (src / "c.png").write_bytes(b"garbage")
    split = load_split([src], nc=2, split="train", skip_corrupt=True)
    assert split.stats.summary().startswith("train: 1 images, 1 labelled, 0 background, 0 missing, 2 corrupt")
    assert any("b.txt:1" in m for m in split.stats.messages)


def test_empty_split_and_all_missing(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(DataError, match="val: no images found"):
        load_split([tmp_path / "images"], nc=1, split="val")
    (tmp_path / "l.txt").write_text("images/x.jpg\n")
    with pytest.raises(DataError, match="1 listed images do not exist"):
        load_split([tmp_path / "l.txt"], nc=1, split="val")


def _count_checks(monkeypatch) -> list[int]:
    calls = []
    real = cache_mod.check_pairs

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(cache_mod, "check_pairs", counting)
    return calls


def test_cache_beside_labels_reused_and_invalidated(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGPIPE_CACHE", str(tmp_path / "global"))
    src = _write(tmp_path / "ds", {"a": SQUARE, "b": SQUARE})
    calls = _count_checks(monkeypatch)
    first = load_split([src], nc=1, split="train")
    assert first.cache_file is not None and first.cache_file.parent == tmp_path / "ds" / "labels"
    again = load_split([src], nc=1, split="val")
    assert len(calls) == 1 and again.stats.split == "val"  # served from the cache
    for x, y in zip(first.labels, again.labels, strict=True):
        assert x.im_file == y.im_file and x.shape == y.shape and x.cls.tolist() == y.cls.tolist()
        for s, t in zip(x.segments, y.segments, strict=True):
            np.testing.assert_array_equal(s, t)
    lb = tmp_path / "ds/labels/train/b.txt"
    lb.write_text(SQUARE + "\n0 0.6 0.6 0.9 0.6 0.9 0.9\n")
    os.utime(lb, ns=(lb.stat().st_atime_ns, lb.stat().st_mtime_ns + 10**9))
    changed = load_split([src], nc=1, split="train")
    assert len(calls) == 2 and len(changed.labels[1]) == 2
    load_split([src], nc=2, split="train")  # nc is part of the key
    assert len(calls) == 3
    assert not (tmp_path / "global").exists()


def test_cache_goes_to_segpipe_cache_when_dataset_read_only(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGPIPE_CACHE", str(tmp_path / "global"))
    src = _write(tmp_path / "ds", {"a": SQUARE})
    labels_parent = tmp_path / "ds" / "labels"
    labels_parent.chmod(0o555)  # root ignores the bits for writing; we honour them
    try:
        calls = _count_checks(monkeypatch)
        first = load_split([src], nc=1, split="train")
        assert first.cache_file is not None and first.cache_file.parent == tmp_path / "global" / "labels"
        assert sorted(p.name for p in labels_parent.iterdir()) == ["train"]
        load_split([src], nc=1, split="train")
        assert len(calls) == 1
    finally:
        labels_parent.chmod(stat.S_IRWXU)


def test_coco128_cache_never_written_into_shared_folder(coco128, tmp_path, monkeypatch):
    monkeypatch.setenv("SEGPIPE_CACHE", str(tmp_path / "global"))
    before = sorted(p.name for p in (coco128 / "labels").iterdir())
    split = load_split([coco128 / "images" / "train2017"], nc=80, split="train")
    assert split.stats.summary() == ("train: 128 images, 126 labelled, 2 background, 0 missing, 0 corrupt, "
                                     "0 duplicate labels removed")
    assert split.cache_file is not None and split.cache_file.is_relative_to(tmp_path / "global")
    assert sorted(p.name for p in (coco128 / "labels").iterdir()) == before


def test_unreadable_cache_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGPIPE_CACHE", str(tmp_path / "global"))
    src = _write(tmp_path / "ds", {"a": SQUARE})
    first = load_split([src], nc=1, split="train")
    first.cache_file.write_bytes(b"not an npz")
    again = load_split([src], nc=1, split="train")
    assert len(again.labels) == 1 and again.cache_file == first.cache_file
