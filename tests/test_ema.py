"""yolov1.ema: the weight average that validation and the saved model use."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from yolov1.ema import ModelEMA


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))


def test_each_update_is_the_ramped_lerp_and_integer_buffers_are_copied():
    live = _net()
    ema = ModelEMA(live, decay=0.9)
    expected = {k: v.clone() for k, v in ema.module.state_dict().items()}
    for t in range(1, 30):
        with torch.no_grad():
            for p in live.parameters():
                p.add_(torch.randn_like(p))
            live[1].running_mean.add_(1.0)
            live[1].num_batches_tracked.add_(1)
        ema.update(live)
        d = min(0.9, (1 + t) / (10 + t))  # TensorFlow's num_updates ramp, capped at the decay
        assert ema.decay_at(t) == d
        for k, v in live.state_dict().items():
            expected[k] = d * expected[k] + (1 - d) * v if v.is_floating_point() else v.clone()
        for k, v in ema.module.state_dict().items():
            torch.testing.assert_close(v, expected[k], rtol=1e-6, atol=1e-6, msg=k)
    assert int(ema.module[1].num_batches_tracked) == 29
    assert ema.updates == 29


def test_the_average_is_a_separate_frozen_copy():
    live = _net()
    ema = ModelEMA(live, decay=0.99)
    assert not ema.module.training and not any(p.requires_grad for p in ema.module.parameters())
    with torch.no_grad():
        live[0].weight.fill_(7.0)
    assert not torch.equal(ema.module[0].weight, live[0].weight)  # a copy, not a view of the live model


def test_state_dict_round_trip_continues_identically():
    live, other = _net(), _net()
    a = ModelEMA(live, decay=0.95)
    for _ in range(5):
        with torch.no_grad():
            live[3].weight.mul_(1.1)
        a.update(live)
    b = ModelEMA(other, decay=0.95)
    b.load_state_dict(a.state_dict())
    a.update(live)
    b.update(live)
    assert b.updates == a.updates == 6
    for (k, x), y in zip(a.module.state_dict().items(), b.module.state_dict().values(), strict=True):
        assert torch.equal(x, y), k


@pytest.mark.parametrize("decay", [0.0, 1.0, -0.1, float("nan")])
def test_decay_outside_the_open_unit_interval_is_refused(decay):
    with pytest.raises(ValueError, match="EMA decay"):
        ModelEMA(_net(), decay)
