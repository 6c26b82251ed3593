"""`make demo`: the whole chain on generated VOC-format data, on a CPU, in a self-contained ``demo/`` workspace.

1. Generates a VOC-layout tarball (profiles/synthetic-voc.yaml) into ``demo/.served/``; the download stage
   fetches it from there like from any mirror (the first mirror is deliberately missing, to show fall-through),
   verifies its md5 and extracts it. The mirrors are paths relative to the workspace, never a run-specific
   address (a loopback port in params would change them, and rerun download, whenever the port differs).
2. Creates or refreshes ``demo/``: its own git + DVC repo with the code, dvc.yaml and profiles/demo.yaml as
   params.yaml (plus the tarball's md5 and mirrors), its own MLflow store and registry.
3. Runs the Prefect flow (default; every task reproduces its DVC stage) or plain ``dvc repro`` (``--engine dvc``),
   then prints mAP, the registered version and alias, and how to open the MLflow and Prefect UIs.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.server
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

from pipelines.workspace import PROJECT_ROOT, create_workspace, load_profile


@contextlib.contextmanager
def serve_folder(folder: Path, port: int):
    """Serve `folder` over HTTP on 127.0.0.1 (port 0 picks a free one); yields the bound port (tests use it)."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    try:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    except OSError:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the stdlib's signature
        pass


def build_tarball(served: Path, spec: dict) -> tuple[str, int]:
    """Generate the demo tarball once (deterministic); returns (md5, size)."""
    from yolov1.download import md5sum
    from yolov1.synth import generate_voc_tarball

    served.mkdir(parents=True, exist_ok=True)
    tar_path = served / spec["filename"]
    stamp = served / (spec["filename"] + ".spec.json")
    wanted = json.dumps(spec, sort_keys=True)
    if tar_path.is_file() and stamp.is_file() and stamp.read_text() == wanted:
        return md5sum(tar_path), tar_path.stat().st_size
    kwargs = {k: v for k, v in spec.items() if k != "filename"}
    kwargs["image_size"] = tuple(tuple(r) for r in kwargs["image_size"])
    for key in ("object_size", "difficult_size"):
        kwargs[key] = tuple(kwargs[key])
    print(f"generating {spec['num_trainval']} + {spec['num_test']} VOC-format images -> {tar_path}", flush=True)
    from tqdm import tqdm

    with tqdm(total=spec["num_trainval"] + spec["num_test"], desc="generate", unit="image", dynamic_ncols=True,
              disable=None) as bar:  # disable=None: no bar when stderr is not a terminal (CI logs, Prefect)
        _, md5, size = generate_voc_tarball(tar_path, workers=min(4, os.cpu_count() or 1),
                                            progress=lambda done, _total: bar.update(done - bar.n), **kwargs)
    stamp.write_text(wanted)
    return md5, size


def demo_params(profile: str, spec: dict, md5: str, size: int, served: Path, workspace: Path) -> dict:
    """`profile`'s params with the generated tarball (in folder `served`) as the one archive to download.

    The mirrors are file paths, relative to `workspace` when `served` is inside it: identical on every run, so a
    rerun finds the download stage's params unchanged.
    """
    params = load_profile(profile)
    served, workspace = Path(served).resolve(), Path(workspace).resolve()
    base = served.relative_to(workspace).as_posix() if served.is_relative_to(workspace) else served.as_posix()
    params["data"]["archives"] = [{
        "name": "synthetic-voc2007",
        "filename": spec["filename"],
        "md5": md5,
        "size": size,
        "local": None,
        "mirrors": [f"{base}/missing-mirror/{spec['filename']}", f"{base}/{spec['filename']}"],
    }]
    params["data"]["classes"] = list(spec["classes"])
    params["model"]["num_classes"] = len(spec["classes"])
    return params


def run_chain(workspace: Path, engine: str) -> dict:
    env = dict(os.environ, PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""))
    if engine == "dvc":
        subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=workspace, env=env, check=True)
        summary = json.loads((workspace / "reports" / "registration.json").read_text())
        summary.update(json.loads((workspace / "reports" / "metrics.json").read_text()))
        return summary
    from pipelines.flows import run_pipeline  # a clear PrefectUnavailable if Prefect's server never comes up

    old = os.getcwd()
    os.environ["PATH"] = env["PATH"]
    try:
        return run_pipeline(workspace=str(workspace))
    finally:
        os.chdir(old)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="yolov1 demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workspace", type=Path, default=PROJECT_ROOT / "demo", help="default: %(default)s")
    parser.add_argument("--profile", default="demo", help="params profile under profiles/ (default: %(default)s)")
    parser.add_argument("--data", type=Path, default=PROJECT_ROOT / "profiles" / "synthetic-voc.yaml",
                        help="generated-data spec (default: %(default)s)")
    parser.add_argument("--engine", choices=("prefect", "dvc"), default="prefect",
                        help="run the chain as the Prefect flow or with plain `dvc repro` (default: %(default)s)")
    args = parser.parse_args(argv)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    start = time.perf_counter()
    spec = yaml.safe_load(args.data.read_text())
    workspace = args.workspace.resolve()
    served = workspace / ".served"
    md5, size = build_tarball(served, spec)
    params = demo_params(args.profile, spec, md5, size, served, workspace)
    create_workspace(workspace, params, message=f"demo workspace ({args.profile} profile)")
    try:
        summary = run_chain(workspace, args.engine)
    except RuntimeError as err:
        if type(err).__name__ != "PrefectUnavailable":
            raise
        print(f"yolov1 demo: error: {err}", file=sys.stderr)
        return 2
    minutes = (time.perf_counter() - start) / 60
    print("\n" + "=" * 72)
    print(f"demo finished in {minutes:.1f} min ({args.engine})")
    print(f"  VOC07 mAP (11-point): {summary.get('map_voc07')}   area mAP: {summary.get('map_area')}")
    print(f"  registered: {summary.get('model_name')} version {summary.get('version')} -> {summary.get('alias')}")
    print(f"  ({summary.get('reason')})")
    print(f"  pictures: {workspace}/reports/predictions.png, {workspace}/reports/pr_curves.png")
    print("  MLflow UI:  .venv/bin/mlflow ui --backend-store-uri sqlite:///demo/mlflow.db  (http://127.0.0.1:5000)")
    print("  Prefect UI: .venv/bin/prefect server start  (http://127.0.0.1:4200; runs made with a temporary")
    print("              server are not kept: set PREFECT_API_URL=http://127.0.0.1:4200/api before `make demo`)")
    print("=" * 72)
    return 0


if __name__ == "__main__":
    from pipelines.cli import run_main  # Ctrl-C: a short message and exit 130, not a traceback

    raise SystemExit(run_main(main, prog="yolov1 demo"))
