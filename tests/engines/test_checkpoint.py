"""engines.checkpoint: segpipe safetensors round trip, atomic save, Ultralytics .pt import through
the restricted unpickler, format sniffing, and one clear error per kind of bad input."""

from __future__ import annotations

import errno
import functools
import io
import json
import os
import pickle
import re
import struct
import subprocess
import sys
import types
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save as st_save

from engines.checkpoint import ModelMeta, build_model, load_checkpoint, save_checkpoint
from engines.checkpoint.unpickler import Record, resolve_global
from engines.errors import CheckpointError, ModelError, UnsafeCheckpointError
from engines.nn import SegmentationModel
from pipeline.cli import main as cli_main

FIXTURE_PT = Path(__file__).resolve().parents[1] / "fixtures" / "ultralytics" / "yolov8n-seg-coco8.pt"
FIXTURE11_PT = FIXTURE_PT.with_name("yolo11n-seg-coco8.pt")


@pytest.fixture(scope="module")
def small() -> tuple[SegmentationModel, ModelMeta]:
    torch.manual_seed(0)
    model = SegmentationModel("yolov8n-seg.yaml", nc=2).eval()
    meta = ModelMeta(names=("cat", "dog"), model_yaml=model.yaml, imgsz=320, stride=32,
                     train_args={"epochs": 3, "data": Path("/d/x.yaml")}, metrics={"mAP50(M)": 0.5},
                     data="/d/x.yaml", source="test")
    return model, meta


@pytest.fixture
def saved(tmp_path: Path, small: tuple[SegmentationModel, ModelMeta]) -> Path:
    model, meta = small
    return save_checkpoint(tmp_path / "best.safetensors", state_dict=model.state_dict(), meta=meta)


def test_segpipe_round_trip(tmp_path: Path, small: tuple[SegmentationModel, ModelMeta]) -> None:
    model, meta = small
    extra = {"train/optim/0/exp_avg": torch.randn(4, 3), "train/epoch": torch.tensor(7)}
    path = save_checkpoint(tmp_path / "last.safetensors", state_dict=model.state_dict(), meta=meta,
                           extra_tensors=extra)
    ckpt = load_checkpoint(path)
    assert ckpt.meta.names == ("cat", "dog") and ckpt.meta.imgsz == 320 and ckpt.meta.task == "segment"
    assert ckpt.meta.train_args == {"epochs": 3, "data": "/d/x.yaml"}  # JSON-ified Path
    assert ckpt.meta.model_yaml == json.loads(json.dumps(model.yaml))
    assert ckpt.state_dict.keys() == model.state_dict().keys()
    assert all(torch.equal(ckpt.state_dict[k], v) for k, v in model.state_dict().items())
    assert ckpt.extra_tensors.keys() == extra.keys()
    assert torch.equal(ckpt.extra_tensors["train/optim/0/exp_avg"], extra["train/optim/0/exp_avg"])
    rebuilt = build_model(ckpt)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(rebuilt(x), model(x), strict=True):
            assert torch.equal(a, b)
    assert not rebuilt.training
    assert oct(path.stat().st_mode & 0o777) == "0o644"


def test_format_is_sniffed_by_content_not_suffix(tmp_path: Path, saved: Path) -> None:
    disguised = tmp_path / "weights.pt"
    disguised.write_bytes(saved.read_bytes())
    assert load_checkpoint(disguised).meta.names == ("cat", "dog")
    other = tmp_path / "ultra.safetensors"
    other.write_bytes(FIXTURE_PT.read_bytes())
    assert load_checkpoint(other).meta.source.startswith("ultralytics")


