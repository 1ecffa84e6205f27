"""Write synthetic data to disk: a YOLO-seg dataset, or an H.264 clip with a ground-truth sidecar.

Imports ``engines.errors`` and ``engines.synth``; never ``pipeline``.

Dataset layout (``write_dataset``)::

    OUT/data.yaml                 path (absolute), train, val, names {id: name}
    OUT/images/{train,val}/synth_000000.jpg   JPEG quality 95, BGR scene
    OUT/labels/{train,val}/synth_000000.txt   one "cls x1 y1 x2 y2 ..." line per visible instance,
                                              normalised 0-1 (see ``engines.synth.labels``)

Image ``i`` is rendered from ``numpy.random.default_rng([seed, i])``, so the files are byte-identical for
a seed whatever the worker count. Every ``round(1 / val_fraction)``-th image or so goes to ``val``
(spread evenly: image ``i`` is in val when ``floor((i + 1) * f) > floor(i * f)``).

Clip sidecar (``write_video``): ``FILE.gt.jsonl`` beside ``FILE.mp4``, one JSON object per frame, in
frame order::

    {"frame": 0, "pts": 0, "time_base": "1/15360", "time": 0.0,
     "instances": [{"track_id": 3, "class_id": 0, "class_name": "vehicle",
                    "box": [x1, y1, x2, y2], "area": 5120,
                    "rle": {"size": [H, W], "counts": "..."}}]}

``frame`` is the 0-based decode index; ``pts``/``time_base`` are the presentation timestamp as PyAV
reports it when decoding the written file; ``time`` = frame / fps seconds. ``box`` is the visible mask's
pixel-edge box (``x2`` = last column + 1), ``rle`` its COCO compressed RLE (``pycocotools.mask.decode``
reads it), ``area`` its pixel count. Instances are listed in drawing order (later ones occlude earlier
ones); a ``track_id`` names the same object across frames, a bicycle and its rider have their own.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

from engines.errors import ConfigError, DataError, SegpipeError
from engines.synth.clip import FrameTruth, VideoScene
from engines.synth.labels import mask_box, mask_to_polygon, mask_to_rle, yolo_line
from engines.synth.scene import STYLES, Scene, render_scene
from engines.synth.shapes import CLASS_NAMES

MIN_SIDE, MAX_SIDE = 64, 4096
MAX_IMAGES = 10_000_000
MAX_FRAMES = 1_000_000
VIDEO_SUFFIXES = (".mp4", ".mkv", ".mov")
Progress = Callable[[int], None]


@dataclass(frozen=True, slots=True)
class DatasetSummary:
    """What ``write_dataset`` wrote: counts per split and instances per class id."""

    root: Path
    data_yaml: Path
    train: int
    val: int
    instances: tuple[int, ...]
    seconds: float


@dataclass(frozen=True, slots=True)
class VideoSummary:
    """What ``write_video`` wrote: the clip, its sidecar, frame count and instances over all frames."""

    video: Path
    sidecar: Path
    frames: int
    instances: int
    style: str
    seconds: float


# -- validation -----------------------------------------------------------------------------------
def check_style(style: str) -> str:
    if style not in STYLES:
        raise ConfigError("--style", f"unknown style {style!r}; expected one of: {', '.join(STYLES)}")
    return style


def check_size(size: tuple[int, int], *, even: bool = False) -> tuple[int, int]:
    """``(W, H)`` within ``MIN_SIDE..MAX_SIDE``; both even when ``even`` (H.264 4:2:0 chroma)."""
    w, h = size
    if min(w, h) < MIN_SIDE or max(w, h) > MAX_SIDE:
        raise ConfigError(
            "--size", f"{w}x{h} is out of range: each side must be {MIN_SIDE}..{MAX_SIDE} pixels"
        )
    if even and (w % 2 or h % 2):
        raise ConfigError(
            "--size", f"{w}x{h}: H.264 yuv420p needs an even width and height (try {w + w % 2}x{h + h % 2})"
        )
    return int(w), int(h)


def parse_size(text: str) -> tuple[int, int]:
    """``"640x480"`` -> ``(640, 480)`` (width first); a ConfigError on anything else."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ConfigError("--size", f"expected WIDTHxHEIGHT such as 640x480, got {text!r}")
    return int(parts[0]), int(parts[1])


