"""segpipe predict: run a model on images, folders, globs, videos or streams; save annotated output,
COCO-format predictions.json and, with --save-txt and --save-frames, YOLO-seg label files and the video
frames they label (auto-labelling); with --save-crop, each object's crop."""

from __future__ import annotations

import argparse
import json
import os
import re
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import cv2
import numpy as np

from engines.errors import ConfigError, SourceError
from engines.urls import redact_url
from pipeline.cli.common import (
    add_infer_args,
    add_mask_threshold_arg,
    add_model_args,
    check_infer_args,
    errors_name_flags,
    output_dir,
    parse_classes,
    parse_imgsz,
    sigterm_interrupts,
)

NAME = "predict"
HELP = "predict on images, folders, globs, videos or stream URLs"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    p.add_argument("--source", required=True, help="image, folder, glob, video file or stream URL")
    add_infer_args(p)
    p.add_argument("--retina-masks", action="store_true", help="masks at full frame resolution")
    add_mask_threshold_arg(p)
    p.add_argument("--out", default=None, help="output folder (default runs/predict, predict2, ...: the first free "
                   "one, so runs do not mix their files)")
    p.add_argument("--save", action=argparse.BooleanOptionalAction, default=True,
                   help="write annotated images/videos (default on; --no-save or save=False: predictions.json only; "
                        "an image over 65500 pixels a side, more than a JPEG holds, is shrunk to fit)")
    p.add_argument("--max-frames", type=int, default=0, metavar="N",
                   help="stop each video/stream after its first N frames (default 0: all; counted in the "
                        "source, so with --vid-stride S about N/S are predicted on)")
    p.add_argument("--vid-stride", type=int, default=1, metavar="N",
                   help="predict on every N-th frame of videos and streams: frames 0, N, 2N, ... (default 1). "
                        "Frame numbers (predictions.json ids, label names, tracking) stay the source's; the "
                        "annotated video plays at the source's rate / N, so it lasts as long as the source "
                        "(Ultralytics' vid_stride divides the rate too, but reads a file's frames N-1, 2N-1, "
                        "... and numbers them 1, 2, ...)")
    p.add_argument("--save-txt", action="store_true",
                   help="also write YOLO-seg labels, for segpipe train (auto-labelling): OUT/labels/NAME.txt "
                        "per image, OUT/labels/NAME_FRAME.txt per video frame (FRAME counted from 1, as "
                        "Ultralytics names them; predictions.json ids count from 0), one 'class x1 y1 x2 y2 "
                        "...' line per object, its mask's outline normalised to 0-1. No file for an image "
                        "without objects. No track ids (predictions.json has them)")
    p.add_argument("--save-conf", action="store_true",
                   help="with --save-txt: end each label line with the object's confidence (Ultralytics' "
                        "save_conf; such files are for reading: train refuses the extra column)")
    p.add_argument("--save-frames", action="store_true",
                   help="also write each predicted frame of a video or stream as OUT/images/NAME_FRAME.jpg (JPEG "
                        "quality 95), beside its --save-txt label file: OUT is then a dataset for segpipe train. "
                        "The frame as the model saw it: unannotated, upright, at display width (what the "
                        "labels' coordinates refer to). Every predicted frame is written (with --vid-stride, "
                        "every N-th); one without objects has no label file, a background sample. Still "
                        "images are not copied: they are on disk already. (Ultralytics' save_frames writes "
                        "annotated frames; here the annotated output is the video)")
    p.add_argument("--save-crop", action="store_true",
                   help="also write each object's box, cut from the unannotated frame, as OUT/crops/CLASS/NAME.jpg "
                        "(NAME as --save-txt's label file; a class name's path characters become _). As "
                        "Ultralytics' save_crop: the box's width and height times 1.02 plus 10 px, clipped to the "
                        "frame, JPEG quality 95; a second object of the class in one image is NAME-2.jpg, then "
                        "NAME-3.jpg, ... (files of an earlier run into the same --out are overwritten)")
    p.add_argument("--track", action="store_true",
                   help="give each object a track id that follows it across a video's frames (ByteTrack, as "
                        "segpipe run's tracking; still images are tracked as one sequence in the order read)")
    p.add_argument("--tracker", default=None, metavar="YAML",
                   help="tracking settings (implies --track): a run config, whose tracking: section is used, "
                        "or a YAML of those keys (high_score, new_track_score, match_iou, min_hits, max_lost_frames)")


