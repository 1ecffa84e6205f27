"""MuSGD (engines.train.muon) against Ultralytics 8.4.190's, from fixtures its own code wrote
(fixtures/train/make_musgd_ref.py): the steps, the orthogonalisation and how a model is grouped."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from engines.nn.model import SegmentationModel
from engines.train.muon import MuSGD, muon_updates, orthogonalize
from engines.train.optim import OptimizerChoice, Schedule, build_optimizer, choose_optimizer, lr_factor

FIXTURES = Path(__file__).parent / "fixtures" / "train"
MATRICES = ("conv_a", "conv_b", "conv_1x1", "wide", "tall")


@pytest.fixture(scope="module")
def ref() -> dict[str, np.ndarray]:
    return dict(np.load(FIXTURES / "musgd_ref.npz"))


def _params(ref: dict[str, np.ndarray], device: str = "cpu") -> dict[str, nn.Parameter]:
    return {k[5:]: nn.Parameter(torch.from_numpy(v.copy()).to(device)) for k, v in ref.items()
            if k.startswith("init/")}


def _optimizer(params: dict[str, nn.Parameter]) -> MuSGD:
    return MuSGD([
        {"params": [params[k] for k in MATRICES], "lr": 0.01, "momentum": 0.9, "nesterov": True,
         "weight_decay": 5e-4, "use_muon": True},
        {"params": [params["norm"]], "lr": 0.01, "momentum": 0.9, "nesterov": True, "weight_decay": 0.0},
        {"params": [params["bias"]], "lr": 0.01, "momentum": 0.9, "nesterov": True, "weight_decay": 0.0},
    ])


def test_orthogonalize_matches_ultralytics_and_flattens_the_spectrum(ref):
    out = orthogonalize(torch.from_numpy(ref["ns/in"])).float()
    assert out.shape == (40, 24)
    torch.testing.assert_close(out, torch.from_numpy(ref["ns/out"]), atol=2e-2, rtol=2e-2)  # bfloat16
    s_in = torch.linalg.svdvals(torch.from_numpy(ref["ns/in"]))
    s_out = torch.linalg.svdvals(out)
    assert s_in.max() / s_in.min() > 3
    assert 0.5 < s_out.min() and s_out.max() < 1.5  # every direction of the update about the same size


@pytest.mark.parametrize(("device", "tol"), [("cpu", 0.01), pytest.param("cuda", 0.05, marks=pytest.mark.gpu)])
def test_five_steps_match_ultralytics(ref, device, tol):
    """Each step within 1 % of its Muon part (CUDA's bfloat16 matmuls round otherwise: 5 %), the distance to
    the same optimizer with Muon off (muon=0): a Muon step gone missing or wrong fails, and the SGD part,
    larger, hides nothing."""
    params, plain_params = _params(ref, device), _params(ref, device)
    opt, plain = _optimizer(params), _optimizer(plain_params)
    plain.muon = 0.0
    for i, (lr, momentum) in enumerate(ref["steps"]):
        for o, ps in ((opt, params), (plain, plain_params)):
            for group in o.param_groups:  # a warm-up moves both
                group["lr"], group["momentum"] = float(lr), float(momentum)
            for k, p in ps.items():
                p.grad = torch.from_numpy(ref[f"grad/{i}/{k}"].copy()).to(device)
            o.step()
        for k, p in params.items():
            want = torch.from_numpy(ref[f"param/{i}/{k}"])
            muon_part = float((plain_params[k].detach().cpu() - want).abs().max())
            assert (muon_part > 5e-4) == (k in MATRICES), (i, k, muon_part)
            torch.testing.assert_close(p.detach().cpu(), want, atol=1e-7 + tol * muon_part, rtol=0,
                                       msg=f"step {i} {k}")
            for buf, value in opt.state[p].items():
                torch.testing.assert_close(value.cpu(), torch.from_numpy(ref[f"state/{i}/{k}/{buf}"]),
                                           atol=1e-5 if device == "cpu" else 1e-3, rtol=1e-4, msg=f"{i} {k} {buf}")
    assert set(opt.state[params["tall"]]) == {"momentum_buffer", "momentum_buffer_SGD"}
    assert set(opt.state[params["bias"]]) == {"momentum_buffer"}


def test_same_shaped_matrices_are_orthogonalised_one_by_one_or_together_alike():
    g = torch.Generator().manual_seed(1)
    grads = [torch.randn(8, 4, 3, 3, generator=g) for _ in range(3)] + [torch.randn(6, 20, generator=g)]
    together = muon_updates(grads, [torch.zeros_like(x) for x in grads], beta=0.9, nesterov=True)
    for x, u in zip(grads, together, strict=True):
        alone = muon_updates([x], [torch.zeros_like(x)], beta=0.9, nesterov=True)[0]
        assert u.shape == x.shape and u.dtype == x.dtype
        torch.testing.assert_close(u, alone)


@pytest.mark.parametrize("cfg", ["yolov8n-seg.yaml", "yolo26n-seg.yaml"])
def test_model_groups_match_ultralytics(cfg):
    """Ultralytics' BaseTrainer.build_optimizer(optimizer=MuSGD, lr0=0.01) on the same model: the same
    tensors in each of the eight groups, with the same lr, decay and Muon flag (less the DFL integral,
    which segpipe keeps out of every optimizer: it never trains)."""
    want = json.loads((FIXTURES / "musgd_groups.json").read_text())[cfg]
    net = SegmentationModel(cfg, nc=80)
    opt = build_optimizer(net, OptimizerChoice(name="MuSGD", lr0=0.01, momentum=0.9, warmup_bias_lr=0.0),
                          weight_decay=5e-4)
    names = {id(p): n for n, p in net.named_parameters()}
    assert len(opt.param_groups) == len(want) == 8
    for got, w in zip(opt.param_groups, want, strict=True):
        expected = sorted(n for n in w["params"] if ".dfl." not in n)
        assert sorted(names[id(p)] for p in got["params"]) == expected, (w["param_group"], w["lr"])
        assert (got["lr"], got["initial_lr"], got["weight_decay"], got["use_muon"]) == pytest.approx(
            (w["lr"], w["lr"], w["weight_decay"], w["use_muon"]))
        assert got["nesterov"] and got["momentum"] == 0.9


def test_auto_picks_musgd_for_long_runs_and_warm_up_drives_its_groups():
    choice = choose_optimizer("auto", lr0=0.02, momentum=0.95, warmup_bias_lr=0.1, nc=80, iterations=20_000)
    assert (choice.name, choice.lr0, choice.momentum, choice.warmup_bias_lr) == ("MuSGD", 0.01, 0.9, 0.0)
    assert choose_optimizer("musgd", lr0=0.02, momentum=0.95, warmup_bias_lr=0.1, nc=80, iterations=10).name == "MuSGD"
    net = SegmentationModel("yolo26n-seg.yaml", nc=3)
    opt = build_optimizer(net, OptimizerChoice(name="MuSGD", lr0=0.01, momentum=0.9, warmup_bias_lr=0.1),
                          weight_decay=5e-4)
    sched = Schedule(factor=lr_factor(10, 0.01, cosine=False), momentum=0.9, warmup_iters=100,
                     warmup_bias_lr=0.1, warmup_momentum=0.8, accumulate=1)
    sched.apply(opt, epoch=0, ni=0)
    assert [(g["group"], g["lr"]) for g in opt.param_groups if g["params"]] == [
        ("norm", 0.0), ("norm", 0.0), ("bias", 0.1), ("bias", 0.1), ("muon", 0.0), ("muon", 0.0)]
    assert all(g["momentum"] == pytest.approx(0.8) for g in opt.param_groups)  # Muon's beta warms up too
    sched.apply(opt, epoch=1, ni=200)
    f = lr_factor(10, 0.01, cosine=False)(1)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.03 * f, 0.01 * f] * 4)

