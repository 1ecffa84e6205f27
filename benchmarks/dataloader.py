"""Train-loader throughput (mosaic on) on coco128: images/s at imgsz 320 and 640, 0 and 2 workers.

    .venv/bin/python benchmarks/dataloader.py [--data PATH/coco128-seg.yaml] [--batch 16] [--epochs 2]
    .venv/bin/python benchmarks/dataloader.py --only-cache [--sizes 640 --workers 0]   # train --cache ram|disk
    .venv/bin/python benchmarks/dataloader.py --only-mix [--sizes 640 --workers 0]     # --mixup/--cutmix/--copy-paste

With or without ``--only-cache``, each size and worker count is also timed with the training images
cached in RAM (``train --cache ram``) and in .npy files (``train --cache disk``) beside the same loader
decoding them from the image files, in this one run; the one-off fills (decoding every image on threads,
before the first epoch) are timed apart, and so is a later run's disk fill (which finds every file). The
.npy files go to a temporary folder (``cache_dir``), removed after each row, never beside the images.

``--only-mix`` times the augmentations that bring in other samples (MixUp, CutMix, Copy-Paste in both modes, all
four at 0.5) beside the defaults, each with the images cached in RAM so the figures are the augmentations' own.

Each configuration runs ``--epochs`` passes over the 128 images with a fresh loader per epoch, as
training does (worker start-up included). Wall-clock images/s depends on what else runs on the
machine, so images per CPU-second (this process plus its workers) is printed too: on an idle
machine, wall throughput with N workers approaches N times that. Then a per-stage breakdown of
in-process samples (CPU time: decode, mosaic, warp, polygons, masks).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engines.data import SegDataset, SegLoader, load_data_yaml  # noqa: E402

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "coco128-seg" / "coco128-seg.yaml"


def run(spec, imgsz: int, workers: int, batch: int, epochs: int, *, ds: SegDataset | None = None
        ) -> tuple[float, float, int]:
    """-> (images per wall second, images per CPU second of this process and its workers, images)."""
    ds = ds if ds is not None else SegDataset.from_spec(spec, "train", imgsz=imgsz, augment=True, seed=0)
    loader = SegLoader(ds, batch_size=batch, shuffle=True, workers=workers, seed=0, drop_last=False)
    n = 0
    t0, c0 = time.perf_counter(), os.times()
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for b in loader:
            n += len(b)
    wall, c1 = time.perf_counter() - t0, os.times()
    cpu = sum(c1[:4]) - sum(c0[:4])  # user + system, self + children (the workers)
    return n / wall, n / cpu, n


def cache_figure(spec, imgsz: int, workers: int, batch: int, epochs: int, disk: tuple[float, float, int]) -> str:
    """Epochs with the RAM image cache beside ``disk``, ``run``'s figures of the same loader reading from
    disk, taken just before (the fill is timed apart)."""
    from engines.data.ram_cache import size_text

    ds = SegDataset.from_spec(spec, "train", imgsz=imgsz, augment=True, seed=0)
    t0 = time.perf_counter()
    held = ds.cache_in_ram()
    fill = time.perf_counter() - t0
    ram, _, _ = run(spec, imgsz, workers, batch, epochs, ds=ds)
    del ds
    on_disk, npy_size, fills = disk_cache_run(spec, imgsz, workers, batch, epochs)
    from_disk, _, n = disk
    return (f"imgsz {imgsz:4d} workers {workers}: {from_disk:7.1f} images/s decoding, {ram:7.1f} with "
            f"--cache ram ({ram / from_disk:.2f}x; {size_text(held)}, filled in {fill:.1f} s), {on_disk:7.1f} with "
            f"--cache disk ({on_disk / from_disk:.2f}x; {size_text(npy_size)}, filled in {fills[0]:.1f} s, "
            f"{fills[1]:.2f} s in a later run); {n} images, load {os.getloadavg()[0]:.1f}")


def disk_cache_run(spec, imgsz: int, workers: int, batch: int, epochs: int) -> tuple[float, int, tuple[float, float]]:
    """-> (images per wall second from the .npy files, their bytes, (fill seconds, a later run's fill seconds:
    checking every file, decoding none)), with the files in a fresh temporary folder."""
    fills = []
    with tempfile.TemporaryDirectory(prefix="segpipe-bench-npy-") as tmp:
        for _ in range(2):
            ds = SegDataset.from_spec(spec, "train", imgsz=imgsz, augment=True, seed=0, cache_dir=Path(tmp))
            t0 = time.perf_counter()
            ds.cache_on_disk()
            fills.append(time.perf_counter() - t0)
        on_disk, _, _ = run(spec, imgsz, workers, batch, epochs, ds=ds)
        return on_disk, ds.disk_plan().nbytes(), (fills[0], fills[1])


MIXES = {
    "defaults": {},
    "--mixup 1": {"mixup": 1.0},
    "--cutmix 1": {"cutmix": 1.0},
    "--copy-paste 1 (flip)": {"copy_paste": 1.0},
    "--copy-paste 1 --copy-paste-mode mixup": {"copy_paste": 1.0, "copy_paste_mode": "mixup"},
    "all four at 0.5": {"mixup": 0.5, "cutmix": 0.5, "copy_paste": 0.5, "bgr": 0.5},
}


def mix_figures(spec, imgsz: int, workers: int, batch: int, epochs: int) -> list[str]:
    """Images per CPU-second of the train loader with each of ``MIXES``, images in RAM (decoding left out)."""
    from engines.data.augment import AugmentConfig

    rows = []
    for label, hyp in MIXES.items():
        ds = SegDataset.from_spec(spec, "train", imgsz=imgsz, augment=True, seed=0, hyp=AugmentConfig(**hyp))
        ds.cache_in_ram()
        ips, ipc, n = run(spec, imgsz, workers, batch, epochs, ds=ds)
        rows.append(f"imgsz {imgsz:4d} workers {workers} {label:<40s} {ipc:6.1f} images per CPU-second, "
                    f"{ips:6.1f} images/s wall ({n} images, load {os.getloadavg()[0]:.1f})")
    return rows


def stages(spec, imgsz: int, samples: int = 64) -> str:
    """Where one sample's time goes (cProfile cumulative, in-process)."""
    import cProfile
    import pstats

    ds = SegDataset.from_spec(spec, "train", imgsz=imgsz, augment=True, seed=0)
    prof = cProfile.Profile(time.process_time)  # CPU time: fair on a busy machine
    prof.enable()
    for i in range(samples):
        ds[i]
    prof.disable()
    st = pstats.Stats(prof)
    wanted = {"imread": "decode", "resize": "resize", "_mosaic": "mosaic (incl. decode)", "warp_image": "warp",
              "hsv_jitter": "hsv", "resample_segments": "resample", "polygon_boxes": "boxes",
              "rasterize": "masks", "transform_points": "transform", "_train_sample": "total"}
    out = []
    for (_, _, name), row in st.stats.items():  # type: ignore[attr-defined]
        for key, label in wanted.items():
            if name == key or f"cv2.{key}" in name:
                out.append(f"{label} {row[3] / samples * 1e3:.1f} ms")
    return ", ".join(sorted(out))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DEFAULT))
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--sizes", default="320,640")
    ap.add_argument("--workers", default="0,2")
    ap.add_argument("--only-cache", action="store_true", help="only the --cache ram / disk / no cache figure")
    ap.add_argument("--only-mix", action="store_true", help="only the MixUp / CutMix / Copy-Paste figures")
    args = ap.parse_args()
    os.environ.setdefault("SEGPIPE_CACHE", tempfile.mkdtemp(prefix="segpipe-bench-"))
    spec = load_data_yaml(args.data)
    t0 = time.perf_counter()
    SegDataset.from_spec(spec, "train", imgsz=320, augment=True)
    print(f"label check + cache ({len(spec.names)} classes): {time.perf_counter() - t0:.2f} s")
    print(f"cpu cores: {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}")
    for imgsz in map(int, args.sizes.split(",")):
        for workers in map(int, args.workers.split(",")):
            if args.only_mix:
                for row in mix_figures(spec, imgsz, workers, args.batch, args.epochs):
                    print(row, flush=True)
                continue
            disk = ips, ipc, n = run(spec, imgsz, workers, args.batch, args.epochs)
            if not args.only_cache:
                print(f"imgsz {imgsz:4d} workers {workers}: {ips:7.1f} images/s wall, {ipc:6.1f} images per CPU-second "
                      f"({n} images, batch {args.batch}, mosaic on, load {os.getloadavg()[0]:.1f})", flush=True)
            print(cache_figure(spec, imgsz, workers, args.batch, args.epochs, disk), flush=True)
        if not args.only_cache and not args.only_mix:
            print(f"imgsz {imgsz:4d} per sample: {stages(spec, imgsz)}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
