"""The CUDA code paths of engines/, each checked against a CPU fp32 reference.

Covered: the torch backend (fp32, channels-last, unfused, fp16, CUDA graphs, graphs across input
shapes), TorchScript and ONNX artifacts on the device, letterbox / NMS / mask routes / the whole
``postprocess`` on the device, ``SegModel`` predict (YOLOv8, and YOLO26's two heads), validation (API and
``segpipe val``) and tiny training runs (YOLOv8 and YOLO26, AMP on and off; resume on another device).

Every test that means something on a CPU is parametrized over ``cpu`` and ``cuda`` (the latter
marked ``gpu``, skipped without CUDA by tests/conftest.py), so the test logic is proven on CPU and
only the device differs; CUDA-only features (fp16, CUDA graphs, the ONNX CUDA provider) are gpu
only. Data: the Ultralytics-trained fixture checkpoint and the three real images its raw fixtures
were made from (tests/fixtures/ultralytics), so there are confident detections to compare.

TF32: cuDNN runs fp32 convolutions in TF32 by default on Ampere and later GPUs (a precision choice,
not a bug). The parity tests turn it off (autouse fixture) so fp32 on CUDA must agree with fp32 on
CPU to float rounding; one SegModel variant runs with torch's defaults at a looser tolerance.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from engines.backends import Backend, BackendOptions, load_backend
from engines.errors import InputError
from engines.ops import (
    NMSConfig,
    crop_mask,
    input_mask_crops,
    letterbox,
    letterbox_geometry,
    mask_crops,
    non_max_suppression,
    paste_crops,
    postprocess,
    process_masks,
    process_masks_native,
    retina_mask_crops,
    scale_boxes,
    scale_masks,
)
from engines.ops.letterbox import LetterboxInfo
from engines.ops.nms import _blocked_nms, _greedy_sequential
from engines.structures import Detections

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "ultralytics"
CKPT = FIXTURES / "yolov8n-seg-coco8.pt"
IMGSZ = 320
NC = 80
CONF = 0.25
PREDICT_NMS = NMSConfig(conf=CONF, iou=0.7, max_det=300)
VAL_NMS = NMSConfig(conf=0.001, iou=0.7, max_det=300)  # many low-score candidates: NMS does real work

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]
pytestmark = pytest.mark.usefixtures("one_thread", "strict_fp32")  # tests/conftest.py


# ------------------------------------------------------------------------------------ shared helpers

@functools.cache
def _fixture_images() -> tuple[np.ndarray, ...]:
    """The three real coco128 images of the Ultralytics fixture, BGR uint8 at their original sizes
    (426x640, 640x481, 500x381): the letterboxed inputs stored in raw_*.npz with the padding cut off
    and resized back. The fixture model finds 1, 2 and 5 objects in them (scores 0.84-1.0)."""
    ref = json.loads((FIXTURES / "predict.json").read_text())
    out = []
    for name, entry in sorted(ref["images"].items()):
        with np.load(FIXTURES / f"raw_{Path(name).stem}.npz") as z:
            rgb = z["input_u8"][0].transpose(1, 2, 0)
        oh, ow = entry["orig_shape"]
        info = letterbox_geometry((oh, ow), size=IMGSZ, stride=32, auto=True)
        (left, top), (uh, uw) = info.pad, info.unpad_shape
        crop = np.ascontiguousarray(rgb[top:top + uh, left:left + uw, ::-1])
        out.append(cv2.resize(crop, (ow, oh), interpolation=cv2.INTER_LINEAR))
    return tuple(out)


def fixture_images() -> list[np.ndarray]:
    """Fresh copies of the three fixture images (callers may write to them)."""
    return [im.copy() for im in _fixture_images()]


def frame_variant(index: int, alt: bool = False) -> np.ndarray:
    """Fixture image ``index % 3``; ``alt``: brightened (other pixels and scores, the same objects:
    the fixture model is overfitted, mirrored or shifted frames lose most of them)."""
    img = _fixture_images()[index % 3]
    return cv2.convertScaleAbs(img, alpha=1.1, beta=8) if alt else img.copy()


@dataclass(frozen=True)
class Obj:
    """One detected object in host arrays, for comparisons across devices and code paths."""

    cls: int
    score: float
    box: np.ndarray  # (4,) float64 xyxy, frame pixels
    mask: np.ndarray | None  # (H, W) bool, or None


def objects_of(det: Detections) -> list[Obj]:
    d = det.numpy()
    masks = d.masks if d.has_masks else None
    return [Obj(int(c), float(s), np.asarray(b, np.float64), None if masks is None else np.asarray(masks[i], bool))
            for i, (b, s, c) in enumerate(zip(d.boxes, d.scores, d.class_ids, strict=True))]


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def assert_same_objects(got: list[Obj], ref: list[Obj], *, box_px: float, score_tol: float,
                        min_iou: float | None = None, conf: float = CONF, margin: float = 0.05,
                        what: str = "") -> None:
    """One-to-one matching both ways: every object scoring at least ``conf + margin`` on one side has
    its own partner of the same class on the other, boxes within ``box_px`` pixels, scores within
    ``score_tol``, masks IoU >= ``min_iou``. An object within ``margin`` of the threshold on both
    sides may legitimately exist on one side only."""
    for src, dst, tag in ((ref, got, "missing"), (got, ref, "unexpected")):
        used: set[int] = set()
        for a in sorted((o for o in src if o.score >= conf + margin), key=lambda o: -o.score):
            cands = [j for j, b in enumerate(dst) if b.cls == a.cls and j not in used]
            assert cands, (f"{what}: {tag} object class {a.cls} score {a.score:.3f} box {a.box.round(1).tolist()}; "
                           f"got {[(o.cls, round(o.score, 3)) for o in got]}, "
                           f"ref {[(o.cls, round(o.score, 3)) for o in ref]}")
            j = min(cands, key=lambda k: float(np.abs(dst[k].box - a.box).max()))
            used.add(j)
            b = dst[j]
            d = float(np.abs(b.box - a.box).max())
            assert d <= box_px, f"{what}: class {a.cls} box off by {d:.4f} px (> {box_px}): {a.box} vs {b.box}"
            assert abs(a.score - b.score) <= score_tol, f"{what}: class {a.cls} score {a.score:.5f} vs {b.score:.5f}"
            if min_iou is not None:
                assert (a.mask is None) == (b.mask is None), f"{what}: masks on one side only"
                if a.mask is not None:
                    assert a.mask.shape == b.mask.shape, f"{what}: mask shapes {a.mask.shape} vs {b.mask.shape}"
                    iou = mask_iou(a.mask, b.mask)
                    assert iou >= min_iou, f"{what}: class {a.cls} mask IoU {iou:.4f} < {min_iou}"


def assert_rel_close(got: torch.Tensor, ref: torch.Tensor, rel: float, what: str) -> None:
    """max |got - ref| <= rel * max(|ref|, 1): a relative bound on the tensor's own magnitude."""
    got, ref = got.detach().float().cpu(), ref.detach().float().cpu()
    assert got.shape == ref.shape, f"{what}: shape {tuple(got.shape)} vs {tuple(ref.shape)}"
    assert torch.isfinite(got).all(), f"{what}: non-finite values"
    err, scale = (got - ref).abs().max().item(), max(ref.abs().max().item(), 1.0)
    assert err <= rel * scale, f"{what}: max |diff| {err:.4g} > {rel} x {scale:.4g}"


