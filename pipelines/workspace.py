"""A self-contained pipeline workspace: its own git + DVC repo holding the code, dvc.yaml and a params profile.

`make demo` and the end-to-end tests run the pipeline in such a workspace so that a profile other than the
paper's params.yaml (the CPU demo, a tiny test profile) gets its own DVC lock, cache, MLflow store and registry,
and never touches the project's own. Re-creating an existing workspace refreshes its code and params and commits,
so DVC reruns exactly the stages whose code or params changed.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from yolov1.config import params_from_dict

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CODE = ("yolov1", "pipelines", "dvc_plots")  # dvc_plots: the plot templates dvc.yaml names
WORKSPACE_GITIGNORE = """\
__pycache__/
*.pyc
mlflow.db
mlflow.db-journal
mlflow.db.register.lock
mlartifacts/
/models/checkpoints/
/.served/
/.dvc-storage/
/.dvc/plots-offline.html
"""


def load_profile(name_or_path: str | Path) -> dict[str, Any]:
    """A params profile as a dict: a path, or a name under profiles/ (``demo`` -> profiles/demo.yaml)."""
    path = Path(name_or_path)
    if not path.suffix:
        path = PROJECT_ROOT / "profiles" / f"{name_or_path}.yaml"
    raw = yaml.safe_load(path.read_text())
    params_from_dict(raw)  # fail here, naming the key, rather than in a stage
    return raw


def create_workspace(dest: Path, params: dict[str, Any], *, message: str = "workspace update") -> Path:
    """Create or refresh a workspace at `dest` and commit its state; returns its absolute path."""
    dest = dest.resolve()
    dest.mkdir(parents=True, exist_ok=True)
    params_from_dict(params)
    for name in CODE:
        target = dest / name
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(PROJECT_ROOT / name, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy2(PROJECT_ROOT / "dvc.yaml", dest / "dvc.yaml")
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    gitignore = dest / ".gitignore"
    present = gitignore.read_text().splitlines() if gitignore.exists() else []
    missing = [line for line in WORKSPACE_GITIGNORE.splitlines() if line not in present]  # older workspaces too
    if missing:
        gitignore.write_text("".join(f"{line}\n" for line in present + missing))
    if not (dest / ".git").exists():
        _run(["git", "init", "-q", "-b", "main"], dest)
    if not (dest / ".dvc").exists():
        _run([sys.executable, "-m", "dvc", "init", "-q"], dest)
        _run([sys.executable, "-m", "dvc", "config", "core.analytics", "false"], dest)
        _run([sys.executable, "-m", "dvc", "remote", "add", "-d", "local", ".dvc-storage"], dest)
    # DVC then `git add`s the .gitignore / dvc.lock files it writes instead of printing "To track the changes
    # with git, run: ..." after every stage (five times per demo). Set on old workspaces too.
    _run([sys.executable, "-m", "dvc", "config", "core.autostage", "true"], dest)
    if not (dest / ".dvc" / "plots-offline.html").is_file():  # `dvc plots show` without a CDN (~1 MB, not in git)
        from pipelines.plots_html import install

        install(dest)
    _run(["git", "add", "-A"], dest)
    if subprocess.run(["git", "diff", "--cached", "--quiet"], cwd=dest).returncode != 0:
        _run(["git", "-c", "user.name=yolov1", "-c", "user.email=yolov1@localhost", "commit", "-q", "-m", message],
             dest)
    return dest


def _run(cmd: list[str], cwd: Path) -> None:
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed in {cwd}:\n{out.stdout}{out.stderr}")
