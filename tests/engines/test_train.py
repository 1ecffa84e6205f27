"""Trainer parts (optimizer recipe, schedule, EMA, resumable state) and tiny real training runs."""

from __future__ import annotations

import errno
import math
import os
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from engines.errors import ConfigError
from engines.train.config import TrainConfig
from engines.train.ema import ModelEMA
from engines.train.optim import (
    OptimizerChoice,
    Schedule,
    accumulation,
    build_optimizer,
    choose_optimizer,
    lr_factor,
    split_parameters,
    warmup_iterations,
)
from engines.train.plots import read_results
from engines.train.state_io import has_state, pack_state, restore_state
from tests.engines.shapes_data import make_shapes_dataset


def _tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.SiLU(), nn.Conv2d(4, 2, 1))


# ----------------------------------------------------------------------------------- optimizer recipe

@pytest.mark.parametrize(("name", "iterations", "nc", "expect", "error"), [
    ("auto", 20_000, 80, ("MuSGD", 0.01, 0.9, 0.0), None),
    ("auto", 1_000, 80, ("AdamW", round(0.01 / 84, 6), 0.9, 0.0), None),
    ("auto", 1_000, 1, ("AdamW", 0.002, 0.9, 0.0), None),
    ("sgd", 10, 2, ("SGD", 0.02, 0.95, 0.1), None),
    ("AdamW", 10, 2, ("AdamW", 0.02, 0.95, 0.1), None),
    ("lion", 10, 2, None, "unknown optimizer 'lion'"),
])
def test_choose_optimizer_table(name, iterations, nc, expect, error):
    def choose():
        return choose_optimizer(name, lr0=0.02, momentum=0.95, warmup_bias_lr=0.1, nc=nc, iterations=iterations)
    if error:
        with pytest.raises(ConfigError, match=error):
            choose()
        return
    c = choose()
    assert (c.name, c.lr0, c.momentum, c.warmup_bias_lr) == expect


def test_parameter_groups_keep_norms_and_biases_undecayed():
    net = _tiny_net()
    g = split_parameters(net)
    assert [p.shape for p in g["weight"]] == [(4, 3, 3, 3), (2, 4, 1, 1)]
    assert [p.shape for p in g["norm"]] == [(4,)]  # BN weight; BN bias goes with the biases
    assert len(g["bias"]) == 3
    opt = build_optimizer(net, OptimizerChoice(name="SGD", lr0=0.01, momentum=0.9, warmup_bias_lr=0.1),
                          weight_decay=5e-4)
    assert [(pg["group"], pg["weight_decay"]) for pg in opt.param_groups] == [
        ("bias", 0.0), ("weight", 5e-4), ("norm", 0.0)]
    assert opt.param_groups[0]["nesterov"]


@pytest.mark.parametrize(("batch", "nbs", "accumulate", "wd_scale"), [
    (16, 64, 4, 1.0), (64, 64, 1, 1.0), (128, 64, 1, 2.0), (24, 64, 3, 72 / 64), (4, 4, 1, 1.0),
])
def test_accumulation_to_nominal_batch(batch, nbs, accumulate, wd_scale):
    assert accumulation(batch, nbs) == (accumulate, pytest.approx(wd_scale))


def test_lr_factor_linear_and_cosine():
    lin, cos = lr_factor(10, 0.01, cosine=False), lr_factor(10, 0.01, cosine=True)
    assert lin(0) == 1.0 and lin(10) == pytest.approx(0.01) and lin(5) == pytest.approx(0.505)
    assert cos(0) == 1.0 and cos(10) == pytest.approx(0.01) and cos(5) == pytest.approx(0.505)
    assert cos(2) > lin(2)  # cosine stays high longer


def test_warmup_ramps_lr_momentum_and_accumulation():
    net = _tiny_net()
    opt = build_optimizer(net, OptimizerChoice(name="SGD", lr0=0.01, momentum=0.937, warmup_bias_lr=0.1),
                          weight_decay=0.0)
    sched = Schedule(factor=lr_factor(10, 0.01, cosine=False), momentum=0.937, warmup_iters=100,
                     warmup_bias_lr=0.1, warmup_momentum=0.8, accumulate=4)
    assert sched.apply(opt, epoch=0, ni=0) == 1
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.0, 0.0]
    assert all(g["momentum"] == pytest.approx(0.8) for g in opt.param_groups)
    assert sched.apply(opt, epoch=0, ni=50) == 2  # round(2.5) -> 2 (banker's rounding as numpy)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05 + 0.005)
    assert opt.param_groups[1]["lr"] == pytest.approx(0.005)
    assert sched.apply(opt, epoch=1, ni=100) == 4
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.01 * lr_factor(10, 0.01, cosine=False)(1)] * 3)
    assert all(g["momentum"] == pytest.approx(0.937) for g in opt.param_groups)
    assert sched.apply(opt, epoch=5, ni=900) == 4
    assert opt.param_groups[1]["lr"] == pytest.approx(0.01 * 0.505)


def test_warmup_never_covers_the_last_epoch():
    assert warmup_iterations(3.0, epochs=100, batches_per_epoch=8) == 24
    assert warmup_iterations(3.0, epochs=2, batches_per_epoch=8) == 8
    assert warmup_iterations(3.0, epochs=1, batches_per_epoch=8) == 0
    assert warmup_iterations(0.0, epochs=100, batches_per_epoch=8) == 0


# ------------------------------------------------------------------------------------------------ EMA

def test_ema_blends_float_tensors_with_ramped_decay():
    net = _tiny_net()
    ema = ModelEMA(net, decay=0.9999, tau=2000)
    assert ema.decay(1) == pytest.approx(0.9999 * (1 - math.exp(-1 / 2000)))
    before = {k: v.clone() for k, v in ema.ema.state_dict().items()}
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
        net[1].num_batches_tracked += 5
    ema.update(net)
    d = ema.decay(1)
    w = ema.ema.state_dict()
    assert torch.allclose(w["0.weight"], d * before["0.weight"] + (1 - d) * net.state_dict()["0.weight"])
    assert w["1.num_batches_tracked"] == before["1.num_batches_tracked"]  # integers are not averaged
    assert not any(p.requires_grad for p in ema.ema.parameters())


# -------------------------------------------------------------------------------------- resume state

