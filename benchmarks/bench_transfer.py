"""Benchmark the transfer mechanism: detector mAP over CPU training time, from scratch vs from a backbone that
`yolov1 pretrain`'s code pretrained on object crops, with and without colour augmentation in the pretraining.

`.venv/bin/python benchmarks/bench_transfer.py` (writes docs/transfer.png; about 6 minutes on 2 idle vCPUs).
Everything is generated here, seeded: a crop set (objects cut from one generated VOC-format set, the
classification data, ImageFolder layout) and a separate, small detection set (another seed). The detector is
the demo profile's net and recipe (Fast YOLO, width 0.25, conv head, 128 px, S = 8, AdamW). Three arms share
params, data and epochs and differ only in ``model.pretrained``: from scratch; a backbone pretrained on the
crops as they are; one pretrained with colour augmentation (``pretrain.hue`` 0.5, saturation and exposure
1.5). The generated classes have their own colours, so plain crop pretraining can reach top-1 1.0 by colour
alone and learn little shape; colour augmentation takes that shortcut away, as ImageNet's variety does for
the paper's pretraining.
Each arm runs once per ``--seeds`` value (pretraining, initialisation and sample order; the data stay fixed).
mAP (VOC07 11-point, on the generated test split) is measured every ``--eval-every`` epochs; the x axis is the
process's CPU time (``time.process_time``, all threads) spent training the detector, evaluation taken out: on
shared cores wall time depends on the neighbours' load, CPU time much less. The pretraining's CPU time is
reported beside it, not hidden. With ``--json PATH`` the results so far are written there after every
evaluation. It shows whether pretrained weights reach the detector and help it; it is not a VOC number.
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


ARMS = {  # label -> pretraining colour augmentation (None: no pretraining, the detector starts from scratch)
    "scratch": None,
    "pretrained": {"hue": 0.0, "saturation": 1.0, "exposure": 1.0},
    "pretrained, colour aug": {"hue": 0.5, "saturation": 1.5, "exposure": 1.5},
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--crop-images", type=int, default=600, help="generated images cut into crops")
    parser.add_argument("--pretrain-epochs", type=int, default=6)
    parser.add_argument("--train-images", type=int, default=320, help="generated detection training images")
    parser.add_argument("--test-images", type=int, default=120)
    parser.add_argument("--epochs", type=int, default=12, help="detector epochs (every run)")
    parser.add_argument("--eval-every", type=int, default=2)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3], help="train.seed of each repetition "
                        "(pretraining and detector initialisation, sample order); the data stay the same")
    parser.add_argument("--png", type=Path, default=ROOT / "docs" / "transfer.png")
    parser.add_argument("--json", type=Path, default=None, help="also write the results so far here (rewritten "
                        "after every evaluation, so a killed run keeps its points)")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    tune_malloc()
    wall0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-transfer-") as tmp:
        tmp = Path(tmp)
        raw = load_profile("demo")
        raw["data"]["root"] = str(tmp / "data")
        raw["train"].update(epochs=args.epochs, num_workers=0, resume="never", checkpoint_dir=str(tmp / "ckpt"))
        raw["pretrain"].update(image_folder=str(tmp / "crops"), val_folder=None, val_fraction=0.15,
                               epochs=args.pretrain_epochs, num_workers=0)
        params = params_from_dict(raw)

        crops_devkit = _synth(tmp / "crops-src", num_trainval=args.crop_images, num_test=0, seed=101)
        report = make_crops(crops_devkit, ["2007/trainval"], params.data.classes, tmp / "crops")
        _synth(tmp / "data" / "extracted", num_trainval=args.train_images, num_test=args.test_images, seed=202)
        tables = read_tables(params.data, workers=1)
        common = dict(root=tmp / "data", data_cfg=params.data, input_size=params.model.input_size,
                      grid_size=params.model.grid_size)
        split = tables.images["split"]
        train_set = VOCDetection(tables.images[split == "train"].reset_index(drop=True), tables.objects, train=True,
                                 **common)
        test_set = VOCDetection(tables.images[split == "test"].reset_index(drop=True), tables.objects, train=False,
                                **common)
        results: dict[str, dict] = {label: {"pretrain": [], "curves": []} for label in ARMS}

        def dump() -> None:
            if args.json is not None:
                args.json.write_text(json.dumps(results, indent=1))

        for seed in args.seeds:
            for label, colour in ARMS.items():
                source = "none"
                if colour is not None:
                    cfg = dataclasses.replace(params.pretrain, **colour,
                                              output=str(tmp / f"backbone-{seed}-{len(results[label]['pretrain'])}.pt"))
                    t0 = time.process_time()
                    cls_train, cls_val, classes = image_folder_datasets(cfg, seed=seed)
                    result = pretrain(params.model, cfg, cls_train, cls_val, classes, seed=seed)
                    cpu_s = time.process_time() - t0
                    save_backbone(cfg.output, result.model, params.model, classes)
                    results[label]["pretrain"].append({"seed": seed, "cpu_s": round(cpu_s, 1), **result.metrics})
                    print(f"{label}, seed {seed}: pretrained on {len(cls_train)} crops in {cpu_s:.0f} CPU s: "
                          f"top-1 {result.metrics['top1']:.3f} on {len(cls_val)} held out", flush=True)
                    source = cfg.output
                run_params = dataclasses.replace(
                    params, model=dataclasses.replace(params.model, pretrained=source),
                    train=dataclasses.replace(params.train, seed=seed))
                curve: list[dict] = []
                results[label]["curves"].append(curve)
                _detector_run(run_params, train_set, test_set, f"{label}, seed {seed}", args.eval_every, dump, curve)
                dump()

    final = {label: _mean([c[-1]["map_voc07"] for c in r["curves"]]) for label, r in results.items()}
    summary = {
        "command": "python benchmarks/bench_transfer.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": f"{cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "wall_minutes": round((time.perf_counter() - wall0) / 60, 1),
        "crops": {"images": args.crop_images, "per_class": report.per_class, "epochs": args.pretrain_epochs},
        "detector": {"train_images": len(train_set), "test_images": len(test_set), "epochs": args.epochs,
                     "seeds": args.seeds},
        "final_map_voc07_mean": final,
        "ratio_over_scratch": {label: (v / final["scratch"] if final["scratch"] > 0 else None)
                               for label, v in final.items() if label != "scratch"},
        "arms": results,
    }
    print(json.dumps({k: v for k, v in summary.items() if k != "arms"}, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps(summary, indent=1))
    _plot(results, summary, args.png)
    return 0


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _plot(results: dict, summary: dict, path: Path) -> None:
    """Each arm: its mean curve over the seeds (thick, markers) and every seed's own curve (thin)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(6.8, 4.2), dpi=110)
    for (label, arm), colour in zip(results.items(), ("tab:gray", "tab:blue", "tab:orange"), strict=False):
        curves = arm["curves"]
        for curve in curves:
            ax.plot([p["seconds"] / 60 for p in curve], [p["map_voc07"] for p in curve], color=colour, alpha=0.35,
                    linewidth=0.8)
        n = min(len(c) for c in curves)
        xs = [_mean([c[i]["seconds"] for c in curves]) / 60 for i in range(n)]
        ys = [_mean([c[i]["map_voc07"] for c in curves]) for i in range(n)]
        top1 = [p["top1"] for p in arm["pretrain"]]
        name = f"{label} (top-1 {_mean(top1):.2f})" if top1 else label
        ax.plot(xs, ys, color=colour, marker="o", linewidth=2, label=f"{name}: final {ys[-1]:.3f}")
    d = summary["detector"]
    ax.set_xlabel("detector training, CPU minutes (process time, evaluation excluded)")
    ax.set_ylabel("VOC07 mAP (generated test split)")
    ax.set_title(f"From scratch vs pretrained backbone: {d['train_images']} training images, {d['epochs']} epochs\n"
                 f"thick: mean of seeds {', '.join(map(str, d['seeds']))}; thin: each seed", fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)


if __name__ == "__main__":
    raise SystemExit(main())
