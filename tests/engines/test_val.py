"""The validator end to end on coco128 images: our numbers against pycocotools on the files we write."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from engines.data.spec import load_data_yaml
from engines.errors import ModelError
from engines.val.coco import cocoeval_stats
from engines.val.validator import Validator
from pipeline.cli import main as cli

REPO = Path(__file__).resolve().parents[2]
FIXTURE_PT = REPO / "tests" / "fixtures" / "ultralytics" / "yolov8n-seg-coco8.pt"
N_IMAGES = 8  # the images the fixture checkpoint was trained on
IMGSZ = 320


@pytest.fixture(scope="module")
def data_yaml(coco128: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data YAML over the first 8 coco128 images (the shared folder stays read-only)."""
    d = tmp_path_factory.mktemp("data")
    images = sorted((coco128 / "images" / "train2017").glob("*.jpg"))[:N_IMAGES]
    (d / "val.txt").write_text("\n".join(map(str, images)) + "\n")
    names = [ln.split(":", 1)[1].strip() for ln in (coco128 / "coco128-seg.yaml").read_text().splitlines()
             if ln.strip()[:1].isdigit() and ":" in ln]
    assert len(names) == 80
    yaml_text = f"path: {coco128}\ntrain: {d / 'val.txt'}\nval: {d / 'val.txt'}\nnames: {json.dumps(names)}\n"
    (d / "data.yaml").write_text(yaml_text)
    return d / "data.yaml"


def _key(img_u8: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(img_u8).tobytes()).hexdigest()


