"""`yolov1 predict`: images or a folder in; JSON detections and PNGs with drawn boxes out.

The model comes from a weights file (``models/yolov1.pt``) or an MLflow registry URI such as
``models:/yolov1-voc@champion`` (its weights artifact is fetched and loaded the same way).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def resolve_weights(model: str, params_path: Path) -> Path:
    """A local weights path, or the weights artifact of a registered/logged MLflow model."""
    if "://" not in model and not model.startswith("models:/") and not model.startswith("runs:/"):
        path = Path(model)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such weights file (train first, or pass models:/<name>@champion)")
        return path
    import mlflow

    from pipelines.params import load_params
    from pipelines.tracking import configure

    configure(load_params(params_path).tracking)
    local = Path(mlflow.artifacts.download_artifacts(model))
    found = sorted(local.rglob("*.pt"))
    if not found:
        raise FileNotFoundError(f"{model}: no weights (.pt) artifact in the model")
    return found[0]


def collect_images(inputs: list[str]) -> list[Path]:
    images: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            images += sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            images.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such image or folder")
    if not images:
        raise FileNotFoundError(f"no images found in {', '.join(inputs)}")
    return images


def run(model: str, inputs: list[str], out_dir: Path, *, params_path: Path, score_threshold: float | None) -> dict:
    import torch
    from PIL import Image
    from tqdm import tqdm

    from pipelines.params import load_params
    from yolov1.checkpoint import load_weights
    from yolov1.plots import draw_boxes, save_image
    from yolov1.predict import Detector

    params = load_params(params_path)
    weights = resolve_weights(model, params_path)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    net, model_cfg, classes = load_weights(weights, device=device)
    threshold = params.eval.draw_score_threshold if score_threshold is None else score_threshold
    detector = Detector(net, model_cfg, classes, score_threshold=threshold, device=device,
                        nms_iou_threshold=params.eval.nms_iou_threshold, max_detections=params.eval.max_detections)
    images = collect_images(inputs)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = {}
    for path in tqdm(images, desc="predict", unit="img"):
        pred = detector([path])[0]
        results[str(path)] = pred.to_dict()
        with Image.open(path) as img:
            drawn = draw_boxes(img, pred.boxes_xyxy, pred.labels, classes, scores=pred.scores)
        save_image(drawn, out_dir / f"{path.stem}.png")
    tmp = out_dir / ".detections.json.tmp"
    tmp.write_text(json.dumps(results, indent=2))
    tmp.replace(out_dir / "detections.json")
    return {"images": len(images), "detections": sum(len(r["detections"]) for r in results.values()),
            "out_dir": str(out_dir)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="yolov1 predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", help="image files and/or folders of images")
    parser.add_argument("--model", default="models/yolov1.pt",
                        help="weights file or MLflow model URI, e.g. models:/yolov1-voc@champion (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=Path("predictions"), help="output folder (default: %(default)s)")
    parser.add_argument("--score-threshold", type=float, default=None,
                        help="keep detections above this score (default: params eval.draw_score_threshold)")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        summary = run(args.model, args.inputs, args.out, params_path=args.params, score_threshold=args.score_threshold)
    except (FileNotFoundError, ValueError) as err:
        print(f"yolov1 predict: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
