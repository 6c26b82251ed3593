"""`yolov1 export`: a weights file (or registry URI) -> ONNX or TorchScript, with a dynamic batch axis.

The exported graph takes ``images`` float32 (N, 3, H, W) RGB in [0, 1] at the trained size and returns the raw
``grid`` (N, S, S, 5B + C); decoding and NMS stay outside (`yolov1.encode.decode`). ONNX uses opset 17 by
default. After writing, the file is run once on a batch of two random images and compared with PyTorch
(ONNX Runtime or torch.jit); the largest absolute difference is printed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

SUFFIXES = {"onnx": ".onnx", "torchscript": ".torchscript"}


def run(model: str, fmt: str, out: Path | None, *, opset: int, params_path: Path | None) -> dict:
    import torch

    from pipelines.predict import resolve_weights
    from yolov1.checkpoint import read_weights
    from yolov1.export import export_onnx, export_torchscript

    weights = resolve_weights(model, params_path)
    found = read_weights(weights)
    out = out or weights.with_suffix(SUFFIXES[fmt])
    replaced = out.exists()
    if fmt == "onnx":
        export_onnx(found.model, out, found.model_cfg, found.classes, inference=found.inference, opset=opset)
    else:
        export_torchscript(found.model, out, found.model_cfg, found.classes, inference=found.inference)
    size = found.model_cfg.input_size
    batch = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))  # (2, 3, H, W)
    with torch.no_grad():
        expected = found.model(batch).numpy()
    got = _run_exported(fmt, out, batch)
    return {"format": fmt, "path": str(out), "replaced_existing": replaced, "opset": opset if fmt == "onnx" else None,
            "input": f"images float32 (N, 3, {size}, {size})", "output": f"grid float32 (N, {', '.join(map(str, expected.shape[1:]))})",
            "max_abs_diff_vs_pytorch": float(abs(got - expected).max()) if got is not None else None}


def _run_exported(fmt: str, path: Path, batch):
    if fmt == "torchscript":
        import warnings

        import torch

        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # TorchScript's deprecation notice
            return torch.jit.load(str(path), map_location="cpu")(batch).numpy()
    try:
        import onnxruntime as ort
    except ImportError:
        print("yolov1 export: onnxruntime not installed: the file was not checked", file=sys.stderr)
        return None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"images": batch.numpy()})[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="yolov1 export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models/yolov1.pt",
                        help="weights file or MLflow model URI, e.g. models:/yolov1-voc@champion (default: %(default)s)")
    parser.add_argument("--format", choices=sorted(SUFFIXES), default="onnx", help="default: %(default)s")
    parser.add_argument("--out", type=Path, default=None,
                        help="output file (default: the weights path with .onnx / .torchscript; replaced atomically)")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default: 17)")
    parser.add_argument("--params", type=Path, default=None, help="params file for the tracking URI of a models:/ URI")
    args = parser.parse_args(argv)
    from pipelines.predict import PredictError
    from yolov1.checkpoint import CheckpointError
    from yolov1.export import ONNX_OPSET

    try:
        summary = run(args.model, args.format, args.out, opset=args.opset or ONNX_OPSET, params_path=args.params)
    except (PredictError, CheckpointError, ImportError, OSError, ValueError) as err:
        from yolov1.redact import redact

        print(f"yolov1 export: error: {redact(str(err).strip().splitlines()[0] if str(err).strip() else err)}",
              file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
