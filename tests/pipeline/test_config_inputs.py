"""Run config: the mistakes real users make, each one error line naming its culprit, never a traceback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from engines.errors import ConfigError, ConfigErrors
from pipeline.config import load_config, parse_config, read_yaml


def base() -> dict[str, Any]:
    return {"model": {"path": "yolov8n-seg.yaml", "device": "cpu"},
            "cameras": [{"id": "gate", "url": "rtsp://user:secret@10.0.0.5:554/stream1"}]}


def errors_of(raw: dict[str, Any], env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigErrors) as info:
        parse_config(raw, env=env or {})
    errors = [str(e) for e in info.value.errors]
    assert all("secret" not in e for e in errors), errors
    return errors


def run_check(tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    from pipeline.cli import main

    path = tmp_path / "cameras.yaml"
    path.write_text(text)
    code = main(["run", str(path), "--check"])
    return code, capsys.readouterr().err.splitlines()


@pytest.mark.parametrize("device", [0, 1, "0", "cuda:1", "cuda", "cpu", "CPU", "auto", "0,1"])
def test_model_device_takes_what_the_docs_list(device: Any) -> None:
    """``device: 0`` (configs/cameras.yaml: "or cpu, 0, cuda:1") is an int in YAML: it was refused."""
    raw = base()
    raw["model"]["device"] = device
    assert parse_config(raw, env={}).model.device == str(device).lower()


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "cuda0", "mps", True, -1],
                         ids=lambda d: f"device={d!r}")  # an id of "gpu" would be skipped without CUDA
def test_a_device_that_cannot_be_run_is_a_config_error(device: Any) -> None:
    """These passed --check, then the run failed once started (``cuda:x`` with a traceback)."""
    raw = base()
    raw["model"]["device"] = device
    assert any(e.startswith("model.device: expected auto, cpu, a GPU index") for e in errors_of(raw))


@pytest.mark.parametrize("url, text", [
    ("rtsp://", "no host"),
    ("rtsp://:554/stream", "no host"),
    ("rtsp://user:secret@:554/stream", "no host"),
    ("rtsp://10.0.0.5:99999/stream", "port"),
    ("http://10.0.0.5:http/video.mjpg", "port"),
    ("rtsp://user:sec/ret@10.0.0.5/stream", "percent-encoded"),
    ("rtsp://10.0.0.5:0/stream", "port"),
])
def test_a_stream_url_needs_a_host_and_a_port_that_is_one(url: str, text: str) -> None:
    """They were accepted, and the camera then reconnected for ever; the password is never echoed."""
    raw = base()
    raw["cameras"][0]["url"] = url
    errors = errors_of(raw)
    assert any(e.startswith("cameras[0].url: ") and text in e for e in errors), errors


@pytest.mark.parametrize("url", ["rtsp:/user:secret@10.0.0.5/stream", "rtsp//user:secret@10.0.0.5/stream",
                                 "http:10.0.0.5/secret.mjpg", "RTSP:/10.0.0.5/secret"])
def test_a_url_with_its_slashes_mistyped_is_not_taken_for_a_file(url: str) -> None:
    """``rtsp:/...`` was a file path: "video file not found: rtsp:/user:secret@..." printed the password."""
    raw = base()
    raw["cameras"][0]["url"] = url
    errors = errors_of(raw)
    assert any(e.startswith("cameras[0].url: ") and "'://' after" in e for e in errors), errors


def test_whitespace_around_a_url_is_dropped(tmp_path: Path) -> None:
    """An env file's trailing space or CR made ``rtsp://cam/x `` a URL FFmpeg took for a file name."""
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"")
    raw = base()
    raw["cameras"] = [{"id": "a", "url": " rtsp://cam/x\r"}, {"id": "b", "url": f"{clip} "}]
    a, b = parse_config(raw, env={}).cameras
    assert a.url == "rtsp://cam/x" and not a.is_file and b.url == str(clip)
    raw["cameras"] = [{"id": "a", "url": "  "}]
    assert any(e.startswith("cameras[0].url: ") for e in errors_of(raw))


def errors_with(where: tuple[Any, ...], value: Any) -> tuple[str, list[str]]:
    """The errors of ``base()`` with ``value`` set at ``where`` (made as needed), and that place's YAML path."""
    raw = base()
    node: Any = raw
    for key in where[:-1]:
        node = node[key] if isinstance(key, int) else node.setdefault(key, {})
    node[where[-1]] = value
    return ".".join(str(k) for k in where).replace(".0.", "[0]."), errors_of(raw)


