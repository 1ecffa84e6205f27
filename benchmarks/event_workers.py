"""Events/s through real processes: the sink stage alone against event workers in front of it.

    .venv/bin/python benchmarks/event_workers.py [--cameras 16] [--objects 10] [--frames 100] [--workers 1,2]

The same results as benchmarks/sink_stage.py (N objects a frame with RLE masks, one zone and one
line per camera, tracking on, a JSONL sink) are put, as fast as the queues take them, on the queue(s)
the device stage would fill: the sink stage's inbox (workers 1: it tracks, applies the shapes,
serialises and publishes) or the event workers' inboxes (each camera on its worker, the sink stage
only publishing). Prints wall time and events/s from the first put to the sink stage's exit, and the
CPU time per event of each process (Linux /proc, sampled every 20 ms): the busiest one bounds what a
host with a core for each process can sustain. On a host with fewer cores than processes, the wall
time shows the contention, not that bound.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import queue
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from sink_stage import make_results  # noqa: E402

from pipeline.config import CameraConfig, LineConfig, TrackingConfig, ZoneConfig  # noqa: E402
from pipeline.messages import STOP  # noqa: E402
from pipeline.sinks.config import JsonlSinkConfig  # noqa: E402
from pipeline.sinks.stage import run_sink_stage  # noqa: E402
from pipeline.sinks.workers import run_event_worker  # noqa: E402


def _cpu_s(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


class _Sampler(threading.Thread):
    """The last CPU time seen of each process, until stopped (a process that exits keeps its last)."""

    def __init__(self, procs: dict[str, mp.process.BaseProcess]) -> None:
        super().__init__(daemon=True)
        self.procs, self.cpu, self.done = procs, {name: 0.0 for name in procs}, threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            for name, p in self.procs.items():
                t = _cpu_s(p.pid) if p.pid else None
                if t is not None:
                    self.cpu[name] = t
            time.sleep(0.02)


def _drain(q: Any, done: threading.Event) -> None:
    while not done.is_set():
        try:
            q.get(timeout=0.1)
        except queue.Empty:
            continue


def run(results: list, cams: list[CameraConfig], workers: int, out: Path) -> tuple[float, dict[str, float]]:
    ctx = mp.get_context("spawn")
    inbox, stats = ctx.Queue(256), ctx.Queue(10_000)
    jsonl = JsonlSinkConfig(type="jsonl", path=out, max_bytes=2**40)
    tracking = TrackingConfig(enabled=True)
    procs, queues = [], [inbox]
    if workers == 1:
        sink = ctx.Process(target=run_sink_stage, kwargs=dict(inbox=inbox, configs=[jsonl], stats=stats,
                                                              tracking=tracking, cameras=cams))
    else:
        queues = [ctx.Queue(256) for _ in range(workers)]
        procs = [ctx.Process(target=run_event_worker, kwargs=dict(index=k, inbox=q, out=inbox, stats=stats,
                                                                  tracking=tracking, cameras=cams))
                 for k, q in enumerate(queues)]
        sink = ctx.Process(target=run_sink_stage, kwargs=dict(inbox=inbox, configs=[jsonl], stats=stats))
    for p in [*procs, sink]:
        p.start()
    time.sleep(2.0)  # let every process import and set up before the clock starts
    named = {"sink stage": sink, **{f"worker {k}": p for k, p in enumerate(procs)}}
    before = {name: _cpu_s(p.pid) or 0.0 for name, p in named.items() if p.pid}
    sampler = _Sampler(named)
    sampler.start()
    # read the reports as the supervisor does: a stats pipe nobody empties blocks its writers at exit
    reports = threading.Thread(target=_drain, args=(stats, sampler.done), daemon=True)
    reports.start()
    route = {c.id: i % workers for i, c in enumerate(cams)}  # dealt round, as EventWorkers.assign does
    t0 = time.perf_counter()
    for r in results:
        queues[route[r.camera_id] if workers > 1 else 0].put(r)
    for q in queues if workers > 1 else ():
        q.put(STOP)
    for p in procs:
        p.join()
    inbox.put(STOP)
    sink.join()
    dt = time.perf_counter() - t0
    sampler.done.set()
    sampler.join()
    reports.join()
    lines = sum(1 for _ in out.open())
    assert lines == len(results), (lines, len(results))
    return dt, {name: sampler.cpu[name] - before[name] for name in named}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cameras", type=int, default=16)
    ap.add_argument("--objects", type=int, default=10)
    ap.add_argument("--frames", type=int, default=100, help="per camera")
    ap.add_argument("--workers", default="1,2")
    a = ap.parse_args()
    shapes = {"zones": (ZoneConfig(name="z", polygon=((0.1, 0.1), (0.6, 0.1), (0.6, 0.9), (0.1, 0.9))),),
              "lines": (LineConfig(name="l", points=((0.5, 0.0), (0.5, 1.0))),)}
    cams = [CameraConfig(id=f"cam{i}", url="x.mp4", **shapes) for i in range(a.cameras)]
    results = make_results(a.cameras, a.objects, a.frames, (1920, 1080))
    print(f"{a.cameras} cameras x {a.frames} frames, {a.objects} objects, tracking + zone + line, JSONL; "
          f"{os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as tmp:
        for n in (int(v) for v in a.workers.split(",")):
            dt, cpu = run(results, cams, n, Path(tmp) / f"events{n}.jsonl")
            label = "sink stage alone" if n == 1 else f"{n} event workers + sink stage"
            per = ", ".join(f"{name} {1e6 * c / len(results):.0f}" for name, c in cpu.items())
            bound = len(results) / max(cpu.values())
            print(f"  {label:32s} {dt:6.2f} s {len(results) / dt:7.0f} events/s | CPU us/event: {per} "
                  f"| busiest process bound {bound:.0f} events/s")


if __name__ == "__main__":
    main()
