"""The LR schedule: the paper's numbers at the paper's epochs, proportions kept in short runs, cosine, LambdaLR."""

from __future__ import annotations

import dataclasses
import io
import math

import pytest
import torch

from yolov1.config import params_from_dict
from yolov1.schedule import build_scheduler, lr_at, warmup_steps


@pytest.fixture
def paper_cfg(repo_params_dict):
    """params.yaml's train section: lr 1e-2, warm-up from 1e-3 over 5/135, x0.1 at 75/135 and 105/135."""
    return params_from_dict(repo_params_dict).train


def test_paper_schedule_at_paper_epochs(paper_cfg):
    # 135 epochs of 100 steps. Warm-up: round(0.037 * 13500) = round(499.5) -> 500 (or 499 with float
    # rounding), i.e. the first 5 epochs; milestones round(0.5555556 * 13500) = 7500 (epoch 75) and
    # round(0.7777778 * 13500) = 10500 (epoch 105).
    spe, total = 100, 135 * 100
    lr = lambda epoch, k=0: lr_at(epoch * spe + k, total, paper_cfg)  # noqa: E731 - epoch -> lr at its start
    assert warmup_steps(total, paper_cfg) in (499, 500)
    assert lr(0) == pytest.approx(1e-3)  # "slowly raise the learning rate from 1e-3 ..."
    assert 1e-3 < lr(2) < 1e-2
    assert lr(5) == pytest.approx(1e-2)  # "... to 1e-2"
    assert lr(74, spe - 1) == pytest.approx(1e-2)  # "1e-2 for 75 epochs"
    assert lr(75) == pytest.approx(1e-3)  # "then 1e-3 for 30 epochs"
    assert lr(104, spe - 1) == pytest.approx(1e-3)
    assert lr(105) == pytest.approx(1e-4)  # "and finally 1e-4 for 30 epochs"
    assert lr(134, spe - 1) == pytest.approx(1e-4)


def test_warmup_is_linear(paper_cfg):
    cfg = dataclasses.replace(paper_cfg, warmup_fraction=0.1)
    # 1000 steps, warm-up 100: step 50 -> 1e-3 + (1e-2 - 1e-3) * 50/100 = 5.5e-3; step 25 -> 3.25e-3
    assert lr_at(50, 1000, cfg) == pytest.approx(5.5e-3)
    assert lr_at(25, 1000, cfg) == pytest.approx(3.25e-3)
    steps = [lr_at(s, 1000, cfg) for s in range(101)]
    diffs = [b - a for a, b in zip(steps, steps[1:], strict=False)]
    assert all(d == pytest.approx(9e-5) for d in diffs)  # (1e-2 - 1e-3) / 100 per step


def test_short_run_keeps_the_proportions(paper_cfg):
    # A run 50x shorter (270 steps instead of 13500): every phase boundary lands at the same fraction.
    for long_step in range(0, 13500, 50):
        assert lr_at(long_step // 50, 270, paper_cfg) == pytest.approx(lr_at(long_step, 13500, paper_cfg))
    # the boundaries themselves: 1e-2 until step 149, 1e-3 from 150 (75/135 of 270), 1e-4 from 210
    assert lr_at(149, 270, paper_cfg) == pytest.approx(1e-2)
    assert lr_at(150, 270, paper_cfg) == pytest.approx(1e-3)
    assert lr_at(210, 270, paper_cfg) == pytest.approx(1e-4)


def test_cosine_endpoints_and_shape(paper_cfg):
    cfg = dataclasses.replace(paper_cfg, schedule="cosine", warmup_fraction=0.1)
    # 1000 steps, warm-up 100: cosine from 1e-2 at step 100 to 0 at step 1000, half way (step 550) 5e-3
    assert lr_at(0, 1000, cfg) == pytest.approx(1e-3)
    assert lr_at(100, 1000, cfg) == pytest.approx(1e-2)
    assert lr_at(550, 1000, cfg) == pytest.approx(5e-3)
    assert lr_at(1000, 1000, cfg) == pytest.approx(0.0, abs=1e-15)
    after = [lr_at(s, 1000, cfg) for s in range(100, 1001)]
    assert all(b <= a for a, b in zip(after, after[1:], strict=False))
    # last real step (999): 1e-2 * (1 + cos(pi * 899/900)) / 2, small but positive
    assert lr_at(999, 1000, cfg) == pytest.approx(1e-2 * (1 + math.cos(math.pi * 899 / 900)) / 2)


def test_no_warmup_and_bad_arguments(paper_cfg):
    cfg = dataclasses.replace(paper_cfg, warmup_fraction=0.0)
    assert lr_at(0, 10, cfg) == pytest.approx(1e-2)
    with pytest.raises(ValueError, match="total_steps"):
        lr_at(0, 0, cfg)  # an empty run has no schedule
    with pytest.raises(ValueError, match="step"):
        lr_at(-1, 10, cfg)


def test_lambda_scheduler_follows_lr_at_and_resumes(paper_cfg):
    total = 40
    params = [torch.nn.Parameter(torch.zeros(2))]
    opt = torch.optim.SGD(params, lr=paper_cfg.lr, momentum=0.9)
    sched = build_scheduler(opt, total, paper_cfg)
    seen = []
    for _ in range(20):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([lr_at(s, total, paper_cfg) for s in range(20)])

    # state round trip through weights_only loading, into a fresh optimizer + scheduler
    buf = io.BytesIO()
    torch.save({"opt": opt.state_dict(), "sched": sched.state_dict()}, buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    opt2 = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=paper_cfg.lr, momentum=0.9)
    sched2 = build_scheduler(opt2, total, paper_cfg)  # built before loading: it records lr as the base lr
    opt2.load_state_dict(state["opt"])
    sched2.load_state_dict(state["sched"])
    rest = []
    for _ in range(20, total):
        rest.append(opt2.param_groups[0]["lr"])
        opt2.step()
        sched2.step()
    assert rest == pytest.approx([lr_at(s, total, paper_cfg) for s in range(20, total)])


def test_scheduler_refuses_an_optimizer_at_another_lr(paper_cfg):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.5)
    with pytest.raises(ValueError, match="train.lr"):
        build_scheduler(opt, 10, paper_cfg)
