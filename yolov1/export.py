"""Export a trained net for runtimes without this code: ONNX (opset 17) or TorchScript, both with a dynamic batch.

The exported graph is the network only: input ``images`` float32 (N, 3, H, W) RGB in [0, 1] with H = W = the
trained input size (`yolov1.predict.preprocess` makes it: plain resize, /255), output ``grid`` float32
(N, S, S, 5B + C), the raw layout `yolov1.encode` documents. Decoding (scores, NMS) stays outside the graph, as
in `yolov1.encode.decode`. Each file carries what a runtime needs to decode: model config, class names and,
when known, the inference thresholds (ONNX ``metadata_props``; TorchScript extra file ``yolov1.json``).
Files are written atomically (temp name beside the target, then ``os.replace``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import secrets
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from yolov1.config import ModelConfig

__all__ = ["ONNX_OPSET", "export_onnx", "export_torchscript", "metadata", "onnx_metadata", "torchscript_metadata"]

logger = logging.getLogger(__name__)

ONNX_OPSET = 17  # ONNX Runtime >= 1.11 runs it; every op of this net exists in it
INPUT_NAME, OUTPUT_NAME = "images", "grid"


def metadata(model_cfg: ModelConfig, classes: list[str], inference: dict[str, Any] | None = None) -> dict[str, str]:
    """The self-description stored in an exported file: JSON strings under ``model_config``, ``classes``,
    ``inference`` (may be ``null``) and ``layout``."""
    return {
        "model_config": json.dumps(dataclasses.asdict(model_cfg)),
        "classes": json.dumps(list(classes)),
        "inference": json.dumps(inference),
        "layout": json.dumps({"input": f"{INPUT_NAME} float32 (N, 3, {model_cfg.input_size}, "
                                       f"{model_cfg.input_size}) RGB in [0, 1]",
                              "output": f"{OUTPUT_NAME} float32 (N, S, S, 5B + C), see yolov1.encode"}),
    }


def export_onnx(model: nn.Module, path: str | os.PathLike, model_cfg: ModelConfig, classes: list[str], *,
                inference: dict[str, Any] | None = None, opset: int = ONNX_OPSET) -> Path:
    """Write `model` as ONNX with a dynamic batch axis (``batch``) and the `metadata` as ``metadata_props``.

    Uses torch's TorchScript-based exporter (``dynamo=False``: no onnxscript needed; this net has only
    conv, BN, leaky ReLU, max-pool, linear, reshape and permute). Needs the ``onnx`` package for the metadata.
    """
    import onnx

    path = Path(path)
    dummy = torch.zeros(1, 3, model_cfg.input_size, model_cfg.input_size)  # (1, 3, H, W)
    tmp = _temp_beside(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter's deprecation notice
            torch.onnx.export(model.eval().cpu(), (dummy,), str(tmp), input_names=[INPUT_NAME],
                              output_names=[OUTPUT_NAME], opset_version=opset, dynamo=False,
                              dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                              do_constant_folding=True)
        proto = onnx.load(str(tmp))
        for key, value in metadata(model_cfg, classes, inference).items():
            proto.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def export_torchscript(model: nn.Module, path: str | os.PathLike, model_cfg: ModelConfig, classes: list[str], *,
                       inference: dict[str, Any] | None = None) -> Path:
    """Write `model` traced to TorchScript (any batch size; the trained H x W), `metadata` as ``yolov1.json``.

    torch 2.14 marks TorchScript deprecated (in favour of ``torch.export``); it is kept because LibTorch (C++)
    and older serving stacks load it, and its deprecation warnings are silenced here.
    """
    path = Path(path)
    dummy = torch.zeros(1, 3, model_cfg.input_size, model_cfg.input_size)  # (1, 3, H, W)
    tmp = _temp_beside(path)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            traced = torch.jit.trace(model.eval().cpu(), (dummy,))
            torch.jit.save(traced, str(tmp), _extra_files={"yolov1.json": json.dumps(metadata(model_cfg, classes,
                                                                                           inference))})
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def onnx_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The `metadata` an exported ONNX file carries, JSON-decoded."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: json.loads(p.value) for p in proto.metadata_props}


def torchscript_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The `metadata` an exported TorchScript file carries, JSON-decoded."""
    files = {"yolov1.json": ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript's deprecation notice
        torch.jit.load(str(path), map_location="cpu", _extra_files=files)
    return {k: json.loads(v) for k, v in json.loads(files["yolov1.json"]).items()}


def _temp_beside(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
