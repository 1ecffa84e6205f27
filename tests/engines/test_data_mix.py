"""MixUp, CutMix, Copy-Paste and bgr (``engines.data.mix``, Ultralytics' semantics): off by default with samples
unchanged, each changes what it should, masks and boxes agree with the pixels after it, close_mosaic and rect
turn them off as Ultralytics does, the image caches give the same samples, and a real training run with all
of them on completes."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from engines.data import AugmentConfig, Sample, SegDataset, collate
from engines.data.mix import box_ioa
from engines.errors import ConfigError
from tests.engines.shapes_data import make_shapes_dataset
from tests.engines.test_data_dataset import (
    _check_boxes_match_masks,
    _check_masks_match_pixels,
    make_colour_dataset,
)

# No colour jitter, flips, mosaic, shift or zoom: a sample is its image centred in the input, the same every
# time, so what an augmentation did is read off against these plain samples.
STILL = dict(hsv_h=0.0, hsv_s=0.0, hsv_v=0.0, translate=0.0, scale=0.0, fliplr=0.0, mosaic=0.0)
NO_COLOUR = dict(hsv_h=0.0, hsv_s=0.0, hsv_v=0.0)
EVERYTHING = dict(mixup=0.5, cutmix=0.5, copy_paste=0.5, bgr=0.5)


# Objects whose mirror images land beside them (eligible copies), one on the centre line (its copy would
# cover it: never pasted), and a pair whose copies each hide a corner of the other (under 30 % of its box).
MIRROR_SPECS = [((200, 320), [("rect", 60, 60, 35, 0.3), ("circle", 160, 140, 45, 0), ("triangle", 250, 150, 40, 0.1)]),
                ((240, 240), [("circle", 70, 120, 50, 0), ("rect", 200, 60, 30, 0.05)]),
                ((160, 200), [("triangle", 40, 50, 25, 0.0), ("rect", 45, 120, 25, 0.8)])]


@pytest.fixture
def colour_ds(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("SEGPIPE_CACHE", str(tmp_path / "cache"))
    return make_colour_dataset(tmp_path / "ds")


@pytest.fixture
def mirror_ds(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("SEGPIPE_CACHE", str(tmp_path / "cache"))
    return make_colour_dataset(tmp_path / "mirror", MIRROR_SPECS)


def _samples(images: Path, *, epoch: int = 0, imgsz: int = 256, seed: int = 0, **hyp: object) -> list[Sample]:
    ds = SegDataset(images, imgsz=imgsz, augment=True, nc=8, seed=seed, hyp=AugmentConfig(**hyp))  # type: ignore[arg-type]
    ds.set_epoch(epoch)
    return [ds[i] for i in range(len(ds))]


def _xyxy(s: Sample) -> np.ndarray:
    """A sample's boxes in input pixels."""
    h, w = s.image.shape[1:]
    b = s.bboxes * (w, h, w, h)
    return np.concatenate((b[:, :2] - b[:, 2:] / 2, b[:, :2] + b[:, 2:] / 2), 1)


def _same(a: Sample, b: Sample) -> bool:
    return all(np.array_equal(x, y) for x, y in ((a.image, b.image), (a.cls, b.cls), (a.bboxes, b.bboxes),
                                                 (a.masks, b.masks)))


# ----------------------------------------------------------------------------------------------- settings

def test_new_settings_default_off_as_ultralytics():
    hyp = AugmentConfig()
    assert (hyp.mixup, hyp.cutmix, hyp.copy_paste, hyp.copy_paste_mode, hyp.bgr) == (0.0, 0.0, 0.0, "flip", 0.0)