class KnownAnswer:
    """Model outputs built from the labels themselves: one anchor per instance with the labelled box
    (shifted by ``shift`` input pixels) and class, and a mask that fills its box. Box AP must then
    be ~1 and mask AP what box-shaped masks earn; any error in letterbox mapping, post-processing
    or matching shows up."""

    def __init__(self, dataset, nc: int, shift: float = 0.0) -> None:
        self.nc, self.table = nc, {}
        for i in range(len(dataset)):
            s = dataset[i]
            h, w = s.image.shape[1:]
            boxes = s.bboxes.astype(np.float32) * np.array([w, h, w, h], np.float32)
            boxes[:, :2] += shift
            self.table[_key(s.image)] = (torch.from_numpy(boxes), torch.from_numpy(s.cls))

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, _, h, w = x.shape
        rows = [self.table[_key((x[i] * 255).round().to(torch.uint8).numpy())] for i in range(n)]
        a = max(1, max(len(c) for _, c in rows))
        pred = torch.zeros((n, 4 + self.nc + 32, a))
        proto = torch.zeros((n, 32, h // 4, w // 4))
        proto[:, 0] = 10.0  # coefficient 1 on this channel: the mask fills the box
        for i, (boxes, cls) in enumerate(rows):
            k = len(cls)
            pred[i, :4, :k] = boxes.T
            pred[i, 4 + cls, torch.arange(k)] = torch.linspace(0.95, 0.5, k) if k > 1 else 0.9
            pred[i, 4 + self.nc, :k] = 1.0
        return pred, proto


def _assert_cocoeval_agrees(metrics, out: Path, tol: float) -> dict[str, float]:
    ref = cocoeval_stats(out / "ground_truth.json", out / "predictions.json")
    ours = metrics.as_dict()
    for k, v in ref.items():
        assert abs(ours[k] - v) < tol, (k, ours[k], v)
    return ref


def test_known_answer_end_to_end(data_yaml: Path, tmp_path: Path) -> None:
    spec = load_data_yaml(data_yaml)
    v = Validator(data=spec, imgsz=IMGSZ, batch=4, save_json=True, out_dir=tmp_path, plots=True, verbose=False)
    oracle = KnownAnswer(v.dataset, spec.nc)
    m = v(oracle, spec.names)
    assert m.images == N_IMAGES and m.instances.sum() == sum(len(t) for t in v.truths)
    # The same images and truths, by file, for scripts that score on their own (benchmarks/mask_iou.py).
    batches = list(v.loader)
    got = [(v.truth_of(f), info) for bt in batches for f, info in zip(bt.im_files, bt.infos, strict=True)]
    assert len({id(t) for t, _ in got}) == N_IMAGES and all(any(t is u for u in v.truths) for t, _ in got)
    assert all(t.shape == tuple(info.orig_shape) for t, info in got)
    assert m.box.map > 0.9 and m.box.map50 > 0.95 and m.box.precision > 0.9 and m.box.recall > 0.9
    assert 0.1 < m.seg.map < m.box.map and m.seg.map50 > 0.4  # box-shaped masks: right place, wrong shape
    _assert_cocoeval_agrees(m, tmp_path, 1e-6)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(m.as_dict()))
    assert {"box.map", "box.map50", "box.map75", "box.maps", "box.precision", "box.recall", "seg.map",
            "fitness", "speed.preprocess", "speed.inference", "speed.postprocess"} <= set(saved)
    assert m.fitness == pytest.approx(0.1 * (m.box.map50 + m.seg.map50) + 0.9 * (m.box.map + m.seg.map))
    preds = json.loads((tmp_path / "predictions.json").read_text())
    assert {"image_id", "category_id", "bbox", "score", "segmentation"} <= set(preds[0])
    assert isinstance(preds[0]["segmentation"]["counts"], str)
    for name in ("BoxPR_curve.png", "MaskPR_curve.png", "BoxF1_curve.png", "val_batch0_labels.jpg",
                 "val_batch1_pred.jpg"):
        assert (tmp_path / name).stat().st_size > 1000, name

    # a second call (the trainer's next epoch) reuses everything and scores a worse model lower
    shifted = KnownAnswer(v.dataset, spec.nc, shift=6.0)
    m2 = v(shifted, spec.names)
    assert m2.box.map < m.box.map - 0.1 and m2.seg.map < m.seg.map
    _assert_cocoeval_agrees(m2, tmp_path, 1e-6)


class PaintedAnswer(KnownAnswer):
    """KnownAnswer whose instance i reads prototype i, painted over its box only: a mask that
    depends on where the prototypes are mapped to in the frame."""

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pred, proto = super().__call__(x)
        proto.fill_(-10.0)
        pred[:, 4 + self.nc:] = 0.0
        for i in range(x.shape[0]):
            for k in range(int((pred[i, 4:4 + self.nc].amax(0) > 0).sum())):
                assert k < proto.shape[1], "more instances than prototypes"
                cx, cy, w, h = (pred[i, :4, k] / 4).tolist()
                proto[i, k, round(cy - h / 2):round(cy + h / 2), round(cx - w / 2):round(cx + w / 2)] = 10.0
                pred[i, 4 + self.nc + k, k] = 1.0
        return pred, proto


def test_retina_masks_follow_the_letterbox_of_rectangular_batches(data_yaml: Path) -> None:
    """Rectangular val batches pad both axes of the letterbox (Ultralytics' half-stride margin), which
    the retina route must take from the letterbox, not infer from the shapes. Measured: retina and
    input-resolution masks of the same detections overlap with IoU 0.78-1.00, mean 0.97 (the small
    ones differ most: their input-resolution box spans a few pixels); inferring the padding left some
    masks empty, dropping their detections."""
    from engines.ops.postprocess import postprocess

    spec = load_data_yaml(data_yaml)
    v = Validator(data=spec, imgsz=IMGSZ, batch=4, verbose=False, retina_masks=True)
    oracle = PaintedAnswer(v.dataset, spec.nc)
    ious = []
    for bt in v.loader:
        assert all(info.pad[0] and info.pad[1] for info in bt.infos)
        pred, proto = oracle(bt.images.float() / 255)
        default, retina = (postprocess(pred, proto, bt.infos, v.nms, names=spec.names, retina_masks=r)
                           for r in (False, True))
        for a, b in zip(default, retina, strict=True):
            assert torch.equal(a.boxes, b.boxes)
            inter = (a.masks & b.masks).flatten(1).sum(1)
            ious += (inter / (a.masks | b.masks).flatten(1).sum(1)).tolist()
    assert len(ious) >= 20 and min(ious) > 0.7 and np.mean(ious) > 0.95
    m = v(oracle, spec.names)
    assert m.box.map > 0.9 and m.seg.map50 > 0.6  # box-shaped masks, as KnownAnswer's; measured 0.72


def test_class_count_mismatch_and_train_mode_restored(data_yaml: Path) -> None:
    spec = load_data_yaml(data_yaml)
    v = Validator(data=spec, imgsz=IMGSZ, batch=8)
    with pytest.raises(ModelError, match="3 classes"):
        v(lambda x: None, ("a", "b", "c"))

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.oracle = KnownAnswer(v.dataset, spec.nc)
            self.seen_training: list[bool] = []

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            self.seen_training.append(self.training)
            return self.oracle(x)

    net = Net().train()
    v(net)
    assert net.seen_training == [False] and net.training


def test_split_without_labels_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      caplog: pytest.LogCaptureFixture) -> None:
    """A val split whose labels are all missing scored mAP 0 with nothing saying why."""
    from tests.engines.shapes_data import make_shapes_dataset

    monkeypatch.setenv("SEGPIPE_CACHE", str(tmp_path / "cache"))
    data = make_shapes_dataset(tmp_path / "data", n=2, size=64)
    spec = load_data_yaml(data)
    with caplog.at_level("WARNING", logger="segpipe.val"):
        assert len(Validator(data=spec, imgsz=64).truths) == 2
    assert not caplog.records
    for label in (tmp_path / "data" / "labels" / "train").glob("*.txt"):
        label.unlink()
    with caplog.at_level("WARNING", logger="segpipe.val"):
        assert all(len(t.cls) == 0 for t in Validator(data=load_data_yaml(data), imgsz=64).truths)
    assert [r.getMessage() for r in caplog.records] == [
        f"the val split of {data} has no labelled instances: its mAP is 0 whatever the model does"]


