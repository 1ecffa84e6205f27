"""Sink config schemas (pydantic v2), one model per ``type:``; the run config embeds ``SinkConfig``.

Imports nothing from pipeline/ except ``sinks.base`` (for the overflow names). Unknown keys are
errors; models are frozen once validated. Redis URLs may hold a password, so they are kept out of
``repr`` and only ever shown through ``redact_url``.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from engines.errors import ConfigError
from engines.urls import redact_url
from pipeline.sinks.base import DEFAULT_POLICIES, Overflow


def mqtt_client_id(sink_name: str, replica: str | None = None) -> str:
    """An MQTT sink's default client id: stable across restarts (its presence topic is retained), so the
    host and the sink's name, not a pid; ``replica`` (``--shard``'s ``KofN``) keeps the replicas of one
    config on one host apart, since a broker lets one client hold an id and they would knock each other
    off for ever."""
    return f"segpipe-{socket.gethostname()}-{sink_name}" + (f"-{replica}" if replica else "")


def checked_url(url: str, schemes: tuple[str, ...], expected: str, *, parse: str | None = None) -> str:
    """``url`` when it parses (``parse`` instead, a filled-in template, if given) with a host, a port from
    1 to 65535 if any, and one of ``schemes``; else a ValueError saying ``expected``. Never echoes the URL,
    nor urllib's error about its port: they may carry a password or a token (``u:pa/ss@h`` reads ``pa`` as
    the port)."""
    try:
        parts = urlsplit(url if parse is None else parse)
        port = parts.port
    except ValueError:
        raise ValueError("not a valid URL: its port is not a number from 1 to 65535 (a '/', '?', '#' or '@' in a "
                         "user name or password must be percent-encoded: %2F, %3F, %23, %40)") from None
    if parts.scheme not in schemes:
        raise ValueError(f"expected {expected}, got scheme {parts.scheme!r}")
    if not parts.hostname:
        raise ValueError(f"expected {expected}, got no host")
    if port == 0:
        raise ValueError(f"expected {expected}, got port 0")
    return url


class _SinkBase(BaseModel):
    # inf and nan are no setting (``spool_max_mb: .inf``), as in the run config's own models
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    name: str | None = Field(None, min_length=1, description="label in logs and metrics; defaults to the type")
    cameras: tuple[str, ...] | None = Field(None, description="publish only these camera ids; all when absent")
    statuses: bool = Field(True, description="also publish camera status events")
    queue_size: int | None = Field(None, ge=1, description="queue bound; the sink type's default when absent")
    on_full: Overflow | None = Field(None, description="drop_oldest or drop_newest; the type's default when absent")

    @property
    def sink_name(self) -> str:
        return self.name or self.type  # type: ignore[attr-defined]


class _Spooled(_SinkBase):
    """A sink for a server that may go away (Redis, an MQTT broker), with its optional disk spool."""

    spool_dir: Path | None = Field(None, description="while the server is away, keep events in this folder (one "
                                                     "per sink) instead of memory; sent first once it is back")
    spool_max_mb: float = Field(1024.0, gt=0, description="spool size bound; the oldest events go first")


class ZmqSinkConfig(_SinkBase):
    """ZeroMQ PUB: multipart ``[camera id, event JSON]`` on ``endpoint``."""

    type: Literal["zmq"]
    endpoint: str = "tcp://127.0.0.1:5555"
    bind: bool = Field(True, description="bind the endpoint (subscribers connect); False connects it")
    sndhwm: int = Field(DEFAULT_POLICIES["zmq"].maxsize, ge=1,
                        description="messages queued per subscriber before drops (the queue size)")
    count_drops: bool = Field(True, description="refuse (and count) a message any subscriber cannot take; "
                                                "False: each slow subscriber loses its own, uncounted")
    linger_ms: int = Field(1000, ge=0, description="how long close() may spend sending what is queued")

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v: str) -> str:
        if not v.startswith(("tcp://", "ipc://", "inproc://")):
            raise ValueError(f"expected tcp://HOST:PORT, ipc://PATH or inproc://NAME, got {v!r}")
        host, _, port = v.removeprefix("tcp://").rpartition(":")
        if v.startswith("tcp://") and not (host and (port == "*" or port.isdigit() and 1 <= int(port) <= 65535)):
            # tcp://*:99999 passed here and failed in the sink process, once running
            raise ValueError(f"expected tcp://HOST:PORT with a port from 1 to 65535 (or * for any), got {v!r}")
        return v

    @model_validator(mode="after")
    def _queue(self) -> ZmqSinkConfig:
        # The socket is the queue: it can only refuse the newest message, and sndhwm sizes it.
        if self.queue_size is not None:
            raise ValueError("queue_size: not used by zmq sinks, set sndhwm instead")
        if self.on_full not in (None, Overflow.DROP_NEWEST):
            raise ValueError("on_full: a zmq socket can only drop the newest message (drop_newest)")
        return self


class RedisSinkConfig(_Spooled):
    """Redis Streams: ``XADD <stream_prefix><camera> MAXLEN ~ maxlen * event <json>``."""

    type: Literal["redis"]
    url: str = Field(repr=False, description="redis://[:password@]host:port/db, rediss:// for TLS, unix://")
    stream_prefix: str = "segpipe:"
    maxlen: int = Field(10_000, ge=1, description="approximate entries kept per camera stream")
    channel_prefix: str | None = Field(None, description="also PUBLISH each event on <prefix><camera>")
    batch_size: int = Field(256, ge=1, description="events per pipelined round trip")
    connect_timeout_s: float = Field(2.0, gt=0)
    socket_timeout_s: float = Field(2.0, gt=0)
    backoff_initial_s: float = Field(0.1, gt=0)
    backoff_max_s: float = Field(5.0, gt=0)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        scheme = v.split("://", 1)[0] if "://" in v else ""
        if scheme not in ("redis", "rediss", "unix"):
            # Never echo the URL itself: it may carry a password.
            raise ValueError(f"expected a redis://, rediss:// or unix:// URL, got scheme {scheme!r}")
        if scheme != "unix":  # redis:// and redis://host:abc/0 passed, then reconnected for ever
            checked_url(v, ("redis", "rediss"), "redis://[:password@]host[:port]/db")
        return v

    @property
    def redacted_url(self) -> str:
        return redact_url(self.url)


class MqttSinkConfig(_Spooled):
    """MQTT: each event on ``<topic_prefix><camera>/frame`` or ``.../status`` (the status retained)."""

    type: Literal["mqtt"]
    url: str = Field(repr=False, description="mqtt://[user:password@]host[:1883], mqtts:// for TLS (port 8883)")
    topic_prefix: str = Field("segpipe/", description="topics are <prefix><camera>/frame and <prefix><camera>/status")
    qos: Literal[0, 1] = Field(1, description="1: the broker acknowledges each event (resent after a reconnect); "
                                              "0: fire and forget")
    client_id: str | None = Field(None, min_length=1, description="the broker's name for this client; default "
                                                                  "segpipe-<host>-<sink name> (two segpipe on "
                                                                  "one host: give each its own)")
    keepalive_s: int = Field(30, ge=5, le=3600)
    max_inflight: int = Field(100, ge=1, description="events sent and not yet acknowledged (qos 1)")
    backoff_max_s: float = Field(10.0, gt=0, description="longest wait between two reconnect attempts")
    tls_ca: Path | None = Field(None, description="mqtts: CA certificates to trust instead of the system's")

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        return checked_url(v, ("mqtt", "mqtts"), "mqtt://HOST[:PORT] or mqtts://HOST[:PORT]")

    @field_validator("topic_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if any(c in v for c in "+#\0"):
            raise ValueError(f"{v!r}: MQTT wildcards (+, #) and NUL cannot be in a topic")
        return v

    def redacted_url(self) -> str:
        return redact_url(self.url)


WebhookEvent = Literal["frame", "detection", "crossing", "zone", "overstay", "crowding", "status"]

_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # an HTTP token (RFC 9110)
_OWN_HEADERS = frozenset({"host", "content-length", "content-type", "transfer-encoding", "connection"})


class SnapshotConfig(BaseModel):
    """The picture of each posted frame event, read back from the camera's ring while it holds it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    width: int = Field(640, ge=16, le=7680, description="downscale wider frames to this width")
    quality: int = Field(80, ge=10, le=100, description="JPEG quality")