def _coco_records(dets: Any, image_id: int | str, track_ids: list[int | None] | None = None) -> list[dict[str, Any]]:
    """COCO result records, with each detection's ``track_id`` (None while unconfirmed) when tracked."""
    out = []
    rles = dets.to_rle() if dets.has_masks else [None] * len(dets)
    tracks = track_ids if track_ids is not None else [None] * len(dets)
    for box, score, cls, rle, track in zip(dets.boxes.tolist(), dets.scores.tolist(), dets.class_ids.tolist(),
                                           rles, tracks, strict=True):
        x1, y1, x2, y2 = box
        rec: dict[str, Any] = {"image_id": image_id, "category_id": int(cls),
                               "bbox": [round(x1, 3), round(y1, 3), round(x2 - x1, 3), round(y2 - y1, 3)],
                               "score": round(float(score), 5)}
        if rle is not None:
            rec["segmentation"] = rle
        if track_ids is not None:
            rec["track_id"] = track
        out.append(rec)
    return out


class _OutputNames:
    """One output name per source: a second ``a`` (``a.png`` beside ``a.jpg``, or two folders' ``clip.mp4``)
    becomes ``a_2``, so neither its annotated file nor its predictions.json image ids mix with the first's."""

    def __init__(self) -> None:
        self.taken: set[str] = set()
        self.current: dict[str, str] = {}  # source name -> output name of the video being read
        self.numbers: dict[int, str] = {}  # integer image id -> the output name that has it

    def of(self, item: Any) -> str:
        if item.frame not in (None, 0):  # a later frame of the video started at its frame 0
            return self.current[item.name]
        name, k = item.name, 1
        while name in self.taken:
            k += 1
            name = f"{item.name}_{k}"
        self.taken.add(name)
        self.current[item.name] = name
        return name

    def image_id(self, name: str, frame: int | None) -> int | str:
        """predictions.json's id of output ``name``'s image or ``frame``: a number for a name of digits (COCO's
        000000000009.jpg is image 9, as Ultralytics' val takes it), else the name (``NAME_FRAME`` for a frame).
        A later name of the same number (``9`` after ``09``) keeps its name: the two images' predictions
        would share an id."""
        stem = name if frame is None else f"{name}_{frame:06d}"
        if not (stem.isascii() and stem.isdigit()):  # '²'.isdigit(), but int('²') fails
            return stem
        return int(stem) if self.numbers.setdefault(int(stem), stem) == stem else stem


class _Tracks:
    """Track ids for predict: a tracker per video (a new one at each video's first frame) and one over
    the still images, taken as frames of one sequence in the order read (a folder of exported frames)."""

    def __init__(self, cfg: Any) -> None:
        from pipeline.tracking import Tracker

        self.cfg, self.new = cfg, Tracker
        self.video: tuple[str, Any] | None = None  # (output name, its tracker)
        self.stills, self.n_stills = Tracker(cfg), 0
        self.started = 0  # ids handed out by the trackers of videos already finished

    def ids(self, name: str, item: Any, dets: Any) -> list[int | None]:
        if item.frame is None:
            self.n_stills += 1
            tracker, seq = self.stills, self.n_stills
        else:
            if self.video is None or self.video[0] != name:
                self.started += self.video[1].started if self.video else 0
                self.video = (name, self.new(self.cfg))
            tracker, seq = self.video[1], item.frame
        boxes, scores, classes = (np.array(a.tolist()) for a in (dets.boxes, dets.scores, dets.class_ids))
        return tracker.update(seq, boxes.reshape(-1, 4), scores, classes.astype(np.int64))

    @property
    def total(self) -> int:
        """Track ids handed out in all (ids count from 1 in each video, and in the stills)."""
        return self.started + (self.video[1].started if self.video else 0) + self.stills.started


class _JsonArray:
    """A JSON array written item by item (a stream predicted on for hours would not fit in memory) into
    ``path``'s temp file, put in place by ``commit`` or removed by ``discard``."""

    def __init__(self, path: Path) -> None:
        self.path, self.tmp = path, path.with_name(path.name + ".tmp")
        self.file = open(self.tmp, "w")  # noqa: SIM115 - closed by commit or discard
        self.file.write("[")
        self.n = 0

    def add(self, item: Any) -> None:
        self.file.write((", " if self.n else "") + json.dumps(item))
        self.n += 1

    def commit(self) -> None:
        self.file.write("]")
        self.file.close()
        os.replace(self.tmp, self.path)

    def discard(self) -> None:
        self.file.close()
        self.tmp.unlink(missing_ok=True)