@pytest.mark.parametrize("argv, code, message", [
    (["--model", "yolov8n-seg.yaml"], 2, "does not name the dataset"),
    (["--model", "missing.pt", "--data", "{data}"], 1, "model file not found"),
    (["--model", "yolov8n-seg.yaml", "--data", "{data}", "--conf", "2"], 2, "--conf"),
    (["--model", "yolov8n-seg.yaml", "--data", "{data}", "--imgsz", "100"], 2, "--imgsz"),
    (["--model", "yolov8n-seg.yaml", "--data", "nowhere.yaml"], 1, "data YAML not found"),
    (["--model", "yolov8n-seg.yaml", "--data", "{data}", "--half"], 2, "--half: fp16 inference needs a CUDA"),
    (["--model", "yolov8n-seg.yaml", "--data", "{data}", "--max-det", "0"], 2, "--max-det: expected an integer"),
    (["--model", "yolov8n-seg.yaml", "--data", "{data}", "--device", "gpu"], 2, "--device: expected auto, cpu"),
    # Output folders are written at the end: a bad one failed after the whole run, with a traceback.
    (["--model", "yolov8n-seg.yaml", "--data", "{data}", "--out", "{data}"], 2, "--out: {data} exists and is not a folder"),
    (["--model", "yolov8n-seg.yaml", "--data", "{data}", "--out", "{data}/x"], 2, "--out: cannot create folder {data}/x"),
])
def test_cli_user_errors(data_yaml: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                         argv: list[str], code: int, message: str) -> None:
    argv = [a.replace("{data}", str(data_yaml)) for a in argv]
    assert cli(["val", "--out", str(tmp_path / "out"), *argv]) == code
    err = capsys.readouterr().err.strip().splitlines()
    message = message.replace("{data}", str(data_yaml))
    assert len(err) == 1 and message in err[0] and err[0].startswith("segpipe val: error:")
    assert not (tmp_path / "out").exists()  # a run that failed leaves no empty output folder