@pytest.mark.parametrize(("overrides", "error"), [
    ({"mixup": 1.5}, "hyp.mixup: expected a number in [0, 1], got 1.5"),
    ({"cutmix": -0.1}, "hyp.cutmix: expected a number in [0, 1], got -0.1"),
    ({"copy_paste": "half"}, "hyp.copy_paste: expected a number in [0, 1], got 'half'"),
    ({"bgr": True}, "hyp.bgr: expected a number in [0, 1], got True"),
    ({"copy_paste_mode": "paste"}, "hyp.copy_paste_mode: expected 'flip' or 'mixup', got 'paste'"),
    ({"copy_paste_mode": None}, "hyp.copy_paste_mode: expected 'flip' or 'mixup', got None"),
    ({"cut_mix": 0.5}, "hyp.cut_mix: unknown augmentation setting"),
    ({"mixup": 1, "cutmix": 0.0, "copy_paste": 1.0, "copy_paste_mode": "mixup", "bgr": 0.25}, None),
])
def test_settings_are_checked(overrides, error):
    if error is None:
        assert AugmentConfig.from_dict(overrides) == AugmentConfig(**overrides)
        return
    with pytest.raises(ConfigError) as e:
        AugmentConfig.from_dict(overrides)
    assert str(e.value).startswith(error) and "\n" not in str(e.value)


# ------------------------------------------------------------------------------------ off: nothing changes

def _digest(ds: SegDataset, epochs: int = 2) -> str:
    h = hashlib.sha256()
    for epoch in range(epochs):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            s = ds[i]
            for a in (s.image, s.cls, np.round(s.bboxes, 4), s.masks):
                h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


# Digests of every sample of two epochs, computed at de830c3, before these augmentations existed.
@pytest.mark.parametrize(("kwargs", "digest"), [
    ({"hyp": AugmentConfig()}, "c05c1ef89b46cbd8"),
    ({"hyp": AugmentConfig(mixup=0.0, cutmix=0.0, copy_paste=0.0, bgr=0.0, copy_paste_mode="mixup")},
     "c05c1ef89b46cbd8"),
    ({"hyp": AugmentConfig(degrees=20.0, shear=5.0, perspective=0.0005, flipud=0.5, mosaic=0.5)},
     "a0158293633d8bef"),
    ({"hyp": AugmentConfig(), "rect": "image"}, "fe53ce786a1433ad"),
], ids=["defaults", "zeros-and-mixup-mode", "geometry", "rect"])
def test_samples_are_unchanged_while_the_new_settings_are_off(colour_ds, kwargs, digest):
    assert _digest(SegDataset(colour_ds, imgsz=192, augment=True, nc=8, seed=7, **kwargs)) == digest


# ------------------------------------------------------------------------------------------------- MixUp

def test_mixup_blends_two_samples_and_carries_both_instance_sets(colour_ds):
    plain = _samples(colour_ds, **STILL)
    blends = 0
    for epoch in range(2):
        for i, m in enumerate(_samples(colour_ds, epoch=epoch, mixup=1.0, **STILL)):
            a, n = plain[i], len(plain[i].cls)
            # a's instances first, untouched, then all of the partner's
            assert np.array_equal(m.cls[:n], a.cls) and np.array_equal(m.masks[:n], a.masks)
            assert np.array_equal(m.bboxes[:n], a.bboxes)
            j = next(j for j, b in enumerate(plain)
                     if np.array_equal(m.cls[n:], b.cls) and np.array_equal(m.masks[n:], b.masks))
            A, B, M = (s.image.astype(np.float64) for s in (a, plain[j], m))
            if j == i:
                continue
            r = ((M - B) * (A - B)).sum() / ((A - B) ** 2).sum()
            assert 0.3 < r < 0.7, r  # Beta(32, 32): 0.5 give or take 0.06
            assert np.abs(M - (A * r + B * (1 - r))).max() <= 1.5  # truncated to uint8
            blends += 1
    assert blends >= 5


def test_the_mixed_in_sample_is_built_the_same_way(colour_ds, monkeypatch):
    """With mosaic on, the sample MixUp blends in is a mosaic too (Ultralytics' pre_transform)."""
    built = []
    real = SegDataset._mosaic

    def counted(self: SegDataset, index: int, rng: np.random.Generator):  # noqa: ANN202 - as the real one
        built.append(index)
        return real(self, index, rng)

    monkeypatch.setattr(SegDataset, "_mosaic", counted)
    _samples(colour_ds, imgsz=128, mixup=1.0)
    assert len(built) == 2 * 5


# ------------------------------------------------------------------------------------------------ CutMix

