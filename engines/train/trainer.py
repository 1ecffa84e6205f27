"""``train()``: set a run up, loop epochs over a short ``run_step``, let hooks do the rest.

Imports ``engines`` only. The step (forward, loss, backward, maybe an optimizer step) is all
``run_step`` does; EMA, the LR schedule, validation, checkpoints, CSV, plots and early stopping are
hooks (``engines.train.hooks``). Several devices run the same ``fit`` in one process each
(``engines.train.ddp``); rank 0 validates and saves.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable, Iterator, Sequence, Sized
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from torch import nn

from engines.checkpoint import ModelMeta, build_model, load_checkpoint, save_checkpoint
from engines.data.loader import worker_errors_unwrapped
from engines.data.spec import DataSpec, load_data_yaml
from engines.errors import CheckpointError, ConfigError, SegpipeError
from engines.nn.model import SegmentationModel
from engines.train import hooks as H
from engines.train.config import TrainConfig, claimed_run_folder, default_out_dir
from engines.train.ddp import Placement, broadcast_flag, launch, parse_devices
from engines.train.ema import ModelEMA
from engines.train.loader import TrainData, build_train_data, fork_safe_cv2
from engines.train.loss import E2ESegLoss, LossGains, SegLoss
from engines.train.multiscale import multi_scale_size, rescale_batch
from engines.train.optim import (
    Schedule,
    accumulation,
    build_optimizer,
    choose_optimizer,
    lr_factor,
    split_parameters,
    warmup_iterations,
)
from engines.train.state import TrainState
from engines.train.state_io import has_state, pack_state, restore_state
from engines.train.weights import build_train_model, freeze_layers

if TYPE_CHECKING:
    from engines.data.batch import TrainBatch
    from engines.val.metrics import SegMetrics

MAX_GRAD_NORM = 10.0


def run_step(s: TrainState, batch: TrainBatch) -> bool:
    """Forward, loss, backward; an optimizer step once ``accumulate`` batches have been summed.

    Sets ``s.items`` (this batch's losses) and returns whether the optimizer stepped.
    """
    # one copy makes the float batch in the weights' layout (cfg.memory_format)
    images = batch.images.to(s.device, non_blocking=True).to(torch.float32,
                                                              memory_format=s.cfg.memory_format(s.device)) / 255
    if s.cfg.multi_scale > 0:  # off: no draw, no resize (the step is the same as without the option)
        stride = int(s.loss_fn.strides.max())  # the model's largest stride (a CPU tensor: no device sync)
        size = multi_scale_size(imgsz=s.cfg.imgsz, fraction=s.cfg.multi_scale, stride=stride, seed=s.cfg.seed,
                                step=s.ni)
        images = rescale_batch(images, size, stride)
    with torch.autocast(s.device.type, enabled=s.scaler.is_enabled()):
        out = s.model(images)
    loss, s.items = s.loss_fn(out, batch)
    if s.place.distributed:
        loss = loss * s.place.world_size  # DDP averages gradients over ranks; the loss is a per-rank sum
    s.scaler.scale(loss).backward()
    if s.ni - s.last_opt_step < s.accumulate:
        return False
    s.scaler.unscale_(s.optimizer)
    torch.nn.utils.clip_grad_norm_(s.model.parameters(), max_norm=MAX_GRAD_NORM)
    s.scaler.step(s.optimizer)
    s.scaler.update()
    s.optimizer.zero_grad(set_to_none=True)
    s.last_opt_step = s.ni
    return True


def fit_loop(s: TrainState, data: TrainData, hooks: Sequence[H.Hook]) -> None:
    """Epochs ``s.start_epoch .. cfg.epochs - 1`` of ``run_step`` with the hooks around it."""
    s.clock.start()
    for h in hooks:
        h.before_train(s)
    s.optimizer.zero_grad(set_to_none=True)
    epoch = s.start_epoch
    while epoch < s.cfg.epochs:  # a time budget (TimeBudgetHook) may re-plan cfg.epochs between epochs
        s.epoch, s.mean_items = epoch, None
        data.set_epoch(epoch)
        s.model.train()
        for h in hooks:
            h.before_epoch(s)
        # Seconds blocked on the loader vs in steps (the finiteness check syncs the device, so a step's
        # time includes its GPU work): which of the two sets the pace (ProgressHook prints it).
        waited = stepping = 0.0
        t = time.perf_counter()
        for i, batch in enumerate(worker_errors_unwrapped(data.loader)):
            fetched = time.perf_counter()
            waited += fetched - t
            s.ni = i + s.batches_per_epoch * epoch
            s.extras["instances"], s.extras["batch"] = len(batch.cls), batch
            for h in hooks:
                h.before_step(s)
            stepped = run_step(s, batch)
            assert s.items is not None  # run_step sets it
            s.images_seen += len(batch)
            s.mean_items = s.items if s.mean_items is None else (s.mean_items * i + s.items) / (i + 1)
            if not torch.isfinite(s.items).all():
                raise SegpipeError(f"training diverged: losses {s.items.tolist()} at epoch {epoch + 1} batch {i}; "
                                   "lower --lr0 or turn --amp off")
            for h in hooks:
                h.after_step(s, stepped)
            t = time.perf_counter()
            stepping += t - fetched
        s.extras["data_s"], s.extras["step_s"] = waited, stepping
        for h in hooks:
            h.after_epoch(s)
        if broadcast_flag(s.stop, s.place):
            break
        epoch += 1
    for h in hooks:
        h.after_train(s)


def train(
    *, data: str | Path | None = None, model: str | Path = "yolov8n-seg.yaml", epochs: int = 100, imgsz: int = 640,
    rect: bool = False, multi_scale: float | bool = 0.0, batch: int = 16, time: float | None = None, device: str | int | None = None, pretrained: str | Path | None = None,
    freeze: int | Sequence[int] | None = None,
    resume: str | Path | bool | None = None, out: str | Path | None = None, workers: int = 8, seed: int = 0,
    deterministic: bool = True, optimizer: str = "auto", lr0: float = 0.01, lrf: float = 0.01,
    momentum: float = 0.937, weight_decay: float = 0.0005, warmup_epochs: float = 3.0,
    warmup_momentum: float = 0.8, warmup_bias_lr: float = 0.1, box: float = 7.5, cls: float = 0.5,
    dfl: float = 1.5, dice: float = 0.0, nbs: int = 64, cos_lr: bool = False, close_mosaic: int = 10, patience: int = 100, val: bool = True,
    fraction: float = 1.0, classes: Sequence[int] | None = None, single_cls: bool = False, amp: bool = True,
    plots: bool = True, cache: str | bool | None = None, nms_free: bool = False, channels_last: bool | None = None,
    cache_dir: str | Path | None = None,
    world_size: int | None = None, hyp: dict[str, Any] | None = None, exist_ok: bool = False,
) -> SegMetrics:
    """Train a YOLOv8-seg model on a data YAML; returns the final validation metrics of ``best.pt``.

    ``freeze`` keeps layers out of training (Ultralytics' ``freeze``): ``N`` the first N layers of the
    model, a list those layer indices; see ``engines.train.weights.freeze_layers``.
    ``cache="ram"`` (or True, Ultralytics' spelling) decodes the training images once, before the first
    epoch, and keeps them in memory when they fit (``engines.train.loader.cache_in_ram``); ``cache="disk"``
    keeps them in ``.npy`` files instead, beside the images or under ``$SEGPIPE_CACHE`` for a read-only
    dataset, and a later run decodes only the images it lacks (``engines.train.loader.cache_on_disk``).
    Results are unchanged either way.
    ``rect`` trains every image at its own aspect ratio (longest side ``imgsz``, no mosaic) in shuffled
    batches of one shape each, instead of padded to ``imgsz`` squares.
    ``multi_scale=F`` (Ultralytics' name) resizes each batch, rect ones too, to a random longest side in
    ``imgsz * (1 ± F)``, a stride multiple, drawn from the seed and the step (``engines.train.multiscale``);
    True (older Ultralytics' bool) is 0.5, False 0.
    ``nms_free`` validates an end-to-end model's (YOLO26's) one-to-one head, the one NMS-free inference
    runs, after each epoch and at the end, so that fitness and best.pt follow it (Ultralytics' nms=False);
    by default its NMS head is validated. Both heads are trained either way.
    ``time`` (hours) fits the run into a budget: after every epoch the epoch count is re-planned from
    the mean epoch time so far, and the lr schedule and mosaic switch-off follow the new count. A
    resumed run counts the training time its earlier sessions spent up to their last.pt.
    Writes ``OUT/weights/last.pt`` and ``best.pt`` (segpipe checkpoints), ``OUT/results.csv`` and
    plots. ``resume=True`` continues ``OUT/weights/last.pt`` (or the latest run under
    runs/segment); a path continues that checkpoint with its recorded settings. An ``out`` that holds an
    earlier run is refused unless ``exist_ok`` (the new run then starts its own results.csv). ``device="0,1"``
    trains on two GPUs with DDP; ``world_size=n`` with ``device="cpu"`` runs n CPU processes (gloo).
    Raises ``SegpipeError`` subclasses for bad settings, data or checkpoints.
    """
    def opt(v: str | int | Path | None) -> str | None:
        return None if v is None else str(v)

    if resume:
        cfg = resume_config(None if resume is True else str(resume), out=opt(out), device=opt(device),
                            workers=workers)
    else:
        if data is None or str(data) == "":
            raise ConfigError("train.data", "required: a data YAML (or resume a run)")
        cfg = TrainConfig(
            data=_recorded_path(data), model=_recorded_path(model), epochs=epochs, time=time, imgsz=imgsz, rect=rect,
            multi_scale=(0.5 if multi_scale else 0.0) if isinstance(multi_scale, bool) else multi_scale, batch=batch, device=opt(device),
            pretrained=None if pretrained is None else _recorded_path(pretrained),
            freeze=freeze if freeze is None or isinstance(freeze, int) else list(freeze), out=opt(out), workers=workers, seed=seed, deterministic=deterministic,
            optimizer=optimizer, lr0=lr0, lrf=lrf, momentum=momentum, weight_decay=weight_decay,
            warmup_epochs=warmup_epochs, warmup_momentum=warmup_momentum, warmup_bias_lr=warmup_bias_lr,
            box=box, cls=cls, dfl=dfl, dice=dice, nbs=nbs, cos_lr=cos_lr, close_mosaic=close_mosaic, patience=patience, val=val,
            fraction=fraction, classes=None if classes is None else [int(c) for c in classes], single_cls=single_cls,
            nms_free=nms_free, amp=amp, channels_last=channels_last, plots=plots, cache_dir=opt(cache_dir),
            cache="ram" if cache is True else None if cache is False else cache, world_size=world_size,
            hyp=dict(hyp or {}),
        )
        with claimed_run_folder(cfg.out or default_out_dir(), exist_ok=exist_ok) as folder:
            return run(cfg.replace(out=str(folder)))
    return run(cfg)


def _recorded_path(p: str | Path) -> str:
    """A file named relative to the current folder, as an absolute path: checkpoints record it, and
    ``segpipe val --model best.pt`` or ``--resume`` run from elsewhere must find the same file. Other
    names (bundled model YAMLs such as yolov8s-seg.yaml, missing files) are kept as given."""
    path = Path(p).expanduser()
    return str(path.absolute()) if path.is_file() else str(p)


def run(cfg: TrainConfig) -> SegMetrics:
    """Train with a checked config (``cfg.out`` set); spawns one process per device when needed."""
    devices = parse_devices(cfg.device, cfg.world_size)
    if len(devices) > 1:
        return launch(_fit_entry, cfg, devices)
    metrics = fit(cfg, Placement(-1, 1, devices[0]))
    assert metrics is not None  # the only process is the main one, which returns the metrics
    return metrics


def _fit_entry(place: Placement, cfg: TrainConfig) -> SegMetrics | None:
    return fit(cfg, place)


def resume_config(path: str | None, *, out: str | None, device: str | None, workers: int) -> TrainConfig:
    """The recorded config of ``last.pt`` with ``resume`` set; device and workers may change."""
    ckpt_path = Path(path) if path else _latest_last(out)
    ckpt = load_checkpoint(ckpt_path)
    if not has_state(ckpt.extra_tensors) or not ckpt.meta.train_args:
        raise CheckpointError(f"{ckpt_path} holds no training state to resume (only last.pt does)")
    cfg = TrainConfig.from_record(dict(ckpt.meta.train_args))
    if int(ckpt.extra_tensors["train/epoch"]) >= cfg.epochs:
        raise ConfigError("train.resume", f"{ckpt_path} already finished its {cfg.epochs} epochs")
    changes: dict[str, Any] = {"resume": str(ckpt_path), "out": str(ckpt_path.resolve().parent.parent),
                               "workers": workers}
    if device is not None:
        changes["device"] = device
    return cfg.replace(**changes)


def _latest_last(out: str | None) -> Path:
    if out:
        p = Path(out) / "weights" / "last.pt"
        if not p.is_file():
            raise ConfigError("train.resume", f"nothing to resume: {p} does not exist")
        return p
    runs = sorted(Path("runs").glob("**/weights/last.pt"), key=lambda p: p.stat().st_mtime)
    if not runs:
        raise ConfigError("train.resume", "nothing to resume: no runs/**/weights/last.pt; pass --resume PATH")
    return runs[-1]


@contextmanager
def seeded(seed: int, deterministic: bool, device: torch.device | None = None) -> Iterator[None]:
    """Seed python, numpy and torch; with ``deterministic`` on CUDA, force deterministic kernels
    (restored afterwards). CPU kernels are deterministic already, and switching the global flag costs
    an import of torch's compiler stack (seconds), so CPU runs skip it."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if not (deterministic and device is not None and device.type == "cuda"):
        yield
        return
    prev = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev[0], warn_only=prev[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = prev[2], prev[3]


def select_classes(spec: DataSpec, cfg: TrainConfig) -> DataSpec:
    """The data as the run trains on it: ``cfg.classes`` only, all as one class with ``cfg.single_cls``."""
    try:
        return spec.select(classes=cfg.classes, single_cls=cfg.single_cls)
    except ConfigError as e:
        raise ConfigError(f"train.{e.path}", e.msg) from None


def fit(cfg: TrainConfig, place: Placement) -> SegMetrics | None:
    """One process's run; rank 0 (or the only process) returns the final metrics."""
    out = Path(cfg.out or default_out_dir())
    with seeded(cfg.seed + 1 + max(place.rank, 0), cfg.deterministic, place.device), fork_safe_cv2():
        s, data, validate = setup(cfg, place, out)
        fit_loop(s, data, make_hooks(s, validate))
        if not place.main:
            return None
        return final_validation(s)


def setup(cfg: TrainConfig, place: Placement, out: Path
          ) -> tuple[TrainState, TrainData, Callable[[nn.Module], SegMetrics] | None]:
    """Data, model, loss, optimizer, schedule, EMA and (on resume) their saved state."""
    spec = select_classes(load_data_yaml(cfg.data), cfg)
    if place.main and spec.label_names is not None:
        kept = spec.label_names if spec.classes is None else [spec.label_names[c] for c in spec.classes]
        print(f"classes: {', '.join(kept)}" + (" trained as one class, 'item'" if spec.single_cls else
                                              f" ({len(kept)} of {spec.label_nc}; other instances left out)"))
    validate = make_validator(cfg, spec, place) if place.main else None  # an empty val split: before any work
    resume = load_checkpoint(cfg.resume) if cfg.resume else None
    if resume is not None:
        net = SegmentationModel(resume.meta.model_yaml, nc=len(spec.names))
    else:
        net = build_train_model(cfg.model, names=spec.names, pretrained=cfg.pretrained, verbose=place.main)
    if cfg.nms_free:  # validation (and the EMA, copied from it) runs the one-to-one head; training both
        net.use_nms_free_head(f"{cfg.model}: --nms-free")
    frozen = freeze_layers(net, cfg.freeze)  # before the optimizer, which takes trainable tensors only
    if frozen and place.main:
        layers = (f"the first {cfg.freeze} layers" if isinstance(cfg.freeze, int) else
                  "layers " + ", ".join(map(str, sorted(cfg.freeze or []))))
        names = set(frozen)
        count = sum(p.numel() for name, p in net.named_parameters() if name in names)
        print(f"freeze: {layers} ({len(frozen)} tensors, {count:,} parameters) kept as they are; "
              "their BatchNorm statistics still update")
    net = net.to(place.device).train()
    if cfg.memory_format(place.device) == torch.channels_last:
        # before the optimizer and the EMA copy; checkpoints are saved NCHW (contiguous) all the same
        net = net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    stride = int(net.stride.max())
    data = build_train_data(cfg, spec, place, stride=stride)
    nb = len(data.loader)

    accumulate, wd_scale = accumulation(cfg.batch, cfg.nbs)
    # torch types DataLoader.dataset as a plain Dataset, which need not have a length; ours has one.
    iterations = math.ceil(len(cast(Sized, data.loader.dataset)) / max(cfg.batch, cfg.nbs)) * cfg.epochs
    choice = choose_optimizer(cfg.optimizer, lr0=cfg.lr0, momentum=cfg.momentum,
                              warmup_bias_lr=cfg.warmup_bias_lr, nc=len(spec.names), iterations=iterations)
    optimizer = build_optimizer(net, choice, weight_decay=cfg.weight_decay * wd_scale)
    if place.main:
        n = {k: len(v) for k, v in split_parameters(net, matrices=choice.name == "MuSGD").items()}
        print(f"optimizer: {choice.name}(lr={choice.lr0}, momentum={choice.momentum}) with parameter groups "
              f"{n['norm']} weight(decay=0.0), {n['weight'] + n.get('muon', 0)} weight"
              f"(decay={cfg.weight_decay * wd_scale:.6g}), "
              f"{n['bias']} bias(decay=0.0)")
    schedule = Schedule(
        factor=lr_factor(cfg.epochs, cfg.lrf, cosine=cfg.cos_lr), momentum=choice.momentum,
        warmup_iters=warmup_iterations(cfg.warmup_epochs, epochs=cfg.epochs, batches_per_epoch=nb),
        warmup_bias_lr=choice.warmup_bias_lr, warmup_momentum=cfg.warmup_momentum,
        accumulate=min(accumulate, nb * cfg.epochs),
    )
    scaler = torch.amp.GradScaler(place.device.type, enabled=cfg.amp and place.device.type == "cuda")
    ema = ModelEMA(net) if place.main else None
    s = TrainState(
        cfg=cfg, place=place, out=out, names=spec.names, data_file=cfg.data, model=net, ema=ema,
        optimizer=optimizer, scaler=scaler, loss_fn=SegLoss.for_model(net, gains=LossGains(
            box=cfg.box, cls=cfg.cls, dfl=cfg.dfl, dice=cfg.dice)), schedule=schedule, batches_per_epoch=nb,
        dataset=data.dataset,
    )
    if resume is not None:
        _restore(s, resume)
    if place.distributed:
        s.model = nn.parallel.DistributedDataParallel(
            net, device_ids=[place.device.index] if place.device.type == "cuda" else None)
    if place.main:
        (out / "weights").mkdir(parents=True, exist_ok=True)
        write_args(out / "args.yaml", cfg)
    s.extras["spec"] = spec
    return s, data, validate


def write_args(path: Path, cfg: TrainConfig) -> None:
    """The run's settings as it starts, as YAML beside its results (Ultralytics' args.yaml), readable
    without opening a checkpoint: the record checkpoints carry as ``train_args`` (theirs has the epoch
    count a --time budget re-planned)."""
    import yaml

    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(yaml.safe_dump(cfg.to_record(), sort_keys=False), encoding="utf-8")
    os.replace(tmp, path)


def _restore(s: TrainState, ckpt: Any) -> None:
    """Raw weights, optimizer moments, EMA and counters from ``last.pt``."""
    rs = restore_state(ckpt.extra_tensors, model=s.bare_model, optimizer=s.optimizer)
    s.start_epoch, s.best_fitness, s.best_epoch = rs.start_epoch, rs.best_fitness, rs.best_epoch
    s.clock.before = rs.train_seconds
    s.last_opt_step = rs.start_epoch * s.batches_per_epoch - 1
    if s.ema is not None:
        s.ema.ema.load_state_dict(dict(ckpt.state_dict))
        s.ema.updates = rs.ema_updates
    if s.scaler.is_enabled():
        state = s.scaler.state_dict()
        state["scale"] = rs.scaler_scale
        s.scaler.load_state_dict(state)
    if s.place.main:
        spent = f", {rs.train_seconds / 3600:.2f} h of its {s.cfg.time:g} h spent" if s.cfg.time else ""
        print(f"Resuming {s.cfg.resume} from epoch {rs.start_epoch + 1} of {s.cfg.epochs}{spent}")


def make_validator(cfg: TrainConfig, spec: DataSpec, place: Placement, *, final: bool = False,
                   out: Path | None = None) -> Callable[[nn.Module], SegMetrics]:
    """``validate(model) -> SegMetrics`` on the data's val split (``engines.val.Validator``).

    Per-epoch validation prints the summary row only and writes nothing; the ``final`` one prints
    every class and writes metrics.json, PR/F1 curves and prediction grids into ``out``.
    """
    from engines.val import Validator

    # workers=0: engines.data.loader's worker_init calls cv2.setNumThreads, which can deadlock a forked
    # worker (see loader.fork_safe_cv2); val loading in-process costs little next to inference.
    validator = Validator(
        data=spec, imgsz=cfg.imgsz, batch=max(1, cfg.batch * 2 // place.world_size), device=place.device,
        workers=0, verbose=final, plots=final and cfg.plots, out_dir=out if final else None,
    )
    return lambda model: validator(model, spec.names)


def save_run_checkpoint(s: TrainState, path: Path, resumable: bool) -> None:
    """A segpipe checkpoint of the EMA weights; ``resumable`` adds the optimizer/raw-weight state."""
    model = cast(SegmentationModel, s.eval_model)  # the EMA or the bare model, both SegmentationModels
    metrics = dict(s.metrics.as_dict()) if s.metrics is not None else {}
    metrics.update({"epoch": s.epoch + 1, "fitness": s.fitness})
    meta = ModelMeta(
        names=tuple(s.names), model_yaml=dict(model.yaml), imgsz=s.cfg.imgsz, stride=int(model.stride.max()),
        task="segment", train_args=s.cfg.to_record(), metrics=metrics, data=s.data_file,
    )
    extra = None
    if resumable:
        # The time up to this save, its validation included: a resume trains on from here, and what
        # a killed run did after it is trained again, so it is not counted.
        extra = pack_state(model=s.bare_model, optimizer=s.optimizer, epoch=s.epoch, best_fitness=s.best_fitness,
                           best_epoch=s.best_epoch, ema_updates=s.ema.updates if s.ema else 0,
                           scaler_scale=float(s.scaler.get_scale()) if s.scaler.is_enabled() else 1.0,
                           train_seconds=s.clock.total())
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, state_dict={k: v.detach().cpu() for k, v in model.state_dict().items()},
                    meta=meta, extra_tensors=extra)


def make_hooks(s: TrainState, validate: Callable | None) -> list[H.Hook]:
    """The hook list of a run; rank > 0 only needs the schedule (and mosaic switch)."""
    # TimeBudgetHook first: an epoch it makes the last one must be validated and saved as such.
    hooks: list[H.Hook] = [H.TimeBudgetHook()] if s.cfg.time else []
    hooks += [H.ScheduleHook(), H.CloseMosaicHook()]
    if isinstance(s.loss_fn, E2ESegLoss):
        hooks.append(H.E2EWeightHook())
    if not s.place.main:
        return hooks
    assert validate is not None
    csv_path = s.out / "results.csv"
    hooks += [H.EMAHook(), H.ProgressHook(), H.ValidationHook(validate), H.CSVHook(csv_path),
              H.CheckpointHook(save_run_checkpoint, s.out / "weights"), H.EarlyStopHook()]
    if s.cfg.plots:
        hooks += [H.PlotHook(csv_path), H.TrainBatchPlotHook(s.out)]
    return hooks


def final_validation(s: TrainState) -> SegMetrics:
    """Validate ``best.pt`` as saved, print every class, write curves and prediction grids."""
    best = s.out / "weights" / "best.pt"
    model = build_model(load_checkpoint(best)).to(s.device)
    if s.cfg.nms_free:
        model.use_nms_free_head(f"{best}: --nms-free")
    print(f"\nValidating {best}...")
    metrics = make_validator(s.cfg, s.extras["spec"], s.place, final=True, out=s.out)(model)
    print(f"Results saved to {s.out}")
    return metrics
