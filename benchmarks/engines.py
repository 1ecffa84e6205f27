"""Latency and throughput of yolov8n-seg on every available backend; prints a markdown table.

    .venv/bin/python benchmarks/engines.py [--model M] [--imgsz 640 320] [--batch 1 4 8] [--threads 2]
                                           [--int8-data coco128-seg.yaml] [--rounds 5]

CPU rows: torch (fp32, fused BN), ONNX Runtime fp32 and INT8 (static QDQ, calibrated on --int8-data),
OpenVINO fp32 and INT8 (NNCF, same calibration), TorchScript fp32. CUDA rows when a GPU is present: torch fp32, fp16, fp16 + CUDA graphs,
ONNX Runtime (if its CUDA provider is installed) and TensorRT fp16 (if TensorRT is installed).
Backends are timed round-robin (one call each per round, ``--rounds`` rounds after a warm-up) so that
load from other processes hits them alike; latency is the median call in ms for the whole batch,
throughput images/s from it. Intra-op threads are fixed (``--threads``) and printed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from engines.backends import Backend, BackendOptions, load_backend  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "ultralytics" / "yolov8n-seg-coco8.pt"
COCO128 = REPO.parent / "shared" / "datasets" / "coco128-seg" / "coco128-seg.yaml"


def cpu_backends(model: Path, imgsz: int, work: Path, threads: int, int8_data: Path | None
                 ) -> dict[str, tuple[str, Callable[[], Backend]]]:
    """name -> (precision, loader) of every CPU backend, exporting the artifacts they need."""
    from engines.export import export

    opts = BackendOptions(threads=threads)
    out: dict[str, tuple[str, Callable[[], Backend]]] = {
        "torch": ("fp32", lambda: load_backend(model, options=opts))}
    exports = {"onnxruntime": ("onnx", {}), "openvino": ("openvino", {}), "torchscript": ("torchscript", {})}
    if int8_data is not None:
        int8 = {"int8": True, "data": str(int8_data), "calib_images": 64}
        exports["onnxruntime int8"] = ("onnx", int8)
        exports["openvino int8"] = ("openvino", int8)
    for name, (fmt, kw) in exports.items():
        try:
            dest = work / f"{imgsz}-{name.replace(' ', '-')}"
            suffix = "_openvino_model" if fmt == "openvino" else f".{fmt}"
            path = export(model, format=fmt, imgsz=imgsz, out=dest.with_name(dest.name + suffix), **kw)
        except Exception as e:  # a missing optional runtime drops its row, it does not stop the table
            print(f"skip {name}: {e}", file=sys.stderr)
            continue
        precision = "int8" if kw.get("int8") else "fp32"
        out[name] = (precision, lambda p=path: load_backend(p, options=opts))
    return out


def cuda_backends(model: Path) -> dict[str, tuple[str, Callable[[], Backend]]]:
    out: dict[str, tuple[str, Callable[[], Backend]]] = {
        "torch cuda": ("fp32", lambda: load_backend(model, device="cuda")),
        "torch cuda fp16": ("fp16", lambda: load_backend(model, device="cuda", options=BackendOptions(half=True))),
        "torch cuda fp16+graphs": ("fp16", lambda: load_backend(
            model, device="cuda", options=BackendOptions(half=True, cuda_graph=True))),
    }
    try:
        import tensorrt  # noqa: F401

        out["tensorrt"] = ("fp16", lambda: load_backend(model, device="cuda", backend="tensorrt",
                                                        options=BackendOptions(half=True)))
    except ImportError:
        print("skip tensorrt: not installed", file=sys.stderr)
    return out


def time_round_robin(backends: dict[str, Backend], x: torch.Tensor, rounds: int, warmup: int = 2
                     ) -> dict[str, list[float]]:
    """Per-call wall times (s) of each backend on ``x`` (moved to its device), interleaved."""
    inputs = {k: x.to(b.device) for k, b in backends.items()}
    for k, b in backends.items():
        for _ in range(warmup):
            b(inputs[k])
    times: dict[str, list[float]] = {k: [] for k in backends}
    for _ in range(rounds):
        for k, b in backends.items():
            cuda = b.device.type == "cuda"
            if cuda:
                torch.cuda.synchronize(b.device)
            t0 = time.perf_counter()
            b(inputs[k])
            if cuda:
                torch.cuda.synchronize(b.device)
            times[k].append(time.perf_counter() - t0)
    return times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=FIXTURE if FIXTURE.is_file() else Path("yolov8n-seg.yaml"))
    ap.add_argument("--imgsz", type=int, nargs="+", default=[640, 320])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 4, 8])
    ap.add_argument("--threads", type=int, default=2, help="intra-op CPU threads for every backend")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--int8-data", type=Path, default=COCO128 if COCO128.is_file() else None)
    ap.add_argument("--no-cuda", action="store_true")
    ap.add_argument("--only-cuda", action="store_true", help="CUDA rows only, against torch cuda fp32")
    args = ap.parse_args()
    if args.only_cuda and not torch.cuda.is_available():
        ap.error("--only-cuda: no CUDA device")
    torch.set_num_threads(args.threads)
    print(f"model {args.model}, threads {args.threads}, torch {torch.__version__}, rounds {args.rounds}, "
          f"CUDA {'yes' if torch.cuda.is_available() else 'no'}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="segpipe-bench-") as tmp:
        for imgsz in args.imgsz:
            loaders = {} if args.only_cuda else cpu_backends(args.model, imgsz, Path(tmp), args.threads,
                                                              args.int8_data)
            if torch.cuda.is_available() and not args.no_cuda:
                loaders.update(cuda_backends(args.model))
            backends = {k: load() for k, (_, load) in loaders.items()}
            for batch in args.batch:
                x = torch.rand((batch, 3, imgsz, imgsz))
                times = time_round_robin(backends, x, args.rounds)
                base = statistics.median(times["torch cuda" if args.only_cuda else "torch"])
                for k, ts in times.items():
                    med = statistics.median(ts)
                    # INT8 rows also against the same runtime's fp32 row (the quantisation's own gain).
                    fp32 = k.removesuffix(" int8")
                    own = f"{statistics.median(times[fp32]) / med:.2f}x" if k != fp32 and fp32 in times else ""
                    rows.append((imgsz, batch, k, loaders[k][0], 1000 * med, 1000 * min(ts), batch / med,
                                 base / med, own))
                    print(f"  {imgsz} b{batch} {k}: {1000 * med:.1f} ms", file=sys.stderr, flush=True)
    ref = "torch cuda" if args.only_cuda else "torch cpu"
    print(f"\n| imgsz | batch | backend | precision | latency ms (median) | min ms | images/s | vs {ref} "
          "| int8 vs fp32 |")
    print("|---:|---:|---|---|---:|---:|---:|---:|---:|")
    for imgsz, batch, k, prec, med, lo, ips, rel, own in rows:
        print(f"| {imgsz} | {batch} | {k} | {prec} | {med:.1f} | {lo:.1f} | {ips:.1f} | {rel:.2f}x | {own} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