def test_cutmix_pastes_a_rectangle_of_another_sample_with_the_instances_in_it(colour_ds):
    plain = _samples(colour_ds, **STILL)
    cuts = brought = 0
    for epoch in range(8):
        cut = _samples(colour_ds, epoch=epoch, cutmix=1.0, **STILL)
        for i, c in enumerate(cut):
            a, n = plain[i], len(plain[i].cls)
            assert np.array_equal(c.cls[:n], a.cls) and np.array_equal(c.masks[:n], a.masks)
            changed = (c.image != a.image).any(0)
            if not changed.any():  # no free rectangle, or none of the partner's instances in it
                assert len(c.cls) == n
                continue
            ys, xs = np.nonzero(changed)
            x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
            assert changed.sum() <= (x1 - x0) * (y1 - y0)
            # one rectangle, taken from one other plain sample; a's own boxes stay clear of it
            assert any(np.array_equal(b.image[:, y0:y1, x0:x1], c.image[:, y0:y1, x0:x1]) for b in plain)
            box = _xyxy(a)
            assert ((box[:, 2] <= x0) | (box[:, 0] >= x1) | (box[:, 3] <= y0) | (box[:, 1] >= y1)).all()
            # what came along lies in the rectangle
            for m in c.masks[n:]:
                r, k = np.nonzero(m)
                assert len(r) and (4 * k + 2 >= x0 - 1).all() and (4 * k + 2 <= x1 + 1).all()
                assert (4 * r + 2 >= y0 - 1).all() and (4 * r + 2 <= y1 + 1).all()
            cuts += 1
            brought += len(c.cls) - n
        _check_boxes_match_masks(collate(cut))  # masks vs pixels: test_masks_and_boxes_match_the_pixels
    assert cuts >= 4 and brought >= 4


# -------------------------------------------------------------------------------------------- Copy-Paste

