"""Synthetic scenes: exact masks, occlusion, labels, determinism, video + sidecar, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from engines.errors import ConfigError
from engines.synth.clip import VideoScene
from engines.synth.drawing import Pose
from engines.synth.labels import mask_to_polygon, parse_yolo_line, polygon_to_mask, rle_to_mask
from engines.synth.scene import composite, render_scene, visible_instances
from engines.synth.shapes import CLASS_NAMES, CLUTTER, ObjectSpec, render_object
from engines.synth.writers import labelled_instances, sample_scene, sidecar_path, write_dataset, write_video
from pipeline.cli import main

SMALL = (160, 128)


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.parts[-3] in ("images", "labels")
    }


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def _full_mask(spec: ObjectSpec, pose: Pose, size: tuple[int, int]) -> np.ndarray:
    sp = render_object(spec, pose, size)
    out = np.zeros(size[::-1], bool)
    if sp is not None:
        h, w = sp.mask.shape
        out[sp.y0 : sp.y0 + h, sp.x0 : sp.x0 + w] = sp.mask
    return out


# -- determinism ------------------------------------------------------------------------------------
def test_dataset_is_byte_identical_for_a_seed_whatever_the_workers(tmp_path: Path) -> None:
    a = write_dataset(tmp_path / "a", images=6, size=SMALL, seed=11, workers=1)
    b = write_dataset(tmp_path / "b", images=6, size=SMALL, seed=11, workers=2)
    c = write_dataset(tmp_path / "c", images=6, size=SMALL, seed=12, workers=1)
    fa, fb, fc = _files(a.root), _files(b.root), _files(c.root)
    assert len(fa) == 12 and fa == fb
    assert a.instances == b.instances and sum(a.instances) > 0
    assert fa != fc
    assert (a.train, a.val) == (5, 1)
    text = a.data_yaml.read_text()
    assert "train: images/train" in text and "val: images/val" in text
    assert all(f"  {i}: {n}" in text for i, n in enumerate(CLASS_NAMES))


# -- labels against the rendered masks --------------------------------------------------------------
def test_label_polygons_reproduce_the_visible_masks(tmp_path: Path) -> None:
    size, seed = (320, 240), 5
    summary = write_dataset(tmp_path / "ds", images=12, size=size, seed=seed, val_fraction=0.0)
    checked, ious = 0, []
    for i in range(12):
        scene = render_scene(np.random.default_rng([seed, i]), "mixed", size)
        lines = (summary.root / "labels" / "train" / f"synth_{i:06d}.txt").read_text().splitlines()
        assert len(lines) == len(scene.instances)
        for line, mask, cls in zip(lines, scene.masks(), scene.class_ids, strict=True):
            cid, poly = parse_yolo_line(line)
            assert cid == cls
            assert poly.min() >= 0 and poly.max() <= 1
            ys, xs = np.nonzero(mask)
            iou = _iou(polygon_to_mask(poly, *size, normalized=True), mask)
            ious.append(iou)
            if xs.max() - xs.min() >= 32 and ys.max() - ys.min() >= 32:
                assert iou > 0.98
                checked += 1
    assert checked >= 12
    assert np.mean(ious) > 0.98  # small and thin objects too


def test_thin_strokes_survive_the_trainer_and_the_validator() -> None:
    """Labels are traced along pixel edges: tracing through boundary pixel centres lost half of every
    2-px stroke once the trainer filled the polygon again (bicycle labels kept a third of their pixels)."""
    from engines.data.polygons import rasterize
    from engines.val.truth import rasterize_polygon

    m = np.zeros((100, 120), np.uint8)
    cv2.line(m, (5, 10), (110, 90), 1, 2)
    cv2.circle(m, (60, 50), 30, 1, 2)  # a tyre: a ring with a hole
    m[80:82, 10:40] = 1  # a 2-px bar
    m = m.astype(bool)
    poly = mask_to_polygon(m)
    train = rasterize([poly.astype(np.float64)], 100, 120, 1)[0].astype(bool)
    assert _iou(train, m) > 0.99  # training targets
    crop, (x0, y0, x1, y1) = rasterize_polygon(poly, (100, 120))
    val = np.zeros_like(m)
    val[y0:y1, x0:x1] = crop
    np.testing.assert_array_equal(val, train)  # validation ground truth: the same pixels


def test_the_validators_ground_truth_is_the_rendered_masks(tmp_path: Path) -> None:
    """A generated dataset's labels, filled into masks by the validator, give back what was rendered:
    thin bicycles too (cv2.fillPoly, the rule before, made their ground truth 10 % larger, IoU 0.87)."""
    from engines.data.spec import load_data_yaml
    from engines.val.validator import Validator

    summary = write_dataset(tmp_path / "ds", images=10, style="traffic", seed=4, size=(320, 192), val_fraction=0.5)
    v = Validator(data=load_data_yaml(summary.data_yaml), imgsz=320, batch=5)
    ious: dict[int, list[float]] = {}
    for lab in v.dataset.labels:
        truth = v.truth_of(lab.im_file)
        index = int(Path(lab.im_file).stem.rsplit("_", 1)[1])
        kept = labelled_instances(sample_scene(index, seed=4, style="traffic", size=(320, 192)))
        assert [c for c, _, _ in kept] == truth.cls.tolist()
        for i, (c, m, _) in enumerate(kept):
            ious.setdefault(c, []).append(_iou(truth.full_mask(i), m))
    assert sum(map(len, ious.values())) >= 20 and CLASS_NAMES.index("bicycle") in ious
    assert all(np.mean(v) > 0.96 for v in ious.values()), {CLASS_NAMES[c]: np.mean(v) for c, v in ious.items()}


def test_polygon_keeps_holes_and_separate_parts() -> None:
    m = np.zeros((100, 120), bool)
    yy, xx = np.mgrid[:100, :120]
    m |= ((yy - 40) ** 2 + (xx - 40) ** 2 < 30**2) & ((yy - 40) ** 2 + (xx - 40) ** 2 >= 15**2)  # a ring
    m[70:95, 80:115] = True  # a second part
    poly = mask_to_polygon(m)
    back = polygon_to_mask(poly, 120, 100)
    assert not back[40, 40]  # the hole stays empty
    assert back[80, 100]  # the separate part is filled
    assert _iou(back, m) > 0.99
    assert mask_to_polygon(np.zeros((10, 10), bool)).shape == (0, 2)


# -- occlusion ---------------------------------------------------------------------------------------
def test_occlusion_reduces_masks_and_drops_hidden_instances() -> None:
    size = (200, 160)
    bottom = (ObjectSpec("box", 1, 80.0), Pose(60, 60, 0.0))
    top = (ObjectSpec("box", 2, 80.0), Pose(100, 70, 0.0))
    hidden = (ObjectSpec("bottle", 3, 30.0), Pose(150, 120, 0.0))  # fully under `cover`
    cover = (ObjectSpec("box", 4, 55.0), Pose(150, 120, 0.0))
    edge = (ObjectSpec("tool", 5, 90.0), Pose(195, 20, 0.3))  # cut by the frame edge
    clutter = (ObjectSpec("metal_part", 6, 30.0), Pose(30, 130, 0.0))
    placed = [bottom, top, hidden, cover, edge, clutter]
    full = [_full_mask(s, p, size) for s, p in placed]
    bg = np.full((size[1], size[0], 3), 100, np.float32)
    img, id_map, areas = composite(bg, placed, "factory", shadow=0.0)
    visible = [id_map == k for k in range(len(placed))]
    # every object's visible pixels = its own mask minus everything drawn after it
    for k in range(len(placed)):
        later = np.zeros_like(full[k])
        for j in range(k + 1, len(placed)):
            later |= full[j]
        assert np.array_equal(visible[k], full[k] & ~later)
        assert areas[k] == full[k].sum()
    assert 0 < visible[0].sum() < full[0].sum()
    assert visible[2].sum() == 0
    cls = np.array([s.class_id for s, _ in placed])
    keep = visible_instances(id_map, cls, areas)
    assert 2 not in keep and 5 not in keep  # hidden bottle and unlabelled clutter
    assert {0, 1, 3, 4} <= set(keep)
    assert cls[5] == CLUTTER
    # an object pasted through its mask: frame pixels equal the sprite's pixels exactly there
    sp = render_object(*cover, size)
    h, w = sp.mask.shape
    np.testing.assert_array_equal(img[sp.y0 : sp.y0 + h, sp.x0 : sp.x0 + w][sp.mask], sp.image[sp.mask])


def test_partly_covered_instance_below_visible_threshold_is_dropped() -> None:
    size = (200, 160)
    under = (ObjectSpec("box", 7, 60.0), Pose(100, 80, 0.0))
    over = (ObjectSpec("box", 8, 120.0), Pose(150, 80, 0.0))
    bg = np.zeros((size[1], size[0], 3), np.float32)
    _, id_map, areas = composite(bg, [under, over], "factory", shadow=0.0)
    frac = (id_map == 0).sum() / areas[0]
    assert 0 < frac < 0.5
    cls = np.array([3, 3])
    assert 0 in visible_instances(id_map, cls, areas, min_visible=frac / 2)
    assert 0 not in visible_instances(id_map, cls, areas, min_visible=frac * 2)


# -- video -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("style", ["factory", "traffic"])
def test_video_decodes_and_sidecar_matches_frames(tmp_path: Path, style: str) -> None:
    size, fps, seconds, seed = (192, 144), 8.0, 1.5, 4
    out = tmp_path / "clip.mp4"
    r = write_video(out, seconds=seconds, fps=fps, size=size, style=style, seed=seed)
    assert r.frames == 12 and r.sidecar == sidecar_path(out) == tmp_path / "clip.gt.jsonl"
    records = [json.loads(line) for line in r.sidecar.read_text().splitlines()]
    assert [rec["frame"] for rec in records] == list(range(12))
    empty = VideoScene(style=style, size=size, fps=fps, frames=12, seed=seed).empty_frame().astype(np.float32)
    frames, distinct, total = 0, 0, 0
    with av.open(str(out)) as c:
        stream = c.streams.video[0]
        assert (stream.codec_context.name, stream.codec_context.pix_fmt) == ("h264", "yuv420p")
        for frame in c.decode(stream):
            rec = records[frames]
            assert (frame.width, frame.height) == size
            assert rec["pts"] == frame.pts and rec["time_base"] == str(stream.time_base)
            img = frame.to_ndarray(format="bgr24").astype(np.float32)
            diff = np.abs(img - empty).mean(-1)
            masks = [rle_to_mask(inst["rle"]) for inst in rec["instances"]]
            union = np.zeros(size[::-1], bool)
            for inst, m in zip(rec["instances"], masks, strict=True):
                assert m.shape == size[::-1] and m.sum() == inst["area"] > 0
                assert CLASS_NAMES[inst["class_id"]] == inst["class_name"]
                ys, xs = np.nonzero(m)
                assert inst["box"] == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
                assert not (union & m).any()  # visible masks never overlap
                union |= m
            for m in masks:  # the mask covers something that is not the background
                if m.sum() >= 60:
                    total += 1
                    distinct += diff[m].mean() > np.median(diff[~union]) + 8
            frames += 1
    assert frames == 12
    assert total >= 5 and distinct >= 0.85 * total
    ids = [i["track_id"] for rec in records for i in rec["instances"]]
    assert len(set(ids)) < len(ids)  # tracks persist from frame to frame


# -- bad input ---------------------------------------------------------------------------------------
BAD = [
    (["dataset", "--images", "0"], "--images: must be an integer from 1"),
    (["dataset", "--images", "-3"], "--images: must be an integer from 1"),
    (["dataset", "--images", "2", "--style", "foggy"], "unknown style 'foggy'"),
    (["dataset", "--images", "2", "--size", "0x0"], "--size: 0x0 is out of range"),
    (["dataset", "--images", "2", "--size", "20000x480"], "--size: 20000x480 is out of range"),
    (["dataset", "--images", "2", "--size", "640"], "expected WIDTHxHEIGHT"),
    (["dataset", "--images", "2", "--val-fraction", "1"], "--val-fraction: must be in [0, 1)"),
    (["dataset", "--images", "2", "--workers", "0"], "--workers: must be an integer from 1"),
    (["dataset", "--images", "2", "--seed", "-1"], "--seed: must be a non-negative integer"),
    (["dataset", "--images", "2", "@nonempty"], "is not empty; pass --force"),
    (["dataset", "--images", "2", "@file"], "is not a folder"),
    (["video", "--seconds", "1", "--size", "161x120"], "even width and height (try 162x120)"),
    (["video", "--seconds", "1", "--fps", "0"], "--fps: must be a number in (0, 240]"),
    (["video", "--seconds", "1", "--fps", "-5"], "--fps: must be a number in (0, 240]"),
    (["video", "--seconds", "0"], "--seconds: must be a positive number"),
    (["video", "--seconds", "0.01", "--fps", "10"], "is 0 frames"),
    (["video", "--seconds", "1", "@avi"], "expected a .mp4/.mkv/.mov file name"),
    (["video", "--seconds", "1", "@exists"], "already exists; pass --force"),
    (["video", "--seconds", "1", "--style", "night"], "unknown style 'night'"),
]


@pytest.mark.parametrize("args, expected", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_is_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], expected: str
) -> None:
    target = tmp_path / ("out" if args[0] == "dataset" else "clip.mp4")
    if "@nonempty" in args:
        target.mkdir()
        (target / "notes.txt").write_text("mine")
    if "@file" in args:
        target.write_text("a file")
    if "@avi" in args:
        target = tmp_path / "clip.avi"
    if "@exists" in args:
        target.write_bytes(b"old")
    argv = ["synth", args[0], "--out", str(target), *[a for a in args[1:] if not a.startswith("@")]]
    if args[0] == "video":
        argv += [] if "--size" in args else ["--size", "96x64"]
    rc = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0
    assert len(err) == 1 and expected in err[0], err
    assert "Traceback" not in err[0]
    if "@exists" in args:
        assert target.read_bytes() == b"old"


def test_force_replaces_only_dataset_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ds"
    assert (
        main(["synth", "dataset", "--out", str(out), "--images", "3", "--size", "96x64", "--workers", "1"])
        == 0
    )
    (out / "notes.txt").write_text("keep me")
    argv = [
        "synth",
        "dataset",
        "--out",
        str(out),
        "--images",
        "2",
        "--size",
        "96x64",
        "--workers",
        "1",
        "--val-fraction",
        "0",
    ]
    assert main(argv) == 2  # ConfigError
    assert main([*argv, "--force"]) == 0
    assert sorted(p.name for p in (out / "images" / "train").iterdir()) == [
        "synth_000000.jpg",
        "synth_000001.jpg",
    ]
    assert not any((out / "images" / "val").iterdir())
    assert (out / "notes.txt").read_text() == "keep me"
    assert "val: images/train" in (out / "data.yaml").read_text()
    assert "wrote 2 images (2 train, 0 val)" in capsys.readouterr().out


def test_api_errors_name_the_argument(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^--images: "):
        write_dataset(tmp_path / "x", images=0)
    with pytest.raises(ConfigError, match=r"^--style: "):
        render_scene_style = "mixed!"
        write_video(tmp_path / "x.mp4", seconds=1, fps=5, size=(96, 64), style=render_scene_style)