@pytest.mark.parametrize("name", ["SGD", "AdamW", "MuSGD"])
def test_pack_and_restore_round_trip(name):
    net = _tiny_net()
    choice = OptimizerChoice(name=name, lr0=0.01, momentum=0.9, warmup_bias_lr=0.0)
    opt = build_optimizer(net, choice, weight_decay=1e-4)
    for _ in range(2):
        net(torch.rand(2, 3, 8, 8)).square().mean().backward()
        opt.step()
        opt.zero_grad()
    extra = pack_state(model=net, optimizer=opt, epoch=4, best_fitness=None, best_epoch=2, ema_updates=7,
                       scaler_scale=1024.0, train_seconds=5400.25)
    assert has_state(extra) and not has_state({})
    assert all(v.device.type == "cpu" for v in extra.values())

    net2 = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.SiLU(), nn.Conv2d(4, 2, 1))
    opt2 = build_optimizer(net2, choice, weight_decay=1e-4)
    rs = restore_state(extra, model=net2, optimizer=opt2)
    assert (rs.start_epoch, rs.best_fitness, rs.best_epoch, rs.ema_updates, rs.scaler_scale, rs.train_seconds) == (
        5, None, 2, 7, 1024.0, 5400.25)
    # A last.pt written before the training time was recorded resumes with its budget afresh.
    old = {k: v for k, v in extra.items() if k != "train/seconds"}
    assert restore_state(old, model=net2, optimizer=opt2).train_seconds == 0.0
    for (k, a), b in zip(net.state_dict().items(), net2.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    s1, s2 = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert s1.keys() == s2.keys()
    for i in s1:
        for k in s1[i]:
            assert torch.equal(torch.as_tensor(s1[i][k]), torch.as_tensor(s2[i][k])), (i, k)


@pytest.mark.parametrize(("field", "value", "error"), [
    ("imgsz", 100, "train.imgsz: must be a positive multiple of 32, got 100"),
    ("epochs", 0, "train.epochs: must be >= 1"),
    ("fraction", 1.5, "train.fraction: must be in"),
    ("dice", -0.5, "train.dice: must be >= 0, got -0.5"),
    ("optimizer", "adamax", "unknown optimizer 'adamax'"),
    ("lrf", 0.0, "train.lrf"),
    ("hyp", {"mosaic": 2.0}, "train.hyp.mosaic: expected a number in [0, 1], got 2.0"),
    ("hyp", {"mosiac": 0.0}, "train.hyp.mosiac: unknown augmentation setting"),
    ("freeze", -1, "train.freeze: expected a layer count N >= 0 (freezes layers 0..N-1) or a list of layer "
                   "indices >= 0, got -1"),
    ("freeze", 2.5, "train.freeze: expected a layer count"),
    ("freeze", True, "train.freeze: expected a layer count"),
    ("freeze", [], "train.freeze: expected a layer count"),
    ("freeze", [0, -2], "train.freeze: expected a layer count"),
    ("freeze", [1, 1], "train.freeze: layer indices must not repeat, got [1, 1]"),
    ("cache", "gpu", "train.cache: expected 'ram', 'disk' or none, got 'gpu'"),
    ("multi_scale", 1.0, "train.multi_scale: must be a fraction of imgsz in [0, 1), got 1.0"),
    ("multi_scale", -0.1, "train.multi_scale: must be a fraction of imgsz in [0, 1), got -0.1"),
    ("multi_scale", True, "train.multi_scale: must be a fraction of imgsz in [0, 1), got True"),
])
def test_config_rejects_bad_values(field, value, error):
    with pytest.raises(ConfigError, match=re.escape(error)):
        TrainConfig(data="d.yaml", **{field: value})


def test_config_record_round_trip():
    cfg = TrainConfig(data="d.yaml", epochs=3, hyp={"mosaic": 0.0})
    assert TrainConfig.from_record({**cfg.to_record(), "from_the_future": 1}) == cfg


# ------------------------------------------------------------------------------------ real training

TINY = dict(imgsz=64, batch=4, nbs=4, workers=0, device="cpu", close_mosaic=0, val=False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, one_thread):
    """A from-scratch yolov8n-seg trained 25 epochs on 16 synthetic images at 64 px (~100 steps)."""
    from engines.train import train

    root = tmp_path_factory.mktemp("shapes")
    data = make_shapes_dataset(root / "data", n=16, size=128)
    metrics = train(data=data, out=root / "run", epochs=25, optimizer="AdamW", lr0=0.01, warmup_epochs=1,
                    hyp={"mosaic": 0.0}, **TINY)
    return SimpleNamespace(data=data, out=root / "run", metrics=metrics)


def test_training_lowers_the_loss_and_learns_the_shapes(trained):
    res = read_results(trained.out / "results.csv")
    assert res["epoch"].tolist() == list(range(1, 26))
    for name in ("box_loss", "seg_loss", "cls_loss", "dfl_loss"):
        first, last = res[f"train/{name}"][:3].mean(), res[f"train/{name}"][-3:].mean()
        assert last < 0.8 * first, (name, first, last)
    m = trained.metrics
    assert m.box.map50 > 0.05 and m.seg.map50 > 0.05, (m.box.map50, m.seg.map50)
    assert m.names == ("circle", "rect") and m.images == 16
    # Only the last epoch was validated (--no-val): its metrics are in the CSV, the others are blank.
    assert np.isnan(res["metrics/mAP50(M)"][:-1]).all() and np.isfinite(res["metrics/mAP50(M)"][-1])


def test_run_folder_holds_checkpoints_csv_and_plots(trained):
    from engines.checkpoint import load_checkpoint

    w = trained.out / "weights"
    best, last = load_checkpoint(w / "best.pt"), load_checkpoint(w / "last.pt")
    assert best.meta.names == ("circle", "rect") and best.meta.imgsz == 64 and best.meta.stride == 32
    assert best.meta.data == str(trained.data) and best.meta.train_args["epochs"] == 25
    assert best.meta.metrics["epoch"] == 25 and best.meta.metrics["seg.map50"] == pytest.approx(
        trained.metrics.seg.map50, abs=1e-6)
    assert best.meta.metrics["fitness"] == pytest.approx(trained.metrics.fitness, abs=1e-6)
    assert has_state(last.extra_tensors) and not best.extra_tensors
    assert int(last.extra_tensors["train/epoch"]) == 25
    import yaml

    assert yaml.safe_load((trained.out / "args.yaml").read_text()) == last.meta.train_args  # settings, readable
    for f in ("results.csv", "results.png", "BoxPR_curve.png", "MaskPR_curve.png", "val_batch0_pred.jpg",
              "train_batch0.jpg", "train_batch2.jpg"):
        assert (trained.out / f).stat().st_size > 0, f
    assert not list(w.glob("*.tmp"))


def test_checkpoint_with_other_class_count_is_refused_and_pretrained_transfers(trained, tmp_path, capsys):
    from engines.checkpoint import load_checkpoint
    from engines.errors import ModelError
    from engines.train.weights import build_train_model

    best = str(trained.out / "weights" / "best.pt")
    with pytest.raises(ModelError, match=r"predicts 2 classes but the data has 3; .*--pretrained"):
        build_train_model(best, names=("a", "b", "c"))
    net = build_train_model("yolov8n-seg.yaml", names=("a", "b", "c"), pretrained=best)
    n, total = (int(x) for x in capsys.readouterr().out.split("Transferred ")[1].split()[0].split("/"))
    assert 0 < n < total == len(net.state_dict())
    assert torch.equal(net.state_dict()["model.0.conv.weight"], load_checkpoint(best).state_dict["model.0.conv.weight"])


@pytest.mark.parametrize(("train_args", "hint"), [({"single_cls": True}, True), ({}, False)])
def test_refused_single_cls_checkpoint_names_the_flag(monkeypatch, train_args, hint):
    # fine-tuning a --single-cls best.pt without the flag: the hint must say --single-cls, not only --pretrained
    from engines.errors import ModelError
    from engines.train import weights

    meta = SimpleNamespace(names=("item",), model_yaml={"yaml_file": "yolov8-seg.yaml", "scale": "n"},
                           train_args=train_args)
    monkeypatch.setattr(weights, "load_checkpoint", lambda path: SimpleNamespace(meta=meta))
    with pytest.raises(ModelError) as e:
        weights.build_train_model("best.pt", names=("a", "b", "c"))
    assert ("trained with --single-cls: add --single-cls" in str(e.value)) is hint
    assert "--model yolov8n-seg.yaml --pretrained best.pt" in str(e.value)


def _interrupt_after(monkeypatch, epoch_index: int):
    """Make the run die right after ``epoch_index``'s checkpoints are written (a kill, in effect)."""
    from engines.train import hooks

    real = hooks.EarlyStopHook.after_epoch

    def after_epoch(self, s):
        real(self, s)
        if s.epoch == epoch_index:
            raise KeyboardInterrupt

    monkeypatch.setattr(hooks.EarlyStopHook, "after_epoch", after_epoch)


@pytest.mark.parametrize("optimizer", ["SGD", "MuSGD"])
def test_resume_continues_exactly_where_the_run_stopped(tmp_path, monkeypatch, one_thread, optimizer):
    from engines.checkpoint import load_checkpoint
    from engines.train import train

    data = make_shapes_dataset(tmp_path / "data", n=4, size=128)
    kw = dict(TINY, batch=2, nbs=2, epochs=3, close_mosaic=1, optimizer=optimizer, plots=False)
    train(data=data, out=tmp_path / "full", **kw)

    _interrupt_after(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        train(data=data, out=tmp_path / "cut", **kw)
    monkeypatch.undo()
    assert int(load_checkpoint(tmp_path / "cut" / "weights" / "last.pt").extra_tensors["train/epoch"]) == 2
    train(resume=tmp_path / "cut" / "weights" / "last.pt", workers=0)

    a, b = (load_checkpoint(tmp_path / d / "weights" / "last.pt") for d in ("full", "cut"))
    assert a.extra_tensors.keys() == b.extra_tensors.keys()
    for k in a.state_dict:  # EMA weights
        assert torch.allclose(a.state_dict[k], b.state_dict[k], atol=1e-6), k
    for k in a.extra_tensors.keys() - {"train/seconds"}:  # raw weights, optimizer momentum, counters
        assert torch.allclose(a.extra_tensors[k].double(), b.extra_tensors[k].double(), atol=1e-6, equal_nan=True), k
    assert read_results(tmp_path / "cut" / "results.csv")["epoch"].tolist() == [1, 2, 3]

    with pytest.raises(ConfigError, match="already finished its 3 epochs"):
        train(resume=tmp_path / "full" / "weights" / "last.pt", workers=0)


@pytest.mark.parametrize("model", ["yolov8n-seg.yaml", "yolo26n-seg.yaml"])
def test_channels_last_trains_as_nchw_does(tmp_path, one_thread, model):
    """NHWC weights and batches (the default with CUDA; forced here on the CPU): the same losses and
    weights as NCHW, up to float summation order, and checkpoints written NCHW."""
    from engines.checkpoint import load_checkpoint
    from engines.train import train

    data = make_shapes_dataset(tmp_path / "data", n=4, size=128)
    # one step: from scratch on 4 images, rounding differences soon flip YOLO26's mask-aware assignment
    kw = dict(TINY, model=model, batch=4, nbs=4, epochs=1, optimizer="SGD", plots=False)
    for nhwc in (False, True):
        train(data=data, out=tmp_path / f"nhwc-{nhwc}", channels_last=nhwc, **kw)
    a, b = (read_results(tmp_path / f"nhwc-{v}" / "results.csv") for v in (False, True))
    losses = [k for k in a if k.startswith("train/")]
    np.testing.assert_allclose([a[k] for k in losses], [b[k] for k in losses], rtol=1e-3)
    nchw, nhwc_ck = (load_checkpoint(tmp_path / f"nhwc-{v}" / "weights" / "last.pt") for v in (False, True))
    assert nhwc_ck.meta.train_args["channels_last"] is True
    for k, w in nhwc_ck.state_dict.items():
        assert w.is_contiguous(), k
        torch.testing.assert_close(w, nchw.state_dict[k], atol=1e-3, rtol=1e-3, msg=k)


def test_resume_after_a_kill_between_its_csv_row_and_its_checkpoint(tmp_path, monkeypatch, one_thread):
    from engines.checkpoint import load_checkpoint
    from engines.train import hooks, train

    data = make_shapes_dataset(tmp_path / "data", n=4, size=128)
    kw = dict(TINY, batch=2, nbs=2, epochs=3, close_mosaic=0, optimizer="SGD", plots=False)
    real = hooks.CheckpointHook.after_epoch

    def killed_before_saving_epoch_2(self, s):
        if s.epoch == 1:
            raise KeyboardInterrupt  # epoch 2's row is in results.csv, its last.pt never written
        real(self, s)

    monkeypatch.setattr(hooks.CheckpointHook, "after_epoch", killed_before_saving_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train(data=data, out=tmp_path / "cut", **kw)
    monkeypatch.undo()
    w = tmp_path / "cut" / "weights"
    assert int(load_checkpoint(w / "last.pt").extra_tensors["train/epoch"]) == 1
    assert read_results(tmp_path / "cut" / "results.csv")["epoch"].tolist() == [1, 2]
    (w / ".last.pt.0123456789abcdef.tmp").write_bytes(b"half a checkpoint")  # as a SIGKILL mid-write leaves
    train(resume=w / "last.pt", workers=0)
    # Epoch 2 was trained again: one row for it (not the dead run's and the new one), no temp files.
    assert read_results(tmp_path / "cut" / "results.csv")["epoch"].tolist() == [1, 2, 3]
    assert sorted(p.name for p in w.iterdir()) == ["best.pt", "last.pt"]


def test_run_folder_of_an_earlier_run_is_refused_unless_exist_ok(tmp_path, one_thread):
    from engines.checkpoint import load_checkpoint
    from engines.train import train

    data = make_shapes_dataset(tmp_path / "data", n=4, size=128)
    kw = dict(TINY, batch=2, nbs=2, optimizer="SGD", plots=False, out=tmp_path / "run")
    train(data=data, epochs=2, **kw)
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "run" / "weights").iterdir()}
    with pytest.raises(ConfigError, match=r"train\.out: .*run holds an earlier run \(weights/last\.pt\); continue "
                                          r"it with --resume, train over it with --exist-ok"):
        train(data=data, epochs=1, **kw)
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "run" / "weights").iterdir()} == before
    # Over it: the earlier run's rows go (they were appended to before: epochs 1, 2, 1).
    train(data=data, epochs=1, exist_ok=True, **kw)
    assert read_results(tmp_path / "run" / "results.csv")["epoch"].tolist() == [1]
    assert load_checkpoint(tmp_path / "run" / "weights" / "last.pt").meta.train_args["epochs"] == 1