def test_copy_paste_flip_adds_mirrored_copies_that_do_not_overlap(mirror_ds):
    plain = _samples(mirror_ds, **STILL)
    pasted = _samples(mirror_ds, copy_paste=1.0, **STILL)
    added = hidden = 0
    for a, p in zip(plain, pasted, strict=True):
        n, w = len(a.cls), a.image.shape[2]
        if not n:  # nothing to copy
            assert _same(p, a)
            continue
        box = _xyxy(a)
        mirrored = np.stack((w - box[:, 2], box[:, 1], w - box[:, 0], box[:, 3]), 1)
        ioa = box_ioa(mirrored, box)
        eligible = np.nonzero((ioa < 0.3).all(1))[0]  # Ultralytics' threshold, at fraction 1.0 all of them
        order = eligible[np.argsort(ioa.max(1)[eligible], kind="stable")]
        assert np.array_equal(p.cls, np.concatenate((a.cls, a.cls[order])))
        for k, o in enumerate(order):
            assert np.array_equal(p.masks[n + k], a.masks[o][:, ::-1])  # the original's mask, mirrored
            assert box_ioa(_xyxy(p)[n + k: n + k + 1], box).max() < 0.3
        # the originals lose exactly what a copy hides
        copies = p.masks[n:].any(0)
        assert np.array_equal(p.masks[:n], a.masks & ~copies)
        hidden += int((a.masks & copies).sum())
        # inside a copy (a pixel away from its edge) the image is the mirrored image
        inside = cv2.erode(copies.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        inside = np.kron(inside, np.ones((4, 4), bool))
        assert np.array_equal(p.image[:, inside], a.image[:, :, ::-1][:, inside])
        added += len(order)
    assert added == 6 and hidden > 0
    _check_masks_match_pixels(collate(pasted))
    _check_boxes_match_masks(collate(pasted))


def test_copy_paste_mixup_takes_instances_from_another_sample(colour_ds):
    plain = _samples(colour_ds, **STILL)
    owner = {c: (j, k) for j, s in enumerate(plain) for k, c in enumerate(s.cls.tolist())}  # one image per class
    added = 0
    for epoch in range(4):
        for i, p in enumerate(_samples(colour_ds, epoch=epoch, copy_paste=1.0, copy_paste_mode="mixup", **STILL)):
            a, n = plain[i], len(plain[i].cls)
            assert np.array_equal(p.cls[:n], a.cls) and (p.masks[:n] <= a.masks).all()
            for c, m in zip(p.cls[n:].tolist(), p.masks[n:], strict=True):
                j, k = owner[c]
                assert j != i and np.array_equal(m, plain[j].masks[k])  # the partner's instance, where it was
                assert box_ioa(_xyxy(plain[j])[k: k + 1], _xyxy(a)).max() < 0.3
                added += 1
    assert added >= 3


# ---------------------------------------------------------------------- masks and pixels after each of them

@pytest.mark.parametrize(("data", "hyp"), [
    ("mirror_ds", dict(copy_paste=1.0)),
    ("mirror_ds", dict(copy_paste=1.0, mosaic=0.0, degrees=20.0, shear=5.0, perspective=0.0005, flipud=0.5)),
    ("colour_ds", dict(copy_paste=1.0, copy_paste_mode="mixup")),
    ("colour_ds", dict(cutmix=1.0)),
    ("colour_ds", dict(cutmix=1.0, copy_paste=0.7, degrees=20.0, shear=5.0, flipud=0.5)),
], ids=["copy-paste-flip", "copy-paste-flip-rotated", "copy-paste-mixup", "cutmix", "cutmix-copy-paste-rotated"])
def test_masks_and_boxes_match_the_pixels(request, data, hyp):
    images = request.getfixturevalue(data)
    checked = 0
    for epoch in range(2):
        batch = collate(_samples(images, epoch=epoch, imgsz=384, seed=3, **NO_COLOUR, **hyp))
        checked += _check_masks_match_pixels(batch)
        _check_boxes_match_masks(batch, slack=None)
    assert checked >= 12


# ----------------------------------------------------------------------------------------------------- bgr

def test_bgr_keeps_opencv_channel_order_with_its_probability(colour_ds):
    differ = 0
    for epoch in range(2):
        rgb = _samples(colour_ds, epoch=epoch)
        for s, b in zip(rgb, _samples(colour_ds, epoch=epoch, bgr=1.0), strict=True):
            assert np.array_equal(b.image, s.image[::-1])
            assert np.array_equal(b.masks, s.masks) and np.array_equal(b.bboxes, s.bboxes)
            differ += not np.array_equal(b.image, s.image)  # a grey-only sample reads the same either way
    assert differ >= 8
    swapped = [np.array_equal(h.image, s.image[::-1])
               for epoch in range(3)
               for s, h in zip(_samples(colour_ds, epoch=epoch), _samples(colour_ds, epoch=epoch, bgr=0.5), strict=True)
               if np.array_equal(h.image, s.image) or np.array_equal(h.image, s.image[::-1])]
    assert len(swapped) == 15 and 0 < sum(swapped) < 15


# -------------------------------------------------------------------------------- close_mosaic, rect, cache

def test_close_mosaic_turns_off_mosaic_mixup_cutmix_and_copy_paste_not_bgr(colour_ds):
    ds = SegDataset(colour_ds, imgsz=128, augment=True, nc=8, seed=2, hyp=AugmentConfig(**EVERYTHING))
    assert ds.mixing
    ds.close_mosaic()
    assert not ds.mixing
    without = SegDataset(colour_ds, imgsz=128, augment=True, nc=8, seed=2, hyp=AugmentConfig(mosaic=0.0, bgr=0.5))
    for epoch in range(2):
        ds.set_epoch(epoch)
        without.set_epoch(epoch)
        assert all(_same(ds[i], without[i]) for i in range(len(ds)))
    for only in ({"mixup": 0.1}, {"cutmix": 0.1}, {"copy_paste": 0.1}):  # each of them alone is closed too
        assert SegDataset(colour_ds, imgsz=128, augment=True, nc=8, hyp=AugmentConfig(mosaic=0.0, **only)).mixing
    assert not SegDataset(colour_ds, imgsz=128, augment=True, nc=8, hyp=AugmentConfig(mosaic=0.0, bgr=1.0)).mixing


def test_close_mosaic_help_names_everything_it_turns_off():
    import argparse

    from pipeline.cli import train

    p = argparse.ArgumentParser()
    train.add_arguments(p)
    (action,) = [a for a in p._actions if "--close-mosaic" in a.option_strings]
    assert all(word in (action.help or "") for word in ("mosaic", "mixup", "cutmix", "copy-paste")), action.help


@pytest.mark.parametrize("mode", ["flip", "mixup"])
def test_rect_training_keeps_copy_paste_but_not_mixup_or_cutmix(colour_ds, mode):
    """Ultralytics' rect training has no mosaic, MixUp or CutMix; Copy-Paste stays (its partner sample is
    built at the image's own shape)."""
    hyp = AugmentConfig(mixup=1.0, cutmix=1.0, copy_paste=1.0, copy_paste_mode=mode, **NO_COLOUR)
    ds = SegDataset(colour_ds, imgsz=256, augment=True, nc=8, seed=1, rect="image", hyp=hyp)
    assert (ds.mosaic, ds.mixup, ds.cutmix, ds.copy_paste) == (False, 0.0, 0.0, 1.0)
    added = 0
    for i in range(len(ds)):
        s = ds[i]
        assert s.image.shape[1:] == ds.shape_of(i)
        _check_masks_match_pixels(collate([s]), min_area=60)
        added += len(s.cls) - len(ds.labels[i].cls)
    assert added > 0


@pytest.mark.parametrize("cache", ["ram", "disk"])
def test_cached_images_give_the_same_samples_in_any_order(colour_ds, cache):
    hyp = AugmentConfig(**EVERYTHING, copy_paste_mode="mixup")
    plain = SegDataset(colour_ds, imgsz=128, augment=True, nc=8, seed=3, hyp=hyp)
    cached = SegDataset(colour_ds, imgsz=128, augment=True, nc=8, seed=3, hyp=hyp)
    if cache == "ram":
        cached.cache_in_ram(threads=1)
    else:
        cached.cache_on_disk(threads=1)
    for epoch in range(2):
        plain.set_epoch(epoch)
        cached.set_epoch(epoch)
        expected = [plain[i] for i in range(len(plain))]
        got = {i: cached[i] for i in reversed(range(len(cached)))}
        assert all(_same(expected[i], got[i]) for i in range(len(plain)))


# ------------------------------------------------------------------------------------------ real training

def test_training_with_all_of_them_runs_and_closes_them(tmp_path, capsys, monkeypatch, one_thread):
    """A 2-epoch CPU run, the last epoch closed; mosaic is off, so only the new augmentations make the hook
    close (it once looked at mosaic alone)."""
    from engines.checkpoint import load_checkpoint
    from engines.data import dataset as dataset_mod
    from pipeline.cli import main

    calls = {"mixup": 0, "cutmix": 0, "copy_paste": 0}
    for name in calls:
        def counted(*args, _real=getattr(dataset_mod, name), _name=name):  # noqa: ANN001, ANN202
            calls[_name] += 1
            return _real(*args)
        monkeypatch.setattr(dataset_mod, name, counted)
    data = make_shapes_dataset(tmp_path / "data", n=4, size=128)
    argv = ["train", f"--data={data}", "--epochs=2", "--close-mosaic=1", "--imgsz=64", "--batch=4", "--nbs=4",
            "--workers=0", "--device=cpu", f"--out={tmp_path / 'run'}", "--no-val", "--no-plots", "--cache=ram",
            "mosaic=0", "--mixup", "1", "--cutmix", "1", "--copy-paste", "1", "--copy-paste-mode", "mixup",
            "--bgr", "0.5"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert re.search(r"Closing mosaic augmentation for the last 1 epoch\n", out)
    assert calls["mixup"] == calls["cutmix"] == 4 and calls["copy_paste"] > 0  # the first epoch's 4 images only
    hyp = load_checkpoint(tmp_path / "run" / "weights" / "last.pt").meta.train_args["hyp"]
    assert hyp == {"mosaic": 0.0, "mixup": 1.0, "cutmix": 1.0, "copy_paste": 1.0, "copy_paste_mode": "mixup",
                   "bgr": 0.5}


def test_cli_refuses_a_bad_copy_paste_mode_on_one_line(tmp_path, monkeypatch, capsys):
    from pipeline.cli import main

    monkeypatch.chdir(tmp_path)
    data = make_shapes_dataset(tmp_path / "data", n=2, size=64)
    assert main(["train", f"--data={data}", "--epochs=1", "--workers=0", "--copy-paste-mode", "paste"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["segpipe train: error: --copy-paste-mode: expected 'flip' or 'mixup', got 'paste'"]
