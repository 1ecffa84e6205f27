"""MQTT sink throughput against a local mosquitto: events a second until every one is acknowledged.

    .venv/bin/python benchmarks/mqtt_sink.py [--events 20000] [--objects 10]

Starts mosquitto on a free loopback port (it must be installed: deploy/bootstrap.sh --dev), then for
qos 0 and qos 1 (at max_inflight 20, 100 and 1000) publishes the same frame events (N objects with RLE
masks, like the demo's) through ``MqttSink`` while a subscriber counts them. Prints events/s and MB/s
from the first publish to the last acknowledgement, and how many the subscriber got.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
from pycocotools import mask as mask_utils

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.events import encode, to_event  # noqa: E402
from pipeline.messages import Detection, FrameResult  # noqa: E402
from pipeline.sinks.base import Envelope, policy_for  # noqa: E402
from pipeline.sinks.mqtt import MqttSink  # noqa: E402


def frame_events(n: int, objects: int, *, crossing: bool = False) -> list[Envelope]:
    """``n`` frame events of 16 cameras, ``objects`` RLE-masked objects each (like the demo's), as the
    sink stage hands them to the sinks; with ``crossing``, each reports a line crossing too."""
    m = np.zeros((360, 640), np.uint8)
    m[100:160, 200:280] = 1
    rle = mask_utils.encode(np.asfortranarray(m))
    dets = tuple(Detection(class_id=k % 6, label="box", score=0.9, box=(200.0, 100.0, 280.0, 160.0), mask=rle)
                 for k in range(objects))
    out = []
    for seq in range(n):
        cam = f"cam{seq % 16}"
        res = FrameResult(camera_id=cam, seq=seq, pts=seq / 10, capture_ts=time.time(), infer_ts=time.time(),
                          frame_size=(640, 360), model="m", detections=dets)
        event = to_event(res)
        if crossing:
            event["crossings"] = [{"line": "gate", "direction": "in", "track_id": 1, "class_id": 0, "label": "box"}]
        out.append(Envelope(camera_id=cam, kind="frame", payload=encode(event), item=None))
    return out


def _broker(workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(exe).exists():
        sys.exit("mosquitto is not installed (bash deploy/bootstrap.sh --dev installs it)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conf = workdir / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\n")
    proc = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    sys.exit("mosquitto did not start")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--objects", type=int, default=10)
    a = ap.parse_args()
    envs = frame_events(a.events, a.objects)
    mb = sum(len(e.payload) for e in envs) / 1e6
    print(f"{a.events} frame events of {len(envs[0].payload)} bytes ({a.objects} objects with RLE masks)")
    with tempfile.TemporaryDirectory() as tmp:
        proc, port = _broker(Path(tmp))
        try:
            for qos, inflight in ((0, 100), (1, 20), (1, 100), (1, 1000)):
                got = [0]
                sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
                sub.on_message = lambda *_, got=got: got.__setitem__(0, got[0] + 1)
                sub.connect("127.0.0.1", port)
                sub.subscribe("segpipe/+/frame", qos=qos)
                sub.loop_start()
                time.sleep(0.3)
                sink = MqttSink(name="bench", url=f"mqtt://127.0.0.1:{port}", qos=qos, max_inflight=inflight,
                                policy=policy_for("mqtt", maxsize=a.events + 1))
                while not sink.connected.wait(0.05):
                    pass
                t0 = time.perf_counter()
                for env in envs:
                    sink.publish(env)
                assert sink.flush(600), "not flushed"
                dt = time.perf_counter() - t0
                deadline = time.monotonic() + 10
                while got[0] < a.events and time.monotonic() < deadline:
                    time.sleep(0.05)
                sink.close()
                sub.disconnect()
                sub.loop_stop()
                dropped = sum(sink.counters.totals_dropped.values())
                print(f"qos {qos} max_inflight {inflight:4d}: {a.events / dt:7.0f} events/s, {mb / dt:5.1f} MB/s; "
                      f"subscriber got {got[0]}, dropped {dropped}")
        finally:
            proc.terminate()
            proc.wait()


if __name__ == "__main__":
    main()