@pytest.mark.parametrize("where, value", [
    (("cameras", 0, "reconnect", "max_restarts"), False),  # "no limit" read as 0: FAILED at the first error
    (("cameras", 0, "nice"), False),
    (("cameras", 0, "fps"), True),
    (("batch", "max_batch"), True),
    (("model", "max_det"), True),
    (("metrics", "port"), True),
    (("tracking", "min_hits"), True),
])
def test_a_boolean_is_not_a_number(where: tuple[Any, ...], value: bool) -> None:
    """YAML reads yes/no/on/off as booleans, and pydantic took them as 1 and 0."""
    path, errors = errors_with(where, value)
    assert any(e.startswith(f"{path}: expected a number, got a boolean") for e in errors), errors


def test_a_boolean_in_a_sink_is_not_a_number() -> None:
    raw = base()
    raw["sinks"] = [{"type": "redis", "url": "redis://h:6379/0", "maxlen": True}]
    assert any(e.startswith("sinks[0].maxlen: expected a number") for e in errors_of(raw))


@pytest.mark.parametrize("where, value", [(("cameras", 0, "reconnect", "initial_s"), float("inf")),
                                          (("cameras", 0, "stall_timeout_s"), float("inf")),
                                          (("batch", "max_age_ms"), float("nan")),
                                          (("cameras", 0, "picture", "frozen_s"), "inf")])  # ${VAR}: inf
def test_infinity_and_nan_are_not_numbers_here(where: tuple[Any, ...], value: Any) -> None:
    """``initial_s: .inf`` passed: the camera then waited "retry in infs", for ever."""
    path, errors = errors_with(where, value)
    assert any(e.startswith(f"{path}: ") and "finite" in e for e in errors), errors


@pytest.mark.parametrize("value", ["${CAM_URL-rtsp://cam/x}", "${CAM_URL:=rtsp://cam/x}", "${1CAM}",
                                   "rtsp://cam/${PATH_PART", "${CAM_URL:-${OTHER}}"])
def test_an_env_reference_segpipe_does_not_understand_is_an_error(value: str) -> None:
    """Compose's ``${VAR-default}`` and friends stayed in the value as written, silently."""
    raw = base()
    raw["cameras"][0]["url"] = value
    errors = errors_of(raw, env={"CAM_URL": "rtsp://cam/y", "OTHER": "rtsp://cam/z"})
    assert errors == ["cameras[0].url: unsupported environment variable reference: write ${VAR} or "
                      "${VAR:-default} ($$ for a literal $)"], errors


def test_escaped_dollars_are_still_literal() -> None:
    raw = base()
    raw["cameras"][0]["url"] = "rtsp://u:pa$${x}@cam/x"
    assert parse_config(raw, env={}).cameras[0].url == "rtsp://u:pa${x}@cam/x"


@pytest.mark.parametrize("where, value, text", [
    ("model", "demo://model", "model: expected a mapping, got a string"),
    ("cameras", {"id": "a", "url": "rtsp://cam/x"}, "cameras: expected a list, got a mapping"),
    ("metrics", None, "metrics: expected a mapping, got null"),
    ("sinks", [None], "sinks[0]: expected a mapping, got null"),
])
def test_wrong_shapes_are_said_in_yaml_words(where: str, value: Any, text: str) -> None:
    """"Input should be a valid dictionary or instance of ModelConfig" named a Python class."""
    raw = base()
    raw[where] = value
    assert text in errors_of(raw)


