"""segpipe train: train or fine-tune a YOLOv8-seg model on a YOLO-format dataset."""

from __future__ import annotations

import argparse
import dataclasses

from pipeline.cli.common import parse_classes, sigterm_interrupts

NAME = "train"
HELP = "train or fine-tune a segmentation model on a data YAML"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help="data YAML (path/train/val/names), e.g. coco128-seg.yaml")
    p.add_argument("--model", default="yolov8n-seg.yaml",
                   help="model YAML (fresh weights, e.g. yolov8s-seg.yaml) or a checkpoint to continue "
                        "(best.pt, yolov8n-seg.pt; same class count as the data)")
    p.add_argument("--pretrained", nargs="?", const=True, default=None, metavar="PATH",
                   help="checkpoint whose tensors matching by name and shape seed the model (fine-tune "
                        "on other classes)")
    p.add_argument("--freeze", type=_freeze, default=None, metavar="N|I,J,...",
                   help="keep layers out of training (fine-tuning on little data): N freezes layers 0..N-1 of the "
                        "model (10: the YOLOv8 backbone, 11: YOLO11's), I,J,... those layer indices (segpipe info --model lists "
                        "them); their weights stay as loaded, their BatchNorm statistics still update "
                        "(as Ultralytics' freeze=)")
    p.add_argument("--resume", nargs="?", const=True, default=None, metavar="PATH",
                   help="continue an interrupted run from its last.pt (default: OUT/weights/last.pt or the "
                        "latest run)")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--time", type=float, default=None, metavar="HOURS",
                   help="fit the run into this many hours: the epoch count (and the lr schedule) is "
                        "re-planned after every epoch from the mean epoch time; --epochs is the first plan; "
                        "--resume counts the time already trained")
    p.add_argument("--imgsz", type=int, default=640, help="input size (longest side with --rect), a multiple of 32")
    p.add_argument("--rect", action="store_true",
                   help="train each image at its own aspect ratio instead of padded to a square (640x384 "
                        "for 16:9 frames: 40%% fewer pixels); batches group images of one shape, still "
                        "shuffled; turns mosaic off")
    p.add_argument("--multi-scale", type=_multi_scale, nargs="?", const=0.5, default=0.0, metavar="F",
                   help="train each batch (--rect ones too) at a random size in imgsz*(1-F)..imgsz*(1+F), rounded "
                        "to the stride, the same on every device for a step and for a seed; F in [0, 1), default 0 "
                        "(off; Ultralytics' multi_scale); bare or True (older Ultralytics' bool) means 0.5")
    p.add_argument("--batch", type=int, default=16, help="total images per batch (split over devices)")
    p.add_argument("--device", default=None, help="cpu, 0, or 0,1 for DDP (default: GPU 0 if any, else cpu)")
    p.add_argument("--out", default=None, help="run folder (default runs/segment/trainN); one that holds an earlier "
                   "run is refused unless --exist-ok")
    p.add_argument("--exist-ok", action="store_true",
                   help="train into an --out that holds an earlier run (its checkpoints and results.csv are replaced)")
    p.add_argument("--workers", type=int, default=8, help="data loader processes per device")
    p.add_argument("--cache", nargs="?", const="ram", choices=["ram", "disk"], default=None, metavar="ram|disk",
                   help="decode the training images once (longest side imgsz) before the first epoch, so epochs "
                        "skip decoding, with the same results: ram (the default) keeps them in memory, disk in "
                        ".npy files beside the images (under $SEGPIPE_CACHE for a read-only dataset) that later "
                        "runs reuse; prints the space used, and when that would not fit with a 50%% margin, warns "
                        "and decodes the images instead (Ultralytics' cache=ram|disk)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--deterministic", action=argparse.BooleanOptionalAction, default=True,
                   help="deterministic kernels (default on)")
    p.add_argument("--optimizer", default="auto", help="auto, SGD, MuSGD, AdamW or Adam")
    p.add_argument("--lr0", type=float, default=0.01, help="initial learning rate (ignored by auto)")
    p.add_argument("--lrf", type=float, default=0.01, help="final lr as a fraction of lr0")
    p.add_argument("--momentum", type=float, default=0.937, help="SGD momentum or Adam beta1 (ignored by auto)")
    p.add_argument("--weight-decay", type=float, default=0.0005, help="weight decay of conv and linear weights "
                   "(not of biases or norm layers)")
    p.add_argument("--cos-lr", action="store_true", help="cosine instead of linear lr decay")
    p.add_argument("--warmup-epochs", type=float, default=3.0)
    p.add_argument("--warmup-momentum", type=float, default=0.8, help="momentum at the start of the warm-up")
    p.add_argument("--warmup-bias-lr", type=float, default=0.1, help="biases' lr at the start of the warm-up "
                   "(ignored by auto, which starts it at 0)")
    p.add_argument("--close-mosaic", type=int, default=10, help="turn mosaic, mixup, cutmix and copy-paste off for the last N epochs")
    p.add_argument("--patience", type=int, default=100, help="stop after N epochs without improvement")
    p.add_argument("--val", action=argparse.BooleanOptionalAction, default=True,
                   help="validate every epoch (the last epoch is always validated)")
    p.add_argument("--fraction", type=float, default=1.0, help="train on this fraction of the train split")
    p.add_argument("--nms-free", action="store_true",
                   help="validate an end-to-end model's (YOLO26's) NMS-free head, so that best.pt is the "
                        "best for NMS-free inference (Ultralytics' nms=False); both heads train either way")
    p.add_argument("--classes", default=None, metavar="I,J,...",
                   help="train on the instances of these class ids of the data only (the model keeps every class)")
    p.add_argument("--single-cls", action="store_true",
                   help="train every class as one, 'item' (a one-class model)")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True, help="mixed precision (CUDA)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="NHWC weights and batches (default: on with CUDA, as Ultralytics; off on a CPU)")
    p.add_argument("--plots", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--dice", type=float, default=0.0, metavar="W",
                   help="add W times each instance's Dice loss to its mask BCE: masks of thin objects "
                        "(frames, wires, limbs) stop being under-drawn (default 0, Ultralytics' loss)")
    p.add_argument("--nbs", type=int, default=64,
                   help="nominal batch: gradients accumulate to about this many images per optimizer step")
    gains = p.add_argument_group("loss gains (Ultralytics' names and defaults)")
    gains.add_argument("--box", type=float, default=7.5, help="box (IoU) loss gain; the mask loss has it too")
    gains.add_argument("--cls", type=float, default=0.5, help="classification loss gain")
    gains.add_argument("--dfl", type=float, default=1.5, help="distribution focal loss gain")
    aug = p.add_argument_group("augmentation and mask targets (Ultralytics' names and defaults; e.g. --mosaic 0 "
                               "or mosaic=0)")
    notes = {"mask_ratio": "ground-truth masks at 1/N of the input; lower keeps thin structures, costs memory",
             "bgr": "probability of feeding the image as BGR instead of RGB",
             "mixup": "probability of blending in another sample (mosaic'ed too) at a Beta(32, 32) ratio",
             "cutmix": "probability of pasting a rectangle of another sample with its instances",
             "copy_paste": "fraction of the eligible instances pasted (mode mixup: also its probability)",
             "copy_paste_mode": "flip: mirrored copies of the image's own instances; mixup: another sample's"}
    metavars = {"copy_paste_mode": "flip|mixup"}
    for f in _hyp_fields():
        aug.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=None,
                         metavar=metavars.get(f.name, "N"),
                         help=f"{notes[f.name] + '; ' if f.name in notes else ''}default {f.default}")