class _DatasetFiles:
    """``--save-txt``'s label files and ``--save-frames``' frame images, a YOLO-seg dataset in ``out``, and
    ``--save-crop``'s crops, ``crops/CLASS/NAME.jpg`` (NAME the label file's; set ``crop_dirs``, the class
    folders, before the first ``write``):
    ``labels/NAME.txt`` for an image, and for a video frame ``labels/NAME_FRAME.txt`` and
    ``images/NAME_FRAME.jpg`` (FRAME counted from 1, as Ultralytics names them). Every predicted frame's
    image is written, objects or not: one without objects has no label file, a background sample for train.
    An image named like a video's frame (``clip_3.jpg`` beside ``clip.mp4``) would share its label file and
    frame image (and ``images/`` may be the source folder: the frame would overwrite the image): refused,
    naming both, before anything is written (``check_source``), and again as frames come (names that
    ``_OutputNames`` numbered apart, ``clip_2``, are only known then)."""

    FRAME_NAME = re.compile(r"^(.+)_([1-9][0-9]*)$")

    def __init__(self, out: Path, *, labels: bool, save_conf: bool, frames: bool, crops: bool = False) -> None:
        self.out, self.labels, self.save_conf, self.frames, self.crops = out, labels, save_conf, frames, crops
        self.frame_like: dict[str, str] = {}  # video name an image's name would be a frame of -> that image
        self.videos: set[str] = set()
        self.n_labels = self.n_frames = self.n_crops = 0
        self.crop_dirs: list[str] = []  # class id -> its folder in crops/ (engines.label_writer.crop_folders)
        # crops/CLASS/FILE written by this run: Ultralytics numbers a crop after the names taken (one entry a
        # file, as the files themselves); an earlier run's files are overwritten, as its label files are
        self.crops_taken: set[tuple[int, str]] = set()

    def check_source(self, source: str) -> None:
        """Refuse, before the first frame is read, an ``out/labels`` or ``out/images`` that is no folder and
        the clashes of ``source``'s names (see the class)."""
        from engines.sources import source_names

        for folder, wanted in (("labels", self.labels), ("images", self.frames), ("crops", self.crops)):
            if wanted and (self.out / folder).exists() and not (self.out / folder).is_dir():
                raise ConfigError("--out", f"{self.out / folder} exists and is not a folder")
        names, check = _OutputNames(), _DatasetFiles(self.out, labels=self.labels, save_conf=False,
                                                     frames=self.frames, crops=self.crops)
        for name, video in source_names(source):
            check._check(names.of(SimpleNamespace(name=name, frame=0 if video else None)), video)

    def write(self, name: str, item: Any, dets: Any) -> None:
        """The label file of ``item`` (an image or a video frame), then the frame's image: stopped between
        the two, a frame's label file has no image (read by nothing) rather than its image no label file
        (a frame with objects taken for background)."""
        from engines.label_writer import label_lines, write_frame_image, write_label_file

        self._check(name, item.frame is not None)
        stem = name if item.frame is None else f"{name}_{item.frame + 1}"
        try:
            if self.labels:
                lines = label_lines(dets, save_conf=self.save_conf)
                self.n_labels += write_label_file(self.out / "labels" / f"{stem}.txt", lines)
            if self.frames and item.frame is not None:
                write_frame_image(self.out / "images" / f"{stem}.jpg", item.image)
                self.n_frames += 1
            if self.crops:
                self._write_crops(stem, item.image, dets)
        except OSError as e:  # a full disk, a folder made read-only
            raise ConfigError("--out", f"cannot write {stem}'s files into {self.out}: {e.strerror or e}") from None

    def _write_crops(self, stem: str, image: np.ndarray, dets: Any) -> None:
        """Each detection's crop, in the detections' order (best first), named as Ultralytics'
        ``increment_path`` names it: ``stem.jpg``, else the first free ``stem-N.jpg``, N from 2."""
        from engines.label_writer import crop_box, write_crop_image

        for box, cls in zip(dets.boxes.tolist(), dets.class_ids.tolist(), strict=True):
            x1, y1, x2, y2 = crop_box(box, image.shape)
            if x1 == x2 or y1 == y2:  # a box off the frame: nothing to cut (Ultralytics fails writing it)
                continue
            file, n = f"{stem}.jpg", 1
            while (int(cls), file) in self.crops_taken:
                n += 1
                file = f"{stem}-{n}.jpg"
            self.crops_taken.add((int(cls), file))
            write_crop_image(self.out / "crops" / self.crop_dirs[int(cls)] / file, image[y1:y2, x1:x2])
            self.n_crops += 1

    def _check(self, name: str, video: bool) -> None:
        if not video:
            m = self.FRAME_NAME.match(name)
            if m and m[1] in self.videos:
                self._clash(name, m[1])
            if m:
                self.frame_like.setdefault(m[1], name)
        elif name not in self.videos:
            if name in self.frame_like:
                self._clash(self.frame_like[name], name)
            self.videos.add(name)

    def _clash(self, image: str, video: str) -> None:
        frame = image.rsplit("_", 1)[1]
        files = ([f"{self.out / 'labels' / image}.txt"] if self.labels else []) + (
            [f"{self.out / 'images' / image}.jpg"] if self.frames else []) + (
            [f"{self.out / 'crops' / 'CLASS' / image}.jpg"] if self.crops else [])
        raise SourceError(f"{' and '.join(files)} would hold both image {image} and video {video}'s frame "
                          f"{frame} (counted from 1): predict them into separate --out folders")


