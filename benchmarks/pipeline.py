"""Streaming runtime (`segpipe run`) throughput, latency, CPU and memory, measured with real processes.

    .venv/bin/python benchmarks/pipeline.py                      # 1/4/8/16 cameras at 720p and 1080p
    .venv/bin/python benchmarks/pipeline.py --cameras 1 4 --sizes 720p --imgsz 320 --seconds 15
    .venv/bin/python benchmarks/pipeline.py --cameras 4 --sizes 720p --imgsz 384,640   # 16:9 model input
    .venv/bin/python benchmarks/pipeline.py --soak-minutes 30     # plus an RSS soak

Throughput: N file cameras, pacing off (``realtime: false`` and ``lossless: true``, so decoders decode
only what the model takes instead of burning CPU on frames that would be dropped). Inferred fps (all
cameras, steady state after a warm-up) is compared with the raw engine's batched throughput, measured in
the same run on the same device: the backend called back to back on a ready device batch (contiguous or
channels-last, whichever runs faster), the better of batch 1 and max_batch, each the better of a measurement right before and one right
after the pipeline's. Target: >= 90 % of it at 4 cameras.
Latency: the same cameras with realtime pacing (each at the clip's 30 fps); p50/p95 of publish - capture
over the events a JSONL sink wrote.
Resources: CPU = CPU-seconds per second over every process of the run (supervisor, decoders, device
stage, sink stage; 2.0 = two cores busy), dec CPU the decoders' part of it (on a small CPU box, what
they take comes out of the model's share); peak RSS = sum of each process's high-water mark.
Soak (--soak-minutes M): 4 realtime cameras for M minutes, RSS sampled every 10 s; prints the growth of
total and of private (anonymous) RSS from the first sample after warm-up, with least-squares slopes in
MB/hour, and private RSS per process role.
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Only light imports at the top: every spawned child (decoders, sink stage) re-imports this module as
# its __main__, so torch and pydantic are imported inside the functions that need them.
import numpy as np  # noqa: E402

from pipeline.supervisor import Supervisor  # noqa: E402

SIZES = {"360p": (640, 360), "720p": (1280, 720), "1080p": (1920, 1080)}
CLIP_FPS, CLIP_SECONDS = 30, 4
_TICK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def make_clip(path: Path, size: tuple[int, int]) -> Path:
    """A few seconds of moving bright boxes on a textured background, H.264, cached by name."""
    import av

    if path.exists():
        return path
    w, h = size
    rng = np.random.default_rng(0)
    background = (rng.integers(0, 60, (h // 8, w // 8, 3), dtype=np.uint8)
                  .repeat(8, 0).repeat(8, 1))
    tmp = path.with_suffix(".tmp.mp4")
    with av.open(str(tmp), "w") as out:
        stream = out.add_stream("libx264", rate=CLIP_FPS)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.time_base = Fraction(1, CLIP_FPS)
        stream.options = {"preset": "veryfast", "g": str(CLIP_FPS), "crf": "23"}
        for i in range(CLIP_FPS * CLIP_SECONDS):
            img = background.copy()
            for k in range(6):
                x = int((w - w // 8) * (0.5 + 0.45 * np.sin(0.05 * i + k)))
                y = int((h - h // 6) * (0.5 + 0.45 * np.cos(0.07 * i + 2 * k)))
                img[y:y + h // 6, x:x + w // 8] = (40 * k, 200, 255 - 30 * k)
            frame = av.VideoFrame.from_ndarray(img, format="bgr24")
            frame.pts = i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    tmp.rename(path)
    return path


@functools.lru_cache(maxsize=1)
def _backend(model: str, device: str, threads: int, half: bool, cuda_graph: bool) -> Any:
    import torch

    from engines.backends import BackendOptions, load_backend

    if threads:
        torch.set_num_threads(threads)
    return load_backend(model, device=None if device == "auto" else device,
                        options=BackendOptions(half=half, cuda_graph=cuda_graph))


def raw_engine_fps(model: str, device: str, imgsz: tuple[int, int], batch: int, seconds: float, threads: int,
                   half: bool = False, cuda_graph: bool = False) -> float:
    """Frames/s of the backend alone on a ready (N, 3, H, W) batch on the device (runs in a
    worker process that keeps the model loaded between calls). The better of a contiguous (NCHW) and a
    channels-last batch: letterboxing HWC frames gives the pipeline the latter, which CPU convolutions
    run ~10 % faster, so the baseline gets that chance too."""
    import torch

    backend = _backend(model, device, threads, half, cuda_graph)
    sync = torch.cuda.synchronize if backend.device.type == "cuda" else (lambda: None)
    best = 0.0
    for fmt in (torch.contiguous_format, torch.channels_last):
        x = torch.rand((batch, 3, *imgsz), device=backend.device).contiguous(memory_format=fmt)
        for _ in range(3):
            backend(x)
        sync()
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds / 2:
            backend(x)
            n += 1
        sync()
        best = max(best, n * batch / (time.perf_counter() - t0))
    return best


def proc_cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime + stime


def proc_mem_mb(pid: int, key: str) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class Probe:
    """Runs a Supervisor in this (main) thread, measures between warm-up and the end, then stops it."""

    def __init__(self, sup: Supervisor, *, warmup_s: float, seconds: float, sample_every_s: float = 1.0) -> None:
        self.sup, self.warmup_s, self.seconds, self.every = sup, warmup_s, seconds, sample_every_s
        self.t_live: float | None = None
        self.start: dict[str, Any] | None = None
        self.end: dict[str, Any] | None = None
        self.rss: list[tuple[float, float, float]] = []  # (t, total RSS, private RSS) MB
        self.roles: list[dict[str, float]] = []  # RSS MB per process role, at each sample
        self._last_sample = 0.0
        sup.on_tick = self.tick

    def snapshot(self) -> dict[str, Any]:
        pids = [os.getpid(), *self.sup.pids().values()]
        decoders = [pid for role, pid in self.sup.pids().items() if role.startswith("decoder:")]
        return {"t": time.monotonic(), "inferred": sum(c.control.get("inferred") for c in self.sup.cameras),
                "decoded": sum(c.control.get("decoded") for c in self.sup.cameras),
                "cpu": sum(proc_cpu_s(p) for p in pids), "cpu_dec": sum(proc_cpu_s(p) for p in decoders),
                "wall": time.time(),
                "hwm": sum(proc_mem_mb(p, "VmHWM") for p in pids),
                "rss": sum(proc_mem_mb(p, "VmRSS") for p in pids),
                "anon": sum(proc_mem_mb(p, "RssAnon") for p in pids)}

    def tick(self, sup: Supervisor) -> None:
        now = time.monotonic()
        if self.t_live is None:
            if any(c.control.get("inferred") > 0 for c in sup.cameras):
                self.t_live = now
            return
        if self.start is None and now - self.t_live >= self.warmup_s:
            self.start = self.snapshot()
        if self.start is not None and now - self._last_sample >= self.every:
            self._last_sample = now
            snap = self.snapshot()
            self.rss.append((now, snap["rss"], snap["anon"]))
            roles = {"supervisor": proc_mem_mb(os.getpid(), "RssAnon")}
            for role, pid in sup.pids().items():
                key = "decoders" if role.startswith("decoder:") else role
                roles[key] = roles.get(key, 0.0) + proc_mem_mb(pid, "RssAnon")
            self.roles.append(roles)
        if self.start is not None and now - self.start["t"] >= self.seconds:
            self.end = self.snapshot()
            sup.request_stop("benchmark done")

    def run(self) -> dict[str, float]:
        code = self.sup.run()
        if code != 0 or self.start is None or self.end is None:
            raise SystemExit(f"pipeline run failed (exit {code}): {self.sup.errors}")
        dt = self.end["t"] - self.start["t"]
        return {"fps": (self.end["inferred"] - self.start["inferred"]) / dt,
                "decoded_fps": (self.end["decoded"] - self.start["decoded"]) / dt,
                "cpu": (self.end["cpu"] - self.start["cpu"]) / dt,
                "cpu_dec": (self.end["cpu_dec"] - self.start["cpu_dec"]) / dt, "peak_rss_mb": self.end["hwm"],
                "window": (self.start["wall"], self.end["wall"])}


def pipeline_config(args: argparse.Namespace, clip: Path, n: int, *, realtime: bool, events: Path | None) -> Any:
    from pipeline.config import parse_config

    cams = [{"id": f"cam{i:02d}", "url": str(clip), "loop": True, "realtime": realtime, "lossless": not realtime,
             "nice": args.decoder_nice}
            for i in range(n)]
    raw = {"model": {"path": args.model, "device": args.device, "imgsz": list(args.shape), "half": args.half,
                     "cuda_graph": args.cuda_graph, "threads": args.threads},
           "batch": {"max_batch": args.max_batch, "max_wait_ms": args.max_wait_ms, "max_age_ms": 2000},
           "cameras": cams, "metrics": {"enabled": False},
           "sinks": [{"type": "jsonl", "path": str(events)}] if events else []}
    return parse_config(raw, env={})


def latency(events: Path, window: tuple[float, float]) -> tuple[float, float]:
    lat = []
    for line in events.read_text().splitlines():
        e = json.loads(line)
        if e["kind"] == "frame" and window[0] <= e["capture_ts"] <= window[1]:
            lat.append((e["publish_ts"] - e["capture_ts"]) * 1000)
    if not lat:
        return float("nan"), float("nan")
    q = np.percentile(lat, [50, 95])
    return float(q[0]), float(q[1])


def soak(args: argparse.Namespace, clip: Path, work: Path) -> None:
    events = work / "soak.jsonl"
    cfg = pipeline_config(args, clip, 4, realtime=True, events=events)
    probe = Probe(Supervisor(cfg=cfg), warmup_s=args.warmup, seconds=args.soak_minutes * 60, sample_every_s=10)
    r = probe.run()
    t = np.array([s[0] for s in probe.rss]) / 3600
    print(f"\nsoak: 4 cameras realtime, {args.soak_minutes:g} min, {r['fps']:.1f} fps inferred, CPU {r['cpu']:.2f}")
    # RSS also counts the shared-memory ring pages a process has touched so far, which grows (up to the
    # rings' size) as rarely used slots get their first write; a leak shows in private (anonymous) RSS.
    for name, col in (("total RSS", 1), ("private RSS", 2)):
        mb = np.array([s[col] for s in probe.rss])
        slope = float(np.polyfit(t - t[0], mb, 1)[0]) if len(mb) > 2 else float("nan")
        print(f"  {name} {mb[0]:.0f} MB -> {mb[-1]:.0f} MB (growth {mb[-1] - mb[0]:+.1f} MB, "
              f"{100 * (mb[-1] - mb[0]) / mb[0]:+.1f} %, slope {slope:+.1f} MB/h)")
    print(f"  peak RSS {r['peak_rss_mb']:.0f} MB")
    first, last = probe.roles[0], probe.roles[-1]
    print("  private RSS by process: " + ", ".join(f"{k} {first[k]:.0f} -> {last.get(k, 0):.0f} MB" for k in first))
    step = max(len(probe.roles) // 10, 1)
    print("  private RSS over time (MB): " + "  ".join(
        f"{(probe.rss[i][0] - probe.rss[0][0]) / 60:.0f}m " + "/".join(f"{v:.0f}" for v in probe.roles[i].values())
        for i in range(0, len(probe.roles), step)) + f"  ({'/'.join(first)})")
    if len(probe.roles) > 4:  # growth over the second half only: start-up allocations have settled
        mid = probe.roles[len(probe.roles) // 2]
        print("  second half: " + ", ".join(f"{k} {last.get(k, 0) - mid[k]:+.1f} MB" for k in mid))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="yolov8n-seg.yaml")
    p.add_argument("--device", default="auto")
    p.add_argument("--imgsz", default="640", help="model input: a side or H,W (default 640)")
    p.add_argument("--half", action="store_true")
    p.add_argument("--cuda-graph", action="store_true", help="model.cuda_graph (torch backend on CUDA)")
    p.add_argument("--threads", type=int, default=0, help="CPU intra-op threads of the model (0: torch's default)")
    p.add_argument("--decoder-nice", type=int, default=19, help="cameras[].nice of every decoder")
    p.add_argument("--cameras", type=int, nargs="+", default=[1, 4, 8, 16])
    p.add_argument("--sizes", nargs="+", default=["720p", "1080p"], choices=sorted(SIZES))
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--max-wait-ms", type=float, default=10.0)
    p.add_argument("--seconds", type=float, default=20.0, help="measured window per run")
    p.add_argument("--warmup", type=float, default=5.0, help="seconds after the first result before measuring")
    p.add_argument("--raw-seconds", type=float, default=5.0, help="raw engine timing per batch size and row (0: not measured)")
    p.add_argument("--no-latency", action="store_true", help="skip the realtime-paced latency runs")
    p.add_argument("--soak-minutes", type=float, default=0.0)
    p.add_argument("--cache", default=os.environ.get("SEGPIPE_CACHE", str(Path.home() / ".cache" / "segpipe")))
    args = p.parse_args()
    from pipeline.cli.common import parse_imgsz

    side = parse_imgsz(args.imgsz)
    args.shape = (side, side) if isinstance(side, int) else side

    clips = Path(args.cache) / "bench"
    clips.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="segpipe-bench-"))
    from importlib.metadata import version  # not torch itself: this process stays a lean supervisor

    print(f"torch {version('torch')}, {os.cpu_count()} CPUs, device {args.device}, model {args.model}, "
          f"input {args.shape[1]}x{args.shape[0]} (WxH), max_batch {args.max_batch}, max_wait {args.max_wait_ms:g} ms, "
          f"threads {args.threads or 'default'}, decoder nice {args.decoder_nice}")
    # The raw engine runs in its own process (this one stays as lean as `segpipe run`'s supervisor)
    # and is measured again right before every pipeline row, so both see the same machine: the
    # baseline is the better of batch 1 and max_batch (on a CPU, batching rarely helps).
    pool = mp.get_context("spawn").Pool(1)

    def baseline() -> dict[int, float]:
        if args.raw_seconds <= 0:
            return {}
        time.sleep(2.0)  # the previous run's processes are gone, not exiting beside the measurement
        return {b: pool.apply(raw_engine_fps, (args.model, args.device, args.shape, b, args.raw_seconds,
                                               args.threads, args.half, args.cuda_graph))
                for b in sorted({1, args.max_batch})}

    sizes = "/".join(str(b) for b in sorted({1, args.max_batch}))
    print(f"{'size':>6} {'cams':>4} | {'raw b' + sizes:>10} {'infer fps':>9} {'% raw':>6} {'dec fps':>8} "
          f"{'CPU':>5} {'dec CPU':>7} {'RSS MB':>7} | {'p50 ms':>7} {'p95 ms':>7} {'rt fps':>7}")
    for size in args.sizes:
        clip = make_clip(clips / f"bench-{size}.mp4", SIZES[size])
        for n in args.cameras:
            before = baseline()
            cfg = pipeline_config(args, clip, n, realtime=False, events=None)
            r = Probe(Supervisor(cfg=cfg), warmup_s=args.warmup, seconds=args.seconds).run()
            # Measured before and after the pipeline, the better of each batch size counts: the ratio
            # errs against the pipeline when the machine's speed drifts.
            raws = {b: max(v, after) for (b, v), after in zip(before.items(), baseline().values(), strict=True)}
            raw_text = "/".join(f"{v:.1f}" for v in raws.values()) or "-"
            share = f"{100 * r['fps'] / max(raws.values()):5.0f}%" if raws else "     -"
            p50 = p95 = rt_fps = float("nan")
            if not args.no_latency:
                events = work / f"{size}-{n}.jsonl"
                cfg = pipeline_config(args, clip, n, realtime=True, events=events)
                lr = Probe(Supervisor(cfg=cfg), warmup_s=args.warmup, seconds=args.seconds).run()
                p50, p95 = latency(events, lr["window"])
                rt_fps = lr["fps"]
            print(f"{size:>6} {n:>4} | {raw_text:>10} {r['fps']:9.1f} {share} "
                  f"{r['decoded_fps']:8.1f} {r['cpu']:5.2f} {r['cpu_dec']:7.2f} {r['peak_rss_mb']:7.0f} | "
                  f"{p50:7.0f} {p95:7.0f} {rt_fps:7.1f}", flush=True)
    pool.close()
    if args.soak_minutes > 0:
        soak(args, make_clip(clips / f"bench-{args.sizes[0]}.mp4", SIZES[args.sizes[0]]), work)


if __name__ == "__main__":
    main()