def test_save_is_atomic_when_the_disk_fills(tmp_path: Path, saved: Path, small: tuple[SegmentationModel, ModelMeta],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    before = saved.read_bytes()
    model, meta = small

    def full_disk(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(CheckpointError, match="No space left on device"):
        save_checkpoint(saved, state_dict=model.state_dict(), meta=meta, extra_tensors={"x": torch.ones(3)})
    monkeypatch.undo()
    assert saved.read_bytes() == before  # old file untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == [saved.name]  # no temp file left behind
    assert not load_checkpoint(saved).extra_tensors


def test_save_into_missing_folder(tmp_path: Path, small: tuple[SegmentationModel, ModelMeta]) -> None:
    model, meta = small
    with pytest.raises(CheckpointError, match="does not exist"):
        save_checkpoint(tmp_path / "nope" / "a.safetensors", state_dict=model.state_dict(), meta=meta)


def test_import_ultralytics_checkpoint() -> None:
    ckpt = load_checkpoint(FIXTURE_PT)
    m = ckpt.meta
    assert len(m.names) == 80 and m.names[0] == "person" and m.names[79] == "toothbrush"
    assert (m.task, m.imgsz, m.stride) == ("segment", 320, 32)
    assert m.model_yaml["scale"] == "n" and m.model_yaml["nc"] == 80
    assert m.train_args["imgsz"] == 320 and m.source.startswith("ultralytics 8.")
    assert len(ckpt.state_dict) == 417 and not ckpt.extra_tensors
    floats = [t for t in ckpt.state_dict.values() if t.is_floating_point()]
    assert floats and all(t.dtype == torch.float32 for t in floats)  # saved as fp16
    assert ckpt.state_dict["model.0.bn.num_batches_tracked"].dtype == torch.int64
    assert torch.equal(ckpt.state_dict["model.22.dfl.conv.weight"].flatten(), torch.arange(16.0))
    model = build_model(ckpt)
    assert model.nc == 80 and not model.training


def test_import_ultralytics_yolo11_checkpoint(tmp_path: Path) -> None:
    ckpt = load_checkpoint(FIXTURE11_PT)
    m = ckpt.meta
    assert (m.task, m.imgsz, m.stride, len(m.names)) == ("segment", 320, 32, 80)
    assert m.model_yaml["yaml_file"] == "yolo11n-seg.yaml" and m.model_yaml["scale"] == "n"
    assert len(ckpt.state_dict) == 561
    assert ckpt.state_dict["model.10.m.0.attn.qkv.conv.weight"].shape == (256, 128, 1, 1)
    assert ckpt.state_dict["model.23.cv3.0.0.0.conv.weight"].shape == (64, 1, 3, 3)  # depth-wise class branch
    model = build_model(ckpt)
    assert not model.head.legacy and not model.training
    # Imported once, it round-trips as a segpipe checkpoint like any other.
    out = save_checkpoint(tmp_path / "yolo11.safetensors", state_dict=ckpt.state_dict, meta=ckpt.meta)
    again = build_model(load_checkpoint(out))
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(again(x), model(x), strict=True):
            assert torch.equal(a, b)


def test_import_then_save_as_segpipe(tmp_path: Path) -> None:
    ckpt = load_checkpoint(FIXTURE_PT)
    out = save_checkpoint(tmp_path / "converted.safetensors", state_dict=ckpt.state_dict, meta=ckpt.meta)
    again = load_checkpoint(out)
    assert again.meta == ckpt.meta
    assert all(torch.equal(again.state_dict[k], v) for k, v in ckpt.state_dict.items())


def _fake_ultralytics_pt(path: Path, monkeypatch: pytest.MonkeyPatch, cls_name: str, task: str,
                         model_yaml: dict | None = None) -> Path:
    """A torch.save zip holding an object of class ``ultralytics.nn.tasks.<cls_name>``, made without
    ultralytics: a stand-in module registered in sys.modules just while pickling."""
    for name in ("ultralytics", "ultralytics.nn", "ultralytics.nn.tasks"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    cls = type(cls_name, (), {"__module__": "ultralytics.nn.tasks"})
    setattr(sys.modules["ultralytics.nn.tasks"], cls_name, cls)
    obj = cls()
    obj.__dict__.update({"_parameters": {}, "_buffers": {}, "_modules": {}, "task": task,
                         "yaml": model_yaml or {"nc": 80}, "names": {0: "person"}})
    torch.save({"model": obj, "train_args": {"imgsz": 640}, "version": "8.3.0"}, path)
    return path


class _Evil:
    def __init__(self, target: object, *args: object) -> None:
        self.target, self.args = target, args

    def __reduce__(self) -> tuple:
        return self.target, self.args


def _evil_pt(path: Path, target: object, *args: object) -> Path:
    # Nested like a real payload would be: inside train_args of an otherwise plausible checkpoint.
    torch.save({"model": None, "train_args": {"imgsz": _Evil(target, *args)}}, path)
    return path


@pytest.mark.parametrize(
    ("target", "args", "name"),
    [
        (os.system, ("touch {marker}",), f"{os.system.__module__}.system"),
        (eval, ("open({marker!r}, 'w')",), "builtins.eval"),
        (exec, ("open({marker!r}, 'w')",), "builtins.exec"),
        (subprocess.check_call, (["touch", "{marker}"],), "subprocess.check_call"),
        (functools.partial, (os.system, "touch {marker}"), "functools.partial"),
        (getattr, (_Evil(__import__, "os"), "system"), "builtins.getattr"),
        (torch.load, ("{marker}",), "torch.serialization.load"),
    ],
    ids=["os.system", "eval", "exec", "subprocess", "functools.partial", "getattr", "torch.load"],
)
def test_malicious_pickle_is_refused(tmp_path: Path, target: object, args: tuple, name: str) -> None:
    marker = tmp_path / "pwned"
    args = tuple(a.format(marker=str(marker)) if isinstance(a, str) else
                 [x.format(marker=str(marker)) for x in a] if isinstance(a, list) else a for a in args)
    path = _evil_pt(tmp_path / "evil.pt", target, *args)
    # The payload is real: plain pickle would run it.
    with pytest.raises(UnsafeCheckpointError, match=f"refusing to unpickle global '{name}'"):
        load_checkpoint(path)
    assert not marker.exists()


def _truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _bad_input(case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, saved: Path) -> Path:
    def put(name: str, data: bytes) -> Path:
        p = tmp_path / name
        p.write_bytes(data)
        return p

    meta_detect = {"format": "segpipe-checkpoint", "format_version": 1,
                   "meta": {"names": ["a"], "model_yaml": {}, "imgsz": 640, "stride": 32, "task": "detect"}}
    future = {"format": "segpipe-checkpoint", "format_version": 99, "meta": {}}

    def not_torch_zip() -> bytes:
        zbuf = io.BytesIO()
        with zipfile.ZipFile(zbuf, "w") as zf:
            zf.writestr("readme.txt", "hello")
        return zbuf.getvalue()

    def zip_bomb() -> bytes:
        zbuf = io.BytesIO()
        with zipfile.ZipFile(zbuf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("a/data.pkl", pickle.dumps({"model": None}, protocol=2))
            zf.writestr("a/data/0", bytes(8 << 20))
        return zbuf.getvalue()

    header = b'{"__metadata__": {"segpipe": "{not json"}}'
    builders = {
        "missing": lambda: tmp_path / "absent.pt",
        "directory": lambda: tmp_path,
        "empty": lambda: put("empty.pt", b""),
        "random bytes": lambda: put("random.pt", os.urandom(4096)),
        "text": lambda: put("notes.pt", b"model: yolov8n-seg.yaml\n"),
        "truncated .pt": lambda: put("trunc.pt", _truncated(FIXTURE_PT.read_bytes())),
        "truncated safetensors": lambda: put("trunc.safetensors", _truncated(saved.read_bytes())),
        "corrupt safetensors header": lambda: put("hdr.safetensors", struct.pack("<Q", 12) + b"{not json!!}" + b"\0" * 8),
        "corrupt segpipe record": lambda: put("rec.safetensors", struct.pack("<Q", len(header)) + header),
        "plain safetensors": lambda: put("plain.safetensors", st_save({"w": torch.ones(2)})),
        "future version": lambda: put("future.safetensors", st_save({"w": torch.ones(2)}, {"segpipe": json.dumps(future)})),
        "zip, not torch": lambda: put("other.zip", not_torch_zip()),
        "zip bomb": lambda: put("bomb.pt", zip_bomb()),
        "legacy pickle": lambda: put("legacy.pt", pickle.dumps({"model": 1}, protocol=2)),
        "wrong task .pt": lambda: _fake_ultralytics_pt(tmp_path / "det.pt", monkeypatch, "DetectionModel", "detect"),
        "classify .pt": lambda: _fake_ultralytics_pt(tmp_path / "cls.pt", monkeypatch, "ClassificationModel", "classify"),
        "yoloe .pt": lambda: _fake_ultralytics_pt(tmp_path / "yoloe.pt", monkeypatch, "YOLOESegModel", "segment"),
        "rt-detr .pt": lambda: _fake_ultralytics_pt(tmp_path / "rtdetr.pt", monkeypatch, "RTDETRDetectionModel",
                                                    "detect"),
        "wrong task safetensors": lambda: put("det.safetensors",
                                      st_save({"w": torch.ones(2)}, {"segpipe": json.dumps(meta_detect)})),
    }
    return builders[case]()


BAD_INPUT = [
    ("missing", CheckpointError, "checkpoint not found"),
    ("directory", CheckpointError, "not a file"),
    ("empty", CheckpointError, "empty file"),
    ("random bytes", CheckpointError, "not a model checkpoint"),
    ("text", CheckpointError, "not a model checkpoint"),
    ("truncated .pt", CheckpointError, "corrupt or truncated"),
    ("truncated safetensors", CheckpointError, "truncated"),
    ("corrupt safetensors header", CheckpointError, "corrupt safetensors header"),
    ("corrupt segpipe record", CheckpointError, "corrupt segpipe metadata"),
    ("plain safetensors", CheckpointError, "without segpipe metadata"),
    ("future version", CheckpointError, "version 99 is not supported"),
    ("zip, not torch", CheckpointError, "not a PyTorch checkpoint"),
    ("zip bomb", CheckpointError, "expands 8388608 bytes from"),
    ("legacy pickle", CheckpointError, "legacy"),
    ("wrong task .pt", ModelError, "a detect model \\(DetectionModel\\)"),
    ("classify .pt", ModelError, "a classify model"),
    ("yoloe .pt", ModelError, "a segment model \\(YOLOESegModel\\)"),
    ("rt-detr .pt", ModelError, "a detect model \\(RTDETRDetectionModel\\)"),
    ("wrong task safetensors", ModelError, "a 'detect' model"),
]


@pytest.mark.parametrize(("case", "error", "match"), BAD_INPUT, ids=[c[0] for c in BAD_INPUT])
def test_bad_input(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, saved: Path, case: str,
                   error: type[Exception], match: str) -> None:
    path = _bad_input(case, tmp_path, monkeypatch, saved)
    with pytest.raises(error, match=match) as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_build_model_refuses_mismatched_weights(small: tuple[SegmentationModel, ModelMeta]) -> None:
    from engines.checkpoint import Checkpoint

    model, meta = small
    three = ModelMeta(names=("a", "b", "c"), model_yaml=meta.model_yaml, imgsz=320, stride=32, source="x.safetensors")
    with pytest.raises(ModelError, match=r"x.safetensors: weights do not fit .* wrong-shape \(e.g. model.22.cv3"):
        build_model(Checkpoint(state_dict=model.state_dict(), meta=three))
    sd = dict(model.state_dict())
    sd.pop("model.0.conv.weight")
    sd["model.99.foo"] = torch.ones(1)
    with pytest.raises(ModelError, match=r"1 missing \(e.g. model.0.conv.weight\); 1 unexpected"):
        build_model(Checkpoint(state_dict=sd, meta=meta))
    v12 = {**meta.model_yaml, "head": [*meta.model_yaml["head"][:2], [-1, 2, "A2C2f", [512, False, -1]],
                                       *meta.model_yaml["head"][3:]]}
    odd = ModelMeta(names=meta.names, model_yaml=v12, imgsz=320, stride=32, source="v12.pt")
    with pytest.raises(ModelError, match="v12.pt: unsupported model architecture .*unknown module 'A2C2f'"):
        build_model(Checkpoint(state_dict=model.state_dict(), meta=odd))


# Ultralytics' yolo26-seg.yaml at scale n, as its checkpoints store it (end2end head, 1-bin boxes).
YOLO26_SEG = {
    "nc": 80, "end2end": True, "reg_max": 1, "scale": "n", "yaml_file": "yolo26n-seg.yaml", "channels": 3,
    "scales": {"n": [0.5, 0.25, 1024]},
    "backbone": [[-1, 1, "Conv", [64, 3, 2]], [-1, 1, "Conv", [128, 3, 2]], [-1, 2, "C3k2", [256, False, 0.25]],
                 [-1, 1, "Conv", [256, 3, 2]], [-1, 2, "C3k2", [512, False, 0.25]], [-1, 1, "Conv", [512, 3, 2]],
                 [-1, 2, "C3k2", [512, True]], [-1, 1, "Conv", [1024, 3, 2]], [-1, 2, "C3k2", [1024, True]],
                 [-1, 1, "SPPF", [1024, 5, 3, True]], [-1, 2, "C2PSA", [1024]]],
    "head": [[-1, 1, "nn.Upsample", [None, 2, "nearest"]], [[-1, 6], 1, "Concat", [1]], [-1, 2, "C3k2", [512, True]],
             [-1, 1, "nn.Upsample", [None, 2, "nearest"]], [[-1, 4], 1, "Concat", [1]], [-1, 2, "C3k2", [256, True]],
             [-1, 1, "Conv", [256, 3, 2]], [[-1, 13], 1, "Concat", [1]], [-1, 2, "C3k2", [512, True]],
             [-1, 1, "Conv", [512, 3, 2]], [[-1, 10], 1, "Concat", [1]], [-1, 1, "C3k2", [1024, True, 0.5, True]],
             [[16, 19, 22], 1, "Segment26", ["nc", 32, 256]]],
}


@pytest.mark.parametrize(("name", "edit", "match"), [
    ("yoloe-26n-seg.pt", {"head": [*YOLO26_SEG["head"][:-1], [[16, 19, 22], 1, "YOLOESegment26", ["nc", 32, 256]]]},
     r"yolo26n-seg.yaml: head\[12\]: unknown module 'YOLOESegment26'"),
    ("mystery.pt", {"head": [*YOLO26_SEG["head"][:2], [-1, 2, "MysteryBlock", [512]], *YOLO26_SEG["head"][3:-1],
                             [[16, 19, 22], 1, "YOLOESegment26", ["nc", 32, 256]]]},
     r"head\[2\]: unknown modules 'MysteryBlock', 'YOLOESegment26'"),
    ("odd-bins.pt", {"reg_max": 100}, r"yolo26n-seg.yaml: reg_max: expected an integer number of box bins"),
])
def test_checkpoint_of_an_architecture_segpipe_cannot_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str], name: str,
                                                             edit: dict, match: str) -> None:
    """A segmentation checkpoint whose YAML needs modules segpipe lacks: one line naming the file and them."""
    path = _fake_ultralytics_pt(tmp_path / name, monkeypatch, "SegmentationModel", "segment",
                                model_yaml={**YOLO26_SEG, **edit})
    ckpt = load_checkpoint(path)
    with pytest.raises(ModelError, match=f"checkpoint {name}: unsupported model architecture .*{match}") as info:
        build_model(ckpt)
    assert "\n" not in str(info.value)
    assert cli_main(["info", "--model", str(path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and name in err[0] and re.search(match, err[0]), err


@pytest.mark.parametrize(
    ("module", "name", "allowed"),
    [
        ("collections", "OrderedDict", True),
        ("torch._utils", "_rebuild_tensor_v2", True),
        ("torch", "HalfStorage", True),
        ("torch", "float16", True),
        ("ultralytics.nn.modules.block", "C2f", True),
        ("torch.nn.modules.conv", "Conv2d", True),
        ("numpy", "dtype", True),
        ("builtins", "eval", False),
        ("builtins", "getattr", False),
        ("posix", "system", False),
        ("torch", "load", False),
        ("torch._utils", "_rebuild_device_tensor_from_numpy", False),
        ("ultralytics.utils", "lowercase_function", False),
        ("torch.nn.modules.conv", "__builtins__", False),
        ("numpy", "load", False),
        ("pickle", "loads", False),
    ],
)
def test_allow_list(module: str, name: str, allowed: bool) -> None:
    if allowed:
        resolve_global(module, name)
        if module.startswith(("ultralytics.", "torch.nn.modules.")):
            assert issubclass(resolve_global(module, name), Record)
    else:
        with pytest.raises(UnsafeCheckpointError, match=f"'{module}.{name}'"):
            resolve_global(module, name)


def test_cli_info_on_checkpoints(saved: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["info", f"model={saved}", "imgsz=320"]) == 0
    out = capsys.readouterr().out
    assert "2 classes (cat, dog)" in out and "3.0 GFLOPs at 320x320" in out
    assert cli_main(["info", "--model", str(saved)]) == 0  # at the checkpoint's own size, not 640
    assert capsys.readouterr().out.rstrip().endswith("3.0 GFLOPs at 320x320")
    assert cli_main(["info", "--model", str(FIXTURE_PT)]) == 0
    assert "ultralytics 8." in capsys.readouterr().out
    assert cli_main(["info", "--model", str(tmp_path / "gone.pt")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"segpipe info: error: {tmp_path / 'gone.pt'}: checkpoint not found"]