def test_checkpoint_of_a_run_started_with_relative_paths_works_from_another_folder(tmp_path, monkeypatch, one_thread):
    """best.pt recorded --data as typed ("data/data.yaml"): `segpipe val --model best.pt` and --resume
    then looked for it in whatever folder they were run from."""
    from engines.checkpoint import load_checkpoint
    from engines.train import train
    from engines.val import validate

    make_shapes_dataset(tmp_path / "data", n=4, size=128)
    monkeypatch.chdir(tmp_path)
    train(data="data/data.yaml", out="run", epochs=1, plots=False, **dict(TINY, batch=2, nbs=2))
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    best = tmp_path / "run" / "weights" / "best.pt"
    data = str(tmp_path / "data" / "data.yaml")
    assert load_checkpoint(best).meta.data == data and load_checkpoint(best).meta.train_args["data"] == data
    assert load_checkpoint(best).meta.train_args["model"] == "yolov8n-seg.yaml"  # a bundled name stays one
    assert validate(str(best), batch=2, verbose=False).images == 4


def test_image_broken_mid_run_is_one_line_from_a_loader_worker(tmp_path, monkeypatch, one_thread):
    from engines.errors import DataError
    from engines.train import hooks, train

    data = make_shapes_dataset(tmp_path / "data", n=4, size=128)
    images = sorted((tmp_path / "data" / "images" / "train").iterdir())
    real = hooks.CloseMosaicHook.before_epoch

    def break_images(self, s):  # after the dataset checked every image, before a worker reads one
        real(self, s)
        for p in images:
            p.write_bytes(b"gone bad")

    monkeypatch.setattr(hooks.CloseMosaicHook, "before_epoch", break_images)
    with pytest.raises(DataError) as e:
        train(data=data, out=tmp_path / "run", epochs=1, plots=False, **dict(TINY, workers=1, hyp={"mosaic": 0.0}))
    assert re.fullmatch(r".*/images/train/\w+\.\w+: image cannot be decoded", str(e.value)), str(e.value)


def test_sigterm_while_a_checkpoint_is_written_leaves_no_temp_file(tmp_path):
    """A kill (SIGTERM: a scheduler, docker stop) mid-write left a half-written .last.pt.XXXX.tmp."""
    from tests.helpers import sigterm_once

    data = make_shapes_dataset(tmp_path / "data", n=4, size=128)
    out = tmp_path / "run"
    argv = ["train", "--data", str(data), "--out", str(out), "--epochs", "500",
            "--imgsz", "64", "--batch", "2", "--workers", "0", "--device", "cpu", "--no-val", "--no-plots"]
    code, err = sigterm_once(argv, lambda: bool(list((out / "weights").glob(".*.tmp"))),  # last.pt, then best.pt
                             "a checkpoint write", step=0.0002)
    assert code == 143 and err.strip().splitlines()[-1] == "segpipe train: terminated", err
    assert not list((out / "weights").glob(".*.tmp"))