def check_seed(seed: int) -> int:
    if isinstance(seed, bool) or int(seed) != seed or not 0 <= seed < 2**63:
        raise ConfigError("--seed", f"must be a non-negative integer, got {seed}")
    return int(seed)


def _check_count(name: str, value: int, upper: int) -> int:
    if isinstance(value, bool) or int(value) != value or not 1 <= value <= upper:
        raise ConfigError(name, f"must be an integer from 1 to {upper}, got {value}")
    return int(value)


def _prepare_dir(out: Path, force: bool) -> None:
    """Refuse a non-empty folder unless ``force``; then clear only what a dataset consists of."""
    if out.exists() and not out.is_dir():
        raise ConfigError("--out", f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise ConfigError(
                "--out",
                f"{out} exists and is not empty; pass --force to replace its images/, labels/ and data.yaml",
            )
        for sub in ("images", "labels"):
            shutil.rmtree(out / sub, ignore_errors=True)
        (out / "data.yaml").unlink(missing_ok=True)
    try:
        for split in ("train", "val"):
            (out / "images" / split).mkdir(parents=True, exist_ok=True)
            (out / "labels" / split).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError("--out", f"cannot create {out}: {e.strerror}") from None


# -- dataset --------------------------------------------------------------------------------------
def is_val(index: int, val_fraction: float) -> bool:
    """Whether image ``index`` belongs to the val split (an even spread of ``val_fraction``)."""
    return int((index + 1) * val_fraction) > int(index * val_fraction)


def sample_scene(index: int, *, seed: int, style: str, size: tuple[int, int]) -> Scene:
    """The scene behind image ``index`` of a dataset made with ``seed``, ``style`` and ``size``."""
    return render_scene(np.random.default_rng([seed, index]), style, size)


def labelled_instances(scene: Scene) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """``(class id, mask, polygon)`` of each instance of ``scene`` that gets a label line, in label order:
    those whose mask leaves a polygon of 3 points or more."""
    out = []
    for cls, mask in zip(scene.class_ids, scene.masks(), strict=True):
        poly = mask_to_polygon(mask)
        if len(poly) >= 3:
            out.append((int(cls), mask, poly))
    return out


def render_sample(
    index: int, *, seed: int, style: str, size: tuple[int, int]
) -> tuple[bytes, str, np.ndarray]:
    """Image ``index`` of a dataset: ``(JPEG bytes, label text, instances per class (nc,))``."""
    scene = sample_scene(index, seed=seed, style=style, size=size)
    ok, jpg = cv2.imencode(".jpg", scene.image, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok, "JPEG encoding of a uint8 BGR image cannot fail"
    lines, counts = [], np.zeros(len(CLASS_NAMES), np.int64)
    for cls, _, poly in labelled_instances(scene):
        lines.append(yolo_line(cls, poly, *size))
        counts[cls] += 1
    return jpg.tobytes(), "".join(f"{line}\n" for line in lines), counts


def _job(args: tuple[str, int, str, int, str, tuple[int, int]]) -> np.ndarray:
    root, index, split, seed, style, size = args
    jpg, text, counts = render_sample(index, seed=seed, style=style, size=size)
    stem = f"synth_{index:06d}"
    Path(root, "images", split, stem + ".jpg").write_bytes(jpg)
    Path(root, "labels", split, stem + ".txt").write_text(text)
    return counts


def _init_worker() -> None:
    cv2.setNumThreads(1)  # parallelism comes from the worker processes; threads would oversubscribe


def write_dataset(
    out: str | Path,
    *,
    images: int,
    style: str = "mixed",
    seed: int = 0,
    size: tuple[int, int] = (640, 480),
    val_fraction: float = 0.2,
    workers: int = 1,
    force: bool = False,
    progress: Progress | None = None,
) -> DatasetSummary:
    """Render ``images`` scenes into a YOLO-seg dataset at ``out`` (layout in the module docstring).

    ``workers`` > 1 renders in that many spawned processes; ``progress(n)`` is called after each image.
    Raises ``ConfigError`` naming the bad argument for user mistakes."""
    images = _check_count("--images", images, MAX_IMAGES)
    seed = check_seed(seed)
    check_style(style)
    size = check_size(size)
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError("--val-fraction", f"must be in [0, 1), got {val_fraction}")
    workers = _check_count("--workers", workers, 256)
    root = Path(out).expanduser().resolve()
    _prepare_dir(root, force)
    t0 = time.perf_counter()
    jobs = [
        (str(root), i, "val" if is_val(i, val_fraction) else "train", int(seed), style, size)
        for i in range(images)
    ]
    counts = np.zeros(len(CLASS_NAMES), np.int64)
    try:
        if workers == 1:
            for c in map(_job, jobs):
                counts += c
                if progress:
                    progress(1)
        else:
            ctx = multiprocessing.get_context("spawn")  # fork would copy a parent's threads and locks
            with ctx.Pool(min(workers, images), initializer=_init_worker) as pool:
                for c in pool.imap_unordered(_job, jobs, chunksize=4):
                    counts += c
                    if progress:
                        progress(1)
    except OSError as e:  # disk full, permissions changed under us: one line, not a traceback
        raise DataError(f"{root}: cannot write the dataset: {e.strerror or e}") from None
    n_val = sum(1 for j in jobs if j[2] == "val")
    data_yaml = _write_data_yaml(root, style=style, seed=seed, size=size, images=images, has_val=n_val > 0)
    return DatasetSummary(
        root, data_yaml, images - n_val, n_val, tuple(int(v) for v in counts), time.perf_counter() - t0
    )


def _write_data_yaml(
    root: Path, *, style: str, seed: int, size: tuple[int, int], images: int, has_val: bool
) -> Path:
    lines = [
        f"# segpipe synthetic dataset: style={style} seed={seed} size={size[0]}x{size[1]} images={images}",
        f"path: {json.dumps(str(root))}",
        "train: images/train",
        f"val: images/{'val' if has_val else 'train'}",
        f"nc: {len(CLASS_NAMES)}",
        "names:",
    ]
    lines += [f"  {i}: {name}" for i, name in enumerate(CLASS_NAMES)]
    path = root / "data.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


# -- video ----------------------------------------------------------------------------------------
def sidecar_path(video: str | Path) -> Path:
    """``clip.mp4`` -> ``clip.gt.jsonl`` (same folder)."""
    return Path(video).with_suffix(".gt.jsonl")


def _frame_record(truth: FrameTruth, fps: Fraction) -> dict:
    """The sidecar line of one frame, without ``pts``/``time_base`` (known only after muxing)."""
    insts = []
    for tid, cid, m in zip(truth.track_ids, truth.class_ids, truth.masks, strict=True):
        insts.append(
            {
                "track_id": int(tid),
                "class_id": int(cid),
                "class_name": CLASS_NAMES[cid],
                "box": mask_box(m),
                "area": int(m.sum()),
                "rle": mask_to_rle(m),
            }
        )
    return {
        "frame": truth.index,
        "pts": None,
        "time_base": None,
        "time": round(float(truth.index / fps), 6),
        "instances": insts,
    }


def write_video(
    out: str | Path,
    *,
    seconds: float,
    fps: float,
    size: tuple[int, int] = (640, 480),
    style: str = "mixed",
    seed: int = 0,
    force: bool = False,
    crf: int = 20,
    progress: Progress | None = None,
) -> VideoSummary:
    """Render a clip of ``seconds`` at ``fps`` to ``out`` (H.264 yuv420p via PyAV) and its sidecar
    ``sidecar_path(out)`` (format in the module docstring). Raises ``ConfigError`` for user mistakes."""
    import av  # deferred: only clips need the codec libraries

    seed = check_seed(seed)
    check_style(style)
    size = check_size(size, even=True)
    if not (isinstance(fps, (int, float)) and np.isfinite(fps) and 0 < fps <= 240):
        raise ConfigError("--fps", f"must be a number in (0, 240], got {fps}")
    if not (isinstance(seconds, (int, float)) and np.isfinite(seconds) and seconds > 0):
        raise ConfigError("--seconds", f"must be a positive number, got {seconds}")
    rate = Fraction(fps).limit_denominator(1001)
    frames = round(seconds * fps)
    if not 1 <= frames <= MAX_FRAMES:
        raise ConfigError(
            "--seconds", f"{seconds} s at {fps} fps is {frames} frames; expected 1 to {MAX_FRAMES}"
        )
    path = Path(out).expanduser().resolve()
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        raise ConfigError("--out", f"{path.name}: expected a {'/'.join(VIDEO_SUFFIXES)} file name")
    side = sidecar_path(path)
    for p in (path, side):
        if p.is_dir():
            raise ConfigError("--out", f"{p} is a folder; expected a video file name")
        if p.exists() and not force:
            raise ConfigError("--out", f"{p} already exists; pass --force to overwrite it")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError("--out", f"cannot create {path.parent}: {e.strerror}") from None
    t0 = time.perf_counter()
    scene = VideoScene(style=style, size=size, fps=float(rate), frames=frames, seed=int(seed))
    tmp = path.with_name(f".{path.stem}.partial{path.suffix}")
    tmp_side = side.with_name(f".{side.name}.partial")
    records: list[dict] = []  # masks go to RLE at once: a clip's raw frames would not fit in memory
    try:
        with av.open(str(tmp), "w") as container:
            stream = container.add_stream("libx264", rate=rate)
            stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
            stream.options = {"crf": str(crf), "preset": "veryfast"}
            for t in range(frames):
                truth = scene.render(t)
                frame = av.VideoFrame.from_ndarray(truth.image, format="bgr24")
                frame.pts = t
                for packet in stream.encode(frame):
                    container.mux(packet)
                records.append(_frame_record(truth, rate))
                if progress:
                    progress(1)
            for packet in stream.encode():
                container.mux(packet)
        pts, time_base = _presentation_times(tmp)
        if len(pts) != frames:
            raise SegpipeError(f"{path}: the encoder wrote {len(pts)} frames, expected {frames}")
        with open(tmp_side, "w") as f:
            for rec, pt in zip(records, pts, strict=True):
                rec["pts"], rec["time_base"] = int(pt), str(time_base)
                f.write(json.dumps(rec, separators=(",", ":")) + "\n")
        os.replace(tmp, path)
        os.replace(tmp_side, side)
    except (OSError, av.error.FFmpegError) as e:  # a full disk or a codec failure reads as one line
        raise DataError(f"{path}: cannot write the clip: {getattr(e, 'strerror', None) or e}") from None
    finally:  # leave no half-written files behind, whatever went wrong
        tmp.unlink(missing_ok=True)
        tmp_side.unlink(missing_ok=True)
    n_inst = sum(len(r["instances"]) for r in records)
    return VideoSummary(path, side, frames, n_inst, scene.style, time.perf_counter() - t0)


def _presentation_times(path: Path) -> tuple[list[int], Fraction]:
    """Sorted packet pts of the first video stream (what a decoder reports per frame) and time base."""
    import av

    with av.open(str(path)) as c:
        st = c.streams.video[0]
        pts = sorted(p.pts for p in c.demux(st) if p.pts is not None)
        return pts, st.time_base
