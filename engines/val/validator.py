"""The validator: run a model over a val split, score boxes and masks COCO-style, write reports.

Imports nothing from ``pipeline``. One ``Validator`` is built per dataset and called once per
epoch (the trainer) or once (``segpipe val``); the dataset, loader and rasterised ground truth are
built on the first call and reused. Masks are scored at each image's original resolution, the same
masks that go into ``predictions.json``; the ground-truth json is written from the same rasters.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from engines.data.cache import split_images
from engines.data.dataset import SegDataset
from engines.data.loader import SegLoader
from engines.data.spec import DataSpec, load_data_yaml
from engines.device import parse_device
from engines.errors import ConfigError, DataError, ModelError
from engines.limits import check_mask_threshold
from engines.ops.letterbox import LetterboxInfo
from engines.ops.nms import NMSConfig
from engines.ops.postprocess import postprocess
from engines.structures import Detections
from engines.val import coco, plots
from engines.val.confusion import ConfusionMatrix
from engines.val.matching import evaluate_image
from engines.val.metrics import MetricsAccumulator, SegMetrics, Speed
from engines.val.truth import ImageTruth

LOG = logging.getLogger("segpipe.val")

Infer = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
_PLOT_BATCHES = 3  # val_batch{0,1,2}_{labels,pred}.jpg, as Ultralytics


class Validator:
    """Validate any ``infer(x (N,3,H,W) float 0-1 on device) -> (pred, proto)`` on one split.

    data: the parsed data YAML; split: "val" or "test". imgsz: input side (multiple of 32).
    batch: images per forward pass. device: where inputs are put (the model's device).
    conf, iou, max_det: NMS settings (Ultralytics' val defaults). save_json: write
    ``predictions.json`` and ``ground_truth.json`` (COCO) to out_dir. out_dir: where
    ``metrics.json`` (and json, plots) go; None writes nothing. plots: PR/F1 curves, image grids and
    the confusion matrix (``confusion_matrix.csv`` and two PNGs).
    verbose: print per-class rows too (else only the ``all`` row). rect: rectangular batches (a
    fixed-shape backend needs False). workers: loader processes. retina_masks: masks made straight
    at frame resolution instead of input resolution then resized. mask_threshold: the mask probability a
    pixel must exceed (Ultralytics' 0.5).
    """

    def __init__(self, *, data: DataSpec, split: str = "val", imgsz: int = 640, batch: int = 16,
                 device: str | torch.device | None = "cpu", conf: float = 0.001, iou: float = 0.7,
                 max_det: int = 300, save_json: bool = False, out_dir: str | os.PathLike[str] | None = None,
                 plots: bool = False, verbose: bool = True, rect: bool = True, workers: int = 0,
                 retina_masks: bool = False, mask_threshold: float = 0.5) -> None:
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ConfigError("batch", f"expected an integer >= 1, got {batch!r}")
        if (save_json or plots) and out_dir is None:
            raise ConfigError("out_dir", "save_json and plots need an output folder")
        check_mask_threshold(mask_threshold)
        # DataError now, not at the first epoch's end (the dataset is built at the first call)
        split_images(data.sources(split), split=split, warn=False)
        self.data, self.split, self.imgsz, self.batch = data, split, imgsz, batch
        self.device = parse_device(device)
        self.nms = NMSConfig(conf=conf, iou=iou, max_det=max_det)
        self.save_json, self.plots, self.verbose = save_json, plots, verbose
        self.out_dir = None if out_dir is None else Path(out_dir)
        self.rect, self.workers, self.retina_masks, self.mask_threshold = rect, workers, retina_masks, mask_threshold
        self._loader: SegLoader | None = None
        self._truths: list[ImageTruth] = []
        self._files: list[str] = []
        self._ids: dict[str, int] = {}
        self._confusion: ConfusionMatrix | None = None  # filled by each call when plots is on

    def _prepare(self) -> SegLoader:
        """Dataset, loader and ground truth, built once per Validator."""
        if self._loader is None:
            ds = SegDataset.from_spec(self.data, self.split, imgsz=self.imgsz, augment=False,
                                      rect=self.rect, batch_size=self.batch)
            labels = sorted(ds.labels, key=lambda lab: os.fspath(lab.im_file))
            self._files = [os.fspath(lab.im_file) for lab in labels]
            self._ids = {f: i for i, f in enumerate(self._files)}
            self._truths = [ImageTruth.from_labels(lab.shape, lab.cls, lab.segments, lab.boxes) for lab in labels]
            if not any(len(t.cls) for t in self._truths):  # every score would be 0 with nothing to say why
                LOG.warning("the %s split of %s has no labelled instances: its mAP is 0 whatever the model does",
                            self.split, self.data.yaml_file or self.data.root)
            self._loader = SegLoader(ds, batch_size=self.batch, shuffle=False, workers=self.workers,
                                     pin_memory=self.device.type == "cuda")
        return self._loader

    @property
    def dataset(self) -> SegDataset:
        """The val dataset (letterboxed samples in loader order)."""
        return self._prepare().dataset

    @property
    def truths(self) -> list[ImageTruth]:
        """Ground truth of every image, in image-id order (file order)."""
        self._prepare()
        return self._truths

    @property
    def loader(self) -> SegLoader:
        """The val loader (letterboxed batches, ``batch.im_files`` name each image)."""
        return self._prepare()

    def truth_of(self, im_file: str | os.PathLike[str]) -> ImageTruth:
        """Ground truth of one image of the split, by its file."""
        self._prepare()
        return self._truths[self._ids[os.fspath(im_file)]]

    def __call__(self, infer: Infer, names: Sequence[str] | None = None) -> SegMetrics:
        names = tuple(self.data.names if names is None else names)
        nms = self.nms
        # single_cls scoring of a model of several classes: its detections all count as "item", after one
        # NMS over every class (Ultralytics' validator does the same)
        collapse = names if self.data.single_cls and len(names) != 1 else None  # the model's own names
        if collapse:
            names, nms = self.data.names, dataclasses.replace(nms, agnostic=True)
        if len(names) != self.data.nc:
            raise ModelError(f"the model predicts {len(names)} classes, the data YAML "
                             f"{self.data.yaml_file or self.data.root} has {self.data.nc}")
        loader = self._prepare()
        was_training = isinstance(infer, nn.Module) and infer.training
        if isinstance(infer, nn.Module):
            infer.eval()
        try:
            with torch.inference_mode():
                acc, preds, times = self._run(loader, infer, names, nms, collapse)
        finally:
            if was_training and isinstance(infer, nn.Module):
                infer.train()
        box, seg = acc.compute()
        n = max(acc.images, 1)
        metrics = SegMetrics(box=box, seg=seg, speed=Speed(*(1000 * t / n for t in times)), names=names,
                             images=acc.images, instances=acc.instances, images_per_class=acc.images_per_class)
        print(metrics.table(per_class=self.verbose), flush=True)
        self._write(metrics, preds, names)
        return metrics

    def _run(self, loader: SegLoader, infer: Infer, names: tuple[str, ...], nms: NMSConfig,
             collapse: tuple[str, ...] | None) -> tuple[MetricsAccumulator, list[dict[str, Any]], list[float]]:
        acc = MetricsAccumulator(len(names))
        self._confusion = ConfusionMatrix(len(names), conf=nms.conf) if self.plots else None
        preds: list[dict[str, Any]] = []
        times = [0.0, 0.0, 0.0]
        dtype, nms_free = _input_dtype(infer), _nms_free(infer)
        for b, batch in enumerate(loader):
            t0 = self._clock()
            x = batch.images.to(self.device, non_blocking=True).to(dtype).div_(255)
            t1 = self._clock()
            pred, proto = infer(x)
            t2 = self._clock()
            infos = cast(Sequence[LetterboxInfo], batch.infos)  # val batches carry an info for every image
            dets = postprocess(pred, proto, infos, nms, names=collapse or names, retina_masks=self.retina_masks,
                               nms_free=nms_free, mask_threshold=self.mask_threshold)
            if collapse:
                dets = [d.relabelled(d.class_ids * 0, names) for d in dets]
            t3 = self._clock()
            for i, t in enumerate((t1 - t0, t2 - t1, t3 - t2)):
                times[i] += t
            for det, f in zip(dets, batch.im_files, strict=True):
                preds += self._score(acc, det, self._ids[f])
            if self.plots and b < _PLOT_BATCHES:
                idx = [self._ids[f] for f in batch.im_files]
                plots.plot_val_batch(batch.im_files, [self._truths[i] for i in idx], dets, names,
                                     self.out_dir, b)  # type: ignore[arg-type]
        return acc, preds, times

    def _score(self, acc: MetricsAccumulator, det: Detections, image_id: int) -> list[dict[str, Any]]:
        """Match one image's detections; their COCO results when save_json (else [])."""
        frame_masks = det.masks
        # postprocess makes them, so their arrays are tensors (Detections also allows numpy ones).
        assert isinstance(det.boxes, torch.Tensor) and isinstance(det.scores, torch.Tensor)
        assert isinstance(det.class_ids, torch.Tensor)
        assert frame_masks is None or isinstance(frame_masks, torch.Tensor)
        boxes = coco.xyxy_to_coco(det.boxes.cpu().numpy())
        scores, cls = det.scores.cpu().numpy(), det.class_ids.cpu().numpy()
        acc.add(evaluate_image(boxes, scores, cls, frame_masks, self._truths[image_id]), image_id)
        if self._confusion is not None:
            self._confusion.add(boxes, scores, cls, self._truths[image_id])
        if not self.save_json:
            return []
        masks = None if frame_masks is None else frame_masks.cpu().numpy()
        return coco.results_json(image_id, boxes, scores, cls, masks)

    def _clock(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def _write(self, metrics: SegMetrics, preds: list[dict[str, Any]], names: tuple[str, ...]) -> None:
        if self.out_dir is None:
            return
        path = coco.write_json(self.out_dir / "metrics.json", metrics.as_dict())
        LOG.info("metrics written to %s", path)
        if self.save_json:
            gt = coco.gt_json(self._truths, self._files, names)
            coco.write_json(self.out_dir / "ground_truth.json", gt)
            coco.write_json(self.out_dir / "predictions.json", preds)
        if self.plots:
            for key, ms in (("Box", metrics.box), ("Mask", metrics.seg)):
                plots.plot_pr_curve(ms, names, self.out_dir / f"{key}PR_curve.png", f"{key} precision-recall")
                plots.plot_f1_curve(ms, names, self.out_dir / f"{key}F1_curve.png", f"{key} F1-confidence")
            if self._confusion is not None:
                self._confusion.write_csv(self.out_dir / "confusion_matrix.csv", names)
                for normalize, name in ((False, "confusion_matrix.png"), (True, "confusion_matrix_normalized.png")):
                    plots.plot_confusion_matrix(self._confusion.matrix, names, self.out_dir / name, normalize=normalize)


def _input_dtype(infer: Infer) -> torch.dtype:
    """float16 for a half-precision nn.Module, else float32 (backends convert themselves)."""
    if isinstance(infer, nn.Module):
        p = next(infer.parameters(), None)
        if p is not None and p.dtype == torch.float16:
            return torch.float16
    return torch.float32


def _nms_free(infer: Infer) -> bool:
    """Whether ``infer`` runs an NMS-free head: a SegmentationModel's ``end2end``, a Backend's meta."""
    if isinstance(infer, nn.Module):
        return bool(getattr(infer, "end2end", False))
    return bool(getattr(getattr(infer, "meta", None), "nms_free", False))


def resolve_data(data: str | os.PathLike[str] | DataSpec | None, model_data: str | None, model: str) -> DataSpec:
    """The dataset to validate on: ``data`` if given, else the one the model was trained on."""
    if isinstance(data, DataSpec):
        return data
    if data is not None and data != "":
        return load_data_yaml(data)
    if not model_data:
        raise ConfigError("--data", f"{model} does not name the dataset it was trained on; pass --data")
    try:
        return load_data_yaml(model_data)
    except DataError as e:
        raise DataError(f"{e} (the dataset {model} was trained on; pass --data)") from None


def model_data(backend: Any) -> str | None:
    """The data YAML a loaded model names, from its metadata (every backend carries it in ``extra``)."""
    return backend.meta.extra.get("data")


def validate(model: Any, *, data: str | os.PathLike[str] | DataSpec | None = None, split: str = "val",
             imgsz: int | None = None, batch: int = 16, device: str | torch.device | None = None,
             conf: float = 0.001, iou: float = 0.7, max_det: int = 300, save_json: bool = False,
             out_dir: str | os.PathLike[str] | None = None, plots: bool = False, verbose: bool = True,
             workers: int = 0, backend: str = "auto", half: bool = False, classes: Sequence[int] | None = None,
             single_cls: bool | None = None, nms_free: bool = False, retina_masks: bool = False,
             mask_threshold: float = 0.5) -> SegMetrics:
    """Validate a model file or a loaded ``Backend``; dataset and imgsz default to the model's own.

    model: a path (any backend format) or an ``engines.backends.Backend``; half: fp16 weights when
    loading a path on CUDA. out_dir defaults to ``runs/val`` when save_json or plots ask for files.
    classes, single_cls: score only the instances of these class ids of the data, and all classes as one
    (``DataSpec.select``); single_cls defaults to what the model was trained with. nms_free: an end-to-end
    model's NMS-free head (see ``BackendOptions``). retina_masks, mask_threshold: see ``Validator``. Returns
    SegMetrics.
    """
    from engines.backends import Backend, BackendOptions, load_backend

    if not isinstance(model, Backend):
        model = load_backend(model, device=device if device is not None else "cpu", backend=backend,
                             options=BackendOptions(half=half, nms_free=nms_free))
    meta = model.meta
    spec = resolve_data(data, model_data(model) if data is None else None, str(model.path))
    if single_cls is None:
        single_cls = bool(meta.extra.get("single_cls", False))
    spec = spec.select(classes=classes, single_cls=single_cls)
    if imgsz is None:
        h, w = meta.imgsz
        if h != w and not meta.dynamic:
            raise ConfigError("--imgsz", f"{model.path} takes {h}x{w} inputs; only square sizes can be validated")
        imgsz = max(h, w)
    elif not meta.dynamic and (imgsz, imgsz) != tuple(meta.imgsz):
        raise ConfigError("--imgsz", f"{model.path} was exported for {meta.imgsz[0]}x{meta.imgsz[1]} inputs, "
                          f"got {imgsz} (export with --dynamic to validate at other sizes)")
    if out_dir is None and (save_json or plots):
        out_dir = Path("runs/val")
    v = Validator(data=spec, split=split, imgsz=imgsz, batch=batch, device=model.device, conf=conf, iou=iou,
                  max_det=max_det, save_json=save_json, out_dir=out_dir, plots=plots, verbose=verbose,
                  rect=meta.dynamic, workers=workers, retina_masks=retina_masks, mask_threshold=mask_threshold)
    return v(model, meta.names)


def summary_line(metrics: SegMetrics) -> str:
    """One line for logs: box and mask mAP50-95 and mAP50, fitness."""
    b, s = metrics.box, metrics.seg
    return (f"box mAP50-95 {b.map:.4f} mAP50 {b.map50:.4f} | mask mAP50-95 {s.map:.4f} "
            f"mAP50 {s.map50:.4f} | fitness {metrics.fitness:.4f}")


__all__ = ["Validator", "resolve_data", "summary_line", "validate"]
