"""The segmentation dataset: train mode (mosaic, Copy-Paste, random affine, MixUp, CutMix, HSV, flips, bgr:
Ultralytics' order) and val mode (letterbox only). Imports nothing from pipeline/.

Masks stay exact because they are never warped as pixels: polygons are resampled to a fixed point
count, moved by the same matrix as the image, and rasterised at 1/mask_ratio of the final input.
Boxes are recomputed from the moved polygons (clipped to the input exactly), then Ultralytics'
``box_candidates`` drops instances that became tiny or sliver-like.

Randomness: sample ``index`` of epoch ``e`` draws from ``numpy.random.default_rng((seed, e, index))``
only, so a batch is the same whatever the worker count or order. The other samples MixUp, CutMix and
Copy-Paste take are built from generators spawned off that one (``_partner``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch.utils.data

from engines.data import disk_cache
from engines.data.augment import (
    AugmentConfig,
    hsv_jitter,
    mosaic_layout,
    pad_image,
    random_affine,
    transform_points,
    val_letterbox,
    warp_image,
)
from engines.data.batch import Sample
from engines.data.cache import load_split
from engines.data.images import read_image, read_resized, resized_size
from engines.data.labels import ImageLabels
from engines.data.mix import Labelled, copy_paste, cutmix, flip, mixup, visible
from engines.data.polygons import (
    bounds,
    box_candidates,
    clip_polygon,
    polygon_boxes,
    rasterize,
    resample_segments,
    xyxy_to_xywhn,
)
from engines.data.ram_cache import cache_bytes, read_all
from engines.data.spec import DataSpec
from engines.errors import ConfigError

LOG = logging.getLogger("segpipe.data")


class SegDataset(torch.utils.data.Dataset):
    """YOLO-seg images and labels, augmented for training or letterboxed for validation.

    files: a split's sources (folders, image-list .txt files, image files) or one of them.
    imgsz: network input side, a multiple of ``stride``. augment: train mode when True.
    hyp: augmentation settings (train mode). cache_dir: where the label cache goes (default: beside
    the labels if writable, else ``$SEGPIPE_CACHE``). nc: class count; ids >= nc are errors. classes,
    single_cls: only instances of those class ids, all as class 0 (``DataSpec.select``).
    rect: rectangular inputs instead of imgsz squares. True or "batch": Ultralytics' rule, images sorted
    by aspect ratio and each run of ``batch_size`` padded to one shape (load with that batch size and no
    shuffling: validation). "image": each image gets the smallest stride multiple holding it at longest
    side imgsz, so images of one aspect ratio share a shape (``shape_of``); batch them with
    ``ShapeBatchSampler``, which shuffles (training). Train-mode rect turns mosaic off. seed: see module doc.
    cache_images: keep every decoded image (longest side imgsz) in memory, filled here (see
    ``cache_in_ram``, which also fills it later, after a memory check). ``cache_on_disk`` keeps them in
    ``.npy`` files instead (beside the images when writable and no cache_dir is given, else under
    ``cache_dir`` or ``$SEGPIPE_CACHE``: see ``engines.data.disk_cache``).
    """

    def __init__(self, files: Sequence[str | os.PathLike[str]] | str | os.PathLike[str], *, imgsz: int = 640,
                 augment: bool = False, hyp: AugmentConfig | None = None, cache_dir: Path | None = None,
                 nc: int | None = None, split: str | None = None, rect: bool | str = False, batch_size: int = 16,
                 stride: int = 32, seed: int = 0, skip_corrupt: bool = False, cache_images: bool = False,
                 classes: Sequence[int] | None = None, single_cls: bool = False) -> None:
        if isinstance(imgsz, bool) or not isinstance(imgsz, int) or imgsz < stride or imgsz % stride:
            raise ConfigError("imgsz", f"expected a positive multiple of {stride}, got {imgsz!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ConfigError("seed", f"expected a non-negative integer, got {seed!r}")
        if rect not in (False, True, "batch", "image"):
            raise ConfigError("rect", f"expected false, true, 'batch' or 'image', got {rect!r}")
        sources = [files] if isinstance(files, (str, os.PathLike)) else list(files)
        self.split = split or ("train" if augment else "val")
        loaded = load_split(sources, nc=nc, split=self.split, cache_dir=cache_dir, skip_corrupt=skip_corrupt)
        self.labels: list[ImageLabels] = list(loaded.labels)
        if classes is not None or single_cls:
            self.labels = [lab.selected(classes, single_cls) for lab in self.labels]
        self.stats, self.cache_file = loaded.stats, loaded.cache_file
        self.cache_dir = cache_dir
        LOG.info("%s", self.stats.summary())
        self.rect = "batch" if rect is True else rect
        self.imgsz, self.augment, self.hyp = imgsz, augment, hyp or AugmentConfig()
        self.seed, self.epoch = seed, 0
        # What runs (close_mosaic turns these off): rect training has no mosaic, MixUp or CutMix, as Ultralytics.
        self.mosaic = augment and not rect and self.hyp.mosaic > 0
        self.mixup = self.hyp.mixup if augment and not rect else 0.0
        self.cutmix = self.hyp.cutmix if augment and not rect else 0.0
        self.copy_paste = self.hyp.copy_paste if augment else 0.0
        self.bgr = self.hyp.bgr if augment else 0.0
        self.batch_shapes: np.ndarray | None = None  # (n_batches, 2) h, w when rect="batch"
        self._shapes: np.ndarray | None = None  # (n, 2) h, w of every image's input when rect
        pad = 0.0 if augment else 0.5
        if self.rect == "batch":
            self._set_rect(batch_size, stride, pad)
        elif self.rect == "image":
            ar = np.array([h / w for h, w in (lab.shape for lab in self.labels)]).reshape(-1, 1)
            self._shapes = _fit_shapes(ar, imgsz, stride, pad)
        self._ims: list[np.ndarray] | None = None
        self._npy: tuple[Path, ...] | None = None  # the disk cache's file of every image
        if cache_images:
            self.cache_in_ram()

    @classmethod
    def from_spec(cls, spec: DataSpec, split: str, **kwargs: object) -> SegDataset:
        """The dataset of one split of a data YAML (class ids checked against its names)."""
        return cls(spec.sources(split), nc=spec.label_nc, split=split, classes=spec.classes,
                   single_cls=spec.single_cls, **kwargs)  # type: ignore[arg-type]

    def ram_bytes(self) -> int:
        """Bytes ``cache_in_ram`` would hold (exact; from the checked image shapes)."""
        return cache_bytes([lab.shape for lab in self.labels], self.imgsz)

    def cache_in_ram(self, *, threads: int | None = None) -> int:
        """Decode every image now (longest side imgsz, on ``threads`` threads) and keep it: later samples,
        in this process and in loader workers forked from it, skip decoding. Samples are unchanged
        (augmentation works on copies; the cached arrays are read-only). Returns the bytes held."""
        if self._ims is None:
            self._ims = read_all(self._items(), self.imgsz, threads=threads)
        return sum(im.nbytes for im in self._ims)

    @property
    def cached(self) -> bool:
        """Whether the images are held in RAM."""
        return self._ims is not None

    def disk_plan(self) -> disk_cache.DiskPlan:
        """Where ``cache_on_disk`` keeps every image, and which files it has yet to write (stats every image
        and reads every existing file's header; decodes nothing)."""
        return disk_cache.plan(self._items(), self.imgsz, cache_dir=self.cache_dir)

    def cache_on_disk(self, plan: disk_cache.DiskPlan | None = None, *, indices: Sequence[int] | None = None,
                      threads: int | None = None) -> int:
        """Decode the images ``plan`` lists as missing (or just ``indices`` of them; default: a fresh plan's)
        on ``threads`` threads, save them as ``.npy`` files, and read every image from its file from now on
        (in loader workers too). Samples are unchanged. Returns how many images were decoded."""
        plan = plan or self.disk_plan()
        written = disk_cache.fill(plan, self._items(), self.imgsz, indices=indices, threads=threads)
        self._npy = plan.files
        return written

    @property
    def cached_on_disk(self) -> bool:
        """Whether the images are read from the disk cache."""
        return self._npy is not None

    def _items(self) -> list[tuple[Path, tuple[int, int]]]:
        """(image file, its (H, W)) of every image, as the caches take them."""
        return [(lab.im_file, lab.shape) for lab in self.labels]

    @property
    def im_files(self) -> list[Path]:
        return [lab.im_file for lab in self.labels]

    def __len__(self) -> int:
        return len(self.labels)

    def set_epoch(self, epoch: int) -> None:
        """Select the random stream of ``epoch``. DataLoader workers copy the dataset when an
        iteration starts, so call this before iterating (and do not use persistent workers)."""
        self.epoch = int(epoch)

    def close_mosaic(self) -> None:
        """Turn mosaic, MixUp, CutMix and Copy-Paste off for the remaining epochs (Ultralytics'
        ``close_mosaic``); the affine, HSV, flips and bgr stay on."""
        self.mosaic = False
        self.mixup = self.cutmix = self.copy_paste = 0.0

    @property
    def mixing(self) -> bool:
        """Whether any augmentation ``close_mosaic`` turns off is on."""
        return bool(self.mosaic or self.mixup or self.cutmix or self.copy_paste)

    def _set_rect(self, batch_size: int, stride: int, pad: float) -> None:
        # Ultralytics' rule: sort by aspect ratio so each batch holds similar shapes.
        ar = np.array([h / w for h, w in (lab.shape for lab in self.labels)])
        order = ar.argsort(kind="stable")
        self.labels = [self.labels[i] for i in order]
        ar = ar[order]
        bi = np.arange(len(ar)) // batch_size
        ranges = np.array([[ar[bi == i].min(), ar[bi == i].max()] for i in range(bi[-1] + 1)])
        self.batch_shapes = _fit_shapes(ranges, self.imgsz, stride, pad)
        self._shapes = self.batch_shapes[bi]

    def shape_of(self, index: int) -> tuple[int, int]:
        """(h, w) of the network input for sample ``index``: imgsz square unless rect."""
        if self._shapes is None:
            return self.imgsz, self.imgsz
        h, w = self._shapes[index]
        return int(h), int(w)

    def _resized(self, index: int) -> tuple[np.ndarray, list[np.ndarray]]:
        """Image with longest side imgsz and its polygons in its pixels (not resampled)."""
        lab = self.labels[index]
        img = self._cached_image(index)
        if img is None:
            img = read_resized(lab.im_file, lab.shape, self.imgsz)
            if self._npy is not None:  # its file went missing or bad since the fill: write it again
                disk_cache.save(self._npy[index], img)
        wh = np.array([img.shape[1], img.shape[0]], np.float64)
        return img, [s * wh for s in lab.segments]

    def _cached_image(self, index: int) -> np.ndarray | None:
        """Image ``index`` at longest side imgsz from the RAM or disk cache; None when not cached."""
        if self._ims is not None:
            return self._ims[index]
        if self._npy is not None:
            return disk_cache.load(self._npy[index], resized_size(self.labels[index].shape, self.imgsz))
        return None

    def __getitem__(self, index: int) -> Sample:
        index = int(index)
        return self._train_sample(index) if self.augment else self._val_sample(index)

    def _val_sample(self, index: int) -> Sample:
        lab = self.labels[index]
        info = val_letterbox(lab.shape, self.imgsz, self.shape_of(index))
        (uh, uw), (left, top) = info.unpad_shape, info.pad
        img = self._cached_image(index)
        if img is None or img.shape[:2] != (uh, uw):
            img = read_image(lab.im_file, lab.shape, (uw, uh))
        img = pad_image(img, info)
        th, tw = info.new_shape
        polys = [s * (uw, uh) + (left, top) for s in lab.segments]
        boxes = np.array([[*p.min(0), *p.max(0)] for p in polys], np.float32).reshape(-1, 4)
        masks = rasterize(polys, th, tw, self.hyp.mask_ratio)
        return _sample(img, lab, lab.cls, xyxy_to_xywhn(boxes, tw, th), masks, info)

    def _train_sample(self, index: int) -> Sample:
        hyp, lab = self.hyp, self.labels[index]
        rng = np.random.default_rng((self.seed, self.epoch, index))
        th, tw = size = self.shape_of(index)
        a = self._placed(index, rng, size)
        # Ultralytics' order: MixUp, then CutMix, each with another sample built the same way.
        if self.mixup and rng.random() < self.mixup:
            a = mixup(a, self._partner(rng, size), float(rng.beta(32.0, 32.0)))
        if self.cutmix and rng.random() < self.cutmix:
            a = cutmix(a, self._partner(rng, size), rng)
        hsv_jitter(a.img, rng, hyp.hsv_h, hyp.hsv_s, hyp.hsv_v)
        if rng.random() < hyp.flipud:
            a = flip(a, vertical=True)
        if rng.random() < hyp.fliplr:
            a = flip(a)
        a, masks = visible(a, hyp.mask_ratio)
        bgr = bool(self.bgr) and rng.random() < self.bgr
        return _sample(a.img, lab, a.cls, xyxy_to_xywhn(a.boxes, tw, th), masks, None, bgr=bgr)

    def _placed(self, index: int, rng: np.random.Generator, size: tuple[int, int], *, paste: bool = True) -> Labelled:
        """Sample ``index`` up to the colour and flips: mosaic (or the image alone), Copy-Paste, the random affine
        into ``size`` (h, w) and the box filter. ``paste=False``: no Copy-Paste (the sample a "mixup"-mode
        Copy-Paste takes instances from, as Ultralytics builds it)."""
        hyp = self.hyp
        if self.mosaic and rng.random() < hyp.mosaic:
            img, xy, cls, before = self._mosaic(index, rng)
        else:
            img, segs = self._resized(index)
            xy, cls = resample_segments(segs, dtype=np.float64), self.labels[index].cls
            before = _extent(xy)
        a = Labelled(img, xy, cls, before)
        paste = paste and self.copy_paste > 0
        if paste and hyp.copy_paste_mode == "flip":  # before the affine, as Ultralytics
            a = copy_paste(a, flip(a), self.copy_paste)
        th, tw = size
        M, scale = random_affine(rng, hyp, a.img.shape[:2], (tw, th))
        xy = transform_points(a.xy, M)
        boxes = polygon_boxes(xy, tw, th)
        keep = box_candidates(a.boxes * scale, boxes, area_thr=0.01)
        placed = Labelled(warp_image(a.img, M, (tw, th)), xy, a.cls, boxes, a.hidden_by).take(keep)
        if paste and hyp.copy_paste_mode == "mixup" and len(placed.cls) and rng.random() < self.copy_paste:
            placed = copy_paste(placed, self._partner(rng, size, paste=False), self.copy_paste)
        return placed

    def _partner(self, rng: np.random.Generator, size: tuple[int, int], *, paste: bool = True) -> Labelled:
        """A random sample built as ``_placed`` builds one, at ``size``, from its own stream spawned off ``rng``
        (so the draws of the sample it joins do not depend on how many it took)."""
        return self._placed(int(rng.integers(len(self))), rng.spawn(1)[0], size, paste=paste)

    def _mosaic(self, index: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """4-image mosaic on a 2*imgsz canvas -> (canvas, polygons (N, K, 2), cls (N,), boxes (N, 4))."""
        s = self.imgsz
        picks = [index, *(int(i) for i in rng.integers(0, len(self), 3))]
        loaded = [self._resized(i) for i in picks]
        layout = mosaic_layout(rng, s, [im.shape[:2] for im, _ in loaded])
        canvas = np.full((2 * s, 2 * s, 3), 114, np.uint8)
        polys, cls = [], []
        for (im, segs), (x1a, y1a, x2a, y2a, x1b, y1b, x2b, y2b), i in zip(loaded, layout, picks, strict=True):
            canvas[y1a:y2a, x1a:x2a] = im[y1b:y2b, x1b:x2b]
            if not segs:
                continue
            flat = np.concatenate(segs) + (x1a - x1b, y1a - y1b)
            starts = np.cumsum([0] + [len(p) for p in segs[:-1]])
            lo, hi = np.minimum.reduceat(flat, starts), np.maximum.reduceat(flat, starts)
            inside = (lo[:, 0] >= x1a) & (lo[:, 1] >= y1a) & (hi[:, 0] <= x2a) & (hi[:, 1] <= y2a)
            for p, c, ok in zip(np.split(flat, starts[1:]), self.labels[i].cls, inside, strict=True):
                # What an image loses in the mosaic lies beyond its tile: cut it off exactly
                # (Ultralytics clamps the resampled points instead, which bulges at corners).
                p = p if ok else clip_polygon(p, x1a, y1a, x2a, y2a)
                if len(p) >= 3:
                    polys.append(p)
                    cls.append(c)
        xy = resample_segments(polys, dtype=np.float64)  # one point count for all four images
        boxes = _extent(xy)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        return canvas, xy[keep], np.asarray(cls, np.int64)[keep], boxes[keep]


def _fit_shapes(ar_bounds: np.ndarray, imgsz: int, stride: int, pad: float) -> np.ndarray:
    """(k, 1 or 2) h/w aspect ratios (or [min, max] ranges) -> (k, 2) int h, w: the smallest stride
    multiples holding every such image at longest side imgsz (Ultralytics' rect rule; mixed portrait and
    landscape ranges get a square)."""
    lo, hi = ar_bounds.min(1), ar_bounds.max(1)
    shapes = np.ones((len(ar_bounds), 2))
    wide, tall = hi < 1, lo > 1
    shapes[wide, 0] = hi[wide]
    shapes[tall, 1] = 1 / lo[tall]
    return np.ceil(shapes * imgsz / stride + pad).astype(int) * stride


def _extent(xy: np.ndarray) -> np.ndarray:
    """(N, K, 2) -> (N, 4) xyxy min/max of each polygon."""
    if len(xy) == 0:
        return np.zeros((0, 4), np.float32)
    return np.concatenate(bounds(xy), 1).astype(np.float32)


def _sample(img: np.ndarray, lab: ImageLabels, cls: np.ndarray, bboxes: np.ndarray, masks: np.ndarray,
            info: object, *, bgr: bool = False) -> Sample:
    chw = img.transpose(2, 0, 1)  # HWC -> CHW
    chw = np.ascontiguousarray(chw if bgr else chw[::-1])  # BGR -> RGB unless the bgr augmentation keeps BGR
    return Sample(image=chw, cls=np.asarray(cls, np.int64), bboxes=bboxes, masks=masks,
                  im_file=os.fspath(lab.im_file), ori_shape=lab.shape, info=info)  # type: ignore[arg-type]