class WebhookSinkConfig(_Spooled):
    """HTTP POST of chosen events, one JSON event per request, to ``url`` (alerts for a VMS, n8n,
    Node-RED, a chat relay): what ``events`` names, optionally only for some ``classes``."""

    type: Literal["webhook"]
    url: str = Field(repr=False, description="http(s)://[user:password@]host[:port]/path; a user and password "
                                             "become HTTP basic auth")
    events: tuple[WebhookEvent, ...] = Field(("crossing", "status"), min_length=1,
                                             description="frame: every frame event; detection: frames with an "
                                                         "object; crossing: a counting line crossed; zone: an "
                                                         "object inside a zone; overstay: an object in a zone "
                                                         "past its max_dwell_s; crowding: a zone's crowding "
                                                         "started or ended; status: camera state changes")
    classes: tuple[str, ...] | None = Field(None, min_length=1, description="detection, crossing, zone, "
                                                                            "overstay: only objects of these "
                                                                            "labels count")
    masks: bool = Field(False, description="keep the detections' masks in the posted events (large)")
    snapshot: SnapshotConfig | None = Field(None, description="add the frame as a JPEG to each posted frame "
                                                              "event (snapshot: true, or {width, quality})")
    headers: dict[str, str] = Field(default_factory=dict, repr=False,
                                    description="extra request headers, e.g. Authorization: Bearer ${TOKEN}")
    secret: str | None = Field(None, min_length=1, repr=False,
                               description="sign each request: X-Segpipe-Signature: sha256=HMAC(secret, "
                                           "timestamp + '.' + body), hex")
    timeout_s: float = Field(5.0, gt=0, description="connect and response timeout of one request")
    backoff_initial_s: float = Field(0.5, gt=0)
    backoff_max_s: float = Field(30.0, gt=0, description="longest wait between two attempts while the "
                                                         "receiver is away or failing")
    tls_ca: Path | None = Field(None, description="https: CA certificates to trust instead of the system's")

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        return checked_url(v, ("http", "https"), "http://HOST[:PORT]/PATH or https://...")

    @field_validator("headers")
    @classmethod
    def _headers(cls, v: dict[str, str]) -> dict[str, str]:
        for name, value in v.items():
            if not _HEADER_NAME.match(name):
                raise ValueError(f"{name!r} is not a valid header name")
            if name.lower() in _OWN_HEADERS or name.lower().startswith("x-segpipe-"):
                raise ValueError(f"{name!r} is set by segpipe")
            if any(c in value for c in "\r\n\0"):
                raise ValueError(f"{name}: a header value cannot hold a line break")  # never echo the value
        return v

    @model_validator(mode="before")
    @classmethod
    def _statuses(cls, data: object) -> object:
        # status events are chosen in events, like the others
        if isinstance(data, dict) and "statuses" in data:
            raise ValueError("statuses: a webhook sink posts status events when events lists status")
        if isinstance(data, dict):
            data = {**data, "statuses": "status" in (data.get("events") or ("status",))}
            if data.get("snapshot") is True:
                data["snapshot"] = {}
            elif data.get("snapshot") is False:
                data["snapshot"] = None
        return data

    def redacted_url(self) -> str:
        return redact_url(self.url)


