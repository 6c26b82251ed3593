"""Tests for yolov1.backbones and model.backbone / model.pretrained: ResNet detectors' shapes at every stride,
loading torchvision state dicts through ``model.pretrained: <path>`` (all-or-nothing, weights_only), ImageNet
weights offline (no network: the downloader is replaced) and from a file already in TORCH_HOME."""

from __future__ import annotations

import dataclasses
import os
import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from yolov1.backbones import PretrainedWeightsError, imagenet_file, load_pretrained
from yolov1.config import ModelConfig
from yolov1.model import build_backbone, build_model

R18 = ModelConfig(variant="yolov1", input_size=64, grid_size=2, boxes_per_cell=2, num_classes=3, batch_norm=True,
                  width_multiplier=0.0625, head="conv", head_hidden=32, dropout=0.0, backbone="resnet18",
                  pretrained="none")


def cfg(**changes) -> ModelConfig:
    return dataclasses.replace(R18, **changes)


def torchvision_state(arch: str, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return getattr(torchvision.models, arch)(weights=None).state_dict()


@pytest.fixture
def no_network(monkeypatch, tmp_path):
    """TORCH_HOME -> an empty temp dir; any download attempt fails as it would offline, and is counted."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    calls = []

    def offline(url, dst, *args, **kwargs):
        calls.append(url)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    return calls


@pytest.mark.parametrize(("arch", "input_size", "grid_size"), [
    ("resnet18", 64, 1),  # stride 64: the head's 3x3/2 conv halves the stride-32 map
    ("resnet18", 64, 2),  # stride 32: that conv at stride 1
    ("resnet34", 64, 4),  # stride 16: layer4 at stride 1 too
    ("resnet50", 64, 8),  # stride 8: layer3 as well
])
def test_resnet_detectors_give_an_s_by_s_grid(arch, input_size, grid_size):
    torch.manual_seed(0)
    for head in ("conv", "fc"):
        model = build_model(cfg(backbone=arch, input_size=input_size, grid_size=grid_size, head=head)).eval()
        with torch.no_grad():
            out = model(torch.rand(2, 3, input_size, input_size))
        assert out.shape == (2, grid_size, grid_size, 5 * 2 + 3)
        assert torch.isfinite(out).all() and out.abs().max() < 1.0  # the last layer starts small


def test_resnet_paper_size_on_meta():
    with torch.device("meta"):
        model = build_model(cfg(backbone="resnet50", input_size=448, grid_size=7, width_multiplier=1.0,
                                head="fc", head_hidden=4096, num_classes=20))
    strides = [m.stride for m in model.head if isinstance(m, nn.Conv2d)]
    assert strides == [(1, 1), (2, 2), (1, 1), (1, 1)]  # the paper's 3x3/2 detection conv makes 448 / 64 = 7
    out = model(torch.empty(1, 3, 448, 448, device="meta"))
    assert out.shape == (1, 7, 7, 30)


def test_resnet_backbone_has_torchvision_keys_and_no_fc():
    backbone, channels = build_backbone(cfg(backbone="resnet50"))
    reference = torchvision_state("resnet50", 0)
    assert channels == 2048
    assert list(backbone.state_dict()) == [k for k in reference if not k.startswith("fc.")]


def test_backbone_normalises_with_imagenet_statistics():
    backbone, _ = build_backbone(cfg())
    x = torch.rand(1, 3, 8, 8)
    expected = (x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(
        1, 3, 1, 1)
    torch.testing.assert_close(backbone.normalize(x), expected)


def test_state_dict_file_loads_through_model_pretrained(tmp_path):
    reference = torchvision_state("resnet18", 1)
    path = tmp_path / "resnet18.pth"
    torch.save(reference, path)
    torch.manual_seed(2)
    model = build_model(cfg(pretrained=str(path)))
    got = model.backbone.state_dict()
    assert got.keys() == {k for k in reference if not k.startswith("fc.")}
    for key, value in got.items():
        assert torch.equal(value, reference[key]), key
    report = load_pretrained(build_model(cfg()).backbone, cfg(pretrained=str(path)))
    assert report.ignored == ("fc.bias", "fc.weight") and len(report.loaded) == len(got)


@pytest.mark.parametrize(("arch", "message"), [
    ("resnet34", "tensors the backbone does not have"),  # a superset of resnet18's names, same shapes
    ("resnet50", "another shape"),
])
def test_a_file_for_another_architecture_fails_clearly(tmp_path, arch, message):
    path = tmp_path / f"{arch}.pth"
    torch.save(torchvision_state(arch, 0), path)
    with pytest.raises(PretrainedWeightsError, match=message) as err:
        build_model(cfg(pretrained=str(path)))
    assert str(path) in str(err.value) and "another architecture" in str(err.value)


def test_a_file_missing_tensors_is_refused(tmp_path):
    state = torchvision_state("resnet18", 0)
    del state["layer4.1.bn2.running_var"]
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(PretrainedWeightsError, match=r"1 backbone tensors missing .*layer4\.1\.bn2\.running_var"):
        build_model(cfg(pretrained=str(tmp_path / "partial.pth")))


class _RunsCode:
    """Pickles as a call to os.system: unpickling it without weights_only would create the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_bearing_file_is_refused_not_run(tmp_path):
    marker = tmp_path / "code-ran"
    state = dict(torchvision_state("resnet18", 0), payload=_RunsCode(marker))
    torch.save(state, tmp_path / "evil.pth")
    with pytest.raises(PretrainedWeightsError, match="weights_only=True"):
        build_model(cfg(pretrained=str(tmp_path / "evil.pth")))
    assert not marker.exists()


@pytest.mark.parametrize(("value", "message"), [
    ("missing.pth", "no such file"),
    ("not-a-state-dict.pth", "not a state dict"),
])
def test_bad_paths_name_the_file(tmp_path, value, message):
    torch.save({"conv1.weight": torch.zeros(1), "epoch": 3}, tmp_path / "not-a-state-dict.pth")
    with pytest.raises(PretrainedWeightsError, match=message) as err:
        build_model(cfg(pretrained=str(tmp_path / value)))
    assert str(tmp_path / value) in str(err.value)


def test_imagenet_offline_fails_before_training_naming_the_file(no_network, tmp_path):
    url, expected = imagenet_file("resnet18")
    assert expected == tmp_path / "torch-home" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    with pytest.raises(PretrainedWeightsError) as err:
        build_model(cfg(pretrained="imagenet"))
    message = str(err.value)
    assert str(expected) in message and url in message and "copy the file to" in message
    assert no_network == [url] and not expected.exists()


def test_imagenet_weights_already_in_torch_home_load_without_network(no_network):
    _, path = imagenet_file("resnet18")
    path.parent.mkdir(parents=True)
    reference = torchvision_state("resnet18", 5)
    torch.save(reference, path)
    model = build_model(cfg(pretrained="imagenet"))
    assert torch.equal(model.backbone.conv1.weight, reference["conv1.weight"])
    assert torch.equal(model.backbone.layer4[1].bn2.running_mean, reference["layer4.1.bn2.running_mean"])
    assert no_network == []


def test_imagenet_for_darknet_points_at_the_pretrain_stage(no_network):
    with pytest.raises(PretrainedWeightsError, match="yolov1 pretrain"):
        build_model(cfg(backbone="darknet", pretrained="imagenet"))


def test_saved_detector_reloads_without_fetching_its_pretrained_weights(no_network, tmp_path):
    from yolov1.checkpoint import read_weights, save_weights

    _, path = imagenet_file("resnet18")
    path.parent.mkdir(parents=True)
    torch.save(torchvision_state("resnet18", 5), path)
    model = build_model(cfg(pretrained="imagenet")).eval()
    save_weights(tmp_path / "det.pt", model, cfg(pretrained="imagenet"), ["a", "b", "c"])
    path.unlink()  # reloading a trained detector must not need (or fetch) the ImageNet file
    loaded = read_weights(tmp_path / "det.pt").model
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
    assert no_network == []


def test_frozen_backbone_needs_only_model_backbone():
    # The training loop freezes `model.backbone`; with a ResNet, that is every pretrained tensor and no head one.
    model = build_model(cfg())
    backbone_ids = {id(p) for p in model.backbone.parameters()}
    head_ids = {id(p) for p in model.head.parameters()}
    assert backbone_ids.isdisjoint(head_ids)
    assert backbone_ids | head_ids == {id(p) for p in model.parameters()}
    assert all(isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.LeakyReLU)) for m in list(model.head)[:-1])


