"""SegDataset/collate/SegLoader: masks and boxes exact after augmentation, seeding, val letterbox."""

from __future__ import annotations

import math
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from engines.data import AugmentConfig, SegDataset, SegLoader, TrainBatch, collate, load_data_yaml

# One colour per class (BGR); none near the grey (114) padding or the black background.
COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255), (0, 255, 255),
           (255, 255, 255), (0, 128, 255)]
NO_COLOUR = AugmentConfig(hsv_h=0.0, hsv_s=0.0, hsv_v=0.0)


def _shape(kind: str, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    """A polygon in pixels: rotated rectangle, triangle or 40-gon circle."""
    if kind == "circle":
        t = np.linspace(0, 2 * math.pi, 40, endpoint=False)
        return np.stack((cx + r * np.cos(t), cy + r * np.sin(t)), 1)
    pts = np.array([[-1, -0.6], [1, -0.6], [1, 0.6], [-1, 0.6]]) if kind == "rect" else \
        np.array([[-1, 0.8], [0, -1], [1, 0.8]])
    c, s = math.cos(angle), math.sin(angle)
    return pts @ np.array([[c, s], [-s, c]]) * r + (cx, cy)


# (h, w) of each image and its objects: (kind, centre x, centre y, size, angle) in pixels
COLOUR_SPECS = [((240, 320), [("rect", 100, 90, 70, 0.3), ("circle", 240, 160, 55, 0)]),
                ((320, 240), [("triangle", 120, 100, 80, 0.2), ("rect", 110, 240, 60, 1.1)]),
                ((200, 300), [("circle", 80, 100, 60, 0), ("triangle", 210, 110, 70, -0.4)]),
                ((256, 256), [("rect", 128, 80, 90, 0.0), ("circle", 100, 190, 45, 0)])]


def make_colour_dataset(root: Path, specs: list = COLOUR_SPECS) -> Path:
    """4 images (different sizes), 2 solid-colour objects each (or ``specs``' images and objects, at most
    8 objects in all) and a background image; class id = colour index.

    The image content is drawn at 8x and area-averaged down, so a pixel's colour is the exact
    coverage of the polygon: the masks must agree with it after any augmentation."""
    cls = 0
    for i, ((h, w), objs) in enumerate(specs):
        big = np.zeros((h * 8, w * 8, 3), np.uint8)
        lines = []
        for kind, cx, cy, r, ang in objs:
            poly = _shape(kind, cx, cy, r, ang)
            cv2.fillPoly(big, [np.rint((poly * 8 - 0.5) * 16).astype(np.int32)], COLOURS[cls], cv2.LINE_8, 4)
            lines.append(f"{cls} " + " ".join(f"{v:.6f}" for v in (poly / (w, h)).reshape(-1)))
            cls += 1
        img = cv2.resize(big, (w, h), interpolation=cv2.INTER_AREA)
        (root / "images").mkdir(parents=True, exist_ok=True)
        (root / "labels").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / "images" / f"im{i}.png"), img)
        (root / "labels" / f"im{i}.txt").write_text("\n".join(lines) + "\n")
    cv2.imwrite(str(root / "images" / "empty.png"), np.zeros((100, 150, 3), np.uint8))  # background image
    return root / "images"