def assert_raw_close(pred: torch.Tensor, proto: torch.Tensor, ref: tuple[torch.Tensor, torch.Tensor], rel: float,
                     what: str) -> None:
    """Raw model outputs against a reference, per kind (boxes in pixels, scores, mask coefficients, protos)."""
    rp, rproto = ref
    assert_rel_close(pred[:, :4], rp[:, :4], rel, f"{what} boxes")
    assert_rel_close(pred[:, 4:4 + NC], rp[:, 4:4 + NC], rel, f"{what} scores")
    assert_rel_close(pred[:, 4 + NC:], rp[:, 4 + NC:], rel, f"{what} mask coefficients")
    assert_rel_close(proto, rproto, rel, f"{what} prototypes")


@pytest.fixture(scope="module")
def cpu_backend() -> Backend:
    return load_backend(CKPT, device="cpu")


@pytest.fixture(scope="module")
def square_batch() -> tuple[torch.Tensor, list[LetterboxInfo], list[np.ndarray]]:
    """Four real frames (the three fixture images and a brightened first one) letterboxed to 320x320."""
    frames = fixture_images() + [frame_variant(0, alt=True)]
    x, infos = letterbox([torch.from_numpy(f) for f in frames], size=IMGSZ)
    return x, infos, frames


@pytest.fixture(scope="module")
def cpu_ref(cpu_backend: Backend, square_batch: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    """CPU fp32 raw outputs of the square batch: the reference of every backend test."""
    return cpu_backend(square_batch[0])


# ---------------------------------------------------------------------------------------- backends

@pytest.mark.parametrize(("n", "options"), [(1, {}), (4, {}), (4, {"channels_last": True}), (2, {"fuse": False})],
                         ids=["b1", "b4", "b4-channels-last", "b2-unfused"])
@pytest.mark.parametrize("device", DEVICES)
def test_torch_backend_fp32_matches_cpu(device: str, n: int, options: dict, square_batch: tuple,
                                        cpu_ref: tuple[torch.Tensor, torch.Tensor]) -> None:
    backend = load_backend(CKPT, device=device, options=BackendOptions(**options))
    assert backend.device.type == device and backend.meta.precision == "fp32" and backend.meta.nc == NC
    x = square_batch[0][:n].to(device)
    pred, proto = backend(x)
    assert pred.device.type == proto.device.type == device
    assert pred.dtype == proto.dtype == torch.float32
    assert pred.shape == (n, 4 + NC + 32, 2100) and proto.shape == (n, 32, 80, 80)
    assert_raw_close(pred, proto, (cpu_ref[0][:n], cpu_ref[1][:n]), 1e-3, f"{device} {options}")
    # fp16 input is accepted and converted (the validator feeds half models fp16)
    pred16, _ = backend(x.half())
    assert pred16.dtype == torch.float32 and pred16.device.type == device
    assert_rel_close(pred16[:, 4:4 + NC], cpu_ref[0][:n, 4:4 + NC], 5e-3, f"{device} fp16 input, scores")


@pytest.mark.gpu
def test_cuda_backend_refuses_host_input(square_batch: tuple) -> None:
    backend = load_backend(CKPT, device="cuda")
    with pytest.raises(InputError, match="the model runs on cuda"):
        backend(square_batch[0][:1])


@pytest.mark.gpu
def test_half_backend_close_to_fp32(cpu_backend: Backend, square_batch: tuple,
                                    cpu_ref: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, infos, _ = square_batch
    half = load_backend(CKPT, device="cuda", options=BackendOptions(half=True))
    assert half.meta.precision == "fp16" and next(half.model.parameters()).dtype == torch.float16
    pred, proto = half(x.cuda())
    assert pred.dtype == proto.dtype == torch.float32 and pred.is_cuda and proto.is_cuda
    assert torch.isfinite(pred).all() and torch.isfinite(proto).all()
    assert (pred[:, 4:4 + NC] - cpu_ref[0][:, 4:4 + NC].cuda()).abs().max() < 0.1  # class scores, all anchors
    got = postprocess(pred, proto, infos, PREDICT_NMS, names=half.meta.names, retina_masks=True)
    ref = postprocess(*cpu_ref, infos, PREDICT_NMS, names=cpu_backend.meta.names, retina_masks=True)
    assert all(d.boxes.is_cuda for d in got)
    for i, (g, r) in enumerate(zip(got, ref, strict=True)):
        assert len(r) > 0
        assert_same_objects(objects_of(g), objects_of(r), box_px=2.0, score_tol=0.03, min_iou=0.85,
                            what=f"fp16 image {i}")


@pytest.mark.gpu
@pytest.mark.parametrize("half", [False, True], ids=["fp32", "fp16"])
def test_cuda_graph_replays_match_eager(half: bool, square_batch: tuple,
                                        cpu_ref: tuple[torch.Tensor, torch.Tensor]) -> None:
    eager = load_backend(CKPT, device="cuda", options=BackendOptions(half=half))
    graph = load_backend(CKPT, device="cuda", options=BackendOptions(half=half, cuda_graph=True))
    assert graph.use_graphs and not eager.use_graphs
    tol = 5e-3 if half else 1e-4  # the same kernels; fp16 leaves room for another cuDNN algorithm
    x = square_batch[0].cuda()
    p1, q1 = graph(x)
    assert p1.is_cuda and q1.is_cuda and p1.dtype == torch.float32
    assert_raw_close(p1, q1, eager(x), tol, "graph vs eager, first call (capture)")
    if not half:
        assert_raw_close(p1, q1, cpu_ref, 1e-3, "graph vs cpu fp32")
    keep = p1.clone()
    # Same shape, other pixels: the static input buffer must take the new data.
    x2 = x.flip(-1).contiguous()
    p2, q2 = graph(x2)
    assert_raw_close(p2, q2, eager(x2), tol, "graph vs eager, replay with new data")
    assert (p2[:, :4] - p1[:, :4]).abs().max() > 1.0, "the replay returned the previous batch's outputs"
    assert torch.equal(p1, keep), "an earlier result changed: outputs must be copies of the graph's buffers"
    p3, q3 = graph(x)  # and back to the first batch
    assert_raw_close(p3, q3, (p1, q1), tol, "graph replay of the first batch again")
    # Another batch size is another graph; the first one still replays.
    p4, q4 = graph(x[:1])
    assert_raw_close(p4, q4, eager(x[:1]), tol, "graph vs eager, batch 1")
    assert len(graph._graphs) == 2
    assert_raw_close(*graph(x2), eager(x2), tol, "batch-4 graph after capturing batch 1")


def _graph_shapes_worker(conn) -> None:  # noqa: ANN001 - a multiprocessing Connection
    """Child process of test_cuda_graph_survives_other_input_shapes (it may read freed device memory,
    which can poison the CUDA context: never in the pytest process). Sends max |diff| per check."""
    try:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        eager = load_backend(CKPT, device="cuda")
        graph = load_backend(CKPT, device="cuda", options=BackendOptions(cuda_graph=True))
        frames = fixture_images()
        xa, _ = letterbox([torch.from_numpy(f).cuda() for f in frames], size=IMGSZ)  # 3 x 320x320
        xb, _ = letterbox([torch.from_numpy(frames[0]).cuda()], size=IMGSZ, auto=True)  # 1 x 224x320
        ref_a, ref_b = eager(xa), eager(xb)

        def diff(got, ref):  # noqa: ANN001, ANN202
            return max(float((g - r).abs().max()) for g, r in zip(got, ref, strict=True))

        out = {"A capture": diff(graph(xa), ref_a), "B capture": diff(graph(xb), ref_b)}
        # Give freed blocks back to the driver and fill fresh allocations with junk, so a graph that
        # reads memory it does not own sees other data.
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        junk = [torch.full((1 << 20,), 1.0e4, device="cuda") for _ in range(64)]
        junk += [torch.full((k, ref_a[0].shape[-1]), 1.0e4, device="cuda") for k in (1, 2) for _ in range(256)]
        torch.cuda.synchronize()
        out["A replay after B"] = diff(graph(xa), ref_a)
        out["B replay after A"] = diff(graph(xb), ref_b)
        torch.cuda.synchronize()
        conn.send(("ok", out))
    except BaseException as e:  # noqa: BLE001 - reported to the parent
        conn.send(("error", f"{type(e).__name__}: {e}"))
    finally:
        conn.close()


def run_isolated(target, timeout: float = 120.0) -> tuple[str, object]:  # noqa: ANN001
    """Run ``target(conn)`` in a fresh spawned process; its one message, or why there was none."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=target, args=(child,))
    proc.start()
    child.close()
    try:
        if not parent.poll(timeout):
            return "error", f"no answer within {timeout} s (hung)"
        return parent.recv()
    except EOFError:
        proc.join(10)
        return "error", f"child died without answering, exit code {proc.exitcode}"
    finally:
        proc.join(30)
        if proc.is_alive():
            proc.kill()
            proc.join(10)


@pytest.mark.gpu
def test_cuda_graph_survives_other_input_shapes() -> None:
    """A dynamic backend sees several input shapes (SegModel letterboxes each aspect ratio to its own
    rectangle). The model head caches its anchor grid per input shape; the graph captured for shape
    A reads that tensor by address, so after shape B replaced the cache, replaying A must still give
    the right boxes (run in a child process: reading freed device memory can poison the context)."""
    status, result = run_isolated(_graph_shapes_worker)
    assert status == "ok", result
    bad = {k: v for k, v in result.items() if not v < 1e-2}
    assert not bad, f"CUDA graph outputs differ from eager (max |diff|): {result}"


@pytest.fixture(scope="module")
def torchscript_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from engines.export import export

    return export(CKPT, format="torchscript", imgsz=IMGSZ, dynamic=True,
                  out=tmp_path_factory.mktemp("ts") / "fixture.torchscript")


@pytest.mark.parametrize("device", DEVICES)
def test_torchscript_backend_on_device(device: str, torchscript_model: Path, cpu_backend: Backend,
                                       square_batch: tuple, cpu_ref: tuple[torch.Tensor, torch.Tensor]) -> None:
    """The artifact is traced on the CPU (the exporter always does); it must run on the device too."""
    backend = load_backend(torchscript_model, device=device)
    assert backend.device.type == device and backend.meta.dynamic
    pred, proto = backend(square_batch[0][:2].to(device))
    assert pred.device.type == proto.device.type == device
    assert_raw_close(pred, proto, (cpu_ref[0][:2], cpu_ref[1][:2]), 1e-3, f"torchscript on {device}")
    xb, _ = letterbox([torch.from_numpy(_fixture_images()[0])], size=IMGSZ, auto=True)  # 224x320
    assert_raw_close(*backend(xb.to(device)), cpu_backend(xb), 1e-3, f"torchscript on {device}, 224x320")


@pytest.mark.gpu
def test_onnx_backend_on_cuda(tmp_path: Path, square_batch: tuple, cpu_ref: tuple[torch.Tensor, torch.Tensor]) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip(f"onnxruntime {ort.__version__} here has no CUDA provider (onnxruntime-gpu)")
    from engines.export import export

    path = export(CKPT, format="onnx", imgsz=IMGSZ, dynamic=True, out=tmp_path / "fixture.onnx")
    backend = load_backend(path, device="cuda")
    pred, proto = backend(square_batch[0].cuda())
    assert pred.is_cuda and proto.is_cuda
    assert_raw_close(pred, proto, cpu_ref, 1e-3, "onnx on cuda")


# ------------------------------------------------------------------------- pre- and post-processing

@pytest.mark.parametrize("device", DEVICES)
def test_letterbox_on_device_matches_cpu(device: str) -> None:
    """The (N, H, W, 3) tensor path (one resize for the batch), auto=True rectangles and scaleup=False;
    tests/engines/test_ops_letterbox.py covers the list path at 640."""
    frames = fixture_images()
    same = torch.from_numpy(np.stack([frames[1], frame_variant(1, alt=True)]))  # (2, 640, 481, 3)
    for images, kw in [(same, {"size": IMGSZ}), (same, {"size": IMGSZ, "auto": True}),
                       (same, {"size": 1024, "scaleup": False}), (same, {"size": (256, 416)}),
                       ([torch.from_numpy(f) for f in frames], {"size": IMGSZ})]:
        a, ia = letterbox(images, **kw)
        dev = images.to(device) if isinstance(images, torch.Tensor) else [im.to(device) for im in images]
        b, ib = letterbox(dev, **kw)
        assert b.device.type == device and b.dtype == torch.float32 and ia == ib, kw
        diff = (a - b.cpu()).abs()
        assert diff.max() <= 1 / 255 + 1e-6 and diff.mean() < 1e-3, (kw, float(diff.max()), float(diff.mean()))


def _raw_fixture() -> list[tuple[torch.Tensor, torch.Tensor, LetterboxInfo]]:
    """Ultralytics' own raw outputs of the three fixture images (one per image, rectangular inputs)."""
    ref = json.loads((FIXTURES / "predict.json").read_text())
    out = []
    for name, entry in sorted(ref["images"].items()):
        with np.load(FIXTURES / f"raw_{Path(name).stem}.npz") as z:
            pred, proto = torch.from_numpy(z["pred"]), torch.from_numpy(z["proto"])
        info = letterbox_geometry(tuple(entry["orig_shape"]), size=IMGSZ, stride=32, auto=True)
        out.append((pred, proto, info))
    return out


def _assert_same_detections(got: Detections, ref: Detections, device: str, what: str) -> None:
    """Same rows (boxes, scores, classes) and the same masks up to pixels at the 0.5 threshold."""
    assert got.boxes.device.type == device and got.scores.device.type == device, what
    assert len(got) == len(ref), (what, len(got), len(ref))
    torch.testing.assert_close(got.boxes.cpu(), ref.boxes, atol=1e-3, rtol=0, msg=what)
    torch.testing.assert_close(got.scores.cpu(), ref.scores, atol=1e-5, rtol=0, msg=what)
    assert torch.equal(got.class_ids.cpu(), ref.class_ids), what
    assert got.has_masks == ref.has_masks, what
    if not ref.has_masks:
        return
    assert all(c.device.type == device for _, _, c in got._crops), what
    assert [(x0, y0, tuple(c.shape)) for x0, y0, c in got._crops] == [
        (x0, y0, tuple(c.shape)) for x0, y0, c in ref._crops], what
    gm, rm = got.masks, ref.masks  # dense frame masks, built on the device from the crops
    assert gm.device.type == device and gm.dtype == torch.bool and gm.shape == rm.shape, what
    differing = (gm.cpu() != rm).flatten(1).sum(1)
    area = rm.flatten(1).sum(1).clamp(min=1)
    assert (differing <= torch.maximum(torch.full_like(area, 2), area // 500)).all(), (what, differing.tolist())


@pytest.mark.parametrize("retina", [False, True], ids=["input-res", "retina"])
@pytest.mark.parametrize("device", DEVICES)
def test_postprocess_end_to_end_matches_cpu(device: str, retina: bool, cpu_ref: tuple[torch.Tensor, torch.Tensor],
                                            square_batch: tuple) -> None:
    """Raw outputs -> Detections (NMS, boxes to the frame, mask crops, dense masks, RLE, polygons,
    plot) on the device, against the same function on CPU: per image on Ultralytics' raw fixture
    outputs, and for a 4-image batch at predict and at val thresholds (hundreds of candidates)."""
    from pycocotools import mask as mask_utils

    names = tuple(f"c{i}" for i in range(NC))
    cases = [([pred], [proto], [info], PREDICT_NMS, f"fixture image {k}")
             for k, (pred, proto, info) in enumerate(_raw_fixture())]
    cases = [(torch.cat(p), torch.cat(q), i, c, w) for p, q, i, c, w in cases]
    x, infos, frames = square_batch
    cases += [(cpu_ref[0], cpu_ref[1], infos, PREDICT_NMS, "batch of 4, predict"),
              (cpu_ref[0], cpu_ref[1], infos, VAL_NMS, "batch of 4, val thresholds")]
    found = 0
    for pred, proto, infos_, cfg, what in cases:
        ref = postprocess(pred, proto, infos_, cfg, names=names, retina_masks=retina)
        got = postprocess(pred.to(device), proto.to(device), infos_, cfg, names=names, retina_masks=retina)
        assert len(got) == len(ref)
        for i, (g, r) in enumerate(zip(got, ref, strict=True)):
            rles = polys = None
            if cfg is PREDICT_NMS and len(r):  # from the device crops, before dense masks exist
                rles, polys = g.to_rle(), g.polygons()
                host = g.cpu()
                assert host.boxes.device.type == "cpu" and torch.equal(host.class_ids, r.class_ids)
            _assert_same_detections(g, r, device, f"{what}, image {i}")
            found += len(r)
            if rles is not None:
                assert len(rles) == len(polys) == len(g) and rles[0]["size"] == list(r.orig_shape)
                dec = np.stack([mask_utils.decode({"size": o["size"], "counts": o["counts"].encode()})
                                for o in rles]).astype(bool)
                assert (dec != r.masks.numpy()).mean() < 1e-3
        if cfg is VAL_NMS:
            assert sum(len(r) for r in ref) > 20  # the val settings keep many low-score boxes
    assert found > 0
    # plot() draws device detections on a host image
    det = postprocess(cpu_ref[0][:1].to(device), cpu_ref[1][:1].to(device), infos[:1], PREDICT_NMS,
                      names=names, retina_masks=retina)[0]
    drawn = det.plot(frames[0])
    assert drawn.shape == frames[0].shape and (drawn != frames[0]).any()
    # masks=False: the same rows, no masks
    nomask = postprocess(cpu_ref[0].to(device), cpu_ref[1].to(device), infos, PREDICT_NMS, names=names, masks=False)
    withm = postprocess(*cpu_ref, infos, PREDICT_NMS, names=names)
    for a, b in zip(nomask, withm, strict=True):
        assert not a.has_masks and a.masks is None and a.boxes.device.type == device and len(a) >= len(b)


def _clustered_boxes(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` integer-coordinate boxes in clusters (IoU exact in float32 on any device), distinct scores."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randint(40, 600, (max(n // 30, 1), 2), generator=g).float()
    c = centres[torch.randint(0, len(centres), (n,), generator=g)] + torch.randint(-12, 13, (n, 2), generator=g)
    wh = torch.randint(8, 80, (n, 2), generator=g).float()
    boxes = torch.cat((c - wh // 2, c + wh // 2), 1)
    scores = torch.randperm(n, generator=g).float() / n
    return boxes, scores


@pytest.mark.parametrize("device", DEVICES)
def test_torch_nms_fallback_on_device(device: str) -> None:
    """The blocked greedy NMS (used when torchvision is absent or broken) on the device: same keep
    list as on CPU for several block sizes and max_keep, and the sequential fallback for long chains."""
    boxes, scores = _clustered_boxes(3000, seed=0)
    ref = _blocked_nms(boxes, scores, 0.5, max_keep=None)
    assert 100 < len(ref) < 3000
    for block in (16, 64, 256):
        for max_keep in (None, 50):
            got = _blocked_nms(boxes.to(device), scores.to(device), 0.5, max_keep=max_keep, block=block)
            assert got.device.type == device
            want = ref if max_keep is None else ref[:max_keep]
            assert torch.equal(got.cpu(), want), (block, max_keep)
    # A chain where each box overlaps only the next: more fixed-point rounds than _MAX_ROUNDS, so
    # the block is resolved by _greedy_sequential (keep every other box).
    k = 80
    x1 = torch.arange(k, dtype=torch.float32) * 10
    chain = torch.stack((x1, torch.zeros(k), x1 + 20, torch.full((k,), 20.0)), 1)
    chain_scores = torch.linspace(1.0, 0.5, k)
    got = _blocked_nms(chain.to(device), chain_scores.to(device), 0.3, max_keep=None, block=128)
    assert torch.equal(got.cpu(), torch.arange(0, k, 2))
    sup = torch.ones((4, 4), dtype=torch.bool, device=device).triu(1)
    assert _greedy_sequential(sup, torch.ones(4, dtype=torch.bool, device=device)).cpu().tolist() == [
        True, False, False, False]


@pytest.mark.parametrize("device", DEVICES)
def test_mask_routes_on_device_match_cpu(device: str) -> None:
    """Every mask function of engines.ops on the device against CPU, on the real detections of the
    fixture image with five objects: input-resolution and prototype-resolution masks, un-letterboxing
    with and without the LetterboxInfo, retina masks full-frame and as crops, crop pasting."""
    pred, proto, info = _raw_fixture()[2]
    (rows,) = non_max_suppression(pred, PREDICT_NMS, nc=NC)
    assert len(rows) == 5
    protos, coeffs, boxes = proto[0], rows[:, 6:], rows[:, :4]
    frame_boxes = scale_boxes(boxes, info)
    d = {"protos": protos.to(device), "coeffs": coeffs.to(device), "boxes": boxes.to(device),
         "frame_boxes": frame_boxes.to(device)}
    ih, iw = info.new_shape

    low_c = process_masks(protos, coeffs, boxes, (ih, iw), upsample=False)
    low_d = process_masks(d["protos"], d["coeffs"], d["boxes"], (ih, iw), upsample=False)
    assert low_d.device.type == device and torch.equal(low_c, low_d.cpu())
    up_c = process_masks(protos, coeffs, boxes, (ih, iw))
    up_d = process_masks(d["protos"], d["coeffs"], d["boxes"], (ih, iw))
    assert (up_c != up_d.cpu()).float().mean() < 1e-4

    sc_c = scale_masks(up_c[None].float(), info.orig_shape, info=info)
    sc_d = scale_masks(up_d[None].float(), info.orig_shape, info=info)
    assert sc_d.device.type == device and sc_d.shape == (1, 5, *info.orig_shape)
    assert ((sc_c > 0.5) != (sc_d.cpu() > 0.5)).float().mean() < 1e-4
    inf_d = scale_masks(up_d[None].float(), info.orig_shape)  # letterbox inferred from the shapes
    assert ((inf_d.cpu() > 0.5) != (sc_c > 0.5)).float().mean() < 1e-3

    nat_c = process_masks_native(protos, coeffs, frame_boxes, info.orig_shape)
    nat_d = process_masks_native(d["protos"], d["coeffs"], d["frame_boxes"], info.orig_shape)
    assert nat_d.device.type == device and (nat_c != nat_d.cpu()).float().mean() < 1e-4

    crops_d = mask_crops(d["protos"], d["coeffs"], d["frame_boxes"], info.orig_shape)
    rcrops_d = retina_mask_crops(d["protos"], d["coeffs"], d["boxes"], info)
    for a, b in zip(crops_d, rcrops_d, strict=True):
        assert a[:2] == b[:2] and torch.equal(a[2], b[2]) and a[2].device.type == device
    pasted = paste_crops(crops_d, info.orig_shape, device=device)
    assert pasted.device.type == device and (pasted.cpu() != nat_c).float().mean() < 1e-4

    in_c, has_c = input_mask_crops(protos, coeffs, boxes, info)
    in_d, has_d = input_mask_crops(d["protos"], d["coeffs"], d["boxes"], info)
    assert has_c == has_d and all(has_c)
    for (x0, y0, a), (x1, y1, b) in zip(in_c, in_d, strict=True):
        assert (x0, y0, a.shape) == (x1, y1, b.shape) and b.device.type == device
        assert (a != b.cpu()).float().mean() < 1e-3
    scaled_ref = sc_c[0] > 0.5  # input-resolution masks taken to the frame, the full-frame way
    assert (paste_crops(in_d, info.orig_shape, device=device).cpu() != scaled_ref).float().mean() < 1e-4

    soft = torch.rand((5, *info.orig_shape), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(crop_mask(soft.to(device), d["frame_boxes"]).cpu(), crop_mask(soft, frame_boxes))


# ------------------------------------------------------------------------------------- SegModel

VARIANTS = [
    pytest.param("cpu", {}, "cpu", id="cpu"),
    pytest.param("cuda", {}, "strict", id="cuda", marks=pytest.mark.gpu),
    pytest.param("cuda", {"tf32": True}, "tf32", id="cuda-tf32-default", marks=pytest.mark.gpu),
    pytest.param("cuda", {"half": True}, "half", id="cuda-half", marks=pytest.mark.gpu),
    pytest.param("cuda", {"cuda_graph": True}, "strict", id="cuda-graph", marks=pytest.mark.gpu),
    pytest.param("cuda", {"half": True, "cuda_graph": True}, "half", id="cuda-half-graph", marks=pytest.mark.gpu),
]
TOLERANCES = {  # box px, score, mask IoU
    "cpu": (1e-3, 1e-5, 0.999),
    "strict": (0.25, 5e-3, 0.95),  # letterbox rounding may differ by one grey level on a few pixels
    "tf32": (1.0, 0.01, 0.9),
    "half": (2.0, 0.03, 0.85),
}


@pytest.fixture(scope="module")
def cpu_predictions() -> dict[str, list[Detections]]:
    from engines import SegModel

    model = SegModel(CKPT)
    return {"single": model(fixture_images()),
            "retina": model(fixture_images(), retina_masks=True),
            "pair": model([frame_variant(1, False), frame_variant(1, True)], batch=2)}


@pytest.mark.parametrize(("device", "opts", "tol"), VARIANTS)
def test_segmodel_predict_matches_cpu(device: str, opts: dict, tol: str,
                                      cpu_predictions: dict[str, list[Detections]], tmp_path: Path) -> None:
    """SegModel on real frames: one frame per call (three input rectangles: 224x320, 320x256 twice,
    so a CUDA graph is captured per shape and replayed on other pixels), a two-frame batch, retina
    masks, and frames read from files; the second pass over the frames replays what the first made."""
    from engines import SegModel

    opts = dict(opts)
    tf32 = opts.pop("tf32", False)
    prev = torch.backends.cudnn.allow_tf32
    if tf32:  # torch's defaults: TF32 convolutions, fp32 matmuls
        torch.backends.cudnn.allow_tf32 = True
    try:
        model = SegModel(CKPT, device=device, **opts)
        assert model.device.type == device
        box_px, score_tol, iou = TOLERANCES[tol]
        frames = fixture_images()
        for rnd in range(2):
            for name, got in (("single", model(frames)), ("retina", model(frames, retina_masks=True)),
                              ("pair", model([frame_variant(1, False), frame_variant(1, True)], batch=2))):
                ref = cpu_predictions[name]
                assert len(got) == len(ref)
                for i, (g, r) in enumerate(zip(got, ref, strict=True)):
                    assert g.boxes.device.type == device and g.orig_shape == r.orig_shape
                    assert len(r) > 0
                    assert_same_objects(objects_of(g), objects_of(r), box_px=box_px, score_tol=score_tol,
                                        min_iou=iou, what=f"{name} image {i} pass {rnd}")
        for i, f in enumerate(frames):
            cv2.imwrite(str(tmp_path / f"im{i}.png"), f)
        from_files = model(str(tmp_path))
        for i, (g, r) in enumerate(zip(from_files, cpu_predictions["single"], strict=True)):
            assert_same_objects(objects_of(g), objects_of(r), box_px=box_px, score_tol=score_tol, min_iou=iou,
                                what=f"file im{i}.png")
    finally:
        torch.backends.cudnn.allow_tf32 = prev


YOLO26 = FIXTURES / "yolo26n-seg-coco8.pt"


@pytest.fixture(scope="module")
def cpu_predictions26() -> dict[bool, list[Detections]]:
    from engines import SegModel

    return {nms_free: SegModel(YOLO26, nms_free=nms_free)(fixture_images()) for nms_free in (False, True)}


@pytest.mark.parametrize("nms_free", [False, True], ids=["nms", "nms-free"])
@pytest.mark.parametrize(("device", "opts", "tol"), [
    pytest.param("cpu", {}, "cpu", id="cpu"),
    pytest.param("cuda", {}, "strict", id="cuda", marks=pytest.mark.gpu),
    pytest.param("cuda", {"half": True, "cuda_graph": True}, "half", id="cuda-half-graph", marks=pytest.mark.gpu),
])
def test_yolo26_heads_match_cpu(device: str, opts: dict, tol: str, nms_free: bool,
                                cpu_predictions26: dict[bool, list[Detections]]) -> None:
    """YOLO26's one-to-many head (NMS) and one-to-one head (top-k, no NMS) on the device: the objects the
    CPU finds, twice over (the second pass replays the CUDA graphs the first captured)."""
    from engines import SegModel

    model = SegModel(YOLO26, device=device, nms_free=nms_free, **opts)
    box_px, score_tol, iou = TOLERANCES[tol]
    for rnd in range(2):
        got = model(fixture_images())
        for i, (g, r) in enumerate(zip(got, cpu_predictions26[nms_free], strict=True)):
            assert g.boxes.device.type == device and len(r) > 0
            assert_same_objects(objects_of(g), objects_of(r), box_px=box_px, score_tol=score_tol, min_iou=iou,
                                what=f"nms_free={nms_free} image {i} pass {rnd}")


# --------------------------------------------------------------------------------------- validation

@pytest.fixture(scope="module")
def tiny_val_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-image dataset of the fixture frames, labelled with Ultralytics' own retina masks for them
    (so the fixture model scores high and a wrong device path shows as a metric change)."""
    from pycocotools import mask as mask_utils

    from engines.checkpoint import load_checkpoint

    root = tmp_path_factory.mktemp("tinyval")
    (root / "images" / "val").mkdir(parents=True)
    (root / "labels" / "val").mkdir(parents=True)
    ref = json.loads((FIXTURES / "predict.json").read_text())
    for (name, entry), img in zip(sorted(ref["images"].items()), _fixture_images(), strict=True):
        h, w = img.shape[:2]
        lines = []
        for cls, rle in zip(entry["retina"]["classes"], entry["retina"]["masks_rle"], strict=True):
            m = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()})
            contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            poly = max(contours, key=cv2.contourArea).reshape(-1, 2).astype(np.float64)
            if len(poly) < 3:
                continue
            poly /= (w, h)
            lines.append(f"{cls} " + " ".join(f"{v:.6f}" for v in poly.clip(0, 1).ravel()))
        stem = Path(name).stem
        cv2.imwrite(str(root / "images" / "val" / f"{stem}.png"), img)
        (root / "labels" / "val" / f"{stem}.txt").write_text("\n".join(lines) + "\n")
    names = list(load_checkpoint(CKPT).meta.names)
    (root / "data.yaml").write_text(f"path: {root}\ntrain: images/val\nval: images/val\n"
                                    f"names: {json.dumps(names)}\n")
    return root / "data.yaml"


METRIC_KEYS = ("box.map", "box.map50", "box.map75", "box.precision", "box.recall", "seg.map", "seg.map50",
               "seg.map75", "seg.precision", "seg.recall", "fitness")


@pytest.fixture(scope="module")
def cpu_val_metrics(tiny_val_data: Path) -> dict[str, float]:
    from engines.val import validate

    m = validate(CKPT, data=tiny_val_data, imgsz=IMGSZ, batch=2, device="cpu", verbose=False)
    d = m.as_dict()
    assert m.images == 3 and d["box.map50"] > 0.5 and d["seg.map50"] > 0.5, d  # a meaningful reference
    return {k: float(d[k]) for k in METRIC_KEYS}


def _assert_metrics_close(got: dict, ref: dict[str, float], tol: float) -> None:
    for k in METRIC_KEYS:
        assert math.isfinite(float(got[k])) and abs(float(got[k]) - ref[k]) <= tol, (k, got[k], ref[k])


@pytest.mark.parametrize(("device", "half", "tol"), [
    ("cpu", False, 1e-6),
    pytest.param("cuda", False, 1e-3, marks=pytest.mark.gpu, id="cuda"),
    pytest.param("cuda", True, 0.03, marks=pytest.mark.gpu, id="cuda-half"),
])
def test_validate_matches_cpu(device: str, half: bool, tol: float, tiny_val_data: Path,
                              cpu_val_metrics: dict[str, float]) -> None:
    from engines.val import validate

    m = validate(CKPT, data=tiny_val_data, imgsz=IMGSZ, batch=2, device=device, half=half, verbose=False)
    assert m.images == 3
    _assert_metrics_close(m.as_dict(), cpu_val_metrics, tol)


@pytest.mark.parametrize("device", ["cpu", pytest.param("0", marks=pytest.mark.gpu, id="cuda-0")])
def test_val_cli_on_device(device: str, tiny_val_data: Path, cpu_val_metrics: dict[str, float], tmp_path: Path,
                           capsys: pytest.CaptureFixture[str]) -> None:
    """`segpipe val --device 0` with a loader process (pinned batches on CUDA) and --save-json (our
    metrics re-scored by pycocotools from the files written)."""
    from pipeline.cli import main

    out = tmp_path / "val"
    argv = ["val", "--model", str(CKPT), "--data", str(tiny_val_data), "--device", device, "--imgsz", str(IMGSZ),
            "--batch", "2", "--workers", "1", "--save-json", "--out", str(out)]
    assert main(argv) == 0, capsys.readouterr().err
    text = capsys.readouterr().out
    assert "pycocotools on predictions.json" in text
    _assert_metrics_close(json.loads((out / "metrics.json").read_text()), cpu_val_metrics, 1e-3)
    preds = json.loads((out / "predictions.json").read_text())
    assert preds and {p["image_id"] for p in preds} == {0, 1, 2}


# ----------------------------------------------------------------------------------------- training

TINY_TRAIN = dict(imgsz=64, batch=4, nbs=4, close_mosaic=0, plots=False, val=True, epochs=1, seed=0)
# the loss terms each trained model reports (YOLO26: its end-to-end loss, engines.train.loss.E2ESegLoss)
LOSSES = {"yolov8n-seg.yaml": ("box_loss", "seg_loss", "cls_loss", "dfl_loss"),
          "yolo26n-seg.yaml": ("box_loss", "seg_loss", "cls_loss", "l1_loss", "sem_loss")}


@pytest.fixture(scope="module")
def shapes_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.engines.shapes_data import make_shapes_dataset

    return make_shapes_dataset(tmp_path_factory.mktemp("shapes") / "data", n=4, size=128)


@pytest.fixture(scope="module")
def cpu_first_step_losses(shapes_data: Path, tmp_path_factory: pytest.TempPathFactory):
    """``losses(model)``: epoch-1 losses of the model's CPU fp32 run: with 4 images and batch 4 that is the
    loss of the very first step, a function of the seeded initial weights and data only, so every device
    must reproduce it."""
    from engines.train import train
    from engines.train.plots import read_results

    @functools.cache
    def losses(model: str) -> np.ndarray:
        out = tmp_path_factory.mktemp("cpu-train") / "run"
        train(data=shapes_data, out=out, model=model, device="cpu", amp=False, workers=0, **TINY_TRAIN)
        res = read_results(out / "results.csv")
        return np.array([res[f"train/{k}"][0] for k in LOSSES[model]])

    return losses


@pytest.mark.parametrize("model", list(LOSSES))
@pytest.mark.parametrize("amp", [True, False], ids=["amp", "fp32"])
@pytest.mark.parametrize("device", ["cpu", pytest.param("0", marks=pytest.mark.gpu, id="cuda-0")])
def test_train_one_epoch_on_device(device: str, amp: bool, model: str, shapes_data: Path,
                                   cpu_first_step_losses, tmp_path: Path) -> None:
    """YOLO26 too: its mask-aware assignment (prototype products, per-image unique anchors) on the device."""
    from engines.checkpoint import load_checkpoint
    from engines.train import train
    from engines.train.plots import read_results

    out = tmp_path / "run"
    workers = 1 if amp else 0  # one run with a loader process (pinned batches on CUDA)
    metrics = train(data=shapes_data, out=out, model=model, device=device, amp=amp, workers=workers,
                    **TINY_TRAIN)
    assert metrics.images == 4
    assert all(math.isfinite(float(v)) for k, v in metrics.as_dict().items() if k in METRIC_KEYS)
    w = out / "weights"
    last, best = load_checkpoint(w / "last.pt"), load_checkpoint(w / "best.pt")
    assert int(last.extra_tensors["train/epoch"]) == 1 and not best.extra_tensors
    assert best.meta.names == ("circle", "rect") and best.meta.train_args["device"] == device
    for ck in (last, best):
        assert all(torch.isfinite(t).all() for t in ck.state_dict.values() if t.is_floating_point())
    scale = float(last.extra_tensors["train/scaler_scale"])
    if amp and device != "cpu":
        assert scale > 1.0  # AMP's loss scale (65536 before any overflow)
    else:
        assert scale == 1.0
    res = read_results(out / "results.csv")
    losses = np.array([res[f"train/{k}"][0] for k in LOSSES[model]])
    assert np.isfinite(losses).all() and (losses > 0).all()
    rel = 1e-6 if device == "cpu" else 5e-2 if amp else 1e-2
    np.testing.assert_allclose(losses, cpu_first_step_losses(model), rtol=rel,
                               err_msg=f"first-step losses on {device}")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_resume_cpu_run_on_device(device: str, shapes_data: Path, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A run cut after its first epoch on CPU continues on ``device``: raw weights, optimizer moments and
    EMA move over, the second epoch trains and both checkpoints are written."""
    from engines.checkpoint import load_checkpoint
    from engines.train import hooks, train
    from engines.train.plots import read_results

    real = hooks.EarlyStopHook.after_epoch

    def cut_after_first(self, s):  # noqa: ANN001, ANN202
        real(self, s)
        if s.epoch == 0:
            raise KeyboardInterrupt

    monkeypatch.setattr(hooks.EarlyStopHook, "after_epoch", cut_after_first)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(data=shapes_data, out=out, device="cpu", workers=0, **{**TINY_TRAIN, "epochs": 2, "val": False})
    monkeypatch.undo()
    last = out / "weights" / "last.pt"
    assert int(load_checkpoint(last).extra_tensors["train/epoch"]) == 1
    train(resume=last, device=device, workers=0)
    ck = load_checkpoint(last)
    assert int(ck.extra_tensors["train/epoch"]) == 2 and ck.meta.train_args["device"] == device
    assert all(torch.isfinite(t).all() for t in ck.extra_tensors.values() if t.is_floating_point()
               and not t.ndim == 0)
    res = read_results(out / "results.csv")
    assert res["epoch"].tolist() == [1, 2]
    assert all(np.isfinite(res[f"train/{k}"]).all() for k in LOSSES["yolov8n-seg.yaml"])
    assert (out / "weights" / "best.pt").is_file()
