"""The `yolov1` command: one entry point with a subcommand per stage, plus predict, the flow and the demo.

Each subcommand forwards its arguments to the module that dvc.yaml runs (``yolov1 train --params p.yaml`` is
``python -m pipelines.train --params p.yaml``), so the command line, DVC and Prefect share one implementation.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "download": ("pipelines.download", "fetch the VOC archives (mirrors, resume, md5) and extract them safely"),
    "prepare": ("pipelines.prepare", "parse annotations into tables and grid targets, behind the data gate"),
    "train": ("pipelines.train", "train the network (resumable; tracked in MLflow)"),
    "evaluate": ("pipelines.evaluate", "VOC mAP on the test split, PR curves and prediction pictures"),
    "register": ("pipelines.register", "register the model in MLflow; promote it to champion if it wins"),
    "predict": ("pipelines.predict", "detect objects in images with a weights file or a registry URI"),
    "flow": ("pipelines.flows", "run the whole chain as a Prefect flow (each task reproduces its DVC stage)"),
    "serve": ("pipelines.serve", "serve the scheduled retraining deployment (cron from params.yaml)"),
    "demo": ("pipelines.demo", "the whole chain on generated VOC-format data, on a CPU, in a demo/ workspace"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="yolov1",
        description="A paper-faithful YOLOv1 on PASCAL VOC: reproducible stages (DVC), scheduled retraining "
        "(Prefect) and champion-gated promotion (MLflow registry). Run `yolov1 <command> --help` for details.",
    )
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0
    if argv[0] not in COMMANDS:
        parser.error(f"unknown command {argv[0]!r} (choose from {', '.join(COMMANDS)})")
    module = importlib.import_module(COMMANDS[argv[0]][0])
    return int(module.main(argv[1:]) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