@pytest.fixture
def colour_ds(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("SEGPIPE_CACHE", str(tmp_path / "cache"))
    return make_colour_dataset(tmp_path / "ds")


def _colour_masks(image_rgb: np.ndarray, ratio: int) -> np.ndarray:
    """(8, H/r, W/r) bool: where each class colour covers at least half of a low-res pixel.

    Each pixel goes to its nearest palette entry (class colours, black background, grey padding),
    i.e. a class owns an edge pixel when it covers more than about half of it."""
    bgr = image_rgb.transpose(1, 2, 0)[..., ::-1].astype(np.int32)
    palette = np.array([*COLOURS, (0, 0, 0), (114, 114, 114)])
    nearest = np.abs(bgr[:, :, None, :] - palette).sum(-1).argmin(-1)
    h, w = bgr.shape[0] // ratio, bgr.shape[1] // ratio
    hits = [(nearest == c).astype(np.float32) for c in range(len(COLOURS))]
    return np.stack([cv2.resize(hit, (w, h), interpolation=cv2.INTER_AREA) >= 0.5 for hit in hits])


def _check_masks_match_pixels(batch: TrainBatch, ratio: int = 4, min_area: int = 100) -> int:
    """For every class in every image: union of its instance masks vs its colour's pixels."""
    checked = 0
    for b in range(len(batch)):
        colour = _colour_masks(batch.images[b].numpy(), ratio)
        sel = batch.batch_idx == b
        for c in range(len(COLOURS)):
            ours = batch.masks[sel][batch.cls[sel] == c].numpy().astype(bool).any(0)
            truth = colour[c]
            if truth.sum() < min_area:  # tiny leftovers: box_candidates may rightly have dropped them
                continue
            iou = (ours & truth).sum() / (ours | truth).sum()
            assert iou > 0.95, f"image {b} class {c}: mask/pixels IoU {iou:.3f}"
            checked += 1
    return checked


def _check_boxes_match_masks(batch: TrainBatch, ratio: int = 4, slack: float | None = 2.0) -> None:
    """Every mask pixel centre lies in its box; with ``slack``, box edges are also within
    ``slack`` low-res pixels of the mask's extent (a spike thinner than a pixel may stick out)."""
    _, _, H, W = batch.images.shape
    xywh = batch.bboxes.numpy() * (W, H, W, H)
    xyxy = np.concatenate((xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2), 1)
    assert (xyxy >= -1e-3).all() and (xyxy[:, 2] <= W + 1e-3).all() and (xyxy[:, 3] <= H + 1e-3).all()
    for box, m in zip(xyxy, batch.masks.numpy(), strict=True):
        ys, xs = np.nonzero(m)
        assert len(xs), "an instance without mask pixels survived box filtering"
        centres = np.array([xs.min(), ys.min(), xs.max(), ys.max()]) * ratio + ratio / 2
        assert (centres[:2] >= box[:2] - 1e-3).all() and (centres[2:] <= box[2:] + 1e-3).all(), (centres, box)
        if slack is not None:
            assert np.abs(centres - box).max() <= (slack + 0.5) * ratio, (centres, box)


@pytest.mark.parametrize("hyp", [
    NO_COLOUR,
    AugmentConfig(hsv_h=0.0, hsv_s=0.0, hsv_v=0.0, degrees=25.0, shear=6.0, perspective=0.0006, flipud=0.5),
], ids=["defaults", "rotate-shear-perspective"])
def test_train_masks_match_the_augmented_pixels(colour_ds, hyp):
    ds = SegDataset(colour_ds, imgsz=384, augment=True, hyp=hyp, nc=8, seed=3)
    checked = 0
    for epoch in range(2):
        ds.set_epoch(epoch)
        batch = collate([ds[i] for i in range(len(ds))])
        assert batch.images.shape == (5, 3, 384, 384) and batch.masks.shape[1:] == (96, 96)
        checked += _check_masks_match_pixels(batch)
        _check_boxes_match_masks(batch, slack=None)  # a border can leave a sub-pixel sliver
    assert checked >= 15


def test_single_image_mode_after_close_mosaic(colour_ds):
    ds = SegDataset(colour_ds, imgsz=256, augment=True, hyp=NO_COLOUR, nc=8)
    own = {i: set(lab.cls.tolist()) for i, lab in enumerate(ds.labels)}
    mixed = [set(ds[i].cls.tolist()) - own[i] for i in range(len(ds))]
    assert any(mixed), "mosaic never brought in another image's instances"
    ds.close_mosaic()
    batch = collate([ds[i] for i in range(len(ds))])
    for i in range(len(ds)):
        assert set(batch.cls[batch.batch_idx == i].tolist()) <= own[i]
    assert _check_masks_match_pixels(batch) >= 4
    _check_boxes_match_masks(batch)


def _batches(ds: SegDataset, *, workers: int, seed: int, epoch: int = 0) -> list[TrainBatch]:
    loader = SegLoader(ds, batch_size=2, shuffle=True, workers=workers, seed=seed)
    loader.set_epoch(epoch)
    return list(loader)


def _same(a: list[TrainBatch], b: list[TrainBatch]) -> bool:
    return len(a) == len(b) and all(
        x.im_files == y.im_files and torch.equal(x.images, y.images) and torch.equal(x.masks, y.masks)
        and torch.equal(x.bboxes, y.bboxes) and torch.equal(x.cls, y.cls) for x, y in zip(a, b, strict=True))


def test_seeded_batches_do_not_depend_on_workers(colour_ds):
    ds = SegDataset(colour_ds, imgsz=128, augment=True, nc=8, seed=5)
    one = _batches(ds, workers=0, seed=5)
    assert len(one) == 3 and [len(b) for b in one] == [2, 2, 1]
    assert _same(one, _batches(ds, workers=0, seed=5))
    assert _same(one, _batches(ds, workers=2, seed=5))
    other = SegDataset(colour_ds, imgsz=128, augment=True, nc=8, seed=6)
    assert not _same(one, _batches(other, workers=0, seed=6))
    assert not _same(one, _batches(ds, workers=0, seed=5, epoch=1))


def test_val_letterbox_maps_back_and_masks_are_exact(colour_ds):
    ds = SegDataset(colour_ds, imgsz=256, augment=False, nc=8)
    batch = collate([ds[i] for i in range(len(ds))])
    assert batch.images.shape == (5, 3, 256, 256)
    assert _check_masks_match_pixels(batch) == 8  # every object, none dropped in val mode
    _check_boxes_match_masks(batch)
    for b, lab in enumerate(ds.labels):
        info = batch.infos[b]
        assert info.orig_shape == lab.shape == batch.ori_shapes[b]
        sel = batch.batch_idx == b
        xywh = batch.bboxes[sel].numpy() * 256
        x1y1 = (xywh[:, :2] - xywh[:, 2:] / 2 - info.pad) / info.gain
        h0, w0 = lab.shape
        expect = (lab.boxes[:, :2] - lab.boxes[:, 2:] / 2) * (w0, h0)
        np.testing.assert_allclose(x1y1, expect, atol=1.0)
        assert batch.cls[sel].tolist() == lab.cls.tolist()
    empty = [b for b, lab in enumerate(ds.labels) if len(lab) == 0]
    assert len(empty) == 1 and (batch.batch_idx == empty[0]).sum() == 0


def test_val_rect_batches(colour_ds):
    ds = SegDataset(colour_ds, imgsz=256, augment=False, nc=8, rect=True, batch_size=2)
    ratios = [h / w for h, w in (lab.shape for lab in ds.labels)]
    assert ratios == sorted(ratios)
    batches = list(SegLoader(ds, batch_size=2, shuffle=False))
    for i, batch in enumerate(batches):
        h, w = batch.images.shape[2:]
        assert (h, w) == tuple(ds.batch_shapes[i]) and h % 32 == 0 and w % 32 == 0 and max(h, w) <= 256 + 32
        assert batch.masks.shape[1:] == (h // 4, w // 4)
        assert all(info.new_shape == (h, w) for info in batch.infos)
        assert _check_masks_match_pixels(batch) >= 1
    assert {tuple(b.images.shape[2:]) for b in batches} != {(256, 256)}
    with pytest.raises(ValueError, match="shuffle=False"):
        SegLoader(ds, batch_size=2, shuffle=True)


def test_collate_and_batch_checks(colour_ds):
    ds = SegDataset(colour_ds, imgsz=128, augment=False, nc=8)
    batch = collate([ds[0], ds[1]])
    assert batch.images.dtype == torch.uint8 and batch.cls.dtype == torch.int64
    assert batch.batch_idx.dtype == torch.int64 and batch.bboxes.dtype == torch.float32
    assert batch.masks.dtype == torch.uint8 and set(batch.masks.unique().tolist()) <= {0, 1}
    moved = batch.to("cpu")
    assert torch.equal(moved.images, batch.images) and moved.im_files == batch.im_files
    with pytest.raises(ValueError, match="TrainBatch"):
        TrainBatch(images=batch.images, cls=batch.cls[:-1], bboxes=batch.bboxes, batch_idx=batch.batch_idx,
                   masks=batch.masks, im_files=batch.im_files, ori_shapes=batch.ori_shapes, infos=batch.infos)
    other = SegDataset(colour_ds, imgsz=160, augment=False, nc=8)
    with pytest.raises(ValueError, match="different sizes"):
        collate([ds[0], other[0]])


@pytest.mark.parametrize("workers", [0, 1])
def test_image_that_stops_decoding_mid_run_is_one_line_from_a_worker_too(colour_ds, workers):
    """From a worker process the error came wrapped: its message held torch's 'Caught DataError in
    DataLoader worker process 0' and the worker's whole traceback (30 lines under segpipe train)."""
    from engines.errors import DataError

    ds = SegDataset(colour_ds, imgsz=128, augment=False, nc=8)  # every image checked here
    broken = colour_ds / "im1.png"
    broken.write_bytes(b"not a png any more")
    with pytest.raises(DataError) as e:
        list(SegLoader(ds, batch_size=2, shuffle=False, workers=workers))
    assert str(e.value) == f"{broken}: image cannot be decoded"


def test_ram_cache_gives_the_same_samples_and_is_never_written(colour_ds, monkeypatch):
    """Augmentation (mosaic, affine, HSV in place, flips) works on copies: a write into a cached image
    would change every later epoch. Cached arrays are read-only, so such a write fails instead."""
    from engines.data import dataset as dataset_mod

    plain = SegDataset(colour_ds, imgsz=128, augment=True, nc=8, seed=5)
    cached = SegDataset(colour_ds, imgsz=128, augment=True, nc=8, seed=5)
    assert cached.ram_bytes() == cached.cache_in_ram(threads=2) and cached.cached and not plain.cached
    ims = cached._ims
    assert ims is not None and not any(im.flags.writeable for im in ims)
    before = [im.copy() for im in ims]
    for epoch in (0, 1):
        assert _same(_batches(plain, workers=0, seed=5, epoch=epoch), _batches(cached, workers=0, seed=5, epoch=epoch))
    plain.close_mosaic()
    cached.close_mosaic()
    expected = _batches(plain, workers=0, seed=5, epoch=2)
    assert _same(expected, _batches(cached, workers=0, seed=5, epoch=2))
    assert all(np.array_equal(a, b) for a, b in zip(before, ims, strict=True))
    val_plain = SegDataset(colour_ds, imgsz=128, augment=False, nc=8)
    val_cached = SegDataset(colour_ds, imgsz=128, augment=False, nc=8, cache_images=True)
    for i in range(len(val_plain)):
        assert np.array_equal(val_plain[i].image, val_cached[i].image)

    # Loader workers (forked after the fill) read the parent's cache: none of them decodes an image.
    def no_decoding(*args: object) -> np.ndarray:
        raise AssertionError("decoded although cached")

    monkeypatch.setattr(dataset_mod, "read_resized", no_decoding)
    assert _same(expected, _batches(cached, workers=1, seed=5, epoch=2))


def _count_decodes(monkeypatch) -> list[Path]:
    """Every ``read_resized`` call from here on (the dataset's and the disk cache's fill), by image."""
    from engines.data import dataset as dataset_mod
    from engines.data import disk_cache
    from engines.data.images import read_resized

    calls: list[Path] = []

    def counted(path: Path, shape: tuple[int, int], long_side: int) -> np.ndarray:
        calls.append(path)
        return read_resized(path, shape, long_side)

    monkeypatch.setattr(dataset_mod, "read_resized", counted)
    monkeypatch.setattr(disk_cache, "read_resized", counted)
    return calls


def test_disk_cache_gives_the_same_samples_and_a_later_run_decodes_nothing(colour_ds, monkeypatch):
    from engines.data.images import read_resized

    plain = SegDataset(colour_ds, imgsz=128, augment=True, nc=8, seed=5)
    cached = SegDataset(colour_ds, imgsz=128, augment=True, nc=8, seed=5)
    plan = cached.disk_plan()
    assert plan.missing == tuple(range(5)) and not cached.cached_on_disk
    calls = _count_decodes(monkeypatch)
    assert cached.cache_on_disk(plan, threads=2) == 5 and cached.cached_on_disk and len(calls) == 5
    # beside the images (their folder is writable), keyed by the long side; the arrays are read_resized's
    assert sorted(f.parent for f in plan.files) == [colour_ds] * 5 and plan.files[1].name.startswith("im0.128.")
    for lab, f in zip(cached.labels, plan.files, strict=True):
        assert np.array_equal(np.load(f), read_resized(lab.im_file, lab.shape, 128))
    assert plan.nbytes() == sum(f.stat().st_size for f in plan.files)
    assert not list(colour_ds.glob("*.tmp"))
    for epoch in (0, 1):
        assert _same(_batches(plain, workers=0, seed=5, epoch=epoch), _batches(cached, workers=0, seed=5, epoch=epoch))
    expected = _batches(plain, workers=0, seed=5, epoch=2)
    calls.clear()
    assert _same(expected, _batches(cached, workers=1, seed=5, epoch=2))  # a loader worker reads the files too
    val_plain = SegDataset(colour_ds, imgsz=128, augment=False, nc=8)
    val_cached = SegDataset(colour_ds, imgsz=128, augment=False, nc=8)
    val_cached.cache_on_disk()
    assert all(np.array_equal(val_plain[i].image, val_cached[i].image) for i in range(len(val_plain)))

    # A later run (a new dataset, as a new process builds) finds every file and decodes nothing.
    calls.clear()
    again = SegDataset(colour_ds, imgsz=128, augment=True, nc=8, seed=5)
    assert again.disk_plan().missing == () and again.cache_on_disk() == 0
    assert _same(expected, _batches(again, workers=0, seed=5, epoch=2)) and calls == []
    # Another imgsz is another file: never the 128 px arrays.
    other = SegDataset(colour_ds, imgsz=64, augment=True, nc=8)
    assert other.disk_plan().missing == tuple(range(5))


def test_disk_cache_of_a_read_only_dataset_goes_to_the_cache_root(colour_ds, tmp_path, monkeypatch):
    from engines.data.cache import is_writable_dir

    colour_ds.chmod(0o555)
    try:
        # is_writable_dir reads the write bits, so this holds for root too (which os.access lets write anywhere)
        if is_writable_dir(colour_ds):
            monkeypatch.setattr("engines.data.cache.is_writable_dir", lambda d: d != colour_ds)
        ds = SegDataset(colour_ds, imgsz=128, augment=True, nc=8)
        assert ds.cache_on_disk() == 5
        files = ds.disk_plan().files
        assert all(f.is_file() and f.is_relative_to(tmp_path / "cache" / "images") for f in files)
        assert len({f.parent for f in files}) == 1 and files[0].parent.name.startswith("images.")
        assert not list(colour_ds.glob("*.npy"))
    finally:
        colour_ds.chmod(0o755)


def test_disk_cache_decodes_a_changed_image_again(colour_ds, monkeypatch):
    from engines.data.images import read_resized

    ds = SegDataset(colour_ds, imgsz=128, augment=True, nc=8)
    ds.cache_on_disk()
    i = ds.im_files.index(colour_ds / "im1.png")
    old = ds.disk_plan().files[i]
    img = cv2.imread(str(colour_ds / "im1.png"))
    cv2.imwrite(str(colour_ds / "im1.png"), 255 - img)  # same size and shape, other pixels
    os.utime(colour_ds / "im1.png", ns=(0, old.stat().st_mtime_ns + 1))
    calls = _count_decodes(monkeypatch)
    again = SegDataset(colour_ds, imgsz=128, augment=True, nc=8)
    plan = again.disk_plan()
    assert plan.missing == (i,) and plan.files[i] != old
    assert again.cache_on_disk(plan) == 1 and calls == [colour_ds / "im1.png"]
    lab = again.labels[i]
    assert np.array_equal(np.load(plan.files[i]), read_resized(lab.im_file, lab.shape, 128))


def test_disk_cache_decodes_a_corrupt_file_again(colour_ds, monkeypatch, caplog):
    from engines.data.images import read_resized

    ds = SegDataset(colour_ds, imgsz=128, augment=True, nc=8, seed=1)
    files = ds.disk_plan().files
    ds.cache_on_disk()
    expected = _batches(ds, workers=0, seed=1)
    files[0].write_bytes(files[0].read_bytes()[:1000])  # short: an interrupted copy
    files[2].write_bytes(b"not an array")
    calls = _count_decodes(monkeypatch)
    again = SegDataset(colour_ds, imgsz=128, augment=True, nc=8, seed=1)
    plan = again.disk_plan()
    assert plan.missing == (0, 2) and len([r for r in caplog.records if "unreadable image cache" in r.message]) == 2
    assert again.cache_on_disk(plan) == 2 and len(calls) == 2
    assert _same(expected, _batches(again, workers=0, seed=1))
    # Damaged during training (after the fill): that sample decodes its image and writes the file again.
    files[3].write_bytes(b"")
    calls.clear()
    assert _same(expected, _batches(again, workers=0, seed=1)) and set(calls) == {again.labels[3].im_file}
    lab = again.labels[3]
    assert np.array_equal(np.load(files[3]), read_resized(lab.im_file, lab.shape, 128))


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"imgsz": 100}, "imgsz: expected a positive multiple of 32"),
    ({"imgsz": 256, "seed": -1}, "seed"),
])
def test_bad_arguments(colour_ds, kwargs, match):
    from engines.errors import ConfigError

    with pytest.raises(ConfigError, match=match):
        SegDataset(colour_ds, nc=8, **kwargs)


