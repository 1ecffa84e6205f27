"""`segpipe run` end to end: --check, config errors (exit 2, all listed), a real run stopped by
SIGTERM (drained, metrics served, shared memory freed), and the live table."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from pipeline import shm
from pipeline.cli import main
from pipeline.console import Console, camera_row, render
from pipeline.messages import CameraState
from pipeline.shard import Shard, select
from tests.conftest import REPO, free_port
from tests.pipeline.media import write_clip


def write_config(tmp_path: Path, **over: object) -> Path:
    clip = write_clip(tmp_path / "clip.mp4", frames=15, fps=15, size=(96, 64))
    cfg = {"model": {"path": "yolov8n-seg.yaml", "device": "cpu", "imgsz": 64, "conf": 1e-6, "max_det": 4, "threads": 1},
           "batch": {"max_batch": 4, "max_wait_ms": 5, "max_age_ms": 5000},
           "cameras": [{"id": "loop", "url": str(clip), "loop": True}, {"id": "once", "url": str(clip)}],
           "sinks": [{"type": "jsonl", "path": str(tmp_path / "events.jsonl")}],
           "metrics": {"port": free_port()}}
    cfg.update(over)
    path = tmp_path / "cameras.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_check_validates_without_starting_anything(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(tmp_path)
    assert main(["run", str(path), "--check"]) == 0
    assert "OK: 2 camera(s), 1 sink(s)" in capsys.readouterr().out
    assert main(["run", str(path), "--check", "--shard", "0/1"]) == 0
    assert "shard 0/1: 2 of them here" in capsys.readouterr().out
    # a replica that runs none of them still says how many the config has
    empty = next(f"{k}/8" for k in range(8) if not select(["loop", "once"], Shard(k, 8)))
    assert main(["run", str(path), "--check", "--shard", empty]) == 0
    assert f"OK: 2 camera(s) (shard {empty}: 0 of them here)" in capsys.readouterr().out
    path = write_config(tmp_path, events={"workers": 3}, sinks=[
        {"type": "video", "dir": str(tmp_path / "clips"), "name": "gate-clips", "clips": {"triggers": ["detection"]}},
        {"type": "preview", "port": 8091}])
    assert main(["run", str(path), "--check"]) == 0
    assert capsys.readouterr().out.rstrip().endswith(
        "3 event workers, event clips (gate-clips), live preview on http://127.0.0.1:8091/ (preview)")
    path = write_config(tmp_path, sinks=[
        {"type": "webhook", "url": "https://ops:hunter2@hooks.example/in", "events": ["detection", "status"]},
        {"type": "restream", "url": "rtsp://ops:hunter2@mtx:8554/segpipe/{camera}"}])
    raw = yaml.safe_load(path.read_text())
    raw["cameras"][0]["roi"] = [0, 0.5, 1, 1]
    path.write_text(yaml.safe_dump(raw))
    assert main(["run", str(path), "--check"]) == 0
    assert capsys.readouterr().out.rstrip().endswith(
        "webhook detection/status to https://***@hooks.example/in (webhook), "
        "live video to rtsp://***@mtx:8554/segpipe/{camera} (restream), 1 camera roi(s)")


DEMO_LABELS = "(vehicle, person, bicycle, box, bottle, tool)"
CLASSES_CHECKED = [  # (camera classes, sinks, the error lines of --check against the demo model's labels)
    (["vehicle", "car"], [], [f"cameras[0].classes: 'car' is not a class of demo://model {DEMO_LABELS}"]),
    (None, [{"type": "webhook", "url": "http://127.0.0.1:9/h", "classes": ["person", "human"]}],
     ["sinks[0].classes: 'human' is not a class of demo://model"]),
    (None, [{"type": "video", "dir": "clips", "clips": {"triggers": ["detection"], "classes": ["truck"]}}],
     ["sinks[0].clips.classes: 'truck' is not a class of demo://model"]),
    (["vehicle"], [{"type": "webhook", "url": "http://127.0.0.1:9/h", "classes": ["person"]}], []),
    ([6], [], ["model.classes: class id 6 is not a class of demo://model (ids 0-5)"]),  # as model.classes
    ([0, 5], [], []),
]


@pytest.mark.parametrize("classes, sinks, errors", CLASSES_CHECKED,
                         ids=["camera", "webhook", "clips", "known", "model-id", "model-ids-known"])
def test_check_refuses_classes_the_model_does_not_have(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                       classes: list | None, sinks: list[dict[str, object]],
                                                       errors: list[str]) -> None:
    model: dict[str, object] = {"path": "demo://model", "device": "cpu"}
    if classes and isinstance(classes[0], int):  # class ids: the model's own filter
        model["classes"], classes = classes, None
    path = write_config(tmp_path, model=model, sinks=sinks)
    raw = yaml.safe_load(path.read_text())
    raw["cameras"][0]["classes"] = classes
    path.write_text(yaml.safe_dump(raw))
    assert main(["run", str(path), "--check"]) == (2 if errors else 0)
    assert capsys.readouterr().err.splitlines() == [f"segpipe run: error: {e}" for e in errors]


def _frames(events: Path) -> int:
    return events.read_text().count('"kind":"frame"') if events.exists() else 0


def _wait_frames(proc: subprocess.Popen, events: Path, n: int) -> None:
    deadline = time.monotonic() + 120
    while _frames(events) < n:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"fewer than {n} frames published"
        time.sleep(0.1)


STOPS = [  # (how the run is stopped, how stdout is read): each a clean, complete shutdown
    ("sigterm-to-the-group", "read"),   # systemd's KillMode=control-group, timeout(1), kill -- -PGID
    ("sigterm", "closed"),              # the table's reader went away (| head, a dead tee) long before
]


@pytest.mark.parametrize("stop, stdout", STOPS, ids=[s for s, _ in STOPS])
def test_a_run_stops_cleanly_whatever_its_surroundings_do(tmp_path: Path, stop: str, stdout: str) -> None:
    path = write_config(tmp_path)
    events = tmp_path / "events.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "run", str(path), "--console-interval", "0.2"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        assert proc.stdout is not None
        if stdout == "closed":
            proc.stdout.readline()
            proc.stdout.close()
        _wait_frames(proc, events, 10)
        if stdout == "closed":  # the console's next writes fail: frames must keep coming all the same
            at = _frames(events)
            _wait_frames(proc, events, at + 10)
        if stop == "sigterm-to-the-group":
            os.killpg(proc.pid, signal.SIGTERM)
        else:
            proc.send_signal(signal.SIGTERM)
        err = proc.communicate(timeout=120)[1]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, err[-3000:]
    assert "Traceback" not in err and "level=ERROR" not in err and "run: error" not in err, err[-3000:]
    assert ("event=console_off" in err) == (stdout == "closed")
    lines = [json.loads(x) for x in events.read_text().splitlines()]
    summary = re.search(r"camera=loop event=summary state=stopped decoded=\d+ inferred=(\d+)", err)
    assert summary, err[-3000:]
    assert sum(e["kind"] == "frame" and e["camera"] == "loop" for e in lines) == int(summary.group(1))  # drained
    assert [e["state"] for e in lines if e["kind"] == "status" and e["camera"] == "loop"][-1] == "stopped"
    assert shm.list_segments(f"{shm.ROOT}{proc.pid}_") == []


JSON_ERRORS = [  # (what is wrong, exit code, the error record's message)
    ("typo", 2, "segpipe run: error: batch.max_bach: unknown key 'max_bach' (did you mean 'max_batch'?); "
                "allowed: max_batch, max_wait_ms, max_age_ms"),
    ("not-a-video", 1, "segpipe run: error: camera(s) failed: junk (cannot open: InvalidDataError: Invalid data "
                       "found when processing input)"),  # with why: the last line is what an operator reads
]


@pytest.mark.parametrize("broken, code, message", JSON_ERRORS, ids=[b for b, _, _ in JSON_ERRORS])
def test_json_logs_are_json_to_the_last_line(tmp_path: Path, broken: str, code: int, message: str) -> None:
    # --log-format json is for a log shipper: the closing error lines were plain text
    if broken == "typo":
        path = write_config(tmp_path, batch={"max_bach": 2})
    else:
        (tmp_path / "junk.mp4").write_text("not a video\n")
        path = write_config(tmp_path, cameras=[{"id": "junk", "url": str(tmp_path / "junk.mp4")}])
    r = subprocess.run([sys.executable, "-m", "pipeline", "run", str(path), "--no-console", "--log-format", "json"],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == code, r.stderr[-3000:]
    records = [json.loads(line) for line in r.stderr.splitlines()]  # every line, or JSONDecodeError
    assert records[-1]["level"] == "error" and records[-1]["msg"] == message


def test_config_errors_exit_2_listing_all(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(tmp_path, batch={"max_batch": 0, "max_wait": 3},
                        cameras=[{"id": "a", "url": "ftp://x"}, {"id": "a", "url": "rtsp://u:hunter2@h/s"}])
    t0 = time.monotonic()
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "segpipe run: error: cameras[1].id: duplicate camera id 'a' (also cameras[0])",
        "segpipe run: error: batch.max_batch: Input should be greater than or equal to 1",
        "segpipe run: error: batch.max_wait: unknown key 'max_wait' (did you mean 'max_wait_ms'?); allowed: "
        "max_batch, max_wait_ms, max_age_ms",
        "segpipe run: error: cameras[0].url: unsupported scheme 'ftp'; expected a file path, demo:// or one of rtsp://, "
        "rtsps://, http://, https://",
    ]
    assert time.monotonic() - t0 < 5 and shm.list_segments(f"{shm.ROOT}{os.getpid()}_") == []
    assert main(["run", str(tmp_path / "missing.yaml")]) == 2
    assert main(["run", str(path), "--check", "--shard", "3/2"]) == 2
    assert "shard index 3 is out of range" in capsys.readouterr().err


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_sigterm_drains_publishes_and_frees_shared_memory(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    port = yaml.safe_load(path.read_text())["metrics"]["port"]
    events = tmp_path / "events.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "run", str(path), "--no-console"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (events.exists() and events.read_text().count('"kind":"frame"') >= 20
                   and '"camera":"once","state":"ended"' in events.read_text()):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no frames published"
            time.sleep(0.2)
        status, text = _get(f"http://127.0.0.1:{port}/metrics")
        assert status == 200 and 'segpipe_frames_decoded_total{camera="loop"}' in text
        assert 'segpipe_queue_fill_ratio{stage="sinks"}' in text
        status, text = _get(f"http://127.0.0.1:{port}/cameras")
        cams = {c["id"]: c for c in json.loads(text)["cameras"]}
        assert 0.0 <= json.loads(text)["queues"]["sinks"] <= 1.0
        assert status == 200 and cams["loop"]["state"] == "live" and cams["loop"]["inferred"] > 0
        assert cams["loop"]["url"].endswith("clip.mp4") and "heartbeat" not in cams["loop"]
        assert cams["loop"]["picture"] == "ok"
        table = subprocess.run([sys.executable, "-m", "pipeline", "status", f"http://127.0.0.1:{port}",
                                "--interval", "0.5"], cwd=REPO, capture_output=True, text=True, timeout=60)
        assert table.returncode == 0, table.stderr
        lines = table.stdout.splitlines()
        assert lines[0].startswith("model yolov8n-seg.yaml on " + json.loads(text)["device"] + "; queues sinks ")
        assert "INF/s" in lines[1]
        assert re.match(r"loop\s+live\s+ok\s+96x64\s", lines[2]) and lines[-1].startswith("total")
        assert _get(f"http://127.0.0.1:{port}/healthz")[0] == 200
        assert _get(f"http://127.0.0.1:{port}/readyz")[0] == 200  # engine loaded, a camera live
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "reason=SIGTERM" in err
    lines = [json.loads(x) for x in events.read_text().splitlines()]
    for cam in ("loop", "once"):
        published = sum(1 for e in lines if e["kind"] == "frame" and e["camera"] == cam)
        summary = re.search(rf"camera={cam} event=summary state=(\w+) decoded=(\d+) inferred=(\d+)", err)
        assert summary, err
        assert int(summary.group(3)) == published  # every inferred frame was published
        states = [e["state"] for e in lines if e["kind"] == "status" and e["camera"] == cam]
        assert states[0] == "connecting" and states[-1] == summary.group(1)
    assert [e["state"] for e in lines if e["kind"] == "status" and e["camera"] == "once"][-1] == "ended"
    assert [e["state"] for e in lines if e["kind"] == "status" and e["camera"] == "loop"][-1] == "stopped"
    assert shm.list_segments(f"{shm.ROOT}{proc.pid}_") == []  # nothing left in /dev/shm
    assert re.search(r"event=stopped shm_segments_unlinked=\d+ errors=0", err)


def test_status_of_nothing_running_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    assert main(["status", f"http://127.0.0.1:{port}"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"segpipe status: error: cannot reach http://127.0.0.1:{port}/cameras")
    assert main(["status", "127.0.0.1:9108"]) == 2
    assert "expected http://host:port" in capsys.readouterr().err


def test_console_table() -> None:
    before = {"decoded": 10, "inferred": 8, "dropped": 1, "stale": 0, "latency_ms": 0.0, "restarts": 0,
              "width": 0, "height": 0}
    now = {**before, "decoded": 40, "inferred": 23, "dropped": 3, "stale": 2, "latency_ms": 41.6, "width": 1280,
           "height": 720}
    row = camera_row("gate", CameraState.LIVE, now, before, dt=2.0)
    assert (row.decoded_fps, row.inferred_fps, row.dropped, row.stale, row.size) == (15.0, 7.5, 3, 2, "1280x720")
    text = render([row, camera_row("door", CameraState.RECONNECTING, before, None, dt=0)]).splitlines()
    assert text[0].split() == ["CAMERA", "STATE", "PICTURE", "SIZE", "DEC/s", "INF/s", "DROPS", "STALE", "LAT",
                               "ms", "RESTARTS", "TRACKS", "IN/OUT"]
    assert text[1].split() == ["gate", "live", "ok", "1280x720", "15.0", "7.5", "3", "2", "42", "0", "-", "-"]
    assert text[2].split() == ["door", "reconnecting", "ok", "-", "0.0", "0.0", "1", "0", "-", "0", "-", "-"]
    assert text[3].split()[:4] == ["total", "1/2", "live", "15.0"]
    # a camera's picture verdict (from the supervisor's rows), counted in the total
    text = render([camera_row("gate", CameraState.LIVE, {**now, "picture": "frozen"}, before, dt=2.0),
                   camera_row("door", CameraState.LIVE, {**now, "picture": "blank"}, None, dt=0),
                   camera_row("dock", CameraState.LIVE, now, None, dt=0)]).splitlines()
    assert [line.split()[2] for line in text[1:4]] == ["frozen", "blank", "ok"]
    assert text[4].split()[:5] == ["total", "3/3", "live", "2", "bad"]
    # tracking on, lines on one camera: objects tracked and (in, out) crossings, summed in the total
    rows = [camera_row("gate", CameraState.LIVE, {**now, "tracks": 12, "crossed": (3, 4)}, None, dt=0),
            camera_row("yard", CameraState.LIVE, {**now, "tracks": 5}, None, dt=0)]
    text = render(rows).splitlines()
    assert text[1].split()[-2:] == ["12", "3/4"] and text[2].split()[-2:] == ["5", "-"]
    assert text[3].split()[-2:] == ["17", "3/4"]
    out = io.StringIO()
    console = Console(stream=out, interval_s=0.0)
    console.update([("gate", CameraState.LIVE, now)])
    assert "\x1b[" not in out.getvalue() and out.getvalue().startswith("--- ")  # plain text off a TTY


def test_every_process_logs_in_the_chosen_format(tmp_path: Path) -> None:
    """--log-format json: the children's lines (a sink stage's, a decoder's) are JSON like the
    supervisor's, info lines included, so a log shipper parses every line of a run."""
    from tests.conftest import server_port

    path = write_config(tmp_path, cameras=[{"id": "once", "url": str(write_clip(tmp_path / "c.mp4", frames=5,
                                                                                   fps=15, size=(96, 64))),
                                            "realtime": False}],
                        sinks=[{"type": "preview", "port": server_port()}], metrics={"enabled": False})
    proc = subprocess.run([sys.executable, "-m", "pipeline", "run", str(path), "--no-console", "--log-format",
                           "json"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    records = [json.loads(line) for line in proc.stderr.splitlines()]  # every line: one JSON object
    loggers = {r["logger"] for r in records}
    assert "segpipe.supervisor" in loggers
    preview = [r for r in records if r["logger"] == "pipeline.sinks.preview"]
    assert preview and preview[0]["level"] == "info" and "serving http://" in preview[0]["msg"]  # the sink stage's