@pytest.mark.parametrize(("profile", "backbone", "pretrained"), [
    ("resnet50", "resnet50", "imagenet"),
    ("paper-pretrained", "darknet", "models/pretrained/darknet20.pt"),
])
def test_accuracy_profiles_load_and_build(profile, backbone, pretrained):
    from pipelines.params import load_params
    from pipelines.workspace import PROJECT_ROOT

    params = load_params(PROJECT_ROOT / "profiles" / f"{profile}.yaml")
    assert (params.model.backbone, params.model.pretrained) == (backbone, pretrained)
    assert (params.model.input_size, params.model.grid_size, params.model.num_classes) == (448, 7, 20)
    with torch.device("meta"):
        model = build_model(params.model, load_pretrained_weights=False)
        assert model(torch.empty(1, 3, 448, 448, device="meta")).shape == (1, 7, 7, 30)


def test_training_starts_from_the_file_and_keeps_a_frozen_backbone(tmp_path):
    """The train loop builds the net with `build_model`, so ``model.pretrained`` reaches training; with the
    backbone frozen for the only epoch, its tensors (BN statistics included) end equal to the file's."""
    from pipelines.workspace import load_profile
    from yolov1.config import params_from_dict
    from yolov1.train import train

    reference = torchvision_state("resnet18", 7)
    torch.save(reference, tmp_path / "r18.pth")
    raw = load_profile("tiny")
    params = params_from_dict(raw)
    model_cfg = cfg(pretrained=str(tmp_path / "r18.pth"), num_classes=params.model.num_classes)
    train_cfg = dataclasses.replace(params.train, epochs=1, batch_size=4, num_workers=0, val_every=0,
                                    resume="never", checkpoint_dir=str(tmp_path / "ckpt"), freeze_backbone_epochs=1)
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(8, 3, 64, 64, generator=gen)
    targets = torch.zeros(8, 2, 2, 5 + model_cfg.num_classes)
    targets[:, 0, 0, :5] = torch.tensor([0.5, 0.5, 0.4, 0.4, 1.0])  # one object per image, in cell (0, 0)
    targets[:, 0, 0, 5] = 1.0
    result = train(model_cfg, train_cfg, torch.utils.data.TensorDataset(images, targets))
    assert result.steps == 2 and all(torch.isfinite(torch.tensor(v)) for v in result.final_metrics.values())
    for key, value in result.model.backbone.state_dict().items():
        assert torch.equal(value.cpu(), reference[key]), key