class JsonlSinkConfig(_SinkBase):
    """One event per line in ``path``, rotated by size into ``path.1`` .. ``path.<keep>``."""

    type: Literal["jsonl"]
    path: Path
    max_bytes: int = Field(100 * 2**20, ge=1, description="rotate before a write would pass this size")
    keep: int = Field(5, ge=0, description="rotated files kept; older ones are deleted")

    @field_validator("path")
    @classmethod
    def _file(cls, v: Path) -> Path:
        if v.is_dir():  # passed --check, then the sink failed at its first event
            raise ValueError(f"{v} is a folder; expected the path of a file (created if missing)")
        return v


ClipTrigger = Literal["crossing", "zone", "overstay", "crowding", "detection"]


class ClipConfig(BaseModel):
    """Event clips: the video sink keeps the last ``pre_s`` seconds of each camera in memory and
    writes a clip only when a trigger fires, until ``post_s`` after the last one."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    triggers: tuple[ClipTrigger, ...] = Field(("crossing",), min_length=1,
                                              description="crossing: an object crossed a counting line; "
                                                          "zone: an object is inside a zone; overstay: an "
                                                          "object stayed in a zone past its max_dwell_s; "
                                                          "crowding: a zone's crowding started; "
                                                          "detection: any")
    classes: tuple[str, ...] | None = Field(None, min_length=1, description="only these labels trigger; all "
                                                                            "when absent")
    pre_s: float = Field(5.0, ge=0, le=60, description="seconds of video before the trigger")
    post_s: float = Field(5.0, ge=0, le=600, description="seconds after the last trigger")
    max_s: float = Field(300.0, gt=0, description="a clip kept going by triggers is cut here; the next one "
                                                  "starts at once")


class VideoSinkConfig(_SinkBase):
    """Annotated H.264 MP4s per camera in ``dir`` (``<camera>-<start>.mp4``): segments of continuous
    recording, or event clips when ``clips`` is set."""

    type: Literal["video"]
    dir: Path
    fps: float = Field(15.0, gt=0, description="nominal rate written in the file; timing follows pts")
    codec: str = "libx264"
    crf: int = Field(23, ge=0, le=51)
    preset: str = "veryfast"
    max_width: int | None = Field(1280, ge=16, description="downscale wider frames to this width")
    segment_s: float | None = Field(600.0, gt=0, description="start a new file after this many seconds of "
                                                             "video; null: one file per camera and run")
    keep: int | None = Field(None, ge=1, description="files kept per camera in dir, oldest deleted first "
                                                     "(earlier runs' too); null keeps every one")
    max_total_mb: float | None = Field(None, gt=0, description="the newest files of every camera within this "
                                                               "size in dir, the oldest deleted first; null: "
                                                               "no bound")
    keyframe_s: float = Field(2.0, gt=0, description="keyframe interval in stream seconds: a crash loses at "
                                                     "most about this much of the file being written")
    clips: ClipConfig | None = Field(None, description="record event clips instead of everything")
    statuses: bool = False

    @model_validator(mode="after")
    def _clips(self) -> VideoSinkConfig:
        if self.clips is not None and "segment_s" in self.model_fields_set:
            raise ValueError("segment_s: cuts continuous recording; event clips are cut by clips.max_s")
        return self


class RestreamSinkConfig(_SinkBase):
    """Each camera's annotated frames as a live H.264 stream pushed to a media server (mediamtx,
    nginx-rtmp, Wowza, a VMS that ingests RTSP or RTMP), where players and recorders pull it."""

    type: Literal["restream"]
    url: str = Field(repr=False, description="rtsp://host:8554/segpipe/{camera} or rtmp://host/live/{camera}: "
                                             "{camera} becomes each camera's id; user:password@ if the "
                                             "server asks for them")
    fps: float = Field(15.0, gt=0, description="nominal rate announced; timing follows each frame's pts")
    codec: str = "libx264"
    preset: str = Field("veryfast", description="x264 speed preset; tune zerolatency is always on")
    crf: int = Field(26, ge=0, le=51)
    max_width: int | None = Field(1280, ge=16, description="downscale wider frames to this width")
    keyframe_s: float = Field(1.0, gt=0, description="a keyframe every this many seconds of stream time: how "
                                                     "long a player that joins waits for a picture")
    backoff_max_s: float = Field(10.0, gt=0, description="longest wait between two reconnect attempts (what a "
                                                         "viewer may wait once the server is back)")
    statuses: bool = False

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        return checked_url(v, ("rtsp", "rtsps", "rtmp", "rtmps"), "rtsp://HOST[:PORT]/PATH or rtmp://HOST/APP/KEY",
                            parse=v.replace("{camera}", "camera"))

    @model_validator(mode="after")
    def _one_path_per_camera(self) -> RestreamSinkConfig:
        if "{camera}" not in self.url and (self.cameras is None or len(self.cameras) != 1):
            raise ValueError("url: put {camera} in it (each camera needs its own path), or give the sink "
                             "one camera (cameras: [id])")
        if "queue_size" in self.model_fields_set and self.queue_size is not None and self.queue_size > 256:
            raise ValueError("queue_size: at most 256 frames (a live stream drops, it does not catch up)")
        return self

    def redacted_url(self) -> str:
        return redact_url(self.url)


class PreviewSinkConfig(_SinkBase):
    """Live annotated view over HTTP on ``host:port``: ``/`` shows every camera, ``/cameras/<id>.mjpg``
    streams one (MJPEG), ``/cameras/<id>.jpg`` is its latest frame. Only cameras someone is watching
    cost anything: the device stage copies their frames, at most ``fps`` a second each."""

    type: Literal["preview"]
    host: str = Field("127.0.0.1", min_length=1, description="0.0.0.0 serves every interface: frames are "
                                                             "shown to anyone who can reach it")
    port: int = Field(8090, ge=1, le=65535)
    fps: float = Field(5.0, gt=0, le=30, description="frames a second per camera at most")
    max_width: int = Field(960, ge=16, description="downscale wider frames to this width")
    quality: int = Field(80, ge=10, le=100, description="JPEG quality")
    max_clients: int = Field(16, ge=1, description="streams served at once; more are refused (503)")
    user: str = Field("segpipe", min_length=1, description="the login asked for when password is set")
    password: str | None = Field(None, min_length=1, repr=False,
                                 description="HTTP basic auth for every page (use ${VAR}); null: no login")

    @model_validator(mode="after")
    def _queue(self) -> PreviewSinkConfig:
        # each camera's latest frame is all it keeps: there is no queue to size or overflow
        for key in ("queue_size", "on_full"):
            if key in self.model_fields_set:
                raise ValueError(f"{key}: a preview sink keeps only each camera's latest frame")
        return self


SinkConfig = Annotated[
    ZmqSinkConfig | RedisSinkConfig | MqttSinkConfig | WebhookSinkConfig | JsonlSinkConfig | VideoSinkConfig
    | RestreamSinkConfig | PreviewSinkConfig,
    Field(discriminator="type")
]
"""Any sink's config, chosen by its ``type:`` key."""


