"""The ``segpipe run`` config: schema (pydantic v2), ``${ENV}`` interpolation, errors with YAML paths.

Imports from pipeline/ only ``sinks.config`` (the sink schemas), ``config_errors`` (pydantic errors at
YAML paths) and, when a config uses one, ``demo``
(``demo://`` inputs, checked here, rendered only by ``resolve_demo``). Loading is one pass:
YAML (duplicate keys refused) -> ``${VAR}`` / ``${VAR:-default}`` interpolation -> schema validation
-> cross-field checks (unique camera ids, files exist). Every problem found is reported at once, one
line each, as ``cameras[2].url: ...``; the result is frozen. Relative paths are taken from the working
directory, as everywhere else in segpipe. Top-level keys starting with ``x-`` are ignored: they hold
YAML anchors (``x-camera: &cam {...}`` then ``- <<: *cam``) for settings shared by many cameras.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from engines.device import device_spelling
from engines.errors import ConfigError, ConfigErrors
from engines.model_formats import format_of, unknown_format
from engines.urls import redact_url
from pipeline.config_errors import booleans_for_numbers, join_path, kind_of, validation_errors
from pipeline.sinks.config import MqttSinkConfig, SinkConfig, check_sink_names, checked_url, mqtt_client_id

BACKENDS = ("auto", "torch", "onnx", "openvino", "torchscript", "tensorrt")
DEMO_SCHEME = "demo"  # pipeline.demo.SCHEME; that module is imported only when a demo:// input is used
STREAM_SCHEMES = ("rtsp", "rtsps", "http", "https")
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_SLASHES_MISTYPED = re.compile(r"^(rtsps?|https?|demo)(:/?(?!/)|//)", re.I)  # rtsp:/host, rtsp:host, rtsp//host
# the last branch: a "${" no other one takes (compose's ${VAR-x} and ${VAR:?x}, a typo), else left as written
_ENV = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-(.*?))?\}|\$\{")


class _Strict(BaseModel):
    # inf and nan are no setting: ``initial_s: .inf`` passed, and the camera waited "retry in infs" for ever
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class ModelConfig(_Strict):
    """Which model runs where, and how its raw output is filtered."""

    path: str = Field(min_length=1, description="model artifact (.pt, .safetensors, .onnx, .engine, ...) "
                                                "or demo://model (the demo weights shipped with segpipe)")
    backend: Literal[BACKENDS] = "auto"  # type: ignore[valid-type]
    device: str = Field("auto", description="auto (first GPU, else cpu), cpu, 0, cuda:1")
    imgsz: int | tuple[int, int] = Field(640, description="model input: a side (square) or [height, width], "
                                                        "pixels, multiples of 32")
    conf: float = Field(0.25, gt=0, le=1, description="minimum class score kept")
    iou: float = Field(0.7, gt=0, le=1, description="NMS IoU threshold")
    nms_free: bool = Field(False, description="an end-to-end model's (YOLO26's) NMS-free head: its best scores "
                                              "are kept with no NMS (exports: made with --nms-free)")
    classes: tuple[int, ...] | None = Field(None, description="keep only these class ids")
    max_det: int = Field(300, ge=1, description="detections kept per frame")
    half: bool = Field(False, description="fp16 inference (CUDA only)")
    cuda_graph: bool = Field(False, description="torch backend on CUDA: replay one captured CUDA graph per "
                                                "batch size (all captured at start-up)")
    threads: int = Field(0, ge=0, le=256, description="CPU intra-op threads of the device stage, 0 = runtime "
                                                      "default; on CPU leave cores to the decoders")

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        if _is_demo(v) and v.strip().rstrip("/").lower() != _demo().MODEL_URL:
            raise ValueError(f"the only demo model is {_demo().MODEL_URL}, got {v!r}")
        return v

    @field_validator("device", mode="before")
    @classmethod
    def _device(cls, v: Any) -> Any:
        # a spelling the device stage cannot parse failed only once running
        try:
            return device_spelling(v) or "auto"
        except ConfigError as e:
            raise ValueError(e.msg) from None

    @field_validator("imgsz", mode="before")
    @classmethod
    def _imgsz(cls, v: Any) -> Any:
        # A 16:9 camera letterboxed into [384, 640] gives the model the same pixels as into 640 with 40 %
        # less padding to infer; fixed-shape engines are checked against it when loaded.
        pair = isinstance(v, (list, tuple))
        # "${IMGSZ:-640}" interpolates to a string, as every number in the YAML may
        sides = [int(s) if isinstance(s, str) and s.strip().isdigit() else s for s in (v if pair else [v])]
        ok = len(sides) == (2 if pair else 1) and all(
            isinstance(s, int) and not isinstance(s, bool) and 32 <= s <= 4096 and s % 32 == 0 for s in sides)
        if not ok:
            raise ValueError(f"expected a side or [height, width], each a multiple of 32 from 32 to 4096, got {v!r}")
        return tuple(sides) if pair else sides[0]

    def input_shape(self) -> tuple[int, int]:
        """``imgsz`` as (height, width)."""
        return (self.imgsz, self.imgsz) if isinstance(self.imgsz, int) else self.imgsz

    @model_validator(mode="after")
    def _classes(self) -> ModelConfig:
        if self.classes is not None and (not self.classes or min(self.classes) < 0):
            raise ValueError("classes: expected a non-empty list of class ids >= 0")
        return self

    @model_validator(mode="after")
    def _format(self) -> ModelConfig:
        # a name no backend knows passed --check; the device stage then failed, once running
        if self.backend == "auto" and not _is_demo(self.path) and format_of(self.path) is None:
            raise ValueError(f"path: {unknown_format(self.path)}")
        return self


class MasksConfig(_Strict):
    """How masks travel: ``rle`` (COCO compressed, whole frame) | ``polygon`` | ``none``;
    ``frame`` resolution upsamples the prototypes to frame pixels, ``model`` keeps them at the model's
    mask resolution (faster, blockier) before mapping to the frame. ``threshold``: the mask probability
    a pixel must exceed to be drawn (Ultralytics' 0.5; lower keeps more of thin parts)."""

    format: Literal["rle", "polygon", "none"] = "rle"
    resolution: Literal["frame", "model"] = "frame"
    threshold: float = Field(0.5, gt=0, lt=1)


class BatchConfig(_Strict):
    """Cross-camera batching: up to ``max_batch`` frames (one per camera), waiting at most
    ``max_wait_ms`` after the first; a frame older than ``max_age_ms`` is dropped, not inferred."""

    max_batch: int = Field(8, ge=1, le=256)
    max_wait_ms: float = Field(10.0, ge=0, le=10_000)
    max_age_ms: float = Field(500.0, gt=0)


class ReconnectConfig(_Strict):
    """Exponential back-off between connection attempts (and decoder restarts):
    ``min(max_s, initial_s * 2**attempt) * (1 +- jitter)``."""

    initial_s: float = Field(0.5, gt=0)
    max_s: float = Field(30.0, gt=0)
    jitter: float = Field(0.2, ge=0, le=1)
    max_restarts: int | None = Field(None, ge=0, description="consecutive failures before FAILED; null: forever")

    @model_validator(mode="after")
    def _order(self) -> ReconnectConfig:
        if self.max_s < self.initial_s:
            raise ValueError(f"max_s: {self.max_s} must be >= initial_s ({self.initial_s})")
        return self


class PictureConfig(_Strict):
    """Picture health, checked in the camera's decoder on a small grey thumbnail (about 64 px wide) of a
    frame every ``interval_s`` of stream time (``pipeline.picture``): ``frozen`` (the picture stopped changing: an encoder
    repeating one frame) and ``blank`` (no contrast: black, white, a covered lens, a camera facing a
    wall) are reported in status events while the camera stays live and its frames go on to the model.
    Thresholds are grey levels (0-255) of the thumbnail. Measured on H.264 clips (crf 23-35): exactly
    repeated frames change by 0, one picture re-encoded over and over by 0.001 once the encoder settles;
    a still view with mild sensor noise by 0.000-0.03 between keyframes but 0.4-1.2 across each one; a
    40x80 px object moving in 1080p by 0.026 or more, ``segpipe synth video`` scenes by 1.4 or more. A
    black picture has a std of 0.1, uniform grey 0.4, a covered lens 1.7, a street at a tenth of its
    daylight 3.0, synthetic scenes 30.

    ``moved`` (the view is not the camera's usual one: turned, knocked, re-aimed) and ``blurred`` (its
    fine detail faded: defocused, fogged, smeared) compare each check with what this camera's picture
    usually looks like, learned from its first ``learn_s`` of checks and then followed slowly; they are
    off by default (null): a camera that pans on purpose (PTZ) or softens at night would raise them.
    See ``pipeline.picture`` for what they measure."""

    enabled: bool = True
    interval_s: float = Field(1.0, gt=0, le=60, description="seconds of stream time between two checks "
                                                           "(a thumbnail costs 0.3-0.5 ms)")
    frozen_s: float | None = Field(30.0, gt=0, description="the picture unchanged for this long: frozen; "
                                                          "null: not checked")
    frozen_diff: float = Field(0.01, ge=0, le=255, description="most mean absolute change (grey levels) "
                                                                "between two checks that counts as "
                                                                "unchanged; 0: exact repeats only")
    blank_s: float | None = Field(10.0, gt=0, description="no contrast for this long: blank; null: not "
                                                         "checked")
    blank_std: float = Field(2.0, gt=0, le=255, description="a thumbnail whose std (grey levels) is below "
                                                            "this has no contrast")
    moved_s: float | None = Field(None, gt=0, description="the view not the usual one for this long: moved; "
                                                         "null: not checked")
    moved_match: float = Field(0.4, gt=0, le=0.6, description="least share of the usual view's structure "
                                                              "still in place that counts as the same view "
                                                              "(it clears past 1.5x)")
    blurred_s: float | None = Field(None, gt=0, description="fine detail faded for this long: blurred; null: "
                                                           "not checked")
    blurred_ratio: float = Field(0.5, gt=0, le=0.6, description="least sharpness, as a share of the usual, "
                                                                "that counts as sharp (it clears past 1.5x)")
    learn_s: float = Field(60.0, gt=0, description="seconds of stream time the usual view and sharpness are "
                                                   "learned over before moved and blurred are judged (then "
                                                   "followed with this time constant)")

    @model_validator(mode="after")
    def _periods(self) -> PictureConfig:
        problems = [f"{key}: {getattr(self, key)} must be >= interval_s ({self.interval_s}): a condition is "
                    "seen at the checks" for key in ("frozen_s", "blank_s", "moved_s", "blurred_s", "learn_s")
                    if getattr(self, key) is not None and getattr(self, key) < self.interval_s]
        if problems:
            raise ValueError("\n".join(problems))  # one ConfigError per line
        return self


Point = tuple[float, float]
ANCHORS = ("bottom", "center")


def _fractions(points: tuple[Point, ...]) -> tuple[Point, ...]:
    for i, (x, y) in enumerate(points):
        if not (0.0 <= x <= 1.0 and 0.0 <= y <= 1.0):
            raise ValueError(f"point {i} is [{x:g}, {y:g}]: expected fractions of the frame's width and height, "
                             f"from 0 to 1 (not pixels), e.g. [0.5, 0.75]")
    return points


class ZoneConfig(_Strict):
    """A region of one camera's picture: each published object says which zones it is in, each frame
    event how many objects each zone holds."""

    name: str
    polygon: tuple[Point, ...] = Field(min_length=3, description="[x, y] corners as fractions of the frame's "
                                                                 "width and height (0-1), in order")
    anchor: Literal[ANCHORS] = Field("bottom", description="the object's point tested: bottom (centre of the "  # type: ignore[valid-type]
                                                           "box's bottom edge, where it meets the ground or "
                                                           "belt) or center (of the box)")
    max_dwell_s: float | None = Field(None, gt=0, description="a tracked object inside longer than this (stream "
                                                              "seconds) is an overstay, reported once per "
                                                              "visit (loitering, a queue, a stopped vehicle)")
    max_objects: int | None = Field(None, ge=0, description="more objects inside than this is crowding, reported "
                                                            "when it starts and when it ends (each held 1 s)")

    _name = field_validator("name")(lambda cls, v: _check_id(v))

    @field_validator("polygon")
    @classmethod
    def _polygon(cls, v: tuple[Point, ...]) -> tuple[Point, ...]:
        _fractions(v)
        xs, ys = [p[0] for p in v], [p[1] for p in v]
        area = sum(xs[i] * ys[i - 1] - xs[i - 1] * ys[i] for i in range(len(v))) / 2
        if abs(area) < 1e-6:
            raise ValueError("the corners enclose no area (all on one line?)")
        return v


class LineConfig(_Strict):
    """A counting line on one camera's picture: a tracked object whose anchor passes from one side to
    the other between the line's two points is a crossing, ``in`` or ``out``."""

    name: str
    points: tuple[Point, Point] = Field(description="[[x1, y1], [x2, y2]] as fractions of the frame's width and "
                                                    "height (0-1); 'in' is crossing to the left of 1 -> 2 as seen "
                                                    "on the picture")
    anchor: Literal[ANCHORS] = Field("bottom", description="the object's point that crosses: bottom or center")  # type: ignore[valid-type]

    _name = field_validator("name")(lambda cls, v: _check_id(v))

    @field_validator("points")
    @classmethod
    def _points(cls, v: tuple[Point, Point]) -> tuple[Point, Point]:
        _fractions(v)
        if abs(v[0][0] - v[1][0]) + abs(v[0][1] - v[1][1]) < 1e-6:
            raise ValueError("the two points are the same")
        return v


def _check_id(v: str) -> str:
    if not _ID.match(v):
        raise ValueError(f"{v!r} must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
    return v


class CameraConfig(_Strict):
    """One video source: a file, rtsp://, rtsps:// or http(s):// URL, or a synthetic demo clip
    ``demo://STYLE?seed=..&seconds=..&fps=..&size=WxH`` (a file, rendered on first use)."""

    id: str
    url: str = Field(min_length=1, repr=False)  # may hold credentials: shown only via redact_url
    fps: float | None = Field(None, gt=0, le=1000, description="sample at most this many frames/s")
    loop: bool = Field(False, description="files: start again at the end")
    realtime: bool = Field(True, description="files (and recordings served over HTTP): pace frames at the clip's own rate")
    lossless: bool = Field(False, description="files: wait until each frame is taken instead of dropping it "
                                              "(a recording processed frame by frame, at the model's pace)")
    transport: Literal["tcp", "udp"] = Field("tcp", description="rtsp only")
    open_timeout_s: float = Field(10.0, gt=0)
    read_timeout_s: float = Field(5.0, gt=0)
    stall_timeout_s: float = Field(2.0, gt=0, description="no frame for this long: STALLED")
    frozen_timeout_s: float | None = Field(None, gt=0, description="the same picture (not one sampled pixel "
                                                                   "changed) for this long: STALLED, and "
                                                                   "its repeats are not inferred; null: off "
                                                                   "(picture: reports it, LIVE, inferred)")
    picture: PictureConfig = Field(PictureConfig(), description="frozen, blank, moved and blurred picture "
                                                               "checks")
    heartbeat_timeout_s: float = Field(30.0, gt=0, description="decoder silent this long: killed, restarted")
    decode_threads: int = Field(0, ge=0, le=64, description="codec threads, 0 = FFmpeg's choice")
    nice: int = Field(19, ge=0, le=19, description="decoder process niceness: when decoding outruns the CPU, "
                                                   "inference keeps its pace and decoders give way")
    ring_frames: int = Field(4, ge=2, le=64, description="frames the camera's shared-memory ring holds (each "
                                                         "one frame's pixels: 6 MB at 1080p); a webhook "
                                                         "snapshot finds its frame only while it is there")
    reconnect: ReconnectConfig = ReconnectConfig()
    classes: tuple[str, ...] | None = Field(None, min_length=1, description="publish only objects with these "
                                                                          "labels (checked against the model's)")
    roi: tuple[float, ...] | None = Field(
        None, description="[x1, y1, x2, y2] as fractions of the frame (0-1): the model sees only this part, "
                          "at its full input size (small objects in a wide picture get more pixels); "
                          "null: the whole frame")
    zones: tuple[ZoneConfig, ...] = Field((), description="regions whose objects are listed and counted")
    lines: tuple[LineConfig, ...] = Field((), description="counting lines (need tracking.enabled)")

    @property
    def is_file(self) -> bool:
        return _scheme(self.url) in ("", DEMO_SCHEME)

    @property
    def redacted_url(self) -> str:
        return redact_url(self.url)

    _id = field_validator("id")(lambda cls, v: _check_id(v))

    @field_validator("roi")
    @classmethod
    def _roi(cls, v: tuple[float, ...] | None) -> tuple[float, ...] | None:
        if v is None:
            return v
        if len(v) != 4:
            raise ValueError(f"expected [x1, y1, x2, y2], got {list(v)}")
        x1, y1, x2, y2 = v
        if not all(0 <= c <= 1 for c in v):
            raise ValueError(f"expected fractions of the frame in [0, 1], got {list(v)}")
        if x2 - x1 < 0.05 or y2 - y1 < 0.05:
            raise ValueError(f"expected x1 < x2 and y1 < y2, at least 0.05 apart, got {list(v)}")
        return v

    @field_validator("url", mode="before")
    @classmethod
    def _strip(cls, v: Any) -> Any:
        # an env file's trailing space or CR: FFmpeg took " rtsp://cam/x" for a file name
        return v.strip() if isinstance(v, str) else v

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        scheme = _scheme(v)
        if scheme == DEMO_SCHEME:
            try:
                _demo().parse_demo_url(v)
            except ConfigError as e:
                raise ValueError(e.msg) from None
        elif scheme and scheme not in STREAM_SCHEMES:
            raise ValueError(f"unsupported scheme {scheme!r}; expected a file path, demo:// or one of "
                             + ", ".join(f"{s}://" for s in STREAM_SCHEMES))
        elif scheme:  # without a host, or with a port out of range, the camera reconnected for ever
            checked_url(v, STREAM_SCHEMES, f"{scheme}://[USER:PASSWORD@]HOST[:PORT]/PATH")
        elif m := _SLASHES_MISTYPED.match(v):
            # taken for a file, it was echoed whole by "video file not found", password and all
            raise ValueError(f"the '://' after {m.group(1).lower()} is mistyped: write {m.group(1).lower()}://HOST/...")
        return v

    @model_validator(mode="after")
    def _check(self) -> CameraConfig:
        problems = []
        scheme = "" if self.is_file else _scheme(self.url)
        if scheme and self.loop:
            problems.append("loop: applies to file cameras only")
        if scheme and self.lossless:
            problems.append("lossless: applies to file cameras only (a live camera cannot wait)")
        if "transport" in self.model_fields_set and not scheme.startswith("rtsp"):
            problems.append("transport: applies to rtsp:// and rtsps:// cameras only")
        slowest = max(self.open_timeout_s, self.read_timeout_s)
        if self.heartbeat_timeout_s <= slowest:
            problems.append(f"heartbeat_timeout_s: {self.heartbeat_timeout_s} must exceed the open and read "
                            f"timeouts ({slowest}), or a slow but healthy decoder would be killed")
        for key in ("zones", "lines"):
            names = [z.name for z in getattr(self, key)]
            twice = sorted({n for n in names if names.count(n) > 1})
            if twice:
                problems.append(f"{key}: duplicate name {twice[0]!r}")
        if problems:
            raise ValueError("\n".join(problems))  # one ConfigError per line
        return self


class MetricsConfig(_Strict):
    """Prometheus /metrics, /healthz and /readyz on ``host:port`` (port 0: any free port)."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(9108, ge=0, le=65535)


class TrackingConfig(_Strict):
    """Per-camera object tracking (``pipeline.tracking``, ByteTrack's association): each detection
    gets a ``track_id`` that names the same object across that camera's frames."""

    enabled: bool = False
    high_score: float = Field(0.5, gt=0, le=1, description="detections at least this sure are matched first; "
                                                           "the rest (down to model.conf) only continue tracks")
    new_track_score: float = Field(0.6, gt=0, le=1, description="an unmatched detection this sure starts a track")
    match_iou: float = Field(0.2, gt=0, lt=1, description="least IoU of a detection and a track's predicted box, "
                                                         "both grown by 30 % of their size per side, to continue it")
    min_hits: int = Field(2, ge=1, le=100, description="matched frames in a row before a track gets its id")
    max_lost_frames: int = Field(30, ge=0, le=100_000, description="decoder frames a track survives unseen "
                                                                  "(an object hidden, then back: same id)")

    @model_validator(mode="after")
    def _scores(self) -> TrackingConfig:
        if self.new_track_score < self.high_score:
            raise ValueError(f"new_track_score: must be >= high_score ({self.high_score}), got {self.new_track_score}")
        return self


class EventsConfig(_Strict):
    """Who turns results into events (classes, tracking, zones and lines, serialising)."""

    workers: int = Field(1, ge=1, le=32, description="processes doing it, each for its share of the cameras "
                                                    "(dealt evenly), beside the one that publishes; 1: the "
                                                    "sink process does it all")


class RunConfig(_Strict):
    """Everything ``segpipe run`` needs; built only by ``load_config`` / ``parse_config``."""

    model: ModelConfig
    masks: MasksConfig = MasksConfig()
    batch: BatchConfig = BatchConfig()
    cameras: tuple[CameraConfig, ...] = Field(min_length=1)
    sinks: tuple[SinkConfig, ...] = ()
    metrics: MetricsConfig = MetricsConfig()
    tracking: TrackingConfig = TrackingConfig()
    events: EventsConfig = EventsConfig()

    def camera(self, camera_id: str) -> CameraConfig:
        for cam in self.cameras:
            if cam.id == camera_id:
                return cam
        raise KeyError(camera_id)

    def with_cameras(self, ids: list[str]) -> RunConfig:
        """A copy that runs only the cameras ``ids`` (this replica's shard), order kept."""
        keep = set(ids)
        return self.model_copy(update={"cameras": tuple(c for c in self.cameras if c.id in keep)})

    def for_replica(self, ids: list[str], replica: str) -> RunConfig:
        """This replica's copy (``--shard``; ``replica``: ``KofN``): only its cameras ``ids``, and each MQTT
        sink without a ``client_id`` named for the replica. Replicas of one config on one host shared one
        id, which a broker lets one client hold at a time: they knocked each other off for ever."""
        sinks = tuple(s.model_copy(update={"client_id": mqtt_client_id(s.sink_name, replica)})
                      if isinstance(s, MqttSinkConfig) and s.client_id is None else s for s in self.sinks)
        return self.with_cameras(ids).model_copy(update={"sinks": sinks})


def _listed(items: Sequence[str]) -> str:
    """``items`` for an error line: all of a dozen, else the first ten and the count."""
    return ", ".join(items) if len(items) <= 12 else ", ".join(items[:10]) + f", ... ({len(items)} in all)"


def check_classes(cameras: tuple[CameraConfig, ...], names: tuple[str, ...], model: str) -> list[ConfigError]:
    """``cameras[i].classes`` that are not labels of the model (``names``), one error each."""
    known = set(names)
    listed = _listed(names)
    return [ConfigError(f"cameras[{i}].classes", f"{c!r} is not a class of {model} ({listed})")
            for i, cam in enumerate(cameras) for c in cam.classes or () if c not in known]


def check_labels(cfg: RunConfig, names: tuple[str, ...]) -> list[ConfigError]:
    """Every class ``cfg`` names that the model (its labels ``names``, by class id) lacks: ``model.classes``
    ids, cameras' ``classes``, clip triggers' and webhooks' ``classes``. Each would silently filter out
    everything, start no clip or fire no webhook."""
    from pipeline.sinks.config import check_sink_classes

    path = cfg.model.path
    errors = [ConfigError("model.classes", f"class id {i} is not a class of {path} (ids 0-{len(names) - 1})")
              for i in cfg.model.classes or () if i >= len(names)]
    return [*errors, *check_classes(cfg.cameras, names, path), *check_sink_classes(cfg.sinks, names, path)]


def _sink_cameras(cfg: RunConfig) -> list[ConfigError]:
    """A sink's ``cameras`` that name no camera of the config: a typo there would publish nothing for
    the camera meant, silently (the list is checked before ``--shard`` picks this replica's cameras)."""
    ids = [c.id for c in cfg.cameras]
    listed = _listed(ids)
    return [ConfigError(f"sinks[{i}].cameras", f"{cid!r} is not a camera of this config ({listed})")
            for i, sink in enumerate(cfg.sinks) for cid in sink.cameras or () if cid not in ids]


def _sink_triggers(cfg: RunConfig) -> list[ConfigError]:
    """Clip triggers and webhook events that no camera of their sink can fire (a line crossing needs
    lines, a zone zones, an overstay a zone with max_dwell_s, crowding a zone with max_objects)."""
    needs: tuple[tuple[str, str, Callable[[CameraConfig], bool]], ...] = (
        ("crossing", "lines", lambda c: bool(c.lines)),
        ("zone", "zones", lambda c: bool(c.zones)),
        ("overstay", "a zone with max_dwell_s", lambda c: any(z.max_dwell_s is not None for z in c.zones)),
        ("crowding", "a zone with max_objects", lambda c: any(z.max_objects is not None for z in c.zones)))
    errors = []
    for i, sink in enumerate(cfg.sinks):
        clips = getattr(sink, "clips", None)
        # a webhook's default events (crossings and statuses) suit any camera: only chosen ones are checked
        chosen = getattr(sink, "events", ()) if "events" in sink.model_fields_set else ()
        wanted, path = ((clips.triggers, f"sinks[{i}].clips.triggers") if clips is not None
                        else (chosen, f"sinks[{i}].events"))
        cams = [c for c in cfg.cameras if sink.cameras is None or c.id in sink.cameras]
        for trigger, what, has in needs:
            if trigger in wanted and not any(has(c) for c in cams):
                errors.append(ConfigError(path, f"{trigger!r} needs a camera with {what} "
                                                "(none of this sink's cameras has any)"))
    return errors


def _port_clashes(cfg: RunConfig) -> list[ConfigError]:
    """HTTP ports given twice (the metrics server's and the preview sinks'): the second would not start."""
    taken: dict[int, str] = {}
    if cfg.metrics.enabled and cfg.metrics.port:
        taken[cfg.metrics.port] = "metrics.port"
    errors = []
    for i, sink in enumerate(cfg.sinks):
        port = getattr(sink, "port", 0) if sink.type == "preview" else 0
        if port and port in taken:
            errors.append(ConfigError(f"sinks[{i}].port", f"{port} is {taken[port]} too; give each its own port"))
        elif port:
            taken[port] = f"sinks[{i}].port"
    return errors


def _is_demo(url: str) -> bool:
    return _scheme(url.strip()) == DEMO_SCHEME


def _demo() -> Any:
    # Imported on first use: pipeline.demo pulls in engines.data (and torch), which a config that
    # names no demo input should not pay for (``segpipe run --check`` stays fast).
    from pipeline import demo

    return demo


def _scheme(url: str) -> str:
    if "://" not in url:
        return ""
    return urlsplit(url).scheme.lower()


# ---------------------------------------------------------------------------------------- loading


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (the later one would silently win)."""


def _mapping(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:  # only keys written here: merged (<<: *anchor) ones may be overridden
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=deep)
        line = key_node.start_mark.line + 1
        if isinstance(key, bool):  # YAML 1.1 reads on/off/yes/no as booleans, keys too
            raise ConfigError(str(line), f"key {key_node.value!r} reads as {key} in YAML: quote it "
                                         f"(\"{key_node.value}\")")
        if isinstance(key, (list, dict)):  # ``? [a, b]`` or ``{a: 1}: x``: no name, and no hash to compare
            raise ConfigError(str(line), "invalid YAML: a list or mapping as a key; keys are names")
        if key in seen:
            raise ConfigError(str(line), f"duplicate key {key!r} (first at line {seen[key]})")
        seen[key] = line
    loader.flatten_mapping(node)
    return loader.construct_mapping(node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def load_config(path: str | Path, *, env: dict[str, str] | None = None, check_files: bool = True) -> RunConfig:
    """Read, interpolate and validate the YAML at ``path``; raises ConfigErrors listing every problem.
    ``check_files=False`` skips the model/video file existence checks (validating a template)."""
    raw = read_yaml(path)
    if raw is None:  # an empty file, or one all commented out
        raise ConfigError(str(path), "the config is empty: expected model: and cameras: (see configs/cameras.yaml)")
    if not isinstance(raw, dict):
        raise ConfigError(str(path), _top_level(raw))
    return parse_config(raw, env=env, check_files=check_files)


def _top_level(raw: Any) -> str:
    return f"expected a mapping (model:, cameras:, ...) at the top of the config, got {kind_of(raw)}"


def load_tracking(path: str | Path, *, env: dict[str, str] | None = None) -> TrackingConfig:
    """Tracking settings from a YAML file (``segpipe predict --tracker``): a run config's ``tracking:``
    section, so offline tracking can match the cameras', or a file holding only those keys. Raises
    ConfigErrors naming the file and each wrong key; ``enabled`` is accepted and ignored."""
    raw = read_yaml(path)
    # a run config without a tracking: section runs with the defaults, and so does predict
    section = "tracking" if isinstance(raw, dict) and ("tracking" in raw or "cameras" in raw) else ""
    data = (raw.get(section) if section else raw) or {}  # an empty file or section: the defaults
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: {section}".rstrip(": "), f"expected a mapping of tracking settings "
                          f"({', '.join(TrackingConfig.model_fields)}), got {type(data).__name__}")
    errors: list[ConfigError] = []
    data = interpolate(data, os.environ if env is None else env, errors, section)
    errors += booleans_for_numbers(data, [TrackingConfig], section)
    cfg: TrackingConfig | None = None
    try:
        cfg = TrackingConfig.model_validate(data)
    except ValidationError as e:
        errors += [ConfigError(join_path(section, err.path), err.msg)
                   for err in validation_errors(e, data, root=TrackingConfig)]
    if errors or cfg is None:
        raise ConfigErrors([ConfigError(f"{path}: {err.path}", err.msg) for err in _dedupe(errors)])
    return cfg


def read_yaml(path: str | Path) -> Any:
    """The YAML at ``path`` as data, not validated (no ${ENV} yet); ConfigError naming the file and line
    when it cannot be read, does not parse, or repeats a key."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise ConfigError(str(p), f"cannot read config: {e.strerror or e}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:  # an editor that saved Latin-1 or UTF-16
        line = data.count(b"\n", 0, e.start) + 1
        raise ConfigError(f"{p}:{line}", f"not UTF-8 text (byte 0x{data[e.start]:02x}); save the file as "
                                         "UTF-8") from None
    try:
        raw = yaml.load(text, Loader=_Loader)  # noqa: S506 - SafeLoader subclass
    except ConfigError as e:
        raise ConfigError(f"{p}:{e.path}", e.msg) from None
    except yaml.reader.ReaderError as e:  # a character YAML refuses (NUL, control codes): no mark, two lines
        line = text.count("\n", 0, e.position) + 1
        code = e.character if isinstance(e.character, int) else ord(e.character)
        raise ConfigError(f"{p}:{line}", f"invalid YAML: character U+{code:04X} is not allowed") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{p}:{mark.line + 1}" if mark else str(p)
        raise ConfigError(where, "invalid YAML: " + " ".join(str(getattr(e, "problem", None) or e).split())) from None
    loop = _alias_loop(raw)
    if loop is not None:  # ``cameras: &c [{zones: *c}]``: every walk of it recursed until Python gave up
        raise ConfigError(str(p), f"invalid YAML: an alias refers to a node that holds it (at {loop})")
    if _expanded_size(raw, {}) > MAX_VALUES:  # "billion laughs": aliases of aliases, small to parse
        raise ConfigError(str(p), f"invalid YAML: its aliases expand to more than {MAX_VALUES:,} values")
    return raw


MAX_VALUES = 1_000_000  # a wall of 1,000 cameras with every setting written out holds ~50,000


def _expanded_size(node: Any, sizes: dict[int, int]) -> int:
    """How many values ``node`` holds once every alias is written out (what interpolation and validation
    walk), counted in one pass over the nodes as parsed. ``sizes``: of the nodes already counted. Needs a
    tree without alias loops (``_alias_loop``)."""
    if not isinstance(node, (dict, list)):
        return 1
    if id(node) not in sizes:
        children = node.values() if isinstance(node, dict) else node
        sizes[id(node)] = 1 + sum(_expanded_size(child, sizes) for child in children)
    return sizes[id(node)]


def _alias_loop(node: Any, path: str = "", above: frozenset[int] = frozenset(),
                done: set[int] | None = None) -> str | None:
    """The YAML path of the first alias inside the node it names, or None. ``done``: nodes already
    walked (an anchor used many times is walked once)."""
    done = set() if done is None else done
    if not isinstance(node, (dict, list)) or id(node) in done:
        return None
    if id(node) in above:
        return path
    items = node.items() if isinstance(node, dict) else ((f"[{i}]", v) for i, v in enumerate(node))
    for key, value in items:
        sub = f"{path}{key}" if isinstance(node, list) else join_path(path, key)
        found = _alias_loop(value, sub, above | {id(node)}, done)
        if found is not None:
            return found
    done.add(id(node))
    return None


def parse_config(raw: Any, *, env: dict[str, str] | None = None, check_files: bool = True) -> RunConfig:
    """Validate already-parsed YAML data (see ``load_config``)."""
    if not isinstance(raw, dict):
        raise ConfigError("", _top_level(raw))
    errors: list[ConfigError] = []
    # Top-level ``x-...`` keys hold YAML anchors (shared camera settings), as in docker compose.
    raw = {k: v for k, v in raw.items() if not (isinstance(k, str) and k.startswith("x-"))}
    data = interpolate(raw, os.environ if env is None else env, errors)
    errors += _duplicate_ids(data)
    errors += booleans_for_numbers(data, [RunConfig])
    cfg: RunConfig | None = None
    try:
        cfg = RunConfig.model_validate(data)
    except ValidationError as e:
        errors += validation_errors(e, data, root=RunConfig)
    if cfg is not None:
        try:
            check_sink_names(list(cfg.sinks))
        except ConfigError as e:
            errors.append(e)
        if not cfg.tracking.enabled:
            errors += [ConfigError(f"cameras[{i}].lines", "counting lines follow tracked objects: set "
                                                          "tracking.enabled: true")
                       for i, cam in enumerate(cfg.cameras) if cam.lines]
            errors += [ConfigError(f"cameras[{i}].zones[{j}].max_dwell_s", "dwell is timed for tracked objects: "
                                                                           "set tracking.enabled: true")
                       for i, cam in enumerate(cfg.cameras) for j, z in enumerate(cam.zones)
                       if z.max_dwell_s is not None]
        errors += _sink_cameras(cfg)
        errors += _sink_triggers(cfg)
        errors += _port_clashes(cfg)
        if check_files:
            errors += _missing_files(cfg)
    if errors:
        raise ConfigErrors(_dedupe(errors))
    assert cfg is not None
    return cfg


def interpolate(node: Any, env: Any, errors: list[ConfigError], path: str = "") -> Any:
    """Replace ``${VAR}`` and ``${VAR:-default}`` in every string (``$$`` is a literal ``$``).
    An unset variable without default is reported at its YAML path; its value is never echoed."""
    if isinstance(node, dict):
        return {k: interpolate(v, env, errors, join_path(path, k)) for k, v in node.items()}
    if isinstance(node, list):
        return [interpolate(v, env, errors, f"{path}[{i}]") for i, v in enumerate(node)]
    if not isinstance(node, str) or "$" not in node:
        return node

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name, default = m.group(1), m.group(2)
        if name is None or (default is not None and "${" in default):  # unknown syntax, or nested
            errors.append(ConfigError(path, "unsupported environment variable reference: write ${VAR} or "
                                            "${VAR:-default} ($$ for a literal $)"))
            return ""
        if name in env:
            return env[name]
        if default is not None:
            return default
        errors.append(ConfigError(path, f"environment variable {name} is not set "
                                        f"(set it, or write ${{{name}:-default}})"))
        return ""

    return _ENV.sub(sub, node)


def _duplicate_ids(data: dict[str, Any]) -> list[ConfigError]:
    cams = data.get("cameras")
    if not isinstance(cams, list):
        return []
    first: dict[str, int] = {}
    out = []
    for i, cam in enumerate(cams):
        cid = cam.get("id") if isinstance(cam, dict) else None
        if not isinstance(cid, str):
            continue
        if cid in first:
            out.append(ConfigError(f"cameras[{i}].id", f"duplicate camera id {cid!r} (also cameras[{first[cid]}])"))
        else:
            first[cid] = i
    return out


def _missing_files(cfg: RunConfig) -> list[ConfigError]:
    out = []
    model = Path(cfg.model.path).expanduser()
    builtin = model.suffix in (".yaml", ".yml") and not model.parent.parts  # e.g. yolov8n-seg.yaml
    if _is_demo(cfg.model.path):
        weights = _demo().asset_path("demo-seg.pt")
        if not weights.is_file():
            out.append(ConfigError("model.path", f"the demo weights {weights} are not installed "
                                                 f"(see {_demo().ASSET_README})"))
    elif not builtin and not model.exists():
        out.append(ConfigError("model.path", f"model file not found: {model}"))
    for i, cam in enumerate(cfg.cameras):
        if cam.is_file and not _is_demo(cam.url) and not Path(cam.url).expanduser().is_file():
            out.append(ConfigError(f"cameras[{i}].url", f"video file not found: {cam.url}"))
    return out


def _dedupe(errors: list[ConfigError]) -> list[ConfigError]:
    """Drop repeats, and follow-up errors at a path whose ${VAR} was already reported unset."""
    unset = {e.path for e in errors if "environment variable" in e.msg}
    seen: set[str] = set()
    out = []
    for e in errors:
        follow_up = e.path in unset and "environment variable" not in e.msg
        if str(e) not in seen and not follow_up:
            seen.add(str(e))
            out.append(e)
    return out


def resolve_demo(cfg: RunConfig, *, cache_dir: str | Path | None = None,
                 on_render: Any = None) -> RunConfig:
    """A copy of ``cfg`` with every ``demo://`` input replaced by a local path: demo clips are rendered
    into the cache the first time (``on_render(camera_id, url)`` is called first; clips render in
    parallel threads), ``demo://model`` becomes the shipped weights. Raises ConfigError/ModelError."""
    from concurrent.futures import ThreadPoolExecutor

    def local(i: int, cam: CameraConfig) -> CameraConfig:
        if not _is_demo(cam.url):
            return cam
        if on_render is not None:
            on_render(cam.id, cam.url)
        path = _demo().resolve_demo_url(cam.url, cache_dir=cache_dir, where=f"cameras[{i}].url")
        return cam.model_copy(update={"url": path})

    with ThreadPoolExecutor(max_workers=min(4, len(cfg.cameras)) or 1) as pool:
        cams = tuple(pool.map(local, range(len(cfg.cameras)), cfg.cameras))
    model = cfg.model
    if _is_demo(model.path):
        model = model.model_copy(update={"path": _demo().resolve_demo_url(model.path, where="model.path")})
    return cfg.model_copy(update={"cameras": cams, "model": model})