def test_a_key_that_is_not_a_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``1: x`` was reported at "[1]" (a list index); ``? [a, b]`` or ``{a: 1}: x`` crashed the loader."""
    raw = base()
    raw[1] = "x"
    raw["cameras"][0][None] = "x"
    errors = errors_of(raw)
    assert any(e.startswith("unknown key 1; allowed: model, ") for e in errors), errors
    assert any(e.startswith("cameras[0]: unknown key None; allowed: id, url") for e in errors), errors
    ok = "model:\n  path: a.pt\ncameras:\n  - id: a\n    url: rtsp://cam/x\n"
    for text, line in ((ok + "? [a, b]\n: c\n", 6), (ok + "tracking:\n  {a: 1}: 2\n", 7)):
        code, err = run_check(tmp_path, text, capsys)
        assert code == 2 and len(err) == 1 and f"cameras.yaml:{line}: invalid YAML" in err[0], err


def test_a_recursive_alias_is_an_error_not_a_crash(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = "model:\n  path: a.pt\ncameras: &c\n  - id: a\n    url: rtsp://cam/x\n    zones: *c\n"
    code, err = run_check(tmp_path, text, capsys)
    assert code == 2 and len(err) == 1, err
    assert "cameras.yaml: invalid YAML: an alias refers to a node that holds it (at cameras[0].zones)" in err[0]


def test_aliases_of_aliases_that_expand_past_reason_are_refused(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """Nine levels of ten aliases each parse in microseconds and expand to a billion values: interpolation
    and validation walked them until memory or patience ran out."""
    levels = "".join(f"x-l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]\n" for i in range(1, 10))
    text = f"x-l0: &l0 [lol]\n{levels}model:\n  path: a.pt\ncameras:\n  - id: a\n    url: rtsp://cam/x\n    zones: *l9\n"
    code, err = run_check(tmp_path, text, capsys)
    assert code == 2 and len(err) == 1, err
    assert "cameras.yaml: invalid YAML: its aliases expand to more than 1,000,000 values" in err[0]


def test_an_anchor_shared_by_a_wall_of_cameras_is_read(tmp_path: Path) -> None:
    cams = "".join(f"  - {{<<: *cam, id: c{i}}}\n" for i in range(2000))
    path = tmp_path / "cameras.yaml"
    path.write_text(f"x-cam: &cam {{url: rtsp://cam/x, fps: 10}}\nmodel:\n  path: a.pt\ncameras:\n{cams}")
    raw = read_yaml(path)
    assert len(raw["cameras"]) == 2000 and raw["cameras"][-1] == {"url": "rtsp://cam/x", "fps": 10, "id": "c1999"}


@pytest.mark.parametrize("text, what", [("", "empty"), ("# all commented out\n", "empty"),
                                        ("- id: a\n", "got a list"), ("cameras.yaml\n", "got a string")])
def test_an_empty_or_scalar_file_names_the_file(tmp_path: Path, text: str, what: str) -> None:
    """It said "expected a mapping at the top of the config, got NoneType", naming neither file nor YAML."""
    path = tmp_path / "cameras.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: ") and what in str(info.value) and "NoneType" not in str(info.value)


@pytest.mark.parametrize("sink, text", [
    ({"type": "redis", "url": "redis://"}, "sinks[0].url: expected redis://[:password@]host[:port]/db, got no host"),
    ({"type": "redis", "url": "redis://:secret@h:abc/0"}, "sinks[0].url: not a valid URL"),
    ({"type": "redis", "url": "redis://u:secret/x@h/0"}, "sinks[0].url: not a valid URL"),  # "secret" read as the port
    ({"type": "mqtt", "url": "mqtt://h:0"}, "sinks[0].url: expected mqtt://HOST[:PORT] or mqtts://HOST[:PORT], got port 0"),
    ({"type": "zmq", "endpoint": "tcp://*:99999"}, "sinks[0].endpoint: expected tcp://HOST:PORT with a port"),
    ({"type": "zmq", "endpoint": "tcp://127.0.0.1"}, "sinks[0].endpoint: expected tcp://HOST:PORT with a port"),
    ({"type": "jsonl", "path": "{tmp}"}, "sinks[0].path: {tmp} is a folder"),
    ({"type": "redis", "url": "redis://h/0", "spool_max_mb": float("inf")}, "sinks[0].spool_max_mb: "),
])
def test_a_sink_that_cannot_work_is_refused_at_load(tmp_path: Path, sink: dict[str, Any], text: str) -> None:
    """Each passed --check, then failed or reconnected for ever once running."""
    raw = base()
    raw["sinks"] = [{k: v.format(tmp=tmp_path) if isinstance(v, str) else v for k, v in sink.items()}]
    errors = errors_of(raw)
    assert any(e.startswith(text.format(tmp=tmp_path)) for e in errors), errors


@pytest.mark.parametrize("endpoint", ["tcp://*:5555", "tcp://127.0.0.1:1", "tcp://*:*", "ipc:///tmp/x", "inproc://a"])
def test_zmq_endpoints_that_work_pass(endpoint: str) -> None:
    raw = base()
    raw["sinks"] = [{"type": "zmq", "endpoint": endpoint}]
    parse_config(raw, env={})


@pytest.mark.parametrize("path, ok", [("best.bin", False), ("models/", False), ("m_openvino_model/", True),
                                      ("best.pt", True), ("demo://model", True)])
def test_a_model_file_no_backend_knows_is_refused_at_load(path: str, ok: bool) -> None:
    """An unknown suffix passed --check, then the device stage failed with 'unknown model format', once running."""
    raw = base()
    raw["model"]["path"] = path
    if ok:
        parse_config(raw, env={}, check_files=False)
        return
    errors = errors_of(raw)
    assert any(e.startswith(f"model.path: {path.rstrip('/')}: unknown model format (expected one of: .pt,")
               for e in errors), errors
