"""Run config: schema, ${ENV} interpolation, every error at once with its YAML path."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from engines.errors import ConfigError, ConfigErrors
from pipeline.config import RunConfig, load_config, parse_config
from pipeline.decoder import DecoderSettings
from pipeline.device import DeviceSettings


@pytest.fixture
def clip(tmp_path: Path) -> Path:
    p = tmp_path / "clip.mp4"
    p.write_bytes(b"not parsed at validation time")
    return p


def base(clip: Path) -> dict[str, Any]:
    return {
        "model": {"path": "yolov8n-seg.yaml", "device": "cpu"},
        "cameras": [{"id": "door", "url": str(clip)},
                    {"id": "gate", "url": "rtsp://user:secret@10.0.0.5:554/stream1"}],
        "sinks": [{"type": "jsonl", "path": "events.jsonl"}, {"type": "zmq"}],
    }


def errors_of(raw: dict[str, Any], env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigErrors) as info:
        parse_config(raw, env=env or {})
    assert info.value.exit_code == 2
    return [str(e) for e in info.value.errors]


def test_valid_config_gets_defaults_and_is_frozen(clip: Path) -> None:
    cfg = parse_config(base(clip), env={})
    assert cfg.batch.max_batch == 8 and cfg.batch.max_age_ms == 500
    assert cfg.masks.format == "rle" and cfg.metrics.host == "127.0.0.1"
    assert not cfg.tracking.enabled and cfg.tracking.min_hits == 2
    door, gate = cfg.cameras
    assert door.is_file and not gate.is_file and gate.transport == "tcp"
    assert "secret" not in repr(cfg) and "secret" not in gate.redacted_url
    with pytest.raises(ValidationError):
        cfg.batch.max_batch = 3  # type: ignore[misc]
    # One place turns config into constructor arguments.
    ds = DecoderSettings.from_config(gate)
    assert ds.url == gate.url and ds.open_options()["rtsp_transport"] == "tcp"
    assert ds.open_options()["timeout"] == str(int(gate.read_timeout_s * 1e6))
    assert ds.nslots == 4 and DecoderSettings.from_config(gate.model_copy(update={"ring_frames": 12})).nslots == 12
    assert gate.picture.enabled and ds.picture is not None  # picture checks: on by default, settings passed on
    assert (ds.picture.interval_s, ds.picture.frozen_s, ds.picture.blank_s) == (1.0, 30.0, 10.0)
    assert (ds.picture.moved_s, ds.picture.blurred_s, ds.picture.learn_s) == (None, None, 60.0)  # opt-in checks
    raw = base(clip)
    raw["cameras"][0]["picture"] = {"enabled": False}
    raw["cameras"][1]["picture"] = {"frozen_s": None, "blank_std": 5, "moved_s": 20, "blurred_s": 40,
                                    "moved_match": 0.3, "blurred_ratio": 0.4, "learn_s": 120}
    door, gate = parse_config(raw, env={}).cameras
    assert DecoderSettings.from_config(door).picture is None
    ds = DecoderSettings.from_config(gate)
    assert ds.picture is not None and ds.picture.frozen_s is None and ds.picture.blank_std == 5
    assert (ds.picture.moved_s, ds.picture.blurred_s, ds.picture.moved_match, ds.picture.blurred_ratio,
            ds.picture.learn_s) == (20, 40, 0.3, 0.4, 120)
    dev = DeviceSettings.from_config(cfg)
    assert dev.imgsz is None and dev.nms.iou == cfg.model.iou and dev.batch.max_wait_s == pytest.approx(0.010)
    assert dev.mask_threshold == 0.5  # Ultralytics' rule unless masks.threshold says otherwise
    raw["masks"] = {"threshold": 0.4}
    assert DeviceSettings.from_config(parse_config(raw, env={})).mask_threshold == 0.4


def test_rectangular_model_input(clip: Path) -> None:
    """``model.imgsz: [height, width]`` reaches the device stage as (height, width); a side as a square."""
    raw = base(clip)
    raw["model"]["imgsz"] = [384, 640]
    cfg = parse_config(raw, env={})
    assert cfg.model.imgsz == (384, 640) and cfg.model.input_shape() == (384, 640)
    assert DeviceSettings.from_config(cfg).imgsz == (384, 640)
    raw["model"]["imgsz"] = "${IMGSZ:-480}"
    cfg = parse_config(raw, env={})
    assert cfg.model.imgsz == 480 and DeviceSettings.from_config(cfg).imgsz == (480, 480)


def test_env_interpolation_defaults_and_escapes(clip: Path) -> None:
    raw = base(clip)
    raw["cameras"][1]["url"] = "rtsp://${CAM_USER}:${CAM_PASS}@cam/${CAM_PATH:-live}"
    raw["metrics"] = {"host": "${SEGPIPE_METRICS_HOST:-127.0.0.1}", "port": "${PORT}"}
    raw["sinks"][0]["path"] = "costs-$$5.jsonl"
    cfg = parse_config(raw, env={"CAM_USER": "u", "CAM_PASS": "p@ss", "PORT": "9200"})
    assert cfg.cameras[1].url == "rtsp://u:p@ss@cam/live"
    assert cfg.metrics.port == 9200 and cfg.metrics.host == "127.0.0.1"
    assert str(cfg.sinks[0].path) == "costs-$5.jsonl"


def _set(raw: dict[str, Any], path: str, value: Any) -> None:
    keys = path.replace("]", "").replace("[", ".").split(".")
    node = raw
    for k in keys[:-1]:
        node = node[int(k)] if k.isdigit() else node.setdefault(k, {})
    last = keys[-1]
    if value is _DELETE:
        del node[int(last) if last.isdigit() else last]
    elif last.isdigit():
        node[int(last)] = value
    else:
        node[last] = value


_DELETE = object()

BAD = [  # (where, value, expected error line prefix, expected text)
    ("model.path", _DELETE, "model.path", "required key is missing"),
    ("model.confidence", 0.3, "model.confidence", "unknown key 'confidence'"),
    ("model.backend", "tflite", "model.backend", "Input should be"),
    ("model.imgsz", 100, "model.imgsz", "multiple of 32"),
    ("model.imgsz", [384, 100], "model.imgsz", "[height, width], each a multiple of 32"),
    ("model.imgsz", [384, 640, 32], "model.imgsz", "got [384, 640, 32]"),
    ("model.imgsz", [640], "model.imgsz", "got [640]"),
    ("model.imgsz", True, "model.imgsz", "got True"),
    ("model.imgsz", "640px", "model.imgsz", "got '640px'"),
    ("model.conf", 1.5, "model.conf", "less than or equal to 1"),
    ("model.classes", [-1], "model.classes", "class ids >= 0"),
    ("model.path", "missing.pt", "model.path", "model file not found"),
    ("batch.max_bach", 4, "batch.max_bach", "did you mean 'max_batch'"),
    ("batch.max_batch", 0, "batch.max_batch", "greater than or equal to 1"),
    ("batch.max_wait_ms", -1, "batch.max_wait_ms", "greater than or equal to 0"),
    ("masks.format", "bitmap", "masks.format", "'rle', 'polygon' or 'none'"),
    ("cameras", [], "cameras", "at least 1 item"),
    ("cameras[1].id", "door", "cameras[1].id", "duplicate camera id 'door' (also cameras[0])"),
    ("cameras[1].id", "bad id!", "cameras[1].id", "must be 1-64 letters"),
    ("cameras[1].url", "rtp://10.0.0.5/x", "cameras[1].url", "unsupported scheme 'rtp'"),
    ("cameras[0].url", "nowhere.mp4", "cameras[0].url", "video file not found"),
    ("cameras[1].loop", True, "cameras[1].loop", "file cameras only"),
    ("cameras[1].lossless", True, "cameras[1].lossless", "a live camera cannot wait"),
    ("cameras[0].transport", "udp", "cameras[0].transport", "rtsp:// and rtsps:// cameras only"),
    ("cameras[1].transport", "quic", "cameras[1].transport", "'tcp' or 'udp'"),
    ("cameras[1].fps", 0, "cameras[1].fps", "greater than 0"),
    ("cameras[1].heartbeat_timeout_s", 3, "cameras[1].heartbeat_timeout_s", "must exceed the open and read"),
    ("cameras[1].reconnect.max_s", 0.1, "cameras[1].reconnect.max_s", "must be >= initial_s"),
    ("cameras[1].reconect", {}, "cameras[1].reconect", "did you mean 'reconnect'"),
    ("cameras[1].url", "${CAM_URL}", "cameras[1].url", "environment variable CAM_URL is not set"),
    ("sinks[0].type", "kafka", "sinks[0]", "unknown type 'kafka'"),
    ("sinks[1].type", _DELETE, "sinks[1]", "missing 'type:' key"),
    ("sinks[0].paht", "x", "sinks[0].paht", "did you mean 'path'"),
    ("sinks[1].name", "jsonl", "sinks[1].name", "duplicate sink name 'jsonl'"),
    ("sinks[1]", {"type": "video", "dir": "v", "keep": 0}, "sinks[1].keep", "greater than or equal to 1"),
    ("sinks[1]", {"type": "video", "dir": "v", "segment_s": 0}, "sinks[1].segment_s", "greater than 0"),
    ("sinks[1]", {"type": "video", "dir": "v", "keyframe_s": -1}, "sinks[1].keyframe_s", "greater than 0"),
    ("sinks[1]", {"type": "video", "dir": "v", "clips": {"triggers": ["wave"]}}, "sinks[1].clips.triggers[0]",
     "'crossing', 'zone', 'overstay', 'crowding' or 'detection'"),
    ("sinks[1]", {"type": "video", "dir": "v", "clips": {}}, "sinks[1].clips.triggers",
     "'crossing' needs a camera with lines (none of this sink's cameras has any)"),
    ("sinks[1]", {"type": "video", "dir": "v", "clips": {"triggers": ["zone"]}}, "sinks[1].clips.triggers",
     "'zone' needs a camera with zones"),
    ("sinks[1]", {"type": "video", "dir": "v", "segment_s": 60, "clips": {"triggers": ["detection"]}},
     "sinks[1].segment_s", "event clips are cut by clips.max_s"),
    ("sinks[1]", {"type": "video", "dir": "v", "clips": {"pre_s": 61}}, "sinks[1].clips.pre_s",
     "less than or equal to 60"),
    ("cameras[1].zones", [{"name": "q", "polygon": [[0, 0], [1, 0], [1, 1]], "max_dwell_s": 30}],
     "cameras[1].zones[0].max_dwell_s", "dwell is timed for tracked objects: set tracking.enabled: true"),
    ("sinks[1]", {"type": "webhook", "url": "http://x/h", "events": ["overstay"]}, "sinks[1].events",
     "'overstay' needs a camera with a zone with max_dwell_s (none of this sink's cameras has any)"),
    ("sinks[1]", {"type": "video", "dir": "v", "clips": {"triggers": ["crowding"]}}, "sinks[1].clips.triggers",
     "'crowding' needs a camera with a zone with max_objects"),
    ("cameras[1].zones", [{"name": "q", "polygon": [[0, 0], [1, 0], [1, 1]], "max_objects": -1}],
     "cameras[1].zones[0].max_objects", "greater than or equal to 0"),
    ("sinks[1]", {"type": "webhook", "url": "http://x/h", "events": ["crossing", "status"]}, "sinks[1].events",
     "'crossing' needs a camera with lines"),
    ("cameras[1].ring_frames", 1, "cameras[1].ring_frames", "greater than or equal to 2"),
    ("cameras[1].roi", [0.5, 0, 0.2, 1], "cameras[1].roi", "expected x1 < x2 and y1 < y2, at least 0.05 apart"),
    ("cameras[1].roi", [0, 0, 1.5, 1], "cameras[1].roi", "expected fractions of the frame in [0, 1]"),
    ("cameras[1].roi", [0, 0, 1], "cameras[1].roi", "expected [x1, y1, x2, y2], got [0.0, 0.0, 1.0]"),
    ("sinks[1]", {"type": "webhook", "url": "https://x/h", "events": ["alarm"]}, "sinks[1].events[0]",
     "'frame', 'detection', 'crossing', 'zone', 'overstay', 'crowding' or 'status'"),
    ("sinks[1]", {"type": "webhook", "url": "http://u:secret@x/h", "timeout_s": 0}, "sinks[1].timeout_s",
     "greater than 0"),
    ("metrics.port", 70000, "metrics.port", "less than or equal to 65535"),
    ("masks.threshold", 1, "masks.threshold", "less than 1"),
    ("masks.threshold", 0, "masks.threshold", "greater than 0"),
    ("tracking.new_track_score", 0.4, "tracking.new_track_score", "must be >= high_score (0.5), got 0.4"),
    ("tracking.match_iou", 1, "tracking.match_iou", "less than 1"),
    ("tracking.min_hits", 0, "tracking.min_hits", "greater than or equal to 1"),
    ("tracking.max_lost", 5, "tracking.max_lost", "did you mean 'max_lost_frames'"),
    ("events.workers", 0, "events.workers", "greater than or equal to 1"),
    ("sinks[1]", {"type": "redis", "url": "redis://h:6379/0", "spool_max_mb": 0}, "sinks[1].spool_max_mb",
     "greater than 0"),
    ("events.wokers", 2, "events.wokers", "did you mean 'workers'"),
    ("sinks[1]", {"type": "zmq", "cameras": ["gate", "dor"]}, "sinks[1].cameras",
     "'dor' is not a camera of this config (door, gate)"),
    ("sinks[1]", {"type": "mqtt", "url": "mqtt://"}, "sinks[1].url", "mqtts://HOST[:PORT], got no host"),
    ("verbose", True, "verbose", "unknown key 'verbose'"),
    ("cameras[0].picture", {"frozen_s": 0}, "cameras[0].picture.frozen_s", "greater than 0"),
    ("cameras[0].picture", {"blank_s": -5}, "cameras[0].picture.blank_s", "greater than 0"),
    ("cameras[1].picture", {"interval_s": 0}, "cameras[1].picture.interval_s", "greater than 0"),
    ("cameras[1].picture", {"blank_std": 0}, "cameras[1].picture.blank_std", "greater than 0"),
    ("cameras[1].picture", {"frozen_diff": -0.1}, "cameras[1].picture.frozen_diff", "greater than or equal to 0"),
    ("cameras[0].picture", {"frozen_sec": 30}, "cameras[0].picture.frozen_sec",
     "unknown key 'frozen_sec' (did you mean 'frozen_s'?); allowed: enabled, interval_s, frozen_s"),
    ("cameras[0].picture", {"blank_s": 0.5}, "cameras[0].picture.blank_s",
     "0.5 must be >= interval_s (1.0): a condition is seen at the checks"),
    ("cameras[0].picture", {"enabled": "sometimes"}, "cameras[0].picture.enabled", "valid boolean"),
    ("cameras[0].picture", {"moved_s": 0.5}, "cameras[0].picture.moved_s",
     "0.5 must be >= interval_s (1.0): a condition is seen at the checks"),
    ("cameras[0].picture", {"moved_match": 0.8}, "cameras[0].picture.moved_match", "less than or equal to 0.6"),
    ("cameras[1].picture", {"blurred_ratio": 0}, "cameras[1].picture.blurred_ratio", "greater than 0"),
    ("cameras[1].picture", {"learn_s": 0.2}, "cameras[1].picture.learn_s",
     "0.2 must be >= interval_s (1.0): a condition is seen at the checks"),
    ("cameras[0].picture", True, "cameras[0].picture", "expected a mapping, got a boolean"),
]


@pytest.mark.parametrize("where, value, path, text", BAD, ids=[f"{b[0]}={b[1]!r}"[:40] for b in BAD])
def test_bad_config_names_its_yaml_path(clip: Path, where: str, value: Any, path: str, text: str) -> None:
    raw = copy.deepcopy(base(clip))
    _set(raw, where, value)
    errors = errors_of(raw)
    assert any(e.startswith(f"{path}: ") and text in e for e in errors), errors
    assert all("secret" not in e for e in errors)


def test_every_error_is_reported_at_once(clip: Path) -> None:
    raw = base(clip)
    raw["model"]["iou"] = 2
    raw["batch"] = {"max_batch": "many"}
    raw["cameras"].append({"id": "door", "url": "${NOPE}"})
    raw["sinks"].append({"type": "redis", "url": "${REDIS_URL}"})
    errors = errors_of(raw)
    assert [e.split(":")[0] for e in errors] == ["cameras[2].url", "sinks[2].url", "cameras[2].id", "model.iou",
                                                 "batch.max_batch"]


def test_yaml_file_errors(tmp_path: Path, clip: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("x-camera: &cam {fps: 5, realtime: false}\n" + yaml.safe_dump(base(clip)).replace(
        f"url: {clip}", f"<<: *cam\n  url: {clip}", 1))
    cfg = load_config(good, env={})
    assert isinstance(cfg, RunConfig) and cfg.cameras[0].fps == 5 and not cfg.cameras[0].realtime

    dup = tmp_path / "dup.yaml"
    dup.write_text("model:\n  path: a.pt\n  path: b.pt\n")
    with pytest.raises(ConfigError, match=r"dup.yaml:3: duplicate key 'path' \(first at line 2\)"):
        load_config(dup)
    boolean = tmp_path / "boolean.yaml"
    boolean.write_text("model:\n  path: a.pt\nsinks:\n  - type: video\n    clips: {on: [zone]}\n")
    with pytest.raises(ConfigError, match=r"boolean.yaml:5: key 'on' reads as True in YAML: quote it \(\"on\"\)"):
        load_config(boolean)
    broken = tmp_path / "broken.yaml"
    broken.write_text("model: [\n")
    with pytest.raises(ConfigError, match="broken.yaml:2: invalid YAML"):
        load_config(broken)
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "absent.yaml")
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(scalar)


UNREADABLE_YAML = [  # (file bytes, the one error line after "segpipe run: error: <file>")
    (b"model:\n  path: caf\xe9.pt\n", ":2: not UTF-8 text (byte 0xe9); save the file as UTF-8"),
    (b"\xff\xfem\x00o\x00", ":1: not UTF-8 text (byte 0xff); save the file as UTF-8"),
    (b"model:\n  path: a.pt\n\x00\n", ":3: invalid YAML: character U+0000 is not allowed"),
    (b"model:\n  path: a\x07.pt\n", ":2: invalid YAML: character U+0007 is not allowed"),
]


@pytest.mark.parametrize("data, error", UNREADABLE_YAML, ids=["latin-1", "utf-16", "nul", "bell"])
def test_a_file_yaml_cannot_read_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], data: bytes,
                                             error: str) -> None:
    from pipeline.cli import main

    path = tmp_path / "cameras.yaml"
    path.write_bytes(data)
    assert main(["run", str(path), "--check"]) == 2
    assert capsys.readouterr().err.splitlines() == [f"segpipe run: error: {path}{error}"]


def test_demo_inputs_are_checked_at_load_and_rendered_on_resolve(clip: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline import demo
    from pipeline.config import resolve_demo

    raw = base(clip)
    raw["cameras"].append({"id": "synth", "url": "demo://traffic?seed=1&seconds=0.4&fps=5&size=96x64",
                           "loop": True})
    cfg = parse_config(raw, env={})  # nothing rendered yet
    assert cfg.cameras[2].is_file and not (tmp_path / "cache").exists()
    rendered: list[str] = []
    local = resolve_demo(cfg, cache_dir=tmp_path / "cache", on_render=lambda cam, url: rendered.append(cam))
    assert rendered == ["synth"] and local.cameras[:2] == cfg.cameras[:2]
    path = Path(local.cameras[2].url)
    assert path.is_file() and path.parent == tmp_path / "cache" / "demo" and local.cameras[2].loop

    raw["cameras"][2]["url"] = "demo://harbour?seed=1"
    raw["model"]["path"] = "demo://weights"
    errors = errors_of(raw)
    assert any(e.startswith("cameras[2].url: unknown demo style 'harbour'") for e in errors), errors
    assert any(e.startswith("model.path: the only demo model is demo://model") for e in errors), errors

    monkeypatch.setattr(demo, "asset_path", lambda name: tmp_path / "absent" / name)
    raw = base(clip)
    raw["model"]["path"] = "demo://model"
    assert any(e.startswith("model.path: the demo weights") and "not installed" in e for e in errors_of(raw))


@pytest.mark.parametrize("name", ["cameras.yaml", "cameras-redis.yaml", "cameras-rtsp.yaml", "recording.yaml"])
def test_shipped_configs_validate(name: str) -> None:
    from tests.conftest import REPO

    env = {"CAM_USER": "viewer", "CAM_PASSWORD": "s3cret", "SEGPIPE_REDIS_URL": "redis://:pw@redis:6379/0",
           "SEGPIPE_WEBHOOK_SECRET": "s3cret"}
    cfg = load_config(REPO / "configs" / name, env=env, check_files=False)
    assert cfg.cameras and cfg.sinks and cfg.metrics.port == 9108 and cfg.metrics.host == "127.0.0.1"
    assert all("s3cret" not in c.redacted_url for c in cfg.cameras)
    if name == "cameras-rtsp.yaml":
        with pytest.raises(ConfigErrors, match="environment variable CAM_PASSWORD is not set"):
            load_config(REPO / "configs" / name, env={}, check_files=False)


def test_a_replica_names_its_mqtt_clients_apart(clip: Path) -> None:
    """Two replicas of one config on one host (--shard 0/2, 1/2) connected as one MQTT client id: the
    broker knocked one off each time the other connected, for ever."""
    import socket

    raw = base(clip)
    raw["sinks"] = [{"type": "mqtt", "url": "mqtt://broker"}, {"type": "mqtt", "name": "own", "url": "mqtt://b",
                                                              "client_id": "cam-wall"}, {"type": "zmq"}]
    cfg = parse_config(raw, env={})
    ids = {k: cfg.for_replica(["door"], f"{k}of2") for k in (0, 1)}
    host = socket.gethostname()
    client = {k: [getattr(s, "client_id", "-") for s in c.sinks] for k, c in ids.items()}
    assert client == {k: [f"segpipe-{host}-mqtt-{k}of2", "cam-wall", "-"] for k in (0, 1)}  # a set id is kept
    assert [cam.id for cam in ids[0].cameras] == ["door"] and cfg.sinks[0].client_id is None  # type: ignore[union-attr]