class _VideoWriters:
    """Annotated MP4 per video source, opened lazily at the first frame, at the source's frame rate divided
    by ``stride`` (one frame in ``stride`` is predicted on: the video lasts as long as the source). A
    source whose picture size changes (a camera reconfigured, recordings joined) goes on in a new file,
    ``NAME_part2.mp4``, ...: an MP4 has one size, and cropping or stretching to it misdrew every frame."""

    DEFAULT_FPS = 25  # streams that state no rate

    def __init__(self, out: Path, stride: int = 1) -> None:
        self.out, self.stride = out, stride
        self.writers: dict[str, tuple[Any, Any, tuple[int, int]]] = {}  # name -> container, stream, image (h, w)
        self.parts: dict[str, int] = {}

    def write(self, name: str, image: Any, fps: float | None) -> None:
        import av

        size = image.shape[:2]
        if name in self.writers and self.writers[name][2] != size:
            self._finish(*self.writers.pop(name)[:2])
        if name not in self.writers:
            part = self.parts[name] = self.parts.get(name, 0) + 1
            c = av.open(str(self.out / (f"{name}.mp4" if part == 1 else f"{name}_part{part}.mp4")), "w")
            rate = (Fraction(fps).limit_denominator(1001) if fps else Fraction(self.DEFAULT_FPS)) / self.stride
            s = c.add_stream("libx264", rate=rate)
            s.width, s.height, s.pix_fmt = max(size[1] // 2 * 2, 2), max(size[0] // 2 * 2, 2), "yuv420p"
            self.writers[name] = (c, s, size)
        c, s, _ = self.writers[name]
        if image.shape[0] < s.height or image.shape[1] < s.width:  # a 1-pixel side: x264 needs even sides
            image = cv2.copyMakeBorder(image, 0, s.height - image.shape[0], 0, s.width - image.shape[1],
                                       cv2.BORDER_REPLICATE)
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image[: s.height, : s.width]), format="bgr24")
        for pkt in s.encode(frame):
            c.mux(pkt)

    def close(self) -> None:
        for c, s, _ in self.writers.values():
            self._finish(c, s)

    @staticmethod
    def _finish(c: Any, s: Any) -> None:
        for pkt in s.encode():
            c.mux(pkt)
        c.close()


def run(args: argparse.Namespace) -> int:
    from engines.predict import SegModel
    from engines.train.config import default_out_dir

    args.imgsz = parse_imgsz(args.imgsz)
    check_infer_args(args)
    if args.max_frames < 0:
        raise ConfigError("--max-frames", f"must be >= 0 (0: every frame), got {args.max_frames}")
    if args.vid_stride < 1:
        raise ConfigError("--vid-stride", f"must be >= 1 (1: every frame), got {args.vid_stride}")
    if args.save_conf and not args.save_txt:
        raise ConfigError("--save-conf", "adds the confidence to --save-txt's label lines: give --save-txt "
                          "too")
    classes = parse_classes(args.classes)
    tracks = _tracking(args)
    out_dir = Path(args.out or default_out_dir("runs", "predict"))
    dataset = (_DatasetFiles(out_dir, labels=args.save_txt, save_conf=args.save_conf, frames=args.save_frames,
                             crops=args.save_crop) if args.save_txt or args.save_frames or args.save_crop else None)
    if dataset:
        dataset.check_source(args.source)
    if args.save:
        _check_sources_kept(args.source, out_dir)
    with errors_name_flags(args):
        model = SegModel(args.model, device=args.device, backend=args.backend, half=args.half, nms_free=args.nms_free)
    if classes and max(classes) >= len(model.names):
        raise ConfigError("--classes", f"{max(classes)} is not a class of {args.model} (ids 0..{len(model.names) - 1})")
    if dataset and args.save_crop:
        from engines.label_writer import crop_folders

        dataset.crop_dirs = crop_folders(list(model.names))
    kw = dict(imgsz=args.imgsz, conf=args.conf, iou=args.iou, max_det=args.max_det, classes=classes,
              agnostic=args.agnostic_nms, retina_masks=args.retina_masks, mask_threshold=args.mask_threshold,
              max_frames=args.max_frames, vid_stride=args.vid_stride)
    with output_dir(out_dir) as out, sigterm_interrupts(), errors_name_flags(args):
        n_frames, n_dets = _predict(model, args, out, kw, tracks, dataset)
    tracked = f", {tracks.total} track(s)" if tracks else ""
    labels = f", {dataset.n_labels} label file(s) in labels/" if dataset and args.save_txt else ""
    frames = f", {dataset.n_frames} frame image(s) in images/" if dataset and args.save_frames else ""
    crops = f", {dataset.n_crops} crop(s) in crops/" if dataset and args.save_crop else ""
    print(f"{n_frames} frame(s), {n_dets} detection(s){tracked} -> {out}/ (predictions.json"
          f"{', annotated output' if args.save else ''}{labels}{frames}{crops})")
    return 0