def test_cli_fixture_checkpoint_agrees_with_cocoeval(data_yaml: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """The Ultralytics-trained fixture model through `segpipe val --save-json`, then as ONNX."""
    if not FIXTURE_PT.is_file():
        pytest.skip(f"fixture checkpoint not generated yet: {FIXTURE_PT}")
    args = ["--data", str(data_yaml), "--imgsz", str(IMGSZ), "--batch", "4", "--workers", "0"]
    assert cli(["val", "--model", str(FIXTURE_PT), *args, "--save-json", "--out", str(tmp_path / "pt")]) == 0
    assert "pycocotools on predictions.json" in capsys.readouterr().out
    saved = json.loads((tmp_path / "pt" / "metrics.json").read_text())
    ref = cocoeval_stats(tmp_path / "pt" / "ground_truth.json", tmp_path / "pt" / "predictions.json")
    for k, v in ref.items():
        assert abs(saved[k] - v) < 0.01, (k, saved[k], v)
    # the model overfit these images: real, non-trivial numbers (Ultralytics' own val prints box
    # 0.871 / mask 0.763 mAP50-95, its masks scored at 1/4 resolution; pycocotools on its
    # predictions.json against our ground truth gives box 0.885 / mask 0.641)
    assert saved["box.map50"] > 0.85 and 0.8 < saved["box.map"] < 0.95
    assert saved["seg.map50"] > 0.85 and 0.55 < saved["seg.map"] < 0.75
    assert cli(["val", "--model", str(FIXTURE_PT), *args, "--retina-masks", "--out", str(tmp_path / "retina")]) == 0
    retina = json.loads((tmp_path / "retina" / "metrics.json").read_text())
    # masks made at the frame's resolution: the same boxes, masks as good (measured: the same mAPs)
    assert retina["box.map"] == saved["box.map"] and abs(retina["seg.map"] - saved["seg.map"]) < 0.02

    from engines.export import export

    onnx = export(FIXTURE_PT, format="onnx", dynamic=True, out=tmp_path / "m.onnx")
    assert cli(["val", "--model", str(onnx), *args, "--out", str(tmp_path / "onnx")]) == 0
    via_onnx = json.loads((tmp_path / "onnx" / "metrics.json").read_text())
    for k in ("box.map", "box.map50", "seg.map", "seg.map50", "box.precision", "seg.recall"):
        assert abs(via_onnx[k] - saved[k]) < 0.01, (k, via_onnx[k], saved[k])


def test_mask_threshold_scores_and_the_script_that_chooses_it(data_yaml: Path, tmp_path: Path) -> None:
    """`val --mask-threshold` moves the mask mAP and nothing else; benchmarks/mask_threshold.py, which runs
    the model once and scores its kept outputs at each threshold, prints what `val` gives at each."""
    import subprocess
    import sys

    args = ["--data", str(data_yaml), "--imgsz", str(IMGSZ), "--batch", "4", "--workers", "0", "--retina-masks"]
    maps = {}
    for t in (0.5, 0.2):
        assert cli(["val", "--model", str(FIXTURE_PT), *args, "--mask-threshold", str(t), "--out",
                    str(tmp_path / str(t))]) == 0
        maps[t] = json.loads((tmp_path / str(t) / "metrics.json").read_text())
    assert maps[0.5]["box.map"] == maps[0.2]["box.map"] and maps[0.5]["seg.map"] != maps[0.2]["seg.map"]
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "mask_threshold.py"), "--model", str(FIXTURE_PT),
                          "--data", str(data_yaml), "--imgsz", str(IMGSZ), "--batch", "4", "--retina-masks",
                          "--thresholds", "0.5,0.2"], capture_output=True, text=True, timeout=600, check=True).stdout
    rows = {float(ln.split()[0]): float(ln.split()[1]) for ln in out.splitlines()
            if ln.split()[:1] in (["0.5"], ["0.2"])}
    assert rows == pytest.approx({t: m["seg.map"] for t, m in maps.items()}, abs=1e-4), out


def test_cli_checkpoint_remembers_data_and_imgsz(data_yaml: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """`segpipe val --model best.pt` alone: dataset and input size come from the checkpoint."""
    from engines.checkpoint import ModelMeta, save_checkpoint
    from engines.nn.model import SegmentationModel

    spec = load_data_yaml(data_yaml)
    torch.manual_seed(0)
    model = SegmentationModel("yolov8n-seg.yaml", nc=spec.nc)
    ckpt = save_checkpoint(tmp_path / "best.pt", state_dict=model.state_dict(), meta=ModelMeta(
        names=spec.names, model_yaml=model.yaml, imgsz=IMGSZ, stride=32, data=str(data_yaml)))
    out = tmp_path / "run"
    # an untrained head scores ~1e-3: conf 0.01 keeps post-processing cheap on 2 cores
    assert cli(["val", "--model", str(ckpt), "--conf", "0.01", "--workers", "0", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    row = next(ln.split() for ln in printed.splitlines() if ln.split()[:1] == ["all"])
    assert row[1:3] == [str(N_IMAGES), str(sum(len(t) for t in Validator(data=spec).truths))]
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["box.map"] == 0.0 and len(saved["seg.maps"]) == spec.nc

    # an exported fixed-shape ONNX model carries the same facts in its metadata (square batches)
    from engines.export import export

    onnx = export(ckpt, format="onnx", out=tmp_path / "best.onnx")
    assert cli(["val", "--model", str(onnx), "--conf", "0.01", "--workers", "0", "--batch", "8",
                "--out", str(tmp_path / "onnx")]) == 0
    assert json.loads((tmp_path / "onnx" / "metrics.json").read_text())["box.maps"] == saved["box.maps"]