def test_failed_write_leaves_the_previous_best(tmp_path, monkeypatch, one_thread):
    from engines.checkpoint import load_checkpoint
    from engines.errors import CheckpointError
    from engines.train import train

    data = make_shapes_dataset(tmp_path / "data", n=4, size=128)
    real_replace, calls = os.replace, []

    def full_disk_on_second_best(src, dst):
        if Path(dst).name == "best.pt":
            calls.append(dst)
            if len(calls) > 1:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", full_disk_on_second_best)
    with pytest.raises(CheckpointError, match="best.pt: cannot write checkpoint"):
        train(data=data, out=tmp_path / "run", epochs=2, plots=False, **dict(TINY, val=True))
    w = tmp_path / "run" / "weights"
    assert load_checkpoint(w / "best.pt").meta.metrics["epoch"] == 1
    assert int(load_checkpoint(w / "last.pt").extra_tensors["train/epoch"]) == 2
    assert sorted(p.name for p in w.iterdir()) == ["best.pt", "last.pt"]


# ---------------------------------------------------------------------------------------------- CLI

@pytest.mark.parametrize(("args", "code", "error"), [
    ([], 2, "--data: required"),
    (["--data", "{data}", "--imgsz", "100"], 2, "--imgsz: must be a positive multiple of 32, got 100"),
    (["--data", "{data}", "--optimizer", "lion"], 2, "--optimizer: unknown optimizer 'lion'"),
    (["--data", "{data}", "--close-mosaic", "-1"], 2, "--close-mosaic: must be >= 0"),
    (["--data", "{data}", "--mosaic", "2"], 2, "--mosaic: expected a number in [0, 1], got 2.0"),
    (["--data", "{data}", "mask_ratio=0"], 2, "--mask-ratio: expected a positive integer, got 0"),
    (["--data", "{tmp}/nope.yaml"], 1, "data YAML not found"),
    (["--data", "{data}", "--model", "{tmp}/nope.pt"], 1, "nope.pt: checkpoint not found"),
    (["--resume", "--out", "{tmp}/no-run"], 2, "nothing to resume"),
    # Settings given with --resume were ignored without a word (the run kept its recorded ones).
    (["--resume", "--out", "{tmp}/no-run", "--epochs", "8"], 2, "--epochs: a resumed run keeps the settings "
                                                                "recorded in its last.pt"),
    (["--resume", "--out", "{tmp}/no-run", "--no-val"], 2, "--no-val: a resumed run keeps the settings"),
    (["--resume", "--out", "{tmp}/no-run", "mosaic=0.5"], 2, "--mosaic: a resumed run keeps the settings"),
    (["resume=True", "model={tmp}/last.pt"], 2, "--model: a resumed run keeps the settings recorded in its last.pt "
                                                "(only --device and --workers may change); name the checkpoint as "
                                                "--resume PATH"),
    (["--data", "{data}", "--out", "{data}/run"], 2, "--out: cannot create {data}/run/weights: Not a directory"),
    (["--data", "{data}", "--device", "0"], 1, "asks for CUDA"),
    (["--data", "{data}", "device=gpu"], 2, "--device: expected auto, cpu, a GPU index"),
    (["--data", "{data}", "--freeze", "-1"], 2, "--freeze: expected a layer count N >= 0"),
    (["--data", "{data}", "freeze=24"], 2, "--freeze: the model has 23 layers (0..22), got 24"),
    (["--data", "{data}", "--freeze", "0,30"], 2, "--freeze: the model has 23 layers (0..22), got layer 30"),
    (["--data", "{data}", "--freeze", "23"], 2, "--freeze: 23 freezes every layer of the model; nothing would train"),
    (["--resume", "--out", "{tmp}/no-run", "--freeze", "3"], 2, "--freeze: a resumed run keeps the settings"),
    (["--resume", "--out", "{tmp}/no-run", "cache=True"], 2, "--cache: a resumed run keeps the settings"),
    (["--data", "{data}", "pretrained=True"], 2, "--pretrained: name the checkpoint whose tensors seed the model"),
    (["--data", "{data}", "--momentum", "1"], 2, "--momentum: must be in [0, 1), got 1.0"),
    (["--data", "{data}", "weight_decay=-0.1"], 2, "--weight-decay: must be >= 0, got -0.1"),
    (["--data", "{data}", "--warmup-momentum", "1.5"], 2, "--warmup-momentum: must be in [0, 1), got 1.5"),
    (["--data", "{data}", "--warmup-bias-lr", "-1"], 2, "--warmup-bias-lr: must be >= 0, got -1.0"),
    (["--data", "{data}", "box=-1"], 2, "--box: must be >= 0, got -1.0"),
    (["--data", "{data}", "--cls", "-0.5"], 2, "--cls: must be >= 0, got -0.5"),
    (["--resume", "--out", "{tmp}/no-run", "--weight-decay", "0.01"], 2, "--weight-decay: a resumed run keeps"),
    (["--data", "{data}", "--multi-scale", "1.5"], 2, "--multi-scale: must be a fraction of imgsz in [0, 1), got 1.5"),
    (["--data", "{data}", "multi_scale=-0.5"], 2, "--multi-scale: must be a fraction of imgsz in [0, 1), got -0.5"),
    (["--resume", "--out", "{tmp}/no-run", "multi_scale=True"], 2, "--multi-scale: a resumed run keeps"),
])
def test_cli_reports_user_mistakes_on_one_line(tmp_path, monkeypatch, capsys, args, code, error):
    from pipeline.cli import main

    if "--device" in args and torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    monkeypatch.chdir(tmp_path)  # the default run folder is runs/segment/trainN here
    data = make_shapes_dataset(tmp_path / "data", n=2, size=64)
    resumed = any(a.startswith(("--resume", "resume=")) for a in args)
    argv = ["train", *(a.format(data=data, tmp=tmp_path) for a in args), *([] if resumed else ["--epochs", "1"]),
            "--workers", "0"]
    assert main(argv) == code
    err = capsys.readouterr().err.strip().splitlines()
    error = error.format(data=data, tmp=tmp_path)
    assert len(err) == 1 and err[0].startswith("segpipe train: error: ") and error in err[0], err
    assert not (tmp_path / "runs").exists()  # a run that could not start leaves no empty run folder