def _freeze(text: str) -> int | list[int]:
    """``--freeze 10`` -> 10 (a layer count); ``--freeze 0,1,2`` or ``[0, 1, 2]`` -> [0, 1, 2] (indices).
    Ranges are checked by the engine, which knows the model's layer count."""
    body = text.strip()
    listed = "," in body or body.startswith("[")
    items = [t.strip() for t in body.removeprefix("[").removesuffix("]").split(",") if t.strip()]
    try:
        values = [int(t) for t in items]
    except ValueError:
        values = []
    if not values or (not listed and len(values) != 1):
        raise argparse.ArgumentTypeError(f"expected a layer count N or layer indices I,J,..., got {text!r}")
    return values if listed else values[0]


def _multi_scale(text: str) -> float:
    """``--multi-scale 0.25`` -> 0.25; ``true``/``false`` (Ultralytics 8.3's bool) -> 0.5/0.0. The range is
    checked by the engine (``train.multi_scale``)."""
    flag = {"true": 0.5, "false": 0.0}.get(text.strip().lower())
    if flag is not None:
        return flag
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction of imgsz in [0, 1) or True, got {text!r}") from None


def _hyp_fields() -> list[dataclasses.Field]:
    from engines.data.augment import AugmentConfig

    # close_mosaic is a run setting with its own flag above
    return [f for f in dataclasses.fields(AugmentConfig) if f.name != "close_mosaic"]


