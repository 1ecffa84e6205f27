"""benchmarks/synth_crops.py: native-scale windows of synthetic scenes, labelled from the generator's masks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from engines.data.cache import load_split
from engines.data.spec import load_data_yaml
from engines.synth.labels import parse_yolo_line, polygon_to_mask
from engines.synth.shapes import CLASS_NAMES
from engines.synth.writers import labelled_instances, sample_scene

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "synth_crops.py"
sys.path.insert(0, str(SCRIPT.parent))
from synth_crops import MIN_PIXELS, crops  # noqa: E402

BICYCLE = CLASS_NAMES.index("bicycle")


def test_each_window_is_the_scene_cut_and_its_labels_the_masks_cut() -> None:
    size, (cw, ch) = (320, 240), (160, 96)
    ious, focused = [], 0
    for index in range(8):
        scene = sample_scene(index, seed=3, style="traffic", size=size)
        instances = labelled_instances(scene)
        bikes = [mask for cls, mask, _ in instances if cls == BICYCLE]
        cut = crops(index, seed=3, style="traffic", size=size, crop=(cw, ch), focus=BICYCLE)
        assert len(cut) == 1 + bool(bikes)
        if bikes:  # the first window holds one bicycle's centre
            x0, y0 = cut[0][:2]
            centres = [(int(np.nonzero(m)[1].mean()), int(np.nonzero(m)[0].mean())) for m in bikes]
            assert any(x0 <= x < x0 + cw and y0 <= y < y0 + ch for x, y in centres)
            focused += 1
        for x0, y0, image, lines in cut:
            assert 0 <= x0 <= size[0] - cw and 0 <= y0 <= size[1] - ch
            assert np.array_equal(image, scene.image[y0:y0 + ch, x0:x0 + cw])
            parts = [(cls, mask[y0:y0 + ch, x0:x0 + cw]) for cls, mask, _ in instances
                     if mask[y0:y0 + ch, x0:x0 + cw].sum() >= MIN_PIXELS]
            assert len(lines) == len(parts)
            for line, (cls, part) in zip(lines, parts, strict=True):
                cid, poly = parse_yolo_line(line)
                assert cid == cls
                drawn = polygon_to_mask(poly, cw, ch, normalized=True)
                ious.append((drawn & part).sum() / (drawn | part).sum())
    assert focused >= 3 and np.mean(ious) > 0.97, (focused, np.mean(ious))


def test_the_script_writes_a_dataset_the_trainer_reads(tmp_path: Path) -> None:
    out = tmp_path / "crops"
    args = [sys.executable, str(SCRIPT), "--out", str(out), "--scenes", "3", "--seed", "1", "--size", "320x240",
            "--crop", "160x96", "--workers", "1"]
    subprocess.run(args, check=True, capture_output=True)
    spec = load_data_yaml(out / "data.yaml")
    assert spec.names == tuple(CLASS_NAMES)
    split = load_split(spec.sources("train"), nc=len(CLASS_NAMES), cache_dir=tmp_path / "cache")
    assert 3 <= len(split.labels) <= 6 and all(lab.shape == (96, 160) for lab in split.labels)
    again = subprocess.run(args, capture_output=True, text=True)
    assert again.returncode != 0 and "exists and is not empty (--force replaces it)" in again.stderr
    assert subprocess.run([*args, "--force"], capture_output=True).returncode == 0
