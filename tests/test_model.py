"""Tests for yolov1.model: layer and parameter counts (by arithmetic), output shapes for every variant, head
and stride, BN, width multiplier, dropout, init and gradient flow. Large nets are counted on the meta device."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from yolov1.config import ModelConfig
from yolov1.model import YOLOv1, build_model, count_parameters

PAPER = ModelConfig(variant="yolov1", input_size=448, grid_size=7, boxes_per_cell=2, num_classes=20,
                    batch_norm=False, width_multiplier=1.0, head="fc", head_hidden=4096, dropout=0.5)
FAST = dataclasses.replace(PAPER, variant="fast")
SMALL = dataclasses.replace(PAPER, input_size=112, head="conv", width_multiplier=0.25)  # stride 16


def cfg(base: ModelConfig = PAPER, **changes) -> ModelConfig:
    return dataclasses.replace(base, **changes)


def on_meta(c: ModelConfig) -> YOLOv1:
    """Build without allocating weights (counting the 272M-parameter net costs nothing)."""
    with torch.device("meta"):
        return build_model(c)


def convs(model: YOLOv1) -> list[nn.Conv2d]:
    """Every conv layer, backbone then head, in order."""
    return [m for m in [*model.backbone, *model.head] if isinstance(m, nn.Conv2d)]


# Paper net, no BN, S=7, B=2, C=20, FC 4096 (k*k*in*out + out per conv):
#   7x7 3->64 9,472 | 3x3 64->192 110,784 | 1x1 192->128 24,704 | 3x3 128->256 295,168 | 1x1 256->256 65,792
#   3x3 256->512 1,180,160 | 4 x (1x1 512->256 131,328 + 3x3 256->512 1,180,160) = 5,245,952
#   1x1 512->512 262,656 | 3x3 512->1024 4,719,616 | 2 x (1x1 1024->512 524,800 + 3x3 512->1024 4,719,616)
#   = 10,488,832 | 4 x 3x3 1024->1024 9,438,208 = 37,752,832            -> convs 60,155,968
#   FC 7*7*1024=50,176 -> 4096: 205,520,896 + 4,096 = 205,524,992
#   FC 4096 -> 7*7*30=1,470: 6,021,120 + 1,470 = 6,022,590             -> total 271,703,550 (~271.7M)
PAPER_PARAMS = 271_703_550
# Fast YOLO, same settings: 3x3 convs 3->16 448, 16->32 4,640, 32->64 18,496, 64->128 73,856,
#   128->256 295,168, 256->512 1,180,160, 512->1024 4,719,616, 2 x 1024->1024 18,876,416 -> convs 25,168,800
#   FC 50,176 -> 256: 12,845,312 | FC 256 -> 4096: 1,052,672 | FC 4096 -> 1470: 6,022,590 -> total 45,089,374
FAST_PARAMS = 45_089_374
# Output channels of every conv (BN adds weight + bias and removes the conv bias: +1 per channel):
PAPER_CONV_CHANNELS = 64 + 192 + 128 + 256 + 256 + 512 + 4 * (256 + 512) + 512 + 1024 + 2 * (512 + 1024) + 4 * 1024
FAST_CONV_CHANNELS = 16 + 32 + 64 + 128 + 256 + 512 + 3 * 1024


def test_conv_layer_counts():
    assert len(convs(on_meta(PAPER))) == 24
    assert len(convs(on_meta(FAST))) == 9


def test_backbone_is_the_pretrained_part_and_head_the_added_layers():
    # Paper section 2.2: the first 20 conv layers are pretrained; detection adds 4 conv + 2 FC layers.
    paper = on_meta(PAPER)
    assert sum(isinstance(m, nn.Conv2d) for m in paper.backbone) == 20
    assert sum(isinstance(m, nn.Conv2d) for m in paper.head) == 4
    assert sum(isinstance(m, nn.Linear) for m in paper.head) == 2
    assert [m.stride for m in paper.head if isinstance(m, nn.Conv2d)] == [(1, 1), (2, 2), (1, 1), (1, 1)]
    fast = on_meta(FAST)  # six conv + pool pairs, then the three 1024-wide convs in the head
    assert sum(isinstance(m, nn.Conv2d) for m in fast.backbone) == 6
    assert [m.out_channels for m in fast.head if isinstance(m, nn.Conv2d)] == [1024, 1024, 1024]


def test_parameter_counts_exact():
    assert PAPER_CONV_CHANNELS == 13_184 and FAST_CONV_CHANNELS == 4_080
    assert count_parameters(on_meta(PAPER)) == PAPER_PARAMS
    assert count_parameters(on_meta(FAST)) == FAST_PARAMS
    # Conv head: the FC layers are replaced by one 1x1 conv 1024 -> 30: 30,750 parameters.
    assert count_parameters(on_meta(cfg(head="conv"))) == 60_155_968 + 30_750
    assert count_parameters(on_meta(cfg(FAST, head="conv"))) == 25_168_800 + 30_750


def test_batch_norm_on_off():
    with_bn = on_meta(cfg(batch_norm=True))
    assert count_parameters(with_bn) == PAPER_PARAMS + PAPER_CONV_CHANNELS
    assert count_parameters(on_meta(cfg(FAST, batch_norm=True))) == FAST_PARAMS + FAST_CONV_CHANNELS
    assert all(c.bias is None for c in convs(with_bn))
    assert sum(isinstance(m, nn.BatchNorm2d) for m in with_bn.modules()) == 24
    without = on_meta(PAPER)
    assert all(c.bias is not None for c in convs(without))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in without.modules())


def test_width_multiplier_shrinks_and_rounds_channels():
    half = on_meta(cfg(width_multiplier=0.5, head="conv"))
    assert [c.out_channels for c in convs(half)][:3] == [32, 96, 64]
    assert count_parameters(half) < count_parameters(on_meta(cfg(head="conv"))) / 3
    tiny = on_meta(cfg(FAST, width_multiplier=0.25))
    # 16 * 0.25 = 4 -> at least 8; 32 * 0.25 = 8; 1024 * 0.25 = 256; 0.3 * 64 = 19.2 -> 16 (multiple of 8)
    assert [c.out_channels for c in convs(tiny)] == [8, 8, 16, 32, 64, 128, 256, 256, 256]
    assert convs(on_meta(cfg(width_multiplier=0.3)))[0].out_channels == 16


@pytest.fixture(scope="module")
def paper_net():
    torch.manual_seed(0)
    return build_model(PAPER).eval()


def test_paper_net_output_shape_at_448(paper_net):
    with torch.no_grad():
        out = paper_net(torch.rand(1, 3, 448, 448))
    assert out.shape == (1, 7, 7, 30)
    assert torch.isfinite(out).all()
    # The last layer starts small: early confidences (and all outputs) are near 0.
    assert out.abs().max().item() < 0.2


def test_fast_yolo_output_shape_at_448():
    model = build_model(FAST).eval()
    with torch.no_grad():
        out = model(torch.rand(1, 3, 448, 448))
    assert out.shape == (1, 7, 7, 30)
    assert out[..., [4, 9]].abs().max().item() < 0.2


@pytest.mark.parametrize(("variant", "input_size", "grid_size", "head"), [
    ("yolov1", 112, 7, "conv"),  # stride 16
    ("yolov1", 224, 7, "fc"),  # stride 32
    ("fast", 56, 7, "fc"),  # stride 8
    ("fast", 128, 4, "conv"),  # stride 32, S = 4
    ("yolov1", 64, 8, "fc"),  # stride 8, S = 8
])
def test_small_inputs_keep_an_s_by_s_grid(variant, input_size, grid_size, head):
    c = cfg(variant=variant, input_size=input_size, grid_size=grid_size, head=head, width_multiplier=0.125,
            head_hidden=64, num_classes=3, boxes_per_cell=3)
    model = build_model(c).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, input_size, input_size))
    assert out.shape == (2, grid_size, grid_size, 5 * 3 + 3)


def test_stride_one_pool_keeps_size_and_takes_the_2x2_max():
    model = on_meta(cfg(input_size=112, head="conv"))  # stride 16: the last max-pool and the 3x3/2 conv go
    pools = [m for m in model.backbone if "Pool" in type(m).__name__]
    assert [isinstance(p, nn.MaxPool2d) for p in pools] == [True, True, True, False]
    assert [c.stride for c in convs(model)][-3] == (1, 1)
    x = torch.arange(9.0).reshape(1, 1, 3, 3)  # [[0 1 2] [3 4 5] [6 7 8]]
    # Window [r, r+1] x [c, c+1], clipped at the edge: [[4 5 5] [7 8 8] [7 8 8]]
    expected = torch.tensor([[4.0, 5, 5], [7, 8, 8], [7, 8, 8]]).reshape(1, 1, 3, 3)
    torch.testing.assert_close(type(pools[-1])()(x), expected)


def test_conv_head_small_input_gives_n_7_7_30():
    model = build_model(SMALL).eval()
    x = torch.rand(3, 3, 112, 112)
    with torch.no_grad():
        out = model(x)
        out_cl = model(x.contiguous(memory_format=torch.channels_last))
    assert out.shape == (3, 7, 7, 30) and out.is_contiguous()
    torch.testing.assert_close(out, out_cl, rtol=1e-4, atol=1e-5)


def test_dropout_only_in_train_mode():
    model = build_model(cfg(input_size=112, width_multiplier=0.125, head_hidden=256, dropout=0.5))
    x = torch.rand(2, 3, 112, 112)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
        model.train()
        assert not torch.equal(model(x), model(x))


def test_gradient_flows_to_every_parameter():
    model = build_model(cfg(input_size=112, width_multiplier=0.125, head_hidden=64, batch_norm=True)).train()
    out = model(torch.rand(2, 3, 112, 112))
    out.square().sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_bad_stride_raises():
    with pytest.raises(ValueError, match="input_size"):
        build_model(cfg(input_size=100))


def _legacy_state_dict(model: YOLOv1) -> dict[str, torch.Tensor]:
    """The model's state dict with the key names of the pre-split network (all convs under ``backbone.``)."""
    n, moved = len(model.backbone), model._moved_layers
    legacy = {}
    for key, value in model.state_dict().items():
        part, index, rest = key.split(".", 2)
        if part == "head":
            i = int(index)
            key = f"backbone.{n + i}.{rest}" if i < moved else f"head.{i - moved}.{rest}"
        legacy[key] = value
    return legacy


@pytest.mark.parametrize("base", [cfg(input_size=112, width_multiplier=0.125, head_hidden=32, batch_norm=True),
                                  cfg(FAST, input_size=112, width_multiplier=0.125, head="conv")])
def test_weights_saved_before_the_backbone_head_split_still_load(base):
    torch.manual_seed(0)
    source = build_model(base).eval()
    legacy = _legacy_state_dict(source)
    assert any(k.startswith(f"backbone.{len(source.backbone)}.") for k in legacy)  # really the old layout
    assert source.upgrade_state_dict(legacy).keys() == source.state_dict().keys()
    torch.manual_seed(1)
    target = build_model(base).eval()
    target.load_state_dict(legacy)  # strict: every key renamed, none left over
    x = torch.rand(2, 3, 112, 112)
    with torch.no_grad():
        torch.testing.assert_close(target(x), source(x))
    assert list(source.upgrade_state_dict(source.state_dict())) == list(source.state_dict())  # current: unchanged


def test_build_model_is_seeded():
    c = cfg(input_size=112, width_multiplier=0.125, head_hidden=32)
    torch.manual_seed(3)
    a = build_model(c).state_dict()
    torch.manual_seed(3)
    b = build_model(c).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