def run(args: argparse.Namespace) -> int:
    from engines.errors import ConfigError
    from engines.train import train

    if not args.resume and not args.data:
        raise ConfigError("--data", "required (a data YAML), unless --resume is given")
    if args.pretrained is True:  # Ultralytics' pretrained=True fetches weights by the model's name
        raise ConfigError("--pretrained", "name the checkpoint whose tensors seed the model: --pretrained PATH "
                          "(segpipe downloads nothing)")
    if args.resume:
        _check_resume_flags(args)
    try:
        with sigterm_interrupts():
            _train(train, args)
    except ConfigError as e:
        if e.path == "device":  # engines.device names it so for every caller
            raise ConfigError("--device", e.msg) from None
        if not e.path.startswith("train."):
            raise
        # The engine names its fields ("train.imgsz", "train.hyp.mosaic"); here the user typed flags.
        flag = e.path.removeprefix("train.").removeprefix("hyp.")
        raise ConfigError("--" + flag.replace("_", "-"), e.msg) from None
    return 0


# What a resumed run may change; everything else comes from the settings recorded in its last.pt.
_RESUME_FLAGS = ("resume", "out", "device", "workers")


def _check_resume_flags(args: argparse.Namespace) -> None:
    """Refuse settings given with --resume: the run would silently keep its recorded ones instead."""
    from engines.errors import ConfigError

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    defaults = vars(parser.parse_args([]))
    for dest, value in vars(args).items():
        if dest in defaults and dest not in _RESUME_FLAGS and value != defaults[dest]:
            # False differs from a default only for a --no- flag (--no-channels-last's default is None)
            flag = ("--no-" if value is False else "--") + dest.replace("_", "-")
            hint = ("name the checkpoint as --resume PATH" if dest == "model" else
                    "to change it, start a new run from its last.pt with --model")
            raise ConfigError(flag, f"a resumed run keeps the settings recorded in its last.pt (only --device and "
                              f"--workers may change); {hint}")


def _train(train, args: argparse.Namespace) -> None:  # noqa: ANN001 - engines.train.train
    train(
        data=args.data, model=args.model, pretrained=args.pretrained, freeze=args.freeze, resume=args.resume, epochs=args.epochs,
        time=args.time,
        imgsz=args.imgsz, rect=args.rect, multi_scale=args.multi_scale, batch=args.batch, device=args.device, out=args.out, workers=args.workers,
        cache=args.cache,
        seed=args.seed, deterministic=args.deterministic, optimizer=args.optimizer, lr0=args.lr0, lrf=args.lrf,
        momentum=args.momentum, weight_decay=args.weight_decay, warmup_momentum=args.warmup_momentum,
        warmup_bias_lr=args.warmup_bias_lr, box=args.box, cls=args.cls, dfl=args.dfl,
        cos_lr=args.cos_lr, warmup_epochs=args.warmup_epochs, close_mosaic=args.close_mosaic,
        patience=args.patience, val=args.val, fraction=args.fraction, amp=args.amp, channels_last=args.channels_last, plots=args.plots,
        classes=parse_classes(args.classes), single_cls=args.single_cls, nms_free=args.nms_free,
        nbs=args.nbs, dice=args.dice, exist_ok=args.exist_ok, hyp={f.name: v for f in _hyp_fields() if (v := getattr(args, f.name)) is not None},
    )