def test_coco128_train_and_val_batches(coco128, tmp_path, monkeypatch):
    monkeypatch.setenv("SEGPIPE_CACHE", str(tmp_path / "cache"))
    spec = load_data_yaml(coco128 / "coco128-seg.yaml")
    train = SegDataset.from_spec(spec, "train", imgsz=320, augment=True, seed=0)
    batch = collate([train[i] for i in range(4)])
    assert batch.images.shape == (4, 3, 320, 320) and batch.masks.shape[1:] == (80, 80)
    assert len(batch.cls) > 0 and int(batch.cls.max()) < 80
    _check_boxes_match_masks(batch, slack=None)  # real outlines have sub-pixel spikes
    val = SegDataset.from_spec(spec, "val", imgsz=320, augment=False, rect=True, batch_size=4)
    vb = collate([val[i] for i in range(4)])
    h, w = vb.images.shape[2:]
    assert h % 32 == 0 and w % 32 == 0 and h < w <= 320 + 32  # widest images first; Ultralytics' 0.5 pad
    n_gt = sum(len(val.labels[i]) for i in range(4))
    assert len(vb.cls) == n_gt  # val keeps every instance


@pytest.mark.parametrize(("files", "expected_mib"), [
    ({}, 8000),  # no cgroup limit: the kernel's MemAvailable
    ({"memory.max": "max\n"}, 8000),
    # a 4 GiB container that has read 3 GiB of its dataset before: 2.5 GiB of it is inactive page cache,
    # which the kernel reclaims on demand (was: 0.5 GiB available, and the cache refused)
    ({"memory.max": f"{4 << 30}\n", "memory.current": f"{7 << 29}\n",
      "memory.stat": f"anon {1 << 29}\nfile {3 << 30}\ninactive_file {5 << 29}\nactive_file {1 << 29}\n"}, 3072),
    ({"memory.max": f"{4 << 30}\n", "memory.current": f"{1 << 30}\n"}, 3072),  # no memory.stat: none reclaimable
])
def test_ram_cache_counts_a_containers_reclaimable_page_cache_as_available(tmp_path, files, expected_mib):
    from engines.data.ram_cache import available_memory

    (tmp_path / "meminfo").write_text(f"MemTotal: 16384000 kB\nMemAvailable: {8000 * 1024} kB\n")
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    assert available_memory(meminfo=tmp_path / "meminfo", cgroup=tmp_path) == expected_mib << 20


@pytest.mark.parametrize(("n", "text"), [
    (49_152, "48 KB"), (1 << 20, "1 MB"), (100 << 20, "100 MB"), (1 << 30, "1.00 GB"), (int(1.234 * (1 << 30)), "1.23 GB"),
])
def test_ram_cache_sizes_read_for_people(n, text):
    from engines.data.ram_cache import size_text

    assert size_text(n) == text  # a small dataset's cache was "0 MB", its warning "need 0 MB but only 0 MB"
