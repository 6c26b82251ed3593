"""yolov1.export and `yolov1 export`: ONNX Runtime and TorchScript give PyTorch's output for any batch size.

Tolerance: float32 graphs reorder sums differently (ONNX Runtime fuses conv + BN and uses its own GEMM), so
outputs are compared with atol 1e-4 + rtol 1e-4 on activations of order 1; TorchScript runs the same kernels
and must match to 1e-6.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from yolov1.checkpoint import save_weights
from yolov1.config import ModelConfig
from yolov1.export import ONNX_OPSET, export_onnx, export_torchscript, onnx_metadata, torchscript_metadata
from yolov1.model import build_model

CLASSES = ["aeroplane", "bicycle", "bird"]
CONV = ModelConfig(variant="fast", input_size=64, grid_size=2, boxes_per_cell=2, num_classes=3, batch_norm=True,
                   width_multiplier=0.125, head="conv", head_hidden=16, dropout=0.0)
FC = ModelConfig(variant="yolov1", input_size=64, grid_size=2, boxes_per_cell=2, num_classes=3, batch_norm=True,
                 width_multiplier=0.0625, head="fc", head_hidden=32, dropout=0.5)
ATOL = RTOL = 1e-4
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")  # torch 2.14 deprecates TorchScript
INFERENCE = {"score_threshold": 0.3, "nms_iou_threshold": 0.5, "max_detections": 100, "max_image_pixels": 40_000_000}


def _model(cfg: ModelConfig) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with torch.no_grad():  # non-trivial BN statistics and outputs of order 1, so the comparison means something
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
        model.head[-1].weight.mul_(300.0)
    return model


def _batch(n: int, size: int) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(n))  # (N, 3, H, W) in [0, 1]


@pytest.mark.parametrize("cfg", [CONV, FC], ids=["conv-head", "fc-head"])
def test_onnx_runtime_equals_pytorch_for_any_batch(tmp_path: Path, cfg: ModelConfig):
    ort = pytest.importorskip("onnxruntime")
    model = _model(cfg)
    path = export_onnx(model, tmp_path / "m.onnx", cfg, CLASSES, inference=INFERENCE)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, out.name) == ("images", "grid")
    assert inp.shape[0] == "batch" and inp.shape[1:] == [3, 64, 64]  # dynamic batch, fixed image size
    for n in (1, 3, 8):
        x = _batch(n, 64)
        with torch.no_grad():
            expected = model(x).numpy()  # (N, S, S, 5B + C)
        got = session.run(None, {"images": x.numpy()})[0]
        assert got.shape == expected.shape == (n, 2, 2, 13)
        assert np.abs(expected).max() > 0.5  # outputs of order 1: the tolerance is meaningful
        np.testing.assert_allclose(got, expected, atol=ATOL, rtol=RTOL)
    meta = onnx_metadata(path)
    assert meta["classes"] == CLASSES and meta["inference"] == INFERENCE
    assert ModelConfig(**meta["model_config"]) == cfg
    import onnx

    assert onnx.load(str(path)).opset_import[0].version == ONNX_OPSET == 17


def test_torchscript_equals_pytorch_for_any_batch(tmp_path: Path):
    model = _model(CONV)
    path = export_torchscript(model, tmp_path / "m.torchscript", CONV, CLASSES, inference=None)
    loaded = torch.jit.load(str(path))
    for n in (1, 5):
        x = _batch(n, 64)
        with torch.no_grad():
            np.testing.assert_allclose(loaded(x).numpy(), model(x).numpy(), atol=1e-6, rtol=1e-6)
    meta = torchscript_metadata(path)
    assert meta["classes"] == CLASSES and meta["inference"] is None and meta["model_config"]["head"] == "conv"


def test_export_command(tmp_path: Path, capsys):
    pytest.importorskip("onnxruntime")
    from pipelines.export import main

    weights = save_weights(tmp_path / "yolov1.pt", _model(CONV), CONV, CLASSES, inference=INFERENCE)
    assert main(["--model", str(weights), "--format", "onnx"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["path"] == str(tmp_path / "yolov1.onnx") and summary["opset"] == 17
    assert summary["max_abs_diff_vs_pytorch"] < 1e-3 and not summary["replaced_existing"]
    assert main(["--model", str(weights), "--format", "torchscript", "--out", str(tmp_path / "a" / "m.ts")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["max_abs_diff_vs_pytorch"] < 1e-5 and (tmp_path / "a" / "m.ts").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "yolov1.onnx", "yolov1.pt"]  # no temp files left
    assert main(["--model", str(tmp_path / "missing.pt")]) == 2
    assert "missing.pt: no such weights file" in capsys.readouterr().err
