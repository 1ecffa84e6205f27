"""Argument helpers shared by command modules (one spelling of each common flag)."""

from __future__ import annotations

import argparse
import signal
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from types import FrameType

from engines.errors import ConfigError, Terminated
from engines.files import new_folder
from engines.limits import check_mask_threshold, imgsz_hw


def add_model_args(p: argparse.ArgumentParser, *, required: bool = True) -> None:
    p.add_argument("--model", required=required, help="checkpoint (.pt), .onnx, *_openvino_model/, "
                   ".torchscript, .engine, or a model YAML such as yolov8n-seg.yaml")
    p.add_argument("--device", default="cpu", help="cpu, 0, 1, cuda:0 or auto (the first GPU if any, else cpu) (default: cpu)")
    p.add_argument("--backend", default="auto",
                   choices=["auto", "torch", "onnx", "openvino", "torchscript", "tensorrt"])


def add_infer_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--imgsz", default=None, help="inference size in pixels: N (a square, or with a model of "
                   "any input shape the longest side) or H,W, e.g. 384,640 (default: the model's)")
    p.add_argument("--conf", type=float, default=0.25, help="confidence threshold (default 0.25)")
    p.add_argument("--iou", type=float, default=0.7, help="NMS IoU threshold (default 0.7)")
    p.add_argument("--max-det", type=int, default=300, help="most detections per image (default 300)")
    p.add_argument("--classes", type=str, default=None, help="comma-separated class ids to keep")
    p.add_argument("--agnostic-nms", action="store_true", help="NMS across classes")
    p.add_argument("--half", action="store_true", help="fp16 inference (CUDA)")
    add_nms_free_arg(p)


def add_mask_threshold_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mask-threshold", type=float, default=0.5, metavar="P",
                   help="mask probability a pixel must exceed (default 0.5, Ultralytics'; lower keeps more of "
                        "thin parts)")


def add_nms_free_arg(p: argparse.ArgumentParser, what: str = "run") -> None:
    p.add_argument("--nms-free", action="store_true",
                   help=f"{what} an end-to-end model's (YOLO26's) NMS-free head: its best scores are taken with no "
                        "NMS (Ultralytics' nms=False); by default its NMS head runs, as in Ultralytics")


def parse_classes(spec: str | None) -> tuple[int, ...] | None:
    if spec is None or spec == "":
        return None
    try:
        ids = tuple(int(s) for s in spec.replace(" ", "").strip("[]").split(",") if s)
    except ValueError:
        raise ConfigError("--classes", f"expected comma-separated integers, got {spec!r}") from None
    if not ids:  # would keep no class: every prediction dropped, not "all classes"
        raise ConfigError("--classes", f"no class id given in {spec!r} (leave --classes out for every class)")
    if any(i < 0 for i in ids):
        raise ConfigError("--classes", f"class ids must be >= 0, got {spec!r}")
    return ids


def parse_imgsz(spec: str | None) -> int | tuple[int, int] | None:
    """``--imgsz N`` (a square) or ``H,W`` / ``HxW`` (height first, as Ultralytics' imgsz lists)."""
    if spec is None:
        return None
    try:
        parts = [int(v) for v in spec.replace("x", ",").split(",") if v.strip()]
    except ValueError:
        raise ConfigError("--imgsz", f"expected N or H,W, got {spec!r}") from None
    if len(parts) == 1:
        return parts[0]
    if len(parts) == 2:
        return parts[0], parts[1]
    raise ConfigError("--imgsz", f"expected N or H,W, got {spec!r}")


@contextmanager
def output_dir(path: str | Path, flag: str = "--out") -> Iterator[Path]:
    """Create a command's output folder before any work (an unusable one fails first, in one line) and
    yield it; the folders this made are removed again if the command fails before writing into them."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ConfigError(flag, f"{out} exists and is not a folder")
    with ExitStack() as stack:
        try:
            stack.enter_context(new_folder(out))
        except OSError as e:
            raise ConfigError(flag, f"cannot create folder {out}: {e.strerror or e}") from None
        yield out


def check_range(name: str, value: float, lo: float, hi: float) -> None:
    if not lo <= value <= hi:
        raise ConfigError(name, f"must be in [{lo}, {hi}], got {value}")


def check_imgsz(imgsz: int | tuple[int, int] | None) -> None:
    """``--imgsz`` (None: the model's own; N or (H, W)): sides that are positive multiples of 32, at most
    ``MAX_IMGSZ`` (``engines.limits.imgsz_hw``)."""
    if imgsz is not None:
        imgsz_hw(imgsz)


def check_infer_args(args: argparse.Namespace) -> None:
    """The inference settings predict and val share: thresholds, input size, and --half, which the
    backend would run in fp32 on a CPU without a word."""
    check_range("--conf", args.conf, 0.0, 1.0)
    check_range("--iou", args.iou, 0.0, 1.0)
    if "mask_threshold" in vars(args):  # benchmark has none
        check_mask_threshold(args.mask_threshold, "--mask-threshold")
    check_imgsz(args.imgsz)
    if args.half and str(args.device).strip().lower() == "cpu":
        raise ConfigError("--half", "fp16 inference needs a CUDA --device (0, cuda:1, ...); on cpu it runs fp32")


def check_scoring_args(args: argparse.Namespace) -> None:
    """What val and benchmark check before loading anything: the inference settings, and the loader's
    --batch and --workers."""
    check_infer_args(args)
    if args.batch < 1:
        raise ConfigError("--batch", f"must be >= 1, got {args.batch}")
    if args.workers < 0:
        raise ConfigError("--workers", f"must be >= 0, got {args.workers}")


@contextmanager
def errors_name_flags(args: argparse.Namespace) -> Iterator[None]:
    """A ``ConfigError`` the engine raised about one of the command's own settings names it by the
    flag the user typed: ``max_det: ...`` becomes ``--max-det: ...``."""
    try:
        yield
    except ConfigError as e:
        if e.path not in vars(args):
            raise
        raise ConfigError("--" + e.path.replace("_", "-"), e.msg) from None


@contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """Within the block, SIGTERM raises ``Terminated``, a ``KeyboardInterrupt``, as Ctrl-C does.

    Python's default SIGTERM ends the process where it stands, so a ``kill`` (a scheduler's, ``docker
    stop``'s) while a checkpoint or an export was being written left its temp file half-written beside
    it; raised as an exception, the writers' cleanup runs and the command exits as interrupted. Once the
    signal came, the block ends by raising ``Terminated`` even if code in it caught the exception and
    went on. Signal handlers can only be set from the main thread; elsewhere the block runs unchanged.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    fired = False

    def interrupt(signum: int, frame: FrameType | None) -> None:
        nonlocal fired
        fired = True
        raise Terminated

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
    if fired:  # a library caught the exception (a bare ``except:``) and the block went on: it still ends so
        raise Terminated

