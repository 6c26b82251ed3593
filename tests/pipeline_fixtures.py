"""One tiny pipeline workspace per pytest session, shared by the end-to-end and serving tests.

`shared_workspace` generates the synthetic VOC tarball (the download stage's mirror), creates a workspace (its own git +
DVC repo, pipelines/workspace.py) with the tiny profile and runs `dvc repro` in it once; every later call in the
same session returns the same workspace. Each test module asks for it through a session-scoped fixture of its own.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PROFILE = "tiny"
DATA_SPEC = ROOT / "profiles" / "synthetic-tiny.yaml"
STAGES = ("download", "prepare", "train", "evaluate", "register")
REPRO_TIMEOUT_S = 900  # a tiny run takes 1-2 min on 2 busy cores; this only stops a hung stage


@dataclass(frozen=True)
class Workspace:
    """A workspace after its first `dvc repro`: where it is, how to run commands in it, what the run printed."""

    path: Path
    env: dict[str, str]      # venv bin first on PATH (dvc's `python` is ours), MLFLOW_TRACKING_URI on its store
    tracking_uri: str        # sqlite:///<path>/mlflow.db
    model_name: str          # params register.model_name
    first_repro: str         # stdout + stderr of the first `dvc repro`
    build_seconds: float


_CACHE: dict[str, Workspace] = {}


def shared_workspace(tmp_path_factory) -> Workspace:
    """Build the workspace in a new pytest temp dir on the first call of the session; the same one afterwards."""
    if "ws" not in _CACHE:
        _CACHE["ws"] = _build(tmp_path_factory.mktemp("pipeline"))
    return _CACHE["ws"]


def run_cmd(ws: Workspace, *args: str, check: bool = True, timeout: float = REPRO_TIMEOUT_S,
            extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run a command in the workspace with its env; on failure the assertion shows the command's output."""
    env = dict(ws.env, **(extra_env or {}))
    out = subprocess.run(list(args), cwd=ws.path, env=env, capture_output=True, text=True, timeout=timeout)
    if check:
        assert out.returncode == 0, f"{' '.join(args)} exited {out.returncode}:\n{out.stdout}\n{out.stderr}"
    return out


def dvc(ws: Workspace, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """`python -m dvc <args>` in the workspace."""
    return run_cmd(ws, sys.executable, "-m", "dvc", *args, check=check)


def git_commit(ws: Workspace, message: str) -> None:
    """Commit everything in the workspace (as the pipeline's user would after editing params or code)."""
    run_cmd(ws, "git", "add", "-A")
    run_cmd(ws, "git", "-c", "user.name=tests", "-c", "user.email=tests@localhost", "commit", "-q", "-m", message)


def mlflow_client(ws: Workspace):
    """An MlflowClient on the workspace's store (explicit URIs: no global mlflow state is touched)."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=ws.tracking_uri, registry_uri=ws.tracking_uri)


def stages_ran(output: str) -> set[str]:
    """Stages that `dvc repro` executed, from its output ("Running stage 'train':")."""
    return {s for s in STAGES if f"Running stage '{s}'" in output}


def stages_skipped(output: str) -> set[str]:
    """Stages that `dvc repro` found unchanged ("Stage 'prepare' didn't change, skipping")."""
    return {s for s in STAGES if f"Stage '{s}' didn't change, skipping" in output}


def sample_image(ws: Workspace) -> tuple[Path, int, int]:
    """(path, width, height) of the first test-split image of the workspace's prepared data."""
    import pandas as pd

    images = pd.read_parquet(ws.path / "data" / "prepared" / "images.parquet")
    row = images[images["split"] == "test"].iloc[0]
    return ws.path / "data" / row["path"], int(row["width"]), int(row["height"])


def profile_classes() -> list[str]:
    """The class names of the generated data (demo_params puts them in the workspace params)."""
    return list(yaml.safe_load(DATA_SPEC.read_text())["classes"])


def _build(base: Path) -> Workspace:
    from pipelines.demo import build_tarball, demo_params
    from pipelines.workspace import create_workspace

    start = time.perf_counter()
    spec = yaml.safe_load(DATA_SPEC.read_text())
    served = base / "served"
    md5, size = build_tarball(served, spec)
    params = demo_params(PROFILE, spec, md5, size, served, base / "ws")  # mirrors: paths under `served`
    path = create_workspace(base / "ws", params, message="tiny test workspace")
    uri = f"sqlite:///{path}/mlflow.db"
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["MLFLOW_TRACKING_URI"] = uri
    env["MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"] = "1"  # a tiny run lasts seconds; the default samples every 10 s
    for key in ("YOLOV1_FLOW_RUN_ID", "PREFECT__FLOW_RUN_ID", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID"):
        env.pop(key, None)
    ws = Workspace(path=path, env=env, tracking_uri=uri, model_name=params["register"]["model_name"],
                   first_repro="", build_seconds=0.0)
    out = dvc(ws, "repro")
    return Workspace(path=path, env=env, tracking_uri=uri, model_name=ws.model_name,
                     first_repro=out.stdout + out.stderr, build_seconds=time.perf_counter() - start)
