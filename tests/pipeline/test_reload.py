"""Config reload (SIGHUP to `segpipe run`): what a new config changes (pipeline.reload.plan_reload), and a
real run that gains a camera, takes new zones and a new model, survives a broken config and a model that
does not load, and loses a camera while the others stream on."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from pipeline import shm
from pipeline.config import parse_config
from pipeline.reload import plan_reload
from tests.conftest import REPO
from tests.helpers import read_jsonl
from tests.pipeline.media import write_clip

ZONE = {"name": "all", "polygon": [[0, 0], [1, 0], [1, 1], [0, 1]]}
LINE = {"name": "mid", "points": [[0, 0.5], [1, 0.5]]}


def _cfg(cameras: list[dict], **over: object) -> dict:
    return {"model": {"path": "m.pt"}, "tracking": {"enabled": True}, "cameras": cameras, **over}


def test_plan_matches_cameras_by_id() -> None:
    old = parse_config(_cfg([{"id": "a", "url": "a.mp4"}, {"id": "b", "url": "b.mp4"},
                             {"id": "c", "url": "c.mp4", "zones": [ZONE]}]), check_files=False)
    same = plan_reload(old, old)
    assert (same.stop, same.start, same.shapes, same.model, same.ignored, same.changes_cameras) == (
        (), (), False, False, (), False)
    new = parse_config(_cfg([{"id": "d", "url": "d.mp4"}, {"id": "b", "url": "b.mp4", "fps": 5},
                             {"id": "c", "url": "c.mp4", "lines": [LINE]}], model={"path": "n.pt"},
                            batch={"max_batch": 2}), check_files=False)
    plan = plan_reload(old, new)
    assert plan.stop == ("a", "b")                       # removed, and changed decoder settings
    assert [c.id for c in plan.start] == ["d", "b"]      # in the new config's order
    assert plan.shapes and plan.model and plan.ignored == ("batch",) and plan.cameras == new.cameras
    moved = parse_config(_cfg([{"id": "a", "url": "a.mp4"}], model={"path": "n.pt", "device": "cuda:1"}),
                         check_files=False)
    plan = plan_reload(old, moved)
    assert not plan.model and plan.ignored == ("model.device",)  # the new path waits for the restart too
    shapes_only = parse_config(_cfg([{"id": "a", "url": "a.mp4", "zones": [ZONE]}, {"id": "b", "url": "b.mp4"},
                                     {"id": "c", "url": "c.mp4", "zones": [ZONE]}]), check_files=False)
    plan = plan_reload(old, shapes_only)
    assert (plan.stop, plan.start, plan.shapes) == ((), (), True)  # a keeps its decoder
    classes = parse_config(_cfg([{"id": "a", "url": "a.mp4", "classes": ["car"]}, {"id": "b", "url": "b.mp4"},
                                 {"id": "c", "url": "c.mp4", "zones": [ZONE]}]), check_files=False)
    plan = plan_reload(old, classes)
    assert (plan.stop, plan.start, plan.shapes) == ((), (), True)  # so does a camera given classes
    roi = parse_config(_cfg([{"id": "a", "url": "a.mp4", "roi": [0, 0.5, 1, 1]}, {"id": "b", "url": "b.mp4"},
                             {"id": "c", "url": "c.mp4", "zones": [ZONE]}]), check_files=False)
    plan = plan_reload(old, roi)
    assert plan.stop == ("a",) and [c.roi for c in plan.start] == [(0, 0.5, 1, 1)]  # attached with its roi
    picture = parse_config(_cfg([{"id": "a", "url": "a.mp4", "picture": {"frozen_s": 60}}, {"id": "b", "url": "b.mp4"},
                                 {"id": "c", "url": "c.mp4", "zones": [ZONE]}]), check_files=False)
    plan = plan_reload(old, picture)  # the decoder checks the picture: a new one starts with the new checks
    assert plan.stop == ("a",) and [c.picture.frozen_s for c in plan.start] == [60] and not plan.shapes


def _events(path: Path) -> list[dict]:
    return read_jsonl(path)


MODEL = {"path": "yolov8n-seg.yaml", "device": "cpu", "imgsz": 64, "conf": 1e-6, "max_det": 4, "threads": 1}


def _base(events: Path, **model: object) -> dict:
    """A run config but its cameras: the random-weight YAML model at 64 px (``model`` overrides), a
    JSONL sink writing ``events``, no metrics port."""
    return {"model": {**MODEL, **model}, "sinks": [{"type": "jsonl", "path": str(events)}],
            "metrics": {"enabled": False}}


class _Run:
    """``segpipe run CONFIG ARGS`` in the background, its stderr in ``log``; killed on the way out if it
    is still running (a failed assertion), so no test leaves a pipeline behind."""

    def __init__(self, config: Path, log: Path, *args: str) -> None:
        self.config, self.log, self.args = config, log, args

    def __enter__(self) -> subprocess.Popen:
        with open(self.log, "w") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "pipeline", "run", str(self.config), "--no-console",
                                          *self.args], cwd=REPO, stdout=subprocess.DEVNULL, stderr=err, text=True)
        self.proc.log = self.log  # type: ignore[attr-defined]  # for _wait's message
        return self.proc

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)


def _wait(proc: subprocess.Popen, what: str, cond: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert proc.poll() is None, f"segpipe run exited waiting for {what}: {proc.log.read_text()[-3000:]}"  # type: ignore[attr-defined]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_sighup_applies_a_new_config_to_a_running_pipeline(tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "clip.mp4", frames=15, fps=15, size=(96, 64))
    events, err_log = tmp_path / "events.jsonl", tmp_path / "stderr.log"
    base = {**_base(events), "batch": {"max_batch": 4, "max_wait_ms": 5, "max_age_ms": 5000}}
    cam = {"url": str(clip), "loop": True}
    path = tmp_path / "cameras.yaml"

    def write(cameras: list[dict], **over: object) -> None:
        path.write_text(yaml.safe_dump({**base, "cameras": cameras, **over}))

    def frames(camera: str, **where: object) -> list[dict]:
        return [e for e in _events(events) if e["kind"] == "frame" and e["camera"] == camera
                and all(k in e for k in where)]

    write([{"id": "a", **cam}])
    with _Run(path, err_log) as proc:
        _wait(proc, "camera a's frames", lambda: len(frames("a")) >= 5)
        # 1: camera b added, zones for a (its decoder kept), another model (swapped in), a batch change
        # that needs a restart
        model2 = {**base["model"], "path": "yolov8s-seg.yaml"}
        write([{"id": "a", **cam, "zones": [ZONE]}, {"id": "b", **cam}], model=model2,
              batch={**base["batch"], "max_batch": 2})
        proc.send_signal(signal.SIGHUP)
        _wait(proc, "camera b's frames, a's zones and the new model",
              lambda: len(frames("b")) >= 5 and len(frames("a", zone_counts=1)) >= 3
              and any(e["model"] == "yolov8s-seg.yaml" for e in frames("b")))
        # 1b: a model file that does not load: reported, the running model streams on
        (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
        write([{"id": "a", **cam, "zones": [ZONE]}, {"id": "b", **cam}],
              model={**base["model"], "path": str(tmp_path / "broken.pt")}, batch={**base["batch"], "max_batch": 2})
        proc.send_signal(signal.SIGHUP)
        _wait(proc, "the model error", lambda: "event=model_swap_failed" in err_log.read_text())
        n_b = len(frames("b"))
        _wait(proc, "camera b streaming on", lambda: len(frames("b")) >= n_b + 5)
        assert {e["model"] for e in frames("b")[n_b:]} == {"yolov8s-seg.yaml"}
        # 2: a broken config is reported and the running one kept
        path.write_text("cameras: [{id: a}]\n")
        proc.send_signal(signal.SIGHUP)
        _wait(proc, "the reload error", lambda: "event=reload_failed kept=running_config" in err_log.read_text())
        n_b = len(frames("b"))
        _wait(proc, "camera b streaming on", lambda: len(frames("b")) >= n_b + 5)
        # 3: camera a removed, camera b restarted with a new setting (a new ring under the same id)
        write([{"id": "b", **cam, "fps": 12}], model=model2)
        proc.send_signal(signal.SIGHUP)
        _wait(proc, "camera a stopped", lambda: any(e["kind"] == "status" and e["camera"] == "a"
                                                    and e["state"] == "stopped" for e in _events(events)))
        n_a, n_b = len(frames("a")), len(frames("b"))
        _wait(proc, "camera b streaming on", lambda: len(frames("b")) >= n_b + 10)
        assert len(frames("a")) <= n_a + 4  # at most the frames already in flight
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    log = err_log.read_text()
    assert proc.returncode == 0, log[-3000:]
    assert "Traceback" not in log
    assert "event=reload_ignored section=batch" in log and log.count("event=model_swapped") == 1
    assert re.search(r"event=reload_failed error=\"?'?cameras\[0\]\.url: required key is missing", log), log
    assert "camera=a event=camera_removed" in log and log.count("camera=b event=camera_added") == 2
    states_a = [e["state"] for e in _events(events) if e["kind"] == "status" and e["camera"] == "a"]
    assert states_a.count("connecting") == 1 and states_a[-1] == "stopped"  # zones alone never restarted it
    states_b = [e["state"] for e in _events(events) if e["kind"] == "status" and e["camera"] == "b"]
    assert states_b.count("connecting") == 2 and "stopped" in states_b[:-1]
    assert shm.list_segments(f"{shm.ROOT}{proc.pid}_") == []


def test_an_idle_replica_starts_when_a_reload_gives_it_cameras(tmp_path: Path) -> None:
    from pipeline.shard import Shard, select

    clip = write_clip(tmp_path / "clip.mp4", frames=15, fps=15, size=(96, 64))
    ids = [f"cam{i}" for i in range(12)]
    ours, theirs = select(ids, Shard(1, 2)), select(ids, Shard(0, 2))
    events, path, err_log = tmp_path / "events.jsonl", tmp_path / "cameras.yaml", tmp_path / "stderr.log"
    base = _base(events)
    path.write_text(yaml.safe_dump({**base, "cameras": [{"id": theirs[0], "url": str(clip), "loop": True}]}))
    with _Run(path, err_log, "--shard", "1/2") as proc:
        _wait(proc, "it to say it is idle", lambda: "event=idle" in err_log.read_text())
        assert proc.poll() is None and not events.exists()  # idle: nothing of its own to run
        path.write_text(yaml.safe_dump({**base, "cameras": [{"id": c, "url": str(clip), "loop": True}
                                                            for c in (theirs[0], ours[0])]}))
        proc.send_signal(signal.SIGHUP)
        _wait(proc, "its camera's frames", lambda: sum(e["kind"] == "frame" for e in _events(events)) >= 5)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    err = err_log.read_text()
    assert proc.returncode == 0, err[-3000:]
    assert {e["camera"] for e in _events(events)} == {ours[0]} and "event=idle" in err


def test_a_replica_whose_shard_a_reload_empties_stops_its_cameras_and_idles(tmp_path: Path) -> None:
    """The config moves every camera of this replica away (renamed, removed): they stop (another replica
    runs the new ones; the reload was refused and they streamed on, twice), the run idles instead of
    ending, and a later reload that gives it a camera starts it."""
    from pipeline.shard import Shard, select

    clip = write_clip(tmp_path / "clip.mp4", frames=15, fps=15, size=(96, 64))
    ids = [f"cam{i}" for i in range(12)]
    ours, theirs = select(ids, Shard(1, 2)), select(ids, Shard(0, 2))
    events, path, err_log = tmp_path / "events.jsonl", tmp_path / "cameras.yaml", tmp_path / "stderr.log"
    base = _base(events)

    def write(*cameras: str) -> None:
        path.write_text(yaml.safe_dump({**base, "cameras": [{"id": c, "url": str(clip), "loop": True}
                                                            for c in cameras]}))

    def statuses(camera: str) -> list[str]:
        return [e["state"] for e in _events(events) if e["kind"] == "status" and e["camera"] == camera]

    write(theirs[0], ours[0])
    with _Run(path, err_log, "--shard", "1/2") as proc:
        _wait(proc, "our camera's frames", lambda: any(e["kind"] == "frame" for e in _events(events)))
        write(theirs[0], theirs[1])
        proc.send_signal(signal.SIGHUP)
        _wait(proc, "our camera to stop", lambda: "stopped" in statuses(ours[0]))
        assert proc.poll() is None and "event=idle" in err_log.read_text()
        write(theirs[0], ours[1])
        proc.send_signal(signal.SIGHUP)
        _wait(proc, "the camera the next reload gives it",
              lambda: any(e["kind"] == "frame" and e["camera"] == ours[1] for e in _events(events)))
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    err = err_log.read_text()
    assert proc.returncode == 0, err[-3000:]
    assert {e["camera"] for e in _events(events)} == {ours[0], ours[1]} and "reload_failed" not in err
    assert shm.list_segments(f"{shm.ROOT}{proc.pid}_") == []


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def test_removing_a_camera_that_is_reconnecting(tmp_path: Path) -> None:
    """A camera whose server is gone sits in its back-off; a reload that removes it stops it at once."""
    from tests.conftest import free_port

    clip = write_clip(tmp_path / "clip.mp4", frames=15, fps=15, size=(96, 64))
    events, path, err_log = tmp_path / "events.jsonl", tmp_path / "cameras.yaml", tmp_path / "stderr.log"
    live = {"id": "file", "url": str(clip), "loop": True}
    dead = {"id": "gone", "url": f"rtsp://127.0.0.1:{free_port()}/stream", "open_timeout_s": 1, "read_timeout_s": 1,
            "reconnect": {"initial_s": 5, "max_s": 30}}
    base = _base(events)
    path.write_text(yaml.safe_dump({**base, "cameras": [live, dead]}))
    with _Run(path, err_log) as proc:
        _wait(proc, "the dead camera's back-off", lambda: any(
            e["kind"] == "status" and e["camera"] == "gone" and e["state"] == "reconnecting" for e in _events(events)))
        path.write_text(yaml.safe_dump({**base, "cameras": [live]}))
        t0 = time.monotonic()
        proc.send_signal(signal.SIGHUP)
        _wait(proc, "it stopped", lambda: "camera=gone event=camera_removed" in err_log.read_text(), timeout=10)
        took = time.monotonic() - t0
        n = sum(e["kind"] == "frame" for e in _events(events))
        _wait(proc, "the other camera streaming on", lambda: sum(e["kind"] == "frame" for e in _events(events)) > n + 5)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    assert proc.returncode == 0 and took < 3  # not its 5 s back-off
    states = [e["state"] for e in _events(events) if e["kind"] == "status" and e["camera"] == "gone"]
    assert states[-1] == "stopped"


def test_camera_classes_are_checked_against_the_model(tmp_path: Path) -> None:
    """A label the model does not have is an error at start-up (before any camera starts) and makes a
    reload fail; a reload that narrows a camera's labels filters from then on, its decoder untouched."""
    from collections import Counter

    clip = write_clip(tmp_path / "clip.mp4", frames=15, fps=15, size=(96, 64))
    events, path, err_log = tmp_path / "events.jsonl", tmp_path / "cameras.yaml", tmp_path / "stderr.log"
    base = _base(events, max_det=20)
    every = [f"class{i}" for i in range(80)]  # a model built from its YAML names its classes class0..class79

    def write(classes: list[str]) -> None:
        path.write_text(yaml.safe_dump({**base, "cameras": [{"id": "a", "url": str(clip), "loop": True,
                                                             "classes": classes}]}))

    def frames() -> list[dict]:
        return [e for e in _events(events) if e["kind"] == "frame"]

    write(["class0", "lorry"])
    bad = subprocess.run([sys.executable, "-m", "pipeline", "run", str(path), "--no-console"], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert ("segpipe run: error: cameras[0].classes: 'lorry' is not a class of yolov8n-seg.yaml (class0, class1, "
            "class2, class3, class4, class5, class6, class7, class8, class9, ... (80 in all))") in bad.stderr
    assert "state=connecting" not in bad.stderr  # no camera was started
    write(every)
    with _Run(path, err_log) as proc:
        _wait(proc, "detections", lambda: sum(len(e["detections"]) for e in frames()) >= 20)
        # the label this (randomly initialised) model gives most: take it away
        common = Counter(d["label"] for e in frames() for d in e["detections"]).most_common(1)[0][0]
        write([c for c in every if c != common])
        proc.send_signal(signal.SIGHUP)
        _wait(proc, "the reload", lambda: "event=reloaded" in err_log.read_text())
        n = len(frames())
        _wait(proc, "25 more frames", lambda: len(frames()) >= n + 25)
        write(["lorry"])
        proc.send_signal(signal.SIGHUP)
        _wait(proc, "the refusal", lambda: "event=reload_failed kept=running_config" in err_log.read_text())
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    log = err_log.read_text()
    assert proc.returncode == 0 and "event=reload_failed error=\"cameras[0].classes: 'lorry' is not a class" in log
    assert log.count("camera=a state=connecting") == 1  # classes are the sink stage's: no decoder restart
    late = frames()[n + 15:]  # past any frame still on its way (or in the file's buffer) when the list came
    assert late and all(d["label"] != common for e in late for d in e["detections"])


def _maps(pid: int, prefix: str) -> int:
    """Shared-memory segments of ``prefix`` the process ``pid`` has mapped."""
    try:
        return sum(prefix in line for line in Path(f"/proc/{pid}/maps").read_text().splitlines())
    except OSError:
        return 0


def test_reloads_leave_no_segments_or_mappings_behind(tmp_path: Path) -> None:
    """Cameras added and removed ten times: shared memory ends as it started (one control and one frame
    segment per camera), in /dev/shm and in the device stage's address space."""
    clip = write_clip(tmp_path / "clip.mp4", frames=15, fps=15, size=(96, 64))
    events, path, err_log = tmp_path / "events.jsonl", tmp_path / "cameras.yaml", tmp_path / "stderr.log"
    base = _base(events)

    def write(ids: list[str]) -> None:
        path.write_text(yaml.safe_dump({**base, "cameras": [{"id": c, "url": str(clip), "loop": True} for c in ids]}))

    def live(cid: str) -> bool:
        return any(e["kind"] == "status" and e["camera"] == cid and e["state"] == "live" for e in _events(events))

    write(["keep"])
    with _Run(path, err_log) as proc:
        prefix = f"{shm.ROOT}{proc.pid}_"
        _wait(proc, "the first camera", lambda: live("keep"))
        device = next(pid for pid in _children(proc.pid) if _maps(pid, prefix))
        baseline = (len(shm.list_segments(prefix)), _maps(device, prefix))
        for i in range(10):
            write(["keep", f"extra{i}"])
            proc.send_signal(signal.SIGHUP)
            _wait(proc, f"extra{i} live", lambda i=i: live(f"extra{i}"))
            write(["keep"])
            proc.send_signal(signal.SIGHUP)
            _wait(proc, f"extra{i} stopped", lambda i=i: any(
                e["kind"] == "status" and e["camera"] == f"extra{i}" and e["state"] == "stopped" for e in _events(events)))
        # the device stage lets go of a removed ring once its last batch is through
        _wait(proc, "the mappings to settle",
              lambda: (len(shm.list_segments(prefix)), _maps(device, prefix)) == baseline, timeout=10)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    assert proc.returncode == 0, err_log.read_text()[-3000:]
    assert baseline[0] == 2 and shm.list_segments(prefix) == []


def test_a_hangup_while_starting_is_kept_not_fatal(tmp_path: Path) -> None:
    """SIGHUP's default action ends a process: one that comes while `segpipe run` loads its config is
    held and applied once the pipeline is up."""
    clip = write_clip(tmp_path / "clip.mp4", frames=5, fps=15, size=(96, 64))
    events, path = tmp_path / "events.jsonl", tmp_path / "cameras.yaml"
    path.write_text(yaml.safe_dump({**_base(events), "cameras": [{"id": "a", "url": str(clip), "realtime": False}]}))
    script = ("import os, signal, sys\n"
              "import pipeline.config as c\n"
              "load = c.load_config\n"
              "def hung_up(*a, **k):\n"
              "    os.kill(os.getpid(), signal.SIGHUP)\n"
              "    return load(*a, **k)\n"
              "c.load_config = hung_up\n"
              "from pipeline.cli import main\n"
              f"sys.exit(main(['run', {str(path)!r}, '--no-console']))\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "event=reload_requested" in proc.stderr
    assert any(e["kind"] == "frame" for e in _events(events))
