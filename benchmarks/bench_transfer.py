"""Benchmark the transfer mechanism: detector mAP over CPU training time, from scratch vs from a backbone that
`yolov1 pretrain`'s code pretrained on object crops.

`.venv/bin/python benchmarks/bench_transfer.py` (11.5 minutes wall on 2 shared, busy vCPUs, about 5 CPU-minutes;
writes docs/transfer.png).
Everything is generated here, seeded: a crop set (objects cut from one generated VOC-format set, the
classification data, ImageFolder layout) and a separate, small detection set (another seed). The detector is
the demo profile's net (Fast YOLO, width 0.25, conv head, 112 px, S = 7); both runs use the same params, seed,
data and epochs and differ only in ``model.pretrained``. mAP (VOC07 11-point, on the generated test split) is
measured every ``--eval-every`` epochs; the x axis is the process's CPU time (``time.process_time``, all threads)
spent training the detector, evaluation taken out: on shared cores wall time depends on the neighbours' load,
CPU time much less. The pretraining's CPU time is reported beside it, not hidden. With ``--json PATH`` the curves
so far are written there after every evaluation. It shows that pretrained weights reach the detector and
help it; it is not a VOC number.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._machine import cpu_name  # noqa: E402
from pipelines.prepare import read_tables  # noqa: E402
from pipelines.workspace import load_profile  # noqa: E402
from yolov1.config import params_from_dict  # noqa: E402
from yolov1.data import VOCDetection, collate_train, tune_malloc  # noqa: E402
from yolov1.evaluate import evaluate  # noqa: E402
from yolov1.pretrain import image_folder_datasets, make_crops, pretrain, save_backbone  # noqa: E402
from yolov1.synth import generate_voc  # noqa: E402
from yolov1.train import train  # noqa: E402


def _synth(root: Path, *, num_trainval: int, num_test: int, seed: int) -> Path:
    spec = yaml.safe_load((ROOT / "profiles" / "synthetic-voc.yaml").read_text())
    spec.update(num_trainval=num_trainval, num_test=num_test, seed=seed)
    kwargs = {k: v for k, v in spec.items() if k != "filename"}
    kwargs["image_size"] = tuple(tuple(r) for r in kwargs["image_size"])
    kwargs["object_size"], kwargs["difficult_size"] = tuple(kwargs["object_size"]), tuple(kwargs["difficult_size"])
    return generate_voc(root, **kwargs)


def _detector_run(params, train_set, test_set, label: str, eval_every: int, on_point, curve: list) -> list[dict]:
    """Train; return [{epoch, seconds (CPU, training only), map_voc07, wall_s}] with an untrained point at 0 s;
    `on_point()` after each evaluation."""
    clock = {"eval": 0.0, "start": 0.0, "wall": 0.0}

    def val_fn(model, epoch: int) -> dict[str, float]:
        t0 = time.process_time()
        seconds = t0 - clock["start"] - clock["eval"]  # CPU time training so far, earlier evaluations excluded
        result = evaluate(model, test_set, model_cfg=params.model, eval_cfg=params.eval)
        clock["eval"] += time.process_time() - t0
        curve.append({"epoch": epoch, "seconds": round(seconds, 2), "map_voc07": result.voc07.map,
                      "wall_s": round(time.perf_counter() - clock["wall"], 1)})
        print(f"  {label}: epoch {epoch}, {seconds:.0f} CPU s, mAP {result.voc07.map:.3f}", flush=True)
        on_point()
        return {"map_voc07": result.voc07.map}

    torch.manual_seed(params.train.seed)
    from yolov1.model import build_model

    untrained = build_model(params.model)
    start = evaluate(untrained, test_set, model_cfg=params.model, eval_cfg=params.eval).voc07.map
    curve.append({"epoch": 0, "seconds": 0.0, "map_voc07": start})
    clock["start"], clock["wall"] = time.process_time(), time.perf_counter()
    train(params.model, dataclasses.replace(params.train, val_every=eval_every), train_set, val_fn=val_fn,
          collate_fn=collate_train)
    return curve


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--crop-images", type=int, default=300, help="generated images cut into crops")
    parser.add_argument("--pretrain-epochs", type=int, default=3)
    parser.add_argument("--train-images", type=int, default=160, help="generated detection training images")
    parser.add_argument("--test-images", type=int, default=80)
    parser.add_argument("--epochs", type=int, default=10, help="detector epochs (both runs)")
    parser.add_argument("--eval-every", type=int, default=2)
    parser.add_argument("--png", type=Path, default=ROOT / "docs" / "transfer.png")
    parser.add_argument("--json", type=Path, default=None, help="also write the curves so far here (rewritten "
                        "after every evaluation, so a killed run keeps its points)")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    tune_malloc()
    with tempfile.TemporaryDirectory(prefix="bench-transfer-") as tmp:
        tmp = Path(tmp)
        raw = load_profile("demo")
        raw["data"]["root"] = str(tmp / "data")
        raw["train"].update(epochs=args.epochs, num_workers=0, resume="never", checkpoint_dir=str(tmp / "ckpt"))
        raw["pretrain"].update(image_folder=str(tmp / "crops"), val_folder=None, val_fraction=0.15,
                               epochs=args.pretrain_epochs, num_workers=0, output=str(tmp / "backbone.pt"))
        params = params_from_dict(raw)

        crops_devkit = _synth(tmp / "crops-src", num_trainval=args.crop_images, num_test=0, seed=101)
        report = make_crops(crops_devkit, ["2007/trainval"], params.data.classes, tmp / "crops")
        t0 = time.process_time()
        cls_train, cls_val, classes = image_folder_datasets(params.pretrain, seed=params.train.seed)
        result = pretrain(params.model, params.pretrain, cls_train, cls_val, classes, seed=params.train.seed)
        pretrain_s = time.process_time() - t0
        save_backbone(params.pretrain.output, result.model, params.model, classes)
        print(f"pretrained on {len(cls_train)} crops ({report.per_class}) in {pretrain_s:.0f} s: "
              f"CPU s: top-1 {result.metrics['top1']:.3f}, top-5 {result.metrics['top5']:.3f}", flush=True)

        _synth(tmp / "data" / "extracted", num_trainval=args.train_images, num_test=args.test_images, seed=202)
        tables = read_tables(params.data, workers=1)
        common = dict(root=tmp / "data", data_cfg=params.data, input_size=params.model.input_size,
                      grid_size=params.model.grid_size)
        split = tables.images["split"]
        train_set = VOCDetection(tables.images[split == "train"].reset_index(drop=True), tables.objects, train=True,
                                 **common)
        test_set = VOCDetection(tables.images[split == "test"].reset_index(drop=True), tables.objects, train=False,
                                **common)
        curves: dict[str, list[dict]] = {}

        def dump() -> None:
            if args.json is None:
                return
            args.json.write_text(json.dumps({"pretrain_cpu_s": round(pretrain_s), "curves": curves}, indent=1))

        for label, source in (("scratch", "none"), ("pretrained", params.pretrain.output)):
            run_params = dataclasses.replace(params, model=dataclasses.replace(params.model, pretrained=source))
            curves[label] = []
            _detector_run(run_params, train_set, test_set, label, args.eval_every, dump, curves[label])
            dump()

    final = {k: v[-1]["map_voc07"] for k, v in curves.items()}
    summary = {
        "machine": f"{cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "pretrain": {"crops": len(cls_train) + len(cls_val), "epochs": args.pretrain_epochs, "seconds": round(pretrain_s),
                     "top1": result.metrics["top1"], "top5": result.metrics["top5"]},
        "detector": {"train_images": len(train_set), "test_images": len(test_set), "epochs": args.epochs},
        "final_map_voc07": final,
        "ratio_pretrained_over_scratch": final["pretrained"] / final["scratch"] if final["scratch"] > 0 else None,
        "curves": curves,
    }
    print(json.dumps(summary, indent=2))
    _plot(curves, summary, args.png)
    return 0


def _plot(curves: dict, summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    for label, points in curves.items():
        ax.plot([p["seconds"] / 60 for p in points], [p["map_voc07"] for p in points], marker="o", label=label)
    p = summary["pretrain"]
    ax.set_xlabel("detector training, CPU minutes (process time, evaluation excluded)")
    ax.set_ylabel("VOC07 mAP (generated test split)")
    ax.set_title(f"From scratch vs pretrained backbone (pretraining: {p['seconds'] / 60:.1f} CPU min, "
                 f"top-1 {p['top1']:.2f})", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)


if __name__ == "__main__":
    raise SystemExit(main())