def check_sink_classes(configs: tuple[SinkConfig, ...], names: tuple[str, ...], model: str) -> list[ConfigError]:
    """``sinks[i].clips.classes`` and ``sinks[i].classes`` (webhook) that are not labels of the model
    (``names``): such a clip never starts, such a webhook never fires."""
    wanted = [(f"sinks[{i}].clips.classes", cfg.clips.classes) for i, cfg in enumerate(configs)
              if isinstance(cfg, VideoSinkConfig) and cfg.clips is not None]
    wanted += [(f"sinks[{i}].classes", cfg.classes) for i, cfg in enumerate(configs)
               if isinstance(cfg, WebhookSinkConfig)]
    return [ConfigError(path, f"{c!r} is not a class of {model}") for path, classes in wanted
            for c in classes or () if c not in names]


def check_sink_names(configs: list[SinkConfig], *, path: str = "sinks") -> list[str]:
    """The sinks' names in order; raises ConfigError at ``sinks[i].name`` on a duplicate."""
    seen: dict[str, int] = {}
    for i, cfg in enumerate(configs):
        name = cfg.sink_name
        if name in seen:
            raise ConfigError(f"{path}[{i}].name", f"duplicate sink name {name!r} (also {path}[{seen[name]}]); "
                              "give each sink of the same type a distinct name")
        seen[name] = i
    return list(seen)