def _check_sources_kept(source: str, out: Path) -> None:
    """Refuse, before anything is written, an ``out`` where an annotated copy would replace its source:
    ``photo.jpg``'s is ``out/photo.jpg``, ``clip.mp4``'s ``out/clip.mp4`` (then written while being read),
    so a folder predicted into itself lost its pictures."""
    from engines.sources import source_entries

    try:
        entries = source_entries(source)
    except SourceError:  # a source that names nothing: reading it says so, after the model's own errors
        return
    sources = {Path(entry).resolve() for entry, _, _ in entries}
    names = _OutputNames()
    for _, name, video in entries:
        copy = out / f"{names.of(SimpleNamespace(name=name, frame=0 if video else None))}.{'mp4' if video else 'jpg'}"
        if copy.resolve() in sources:
            raise ConfigError("--out", f"{copy} is a source: its annotated copy would overwrite it (give another "
                              "--out, or --no-save)")


def _write_annotated(out: Path, name: str, image: np.ndarray) -> None:
    from engines.label_writer import write_annotated_image

    try:
        write_annotated_image(out / f"{name}.jpg", image)
    except OSError as e:  # a full disk, a folder made read-only
        raise ConfigError("--out", f"cannot write {name}.jpg into {out}: {e.strerror or e}") from None


def _tracking(args: argparse.Namespace) -> _Tracks | None:
    """The trackers ``--track`` / ``--tracker`` ask for (settings checked before the model runs)."""
    if not (args.track or args.tracker):
        return None
    from pipeline.config import TrackingConfig, load_tracking

    return _Tracks(load_tracking(args.tracker) if args.tracker else TrackingConfig())


def _predict(model: Any, args: argparse.Namespace, out: Path, kw: dict[str, Any], tracks: _Tracks | None = None,
             dataset: _DatasetFiles | None = None) -> tuple[int, int]:
    """Run ``model`` over ``args.source``, writing annotated output, predictions.json and (``dataset``) label
    files and frame images into ``out``; returns the frames predicted on and the detections found.
    Interrupted (a stream is stopped with Ctrl-C or SIGTERM), it still finishes its videos and
    predictions.json for the frames done (label files and frame images are written whole), then re-raises."""
    videos = _VideoWriters(out, args.vid_stride)
    names = _OutputNames()
    records = _JsonArray(out / "predictions.json")
    n_frames = n_dets = 0
    stopped: KeyboardInterrupt | None = None
    try:
        try:
            for item, dets in model.stream(args.source, **kw):
                name = names.of(item)
                ids = tracks.ids(name, item, dets) if tracks else None
                for record in _coco_records(dets, names.image_id(name, item.frame), ids):
                    records.add(record)
                if dataset:
                    dataset.write(name, item, dets)
                n_frames += 1
                n_dets += len(dets)
                if args.save:
                    annotated = dets.plot(item.image, track_ids=ids)
                    if item.frame is None:
                        _write_annotated(out, name, annotated)
                    else:
                        videos.write(name, annotated, item.fps)
        except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM (Terminated)
            stopped = e
        finally:
            videos.close()
    except BaseException:  # a source that fails half-way: no half-written predictions.json is left
        records.discard()
        raise
    if n_frames == 0:
        records.discard()
        raise stopped or SourceError(f"{redact_url(args.source)}: no frames were read")
    records.commit()
    if stopped is not None:
        raise stopped
    return n_frames, n_dets
