"""The `yolov1` command: one entry point with a subcommand per stage, plus predict, the flow and the demo.

Each subcommand forwards its arguments to the module that dvc.yaml runs (``yolov1 train --params p.yaml`` is
``python -m pipelines.train --params p.yaml``), so the command line, DVC and Prefect share one implementation.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable

EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a command stopped by Ctrl-C

COMMANDS = {
    "download": ("pipelines.download", "fetch the VOC archives (mirrors, resume, md5) and extract them safely"),
    "prepare": ("pipelines.prepare", "parse annotations into tables and grid targets, behind the data gate"),
    "train": ("pipelines.train", "train the network (resumable; tracked in MLflow)"),
    "evaluate": ("pipelines.evaluate", "VOC mAP on the test split, PR curves and prediction pictures"),
    "register": ("pipelines.register", "register the model in MLflow; promote it to champion if it wins"),
    "pretrain": ("pipelines.pretrain", "optional: the paper's classification pretraining of the backbone (ImageFolder)"),
    "predict": ("pipelines.predict", "detect objects in images with a weights file or a registry URI"),
    "export": ("pipelines.export", "export the trained net to ONNX or TorchScript (dynamic batch)"),
    "flow": ("pipelines.flows", "run the whole chain as a Prefect flow (each task reproduces its DVC stage)"),
    "serve": ("pipelines.serve", "serve the scheduled retraining deployment (cron from params.yaml)"),
    "serve-model": ("pipelines.serve_model", "serve a logged model over HTTP with a request-body size limit (413)"),
    "demo": ("pipelines.demo", "the whole chain on generated VOC-format data, on a CPU, in a demo/ workspace"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="yolov1",
        description="A paper-faithful YOLOv1 on PASCAL VOC: reproducible stages (DVC), scheduled retraining "
        "(Prefect) and champion-gated promotion (MLflow registry). Run `yolov1 <command> --help` for details.",
    )
    parser.add_argument("-V", "--version", action="version", version=f"%(prog)s {version()}")
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
    if argv[0] in ("-V", "--version"):
        print(f"yolov1 {version()}")
        return 0
    if argv[0] not in COMMANDS:
        parser.error(f"unknown command {argv[0]!r} (choose from {', '.join(COMMANDS)})")
    module = importlib.import_module(COMMANDS[argv[0]][0])
    return run_main(module.main, argv[1:], prog=f"yolov1 {argv[0]}")


def run_main(command: Callable[[list[str] | None], int | None], argv: list[str] | None = None,
             prog: str = "yolov1") -> int:
    """Run a command's ``main(argv)``; Ctrl-C ends it with one line on stderr and exit 130, not a traceback.

    Nothing half-written survives an interrupt: every output is written to a temp name and renamed into place,
    so what exists is complete. Rerunning continues: train resumes from its last checkpoint, download from its
    ``.part`` file, and DVC reruns only the stages whose outputs are missing or stale.
    """
    try:
        return int(command(argv) or 0)
    except Exception as err:
        if not _is_user_error(err):
            raise  # a bug keeps its traceback
        from yolov1.redact import redact

        lines = str(err).strip().splitlines()
        print(f"{prog}: error: {redact(lines[0] if lines else type(err).__name__)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\n{prog}: interrupted (Ctrl-C). Outputs already written are complete (each is renamed into place "
              "when done); rerun the same command to continue.", file=sys.stderr)
        return EXIT_INTERRUPTED


def version() -> str:
    """The installed package's version (``pip install -e .`` records it), else the source tree's."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("yolov1")
    except PackageNotFoundError:
        return "0+unknown"


def _is_user_error(err: Exception) -> bool:
    """Errors about files, checkpoints or the tracking server: one line for the user, not a traceback."""
    from pipelines.tracking import TrackingUnavailable
    from yolov1.checkpoint import CheckpointError

    return isinstance(err, (CheckpointError, TrackingUnavailable))


if __name__ == "__main__":
    raise SystemExit(run_main(main))