def test_cli_trains_with_ultralytics_spelling(tmp_path, capsys, one_thread):
    from engines.checkpoint import load_checkpoint
    from pipeline.cli import main

    data = make_shapes_dataset(tmp_path / "data", n=4, size=128)
    argv = ["train", f"data={data}", "epochs=1", "imgsz=64", "batch=4", "workers=0", "device=cpu",
            f"--out={tmp_path / 'run'}", "--no-plots", "mosaic=0", "mask_ratio=2", "--fliplr", "0"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "optimizer: AdamW(lr=0.001667, momentum=0.9)" in out  # auto: short run, 2 classes
    best = load_checkpoint(tmp_path / "run" / "weights" / "best.pt")
    assert best.meta.train_args["hyp"] == {"mosaic": 0.0, "mask_ratio": 2, "fliplr": 0.0}


def test_cli_optimizer_and_loss_settings_reach_the_run(tmp_path, capsys, one_thread):
    from engines.checkpoint import load_checkpoint
    from pipeline.cli import main

    data = make_shapes_dataset(tmp_path / "data", n=4, size=128)
    argv = ["train", "--data", str(data), "--epochs", "1", "--imgsz", "64", "--batch", "4", "--nbs", "4",
            "--workers", "0", "--device", "cpu", "--out", str(tmp_path / "run"), "--no-plots", "--optimizer", "SGD",
            "--lr0", "0.02", "momentum=0.8", "--weight-decay", "0.001", "--warmup-momentum", "0.5",
            "warmup_bias_lr=0.05", "--box", "5", "--cls", "1", "--dfl", "2"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "optimizer: SGD(lr=0.02, momentum=0.8) with parameter groups" in out
    assert "weight(decay=0.001)" in out
    recorded = load_checkpoint(tmp_path / "run" / "weights" / "best.pt").meta.train_args
    assert {k: recorded[k] for k in ("momentum", "weight_decay", "warmup_momentum", "warmup_bias_lr", "box", "cls",
                                     "dfl")} == {"momentum": 0.8, "weight_decay": 0.001, "warmup_momentum": 0.5,
                                                 "warmup_bias_lr": 0.05, "box": 5.0, "cls": 1.0, "dfl": 2.0}


def test_mosaic_switch_off_counts_the_epochs_left(tmp_path, capsys, one_thread):
    from engines.train import train

    data = make_shapes_dataset(tmp_path / "data", n=4, size=128)
    train(data=data, out=tmp_path / "run", epochs=2, plots=False, **dict(TINY, close_mosaic=10))
    # A 2-epoch run closes mosaic for both, not "the last 10 epochs".
    assert "Closing mosaic augmentation for the last 2 epochs\n" in capsys.readouterr().out


ULTRALYTICS_PT = Path(__file__).resolve().parents[1] / "fixtures" / "ultralytics" / "yolov8n-seg-coco8.pt"


def test_ultralytics_checkpoint_seeds_other_classes_only_through_pretrained(capsys):
    from engines.errors import ModelError
    from engines.train.weights import build_train_model

    if not ULTRALYTICS_PT.is_file():
        pytest.skip("Ultralytics parity fixture not present")
    with pytest.raises(ModelError, match=r"predicts 80 classes but the data has 2; to fine-tune it on these "
                                         r"classes use --model yolov8n-seg.yaml --pretrained "):
        build_train_model(str(ULTRALYTICS_PT), names=("a", "b"))
    net = build_train_model("yolov8n-seg.yaml", names=("a", "b"), pretrained=str(ULTRALYTICS_PT))
    # Everything but the class branch of the head (its width follows nc) comes over.
    assert f"Transferred 381/417 tensors from {ULTRALYTICS_PT}" in capsys.readouterr().out
    assert net.training and net.nc == 2
    same = build_train_model(str(ULTRALYTICS_PT), names=tuple(f"c{i}" for i in range(80)))
    assert same.nc == 80 and same.training


@pytest.mark.parametrize(("yaml_file", "scale", "expected"), [
    ("yolov8-seg.yaml", "n", "yolov8n-seg.yaml"), ("yolo11-seg.yaml", "s", "yolo11s-seg.yaml"),
    ("yolov8-seg-proto2.yaml", "n", "yolov8n-seg-proto2.yaml"), ("mine.yaml", "n", "mine.yaml"),
])
def test_the_yaml_suggested_for_a_checkpoint_names_its_scale(yaml_file: str, scale: str, expected: str) -> None:
    from engines.train.weights import _yaml_name

    assert _yaml_name({"yaml_file": yaml_file, "scale": scale}) == expected


def _fake_clock(*readings: float):
    """A ``TrainClock.now`` that returns ``readings`` in turn (the time a test says has passed)."""
    it = iter(readings)
    return lambda: next(it)


def _budget_state(*, time_h: float, epochs: int, start_epoch: int, clock):
    from engines.train.ddp import Placement
    from engines.train.optim import Schedule

    return SimpleNamespace(cfg=TrainConfig(data="d.yaml", epochs=epochs, time=time_h), start_epoch=start_epoch,
                           epoch=start_epoch, place=Placement(-1, 1, torch.device("cpu")), clock=clock,
                           schedule=Schedule(factor=lambda e: 1.0, momentum=0.9, warmup_iters=0))


def test_time_budget_replans_epochs_and_the_lr_schedule():
    from engines.train import hooks
    from engines.train.state import TrainClock

    clock = TrainClock(now=_fake_clock(0.0, 10.0, 20.0, 95.0))  # start, then the end of epochs 1, 2 and 3
    s = _budget_state(time_h=100 / 3600, epochs=100, start_epoch=0, clock=clock)
    hook = hooks.TimeBudgetHook()
    clock.start()
    hook.before_train(s)
    hook.after_epoch(s)  # 10 s per epoch: 10 epochs fit in 100 s
    assert s.cfg.epochs == 10 and s.schedule.factor(10) == pytest.approx(s.cfg.lrf)
    s.epoch = 1
    hook.after_epoch(s)
    assert s.cfg.epochs == 10
    s.epoch = 2  # 95 s after 3 epochs: no room for a fourth, this one is the last
    hook.after_epoch(s)
    assert s.cfg.epochs == 3
    with pytest.raises(ConfigError, match="train.time"):
        TrainConfig(data="d.yaml", time=0)


def test_time_budget_of_a_resumed_run_counts_the_time_its_earlier_sessions_trained(capsys):
    from engines.train import hooks
    from engines.train.state import TrainClock

    # 60 s of the 100 s budget went on 3 epochs before the interruption; the resumed session starts the
    # next day (its clock far from the first session's, which must not count) and takes 10 s an epoch.
    clock = TrainClock(before=60.0, now=_fake_clock(86_400.0, 86_410.0, 86_420.0))
    s = _budget_state(time_h=100 / 3600, epochs=12, start_epoch=3, clock=clock)
    hook = hooks.TimeBudgetHook()
    clock.start()
    hook.before_train(s)
    assert s.cfg.epochs == 12  # budget left: trains on
    hook.after_epoch(s)  # 70 s spent, 30 s left: 3 more epochs after this fourth one (a fresh budget: 13)
    assert s.cfg.epochs == 7 and s.schedule.factor(7) == pytest.approx(s.cfg.lrf)
    s.epoch = 4
    hook.after_epoch(s)
    assert s.cfg.epochs == 7

    # Its validation and save after the last epoch that fitted used up the rest: it ends on what it has.
    capsys.readouterr()
    s = _budget_state(time_h=100 / 3600, epochs=7, start_epoch=5, clock=TrainClock(before=100.5))
    hook.before_train(s)
    assert s.cfg.epochs == 5
    assert capsys.readouterr().out == ("time budget 0.0277778 h already spent (0.03 h trained): "
                                       "the run ends with epoch 5\n")


def test_time_budget_run_ends_on_a_validated_and_saved_epoch(tmp_path, one_thread, capsys):
    from engines.checkpoint import load_checkpoint
    from engines.train import train

    data = make_shapes_dataset(tmp_path / "data", n=8, size=128)
    # A budget shorter than one epoch: the first epoch becomes the last (validated, saved, epochs=1).
    train(data=data, out=tmp_path / "run", epochs=50, time=1e-7, hyp={"mosaic": 0.0}, plots=False,
          **{k: v for k, v in TINY.items() if k != "val"}, val=False)
    res = read_results(tmp_path / "run" / "results.csv")
    assert res["epoch"].tolist() == [1] and np.isfinite(res["metrics/mAP50(M)"][-1])
    last = load_checkpoint(tmp_path / "run" / "weights" / "last.pt")
    assert last.meta.train_args["epochs"] == 1 and last.meta.train_args["time"] == 1e-7
    # Each epoch says where its time went (loader vs steps), so a slow run shows its bottleneck.
    assert re.search(r"\d+\.\d s: waiting for data \d+\.\d s \(\d+%\), steps \d+\.\d s", capsys.readouterr().out)


def _record_training_time(last: Path, seconds: float) -> None:
    """Rewrite ``last``'s recorded training time (as if its run had taken that long)."""
    from engines.checkpoint import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(last)
    extra = {**ckpt.extra_tensors, "train/seconds": torch.tensor(seconds, dtype=torch.float64)}
    save_checkpoint(last, state_dict=ckpt.state_dict, meta=ckpt.meta, extra_tensors=extra)


def test_resumed_time_budget_run_gets_only_the_time_left(tmp_path, monkeypatch, one_thread, capsys):
    import shutil

    from engines.checkpoint import load_checkpoint
    from engines.train import hooks, train
    from pipeline.cli import main

    data = make_shapes_dataset(tmp_path / "data", n=4, size=128)
    _interrupt_after(monkeypatch, 0)
    with pytest.raises(KeyboardInterrupt):  # a 1 h budget: its plan after epoch 1 is far more epochs
        train(data=data, out=tmp_path / "cut", epochs=3, time=1.0, optimizer="SGD", plots=False,
              **dict(TINY, batch=2, nbs=2))
    monkeypatch.undo()
    last = tmp_path / "cut" / "weights" / "last.pt"
    assert float(load_checkpoint(last).extra_tensors["train/seconds"]) > 0
    shutil.copytree(tmp_path / "cut", tmp_path / "spent")

    # All but a microsecond of the hour was trained before the interruption: the resumed run trains the one
    # epoch it had started on and ends (without the earlier time it would plan for a fresh hour).
    _record_training_time(last, 3600 - 1e-6)
    real = hooks.EarlyStopHook.after_epoch

    def must_be_the_last(self, s):
        assert s.final_epoch, f"planned {s.cfg.epochs} epochs with the budget spent"
        real(self, s)

    monkeypatch.setattr(hooks.EarlyStopHook, "after_epoch", must_be_the_last)
    train(resume=last, workers=0)
    monkeypatch.undo()
    assert read_results(tmp_path / "cut" / "results.csv")["epoch"].tolist() == [1, 2]
    resumed = load_checkpoint(last)
    assert resumed.meta.train_args["epochs"] == 2
    assert float(resumed.extra_tensors["train/seconds"]) > 3600 - 1e-6  # both sessions' time

    # Resumed with the whole hour spent: no further epoch, best.pt validated, a one-line note, exit 0.
    spent = tmp_path / "spent" / "weights" / "last.pt"
    _record_training_time(spent, 3600.5)
    capsys.readouterr()
    assert main(["train", "--resume", str(spent), "--workers", "0"]) == 0
    out = capsys.readouterr().out
    assert "time budget 1 h already spent (1.00 h trained): the run ends with epoch 1\n" in out
    assert read_results(tmp_path / "spent" / "results.csv")["epoch"].tolist() == [1]
    assert (tmp_path / "spent" / "metrics.json").is_file()
    assert int(load_checkpoint(spent).extra_tensors["train/epoch"]) == 1


# ------------------------------------------------------------------------------------------- freeze

@pytest.mark.parametrize(("text", "value"), [
    ("10", 10), ("0", 0), ("0,1,2", [0, 1, 2]), ("[0, 1, 2]", [0, 1, 2]), ("3,", [3]), ("[22]", [22]),
    ("-1", -1),  # a count, refused by the config with its range
    ("x", None), ("1.5", None), ("", None), ("1 2", None), ("0,a", None),
])
def test_freeze_flag_parses_a_count_or_layer_indices(text, value):
    import argparse

    from pipeline.cli.train import _freeze

    if value is None:
        with pytest.raises(argparse.ArgumentTypeError, match="expected a layer count N or layer indices"):
            _freeze(text)
    else:
        assert _freeze(text) == value


def test_freeze_flag_that_is_no_integer_is_one_line_exit_2(capsys):
    from pipeline.cli import main

    with pytest.raises(SystemExit) as e:  # argparse's own exit, through segpipe's one-line error
        main(["train", "--data", "d.yaml", "freeze=1.5"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1, err
    assert err[0].startswith("segpipe train: error: argument --freeze: expected a layer count N or layer indices")


def test_freeze_keeps_frozen_layers_bit_identical_through_training_and_resume(tmp_path, monkeypatch, one_thread,
                                                                             capsys):
    from engines.checkpoint import ModelMeta, load_checkpoint, save_checkpoint
    from engines.nn.model import SegmentationModel
    from engines.train import train

    data = make_shapes_dataset(tmp_path / "data", n=4, size=128)
    torch.manual_seed(0)
    net = SegmentationModel("yolov8n-seg.yaml", nc=2)
    start = {k: v.clone() for k, v in net.state_dict().items()}
    save_checkpoint(tmp_path / "start.pt", state_dict=start, meta=ModelMeta(
        names=("circle", "rect"), model_yaml=dict(net.yaml), imgsz=64, stride=32))
    kw = dict(TINY, batch=2, nbs=2, epochs=2, optimizer="SGD", warmup_epochs=0, plots=False)
    _interrupt_after(monkeypatch, 0)
    with pytest.raises(KeyboardInterrupt):
        train(data=data, model=tmp_path / "start.pt", out=tmp_path / "run", freeze=[0, 1, 2, 22], **kw)
    monkeypatch.undo()
    assert "freeze: layers 0, 1, 2, 22 (" in capsys.readouterr().out
    last = tmp_path / "run" / "weights" / "last.pt"
    import yaml

    assert yaml.safe_load((tmp_path / "run" / "args.yaml").read_text())["freeze"] == [0, 1, 2, 22]
    train(resume=last, workers=0)  # the recorded freeze holds for the resumed epoch too

    ckpt = load_checkpoint(last)
    assert ckpt.meta.train_args["freeze"] == [0, 1, 2, 22] and int(ckpt.extra_tensors["train/epoch"]) == 2
    raw = {k.removeprefix("train/model/"): v for k, v in ckpt.extra_tensors.items() if k.startswith("train/model/")}
    params = {name for name, _ in net.named_parameters()}
    frozen = {k for k in params if k.startswith(("model.0.", "model.1.", "model.2.", "model.22."))}
    assert "model.22.dfl.conv.weight" in frozen and len(frozen) > 30
    for k in frozen:  # the raw weights, and the EMA's (best.pt and last.pt hold the EMA)
        assert torch.equal(raw[k], start[k]) and torch.equal(ckpt.state_dict[k], start[k]), k
    trained = params - frozen
    assert all(not torch.equal(raw[k], start[k]) for k in trained), sorted(
        k for k in trained if torch.equal(raw[k], start[k]))
    # As in Ultralytics, frozen layers' BatchNorm stays in train mode: its statistics follow the data.
    assert not torch.equal(raw["model.0.bn.running_mean"], start["model.0.bn.running_mean"])


# ------------------------------------------------------------------------------------------ cache=ram

def test_ram_cache_trains_bit_identically(tmp_path, capsys, one_thread):
    """Same seed, with and without the cache (mosaic on, the cached run's images read by a loader
    worker): the same losses, raw weights, optimizer state and EMA."""
    from pipeline.cli import main

    data = make_shapes_dataset(tmp_path / "data", n=4, size=128)
    argv = _seeded_argv(data)
    assert main([*argv, f"--out={tmp_path / 'disk'}", "--workers=0"]) == 0
    assert "cached in RAM" not in capsys.readouterr().out
    assert main([*argv, f"--out={tmp_path / 'ram'}", "--workers=1", "cache=ram"]) == 0
    assert re.search(r"train: 4 images cached in RAM \(48 KB\) in [0-9.]+ s\n", capsys.readouterr().out)
    import yaml

    assert yaml.safe_load((tmp_path / "ram" / "args.yaml").read_text())["cache"] == "ram"
    _assert_same_training(tmp_path / "disk", tmp_path / "ram")


def _seeded_argv(data: Path) -> list[str]:
    """A one-epoch CPU training on ``data`` (mosaic on) that gives the same weights every time: add --out."""
    return ["train", f"--data={data}", "--epochs=1", "--imgsz=64", "--batch=2", "--nbs=2", "--device=cpu",
            "--close-mosaic=0", "--no-val", "--no-plots", "--optimizer=SGD", "--seed=3", "--deterministic"]


def _assert_same_training(a_run: Path, b_run: Path) -> None:
    """Two runs' last.pt (weights, optimizer state, EMA; not the time spent) and loss rows are identical."""
    from engines.checkpoint import load_checkpoint

    a, b = (load_checkpoint(run / "weights" / "last.pt") for run in (a_run, b_run))
    assert a.extra_tensors.keys() == b.extra_tensors.keys() and a.state_dict.keys() == b.state_dict.keys()
    for k in a.extra_tensors.keys() - {"train/seconds"}:
        assert torch.equal(a.extra_tensors[k], b.extra_tensors[k]), k
    for k in a.state_dict:
        assert torch.equal(a.state_dict[k], b.state_dict[k]), k
    ra, rb = (read_results(run / "results.csv") for run in (a_run, b_run))
    for name in ("box_loss", "seg_loss", "cls_loss", "dfl_loss"):
        assert ra[f"train/{name}"].tolist() == rb[f"train/{name}"].tolist(), name


def test_ram_cache_that_would_not_fit_warns_on_one_line_and_reads_from_disk(tmp_path, monkeypatch, caplog):
    from engines.data import SegDataset
    from engines.train import loader

    data = make_shapes_dataset(tmp_path / "data", n=4, size=128)
    ds = SegDataset(data.parent / "images" / "train", imgsz=64, augment=True, nc=2)
    need = ds.ram_bytes()
    assert need == 4 * 64 * 64 * 3
    monkeypatch.setattr(loader, "available_memory", lambda: int(need * 1.4))  # under the 50 % margin
    assert not loader.cache_in_ram(ds) and not ds.cached
    (rec,) = caplog.records
    assert rec.levelname == "WARNING" and "\n" not in rec.getMessage()
    assert rec.getMessage().startswith("--cache ram: 4 training images need 48 KB of RAM (72 KB with a 50% margin) "
                                       "but only 67 KB is available; training without the cache")
    monkeypatch.setattr(loader, "available_memory", lambda: int(need * 1.5))
    assert loader.cache_in_ram(ds, verbose=False) and ds.cached


def test_ram_cache_of_ddp_ranks_follows_rank_0s_memory_check(tmp_path, monkeypatch):
    """Ranks checked memory on their own, at their own moment: a rank that checked after another had filled
    its copy found less room and went without the cache, silently, holding every step of the run back."""
    from engines.data import SegDataset
    from engines.train import loader
    from engines.train.ddp import Placement

    data = make_shapes_dataset(tmp_path / "data", n=4, size=128)
    ds = SegDataset(data.parent / "images" / "train", imgsz=64, augment=True, nc=2)
    two = ds.ram_bytes() * 2  # both ranks' copies
    monkeypatch.setattr(loader, "available_memory", lambda: int(two * 1.4))  # this rank: too little
    decided: list[tuple[bool, int]] = []

    def rank_0_says_it_fits(flag: bool, place: Placement) -> bool:
        decided.append((flag, place.rank))
        return True

    monkeypatch.setattr(loader, "broadcast_flag", rank_0_says_it_fits)
    assert loader.cache_in_ram(ds, place=Placement(1, 2, torch.device("cpu")), verbose=False) and ds.cached
    assert decided == [(False, 1)]


# ----------------------------------------------------------------------------------------- cache=disk

def test_disk_cache_trains_bit_identically_and_a_later_run_decodes_nothing(tmp_path, monkeypatch, capsys, one_thread):
    """Same seed, with and without the cache (mosaic on, the cached run's images read by a loader worker):
    the same losses, raw weights, optimizer state and EMA. A second run finds every .npy file."""
    from engines.checkpoint import load_checkpoint
    from engines.data import dataset as dataset_mod
    from engines.data import disk_cache
    from pipeline.cli import main

    data = make_shapes_dataset(tmp_path / "data", n=4, size=128)
    argv = _seeded_argv(data)
    assert main([*argv, f"--out={tmp_path / 'plain'}", "--workers=0"]) == 0
    assert "cached on disk" not in capsys.readouterr().out
    assert main([*argv, f"--out={tmp_path / 'disk'}", "--workers=1", "cache=disk"]) == 0
    assert re.search(r"train: 4 images cached on disk beside the images \(48 KB, 4 decoded now\) in [0-9.]+ s\n",
                     capsys.readouterr().out)
    assert len(list((data.parent / "images" / "train").glob("*.64.*.npy"))) == 4
    import yaml

    assert yaml.safe_load((tmp_path / "disk" / "args.yaml").read_text())["cache"] == "disk"
    assert load_checkpoint(tmp_path / "disk" / "weights" / "last.pt").meta.train_args["cache"] == "disk"  # for --resume
    _assert_same_training(tmp_path / "plain", tmp_path / "disk")

    def no_decoding(*args: object) -> np.ndarray:
        raise AssertionError("decoded although cached on disk")

    monkeypatch.setattr(dataset_mod, "read_resized", no_decoding)
    monkeypatch.setattr(disk_cache, "read_resized", no_decoding)
    assert main([*argv, f"--out={tmp_path / 'again'}", "--workers=0", "--cache=disk"]) == 0
    assert "(48 KB, 0 decoded now)" in capsys.readouterr().out
    _assert_same_training(tmp_path / "plain", tmp_path / "again")


@pytest.mark.parametrize("arg", ["cache=gpu", "--cache=ssd"])
def test_cli_refuses_an_unknown_cache_on_one_line(tmp_path, capsys, arg):
    from pipeline.cli import main

    with pytest.raises(SystemExit) as e:  # argparse's exit, before anything is loaded
        main(["train", f"--data={tmp_path / 'd.yaml'}", arg])
    err = capsys.readouterr().err.strip().splitlines()
    value = arg.split("=")[1]
    assert e.value.code == 2 and len(err) == 1, err
    assert err[0].startswith(f"segpipe train: error: argument --cache: invalid choice: '{value}' "
                             "(choose from 'ram', 'disk')"), err


def test_disk_cache_that_would_not_fit_warns_on_one_line_and_decodes(tmp_path, monkeypatch, caplog):
    from engines.data import SegDataset
    from engines.train import loader

    data = make_shapes_dataset(tmp_path / "data", n=4, size=128)
    ds = SegDataset(data.parent / "images" / "train", imgsz=64, augment=True, nc=2)
    need = ds.disk_plan().nbytes()
    assert need == 4 * (64 * 64 * 3 + 128)
    monkeypatch.setattr("shutil.disk_usage", lambda p: SimpleNamespace(total=need * 10, used=0, free=int(need * 1.4)))
    assert not loader.cache_on_disk(ds) and not ds.cached_on_disk
    (rec,) = caplog.records
    assert rec.levelname == "WARNING" and "\n" not in rec.getMessage()
    assert re.match(r"--cache disk: 4 training images need 4\d KB on disk \(7\d KB with a 50% margin\) but only "
                    r"6\d KB is free in .*; training without the cache$", rec.getMessage()), rec.getMessage()
    assert not list((data.parent / "images" / "train").glob("*.npy"))
    monkeypatch.setattr("shutil.disk_usage", lambda p: SimpleNamespace(total=need * 10, used=0, free=int(need * 1.5)))
    assert loader.cache_on_disk(ds, verbose=False) and ds.cached_on_disk


# ------------------------------------------------------------------ classes and single_cls (Ultralytics')

def test_single_cls_trains_a_one_class_model_that_val_and_exports_score_as_trained(tmp_path, capsys, one_thread):
    from engines.checkpoint import load_checkpoint
    from engines.errors import ModelError
    from engines.val import validate
    from pipeline.cli import main

    data = make_shapes_dataset(tmp_path / "data", n=4, size=128)
    argv = ["train", "--data", str(data), "--epochs", "1", "--imgsz", "64", "--batch", "4", "--nbs", "4",
            "--workers", "0", "--device", "cpu", "--out", str(tmp_path / "run"), "--no-plots", "single_cls=True"]
    assert main(argv) == 0
    assert "classes: circle, rect trained as one class, 'item'" in capsys.readouterr().out
    best = tmp_path / "run" / "weights" / "best.pt"
    ckpt = load_checkpoint(best)
    assert ckpt.meta.names == ("item",) and ckpt.meta.train_args["single_cls"] is True
    # val remembers it (as Ultralytics does): every instance of the 2-class data counts as an "item"
    m = validate(best, verbose=False)
    assert m.names == ("item",) and m.instances.tolist() == [6]
    with pytest.raises(ModelError, match="the model predicts 1 classes, the data YAML .* has 2"):
        validate(best, single_cls=False, verbose=False)
    assert main(["export", "--model", str(best), "--format", "onnx", "--out", str(tmp_path / "m.onnx"), "--val",
                 "--data", str(data)]) == 0
    assert "mask mAP50-95 change: +0.0000" in capsys.readouterr().out
    assert main(["benchmark", "--model", str(best), "--formats", "torch", "--workers", "0",
                 "--out", str(tmp_path / "bench")]) == 0
    assert "all 1 formats ok" in capsys.readouterr().out
    assert validate(tmp_path / "m.onnx", data=data, verbose=False).names == ("item",)


def test_single_cls_scores_a_model_of_several_classes_as_one(trained):
    from engines.val import validate

    per_class = validate(trained.out / "weights" / "best.pt", verbose=False)
    one = validate(trained.out / "weights" / "best.pt", single_cls=True, verbose=False)
    assert one.names == ("item",) and one.instances.tolist() == [per_class.instances.sum()] == [24]
    # every detection, whatever its class, is matched against every instance: a tiny model that mixes the
    # classes up scores higher as one class (0.983 against 0.848 per class on one machine, 0.959 and > 0.9
    # on another: 25 epochs from scratch land differently with a CPU's float rounding)
    assert one.box.map50 > 0.9 and one.seg.map50 > 0.9 and one.box.map50 >= per_class.box.map50 > 0.5


def test_classes_keep_only_those_instances(tmp_path, capsys, one_thread):
    from engines.checkpoint import load_checkpoint
    from engines.data.dataset import SegDataset
    from engines.data.spec import load_data_yaml
    from engines.val import validate
    from pipeline.cli import main

    data = make_shapes_dataset(tmp_path / "data", n=4, size=128)  # 6 instances: 4 circles (0), 2 rects (1)
    spec = load_data_yaml(data)
    rects = SegDataset.from_spec(spec.select(classes=[1]), "train", imgsz=64)
    assert [lab.cls.tolist() for lab in rects.labels] == [[], [1], [], [1]]
    items = SegDataset.from_spec(spec.select(classes=[0], single_cls=True), "train", imgsz=64)
    assert [lab.cls.tolist() for lab in items.labels] == [[0], [0], [0], [0]]
    argv = ["train", "--data", str(data), "--epochs", "1", "--imgsz", "64", "--batch", "4", "--nbs", "4",
            "--workers", "0", "--device", "cpu", "--out", str(tmp_path / "run"), "--no-plots", "--classes", "1"]
    assert main(argv) == 0
    assert "classes: rect (1 of 2; other instances left out)" in capsys.readouterr().out
    best = tmp_path / "run" / "weights" / "best.pt"
    assert load_checkpoint(best).meta.names == ("circle", "rect")  # the model keeps every class
    assert validate(best, classes=[1], verbose=False).instances.sum() == 2


@pytest.mark.parametrize(("args", "error"), [
    (["--classes", "2"], "--classes: 2 is not a class of {data} (ids 0..1)"),
    (["classes=a,b"], "--classes: expected comma-separated integers, got 'a,b'"),
    (["--classes", "-1"], "--classes: class ids must be >= 0"),
])
def test_cli_refuses_bad_classes_on_one_line(tmp_path, monkeypatch, capsys, args, error):
    from pipeline.cli import main

    monkeypatch.chdir(tmp_path)
    data = make_shapes_dataset(tmp_path / "data", n=2, size=64)
    assert main(["train", "--data", str(data), "--epochs", "1", "--workers", "0", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and error.format(data=data) in err[0], err
    assert not (tmp_path / "runs").exists()
    assert main(["val", "--model", "yolov8n-seg.yaml", "--data", str(data), "--workers", "0", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and error.format(data=data) in err[0], err


# ------------------------------------------------------------------------------------------ multi_scale

def test_multi_scale_sizes_are_stride_multiples_in_range_and_seeded():
    import random

    from engines.train.multiscale import multi_scale_size

    def sizes(seed: int) -> list[int]:
        return [multi_scale_size(imgsz=640, fraction=0.5, stride=32, seed=seed, step=i) for i in range(200)]

    random.seed(1)
    a = sizes(0)
    random.seed(2)  # global random state plays no part: every DDP rank draws the same size for a step
    assert sizes(0) == a and sizes(1) != a
    assert all(s % 32 == 0 and 320 <= s <= 960 for s in a)
    assert {320, 960} <= set(a) and len(set(a)) > 10
    # 64 * 1.9 = 121.6: the top size is rounded up to the stride (Ultralytics' range), the bottom one clamped
    assert {multi_scale_size(imgsz=64, fraction=0.9, stride=32, seed=0, step=i) for i in range(50)} == {32, 64, 96, 128}


@pytest.mark.parametrize(("shape", "size", "expected"), [
    ((2, 3, 64, 64), 96, (96, 96)),
    ((2, 3, 64, 64), 64, (64, 64)),
    ((1, 3, 64, 96), 128, (96, 128)),  # a rect batch keeps its aspect ratio, sides rounded up to the stride
    ((1, 3, 64, 96), 64, (64, 64)),
])
def test_rescale_batch_resizes_to_stride_multiples(shape, size, expected):
    from engines.train.multiscale import rescale_batch

    images = torch.rand(shape)
    out = rescale_batch(images, size, 32)
    assert tuple(out.shape) == (*shape[:2], *expected)
    if expected == shape[2:]:
        assert out is images


def test_multi_scale_that_is_no_number_is_one_line_exit_2(capsys):
    from pipeline.cli import main

    with pytest.raises(SystemExit) as e:  # argparse's own exit, through segpipe's one-line error
        main(["train", "--data", "d.yaml", "multi_scale=big"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1
    assert "argument --multi-scale: expected a fraction of imgsz in [0, 1) or True, got 'big'" in err[0]


def _record_training_inputs() -> tuple[list[tuple[int, int]], object]:
    """(sizes, handle): the (H, W) of every input a SegmentationModel in training mode is called with."""
    from engines.nn.model import SegmentationModel

    seen: list[tuple[int, int]] = []

    def hook(module, args):  # noqa: ANN001, ANN202 - torch's forward pre-hook
        if isinstance(module, SegmentationModel) and module.training:
            seen.append(tuple(args[0].shape[2:]))

    return seen, torch.nn.modules.module.register_module_forward_pre_hook(hook)


def test_multi_scale_off_trains_bit_identically_without_a_draw(tmp_path, monkeypatch, capsys, one_thread):
    """--multi-scale 0 (the default) takes no draw and resizes nothing: the same run as without the flag."""
    from engines.train import trainer
    from pipeline.cli import main

    data = make_shapes_dataset(tmp_path / "data", n=4, size=128)
    argv = _seeded_argv(data)
    assert main([*argv, f"--out={tmp_path / 'a'}", "--workers=0"]) == 0

    def never(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("multi_scale=0 must not draw or resize")

    monkeypatch.setattr(trainer, "multi_scale_size", never)
    monkeypatch.setattr(trainer, "rescale_batch", never)
    seen, handle = _record_training_inputs()
    try:
        assert main([*argv, f"--out={tmp_path / 'b'}", "--workers=0", "multi_scale=0.0"]) == 0
    finally:
        handle.remove()
    assert seen and set(seen) == {(64, 64)}
    _assert_same_training(tmp_path / "a", tmp_path / "b")


def test_multi_scale_trains_on_seeded_sizes_end_to_end(tmp_path, capsys, one_thread):
    """multi_scale=True (Ultralytics 8.3's bool: 0.5) at imgsz 64: every step at the seeded size of its
    global batch index, several sizes, stride multiples in 32..96; finite losses, the setting recorded,
    and a second run the same."""
    from engines.checkpoint import load_checkpoint
    from engines.train.multiscale import multi_scale_size
    from pipeline.cli import main

    data = make_shapes_dataset(tmp_path / "data", n=4, size=128)
    argv = [*_seeded_argv(data), "--epochs=4", "--workers=0", "multi_scale=True"]
    seen, handle = _record_training_inputs()
    try:
        assert main([*argv, f"--out={tmp_path / 'a'}"]) == 0
    finally:
        handle.remove()
    expected = [multi_scale_size(imgsz=64, fraction=0.5, stride=32, seed=3, step=i) for i in range(8)]
    assert [h for h, _ in seen] == expected and all(h == w for h, w in seen)
    assert len(set(expected)) > 1 and set(expected) <= {32, 64, 96}
    res = read_results(tmp_path / "a" / "results.csv")
    for name in ("box_loss", "seg_loss", "cls_loss", "dfl_loss"):
        assert np.isfinite(res[f"train/{name}"]).all(), name
    assert load_checkpoint(tmp_path / "a" / "weights" / "last.pt").meta.train_args["multi_scale"] == 0.5
    assert main([*argv, f"--out={tmp_path / 'b'}"]) == 0
    _assert_same_training(tmp_path / "a", tmp_path / "b")
