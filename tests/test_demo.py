"""`make demo` run twice is a no-op for the data: no run-specific address (a loopback port) lives in params.

A real workspace (git + DVC) with the tiny generated tarball; only the download stage runs, so this takes seconds.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

from pipelines.demo import build_tarball, demo_params
from pipelines.workspace import create_workspace

ROOT = Path(__file__).resolve().parents[1]


def _dvc(ws: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""))
    out = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=ws, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, f"dvc {' '.join(args)}:\n{out.stdout}\n{out.stderr}"
    return out


def _demo_workspace(ws: Path) -> dict:
    """What `pipelines.demo.main` does before running the chain: tarball in ws/.served, params, workspace."""
    spec = yaml.safe_load((ROOT / "profiles" / "synthetic-tiny.yaml").read_text())
    md5, size = build_tarball(ws / ".served", spec)
    params = demo_params("tiny", spec, md5, size, ws / ".served", ws)
    create_workspace(ws, params, message="demo run")
    return params


def test_a_second_demo_run_leaves_the_download_stage_up_to_date(tmp_path):
    ws = tmp_path / "demo"
    first = _demo_workspace(ws)
    [archive] = first["data"]["archives"]
    # Workspace-relative paths: the same on every run, on every machine, whatever ports are free.
    assert archive["mirrors"] == [f".served/missing-mirror/{archive['filename']}", f".served/{archive['filename']}"]
    assert all("://" not in m for m in archive["mirrors"])

    out = _dvc(ws, "repro", "download")
    assert "Running stage 'download'" in out.stdout
    # The missing mirror was tried and skipped; the extracted tree is there.
    assert (ws / "data" / "extracted" / "VOCdevkit" / "VOC2007" / "Annotations").is_dir()
    # core.autostage: DVC stages its own .gitignore/dvc.lock instead of printing how to, after every stage.
    assert "To track the changes with git" not in out.stdout + out.stderr
    staged = subprocess.run(["git", "diff", "--cached", "--name-only"], cwd=ws, capture_output=True, text=True)
    assert "dvc.lock" in staged.stdout.split()

    params_text = (ws / "params.yaml").read_text()
    second = _demo_workspace(ws)  # the next `make demo`
    assert second == first and (ws / "params.yaml").read_text() == params_text
    assert json.loads(_dvc(ws, "status", "download", "--json").stdout) == {}
    assert "didn't change, skipping" in _dvc(ws, "repro", "download").stdout

    # The README's `dvc exp show` command selects the columns that matter, not the ~130 params (mostly mirrors).
    every = _dvc(ws, "exp", "show", "--no-pager", "--csv").stdout.splitlines()[0].split(",")
    assert len(every) > 100 and any(c.startswith("data.archives") for c in every)
    [readme_cmd] = [line for line in (ROOT / "README.md").read_text().splitlines()
                    if line.startswith("dvc exp show --drop")]
    args = shlex.split(readme_cmd)[1:]
    header = _dvc(ws, *args, "--no-pager", "--csv").stdout.splitlines()[0].split(",")
    # No metrics yet in this workspace (only download ran), so the mAP columns are absent here.
    assert set(header) >= {"Experiment", "Created", "model.variant", "model.input_size", "train.epochs", "train.lr"}
    assert len(header) <= 12 and not any(c.startswith("data.") for c in header)


def test_demo_help_names_no_port_option(capsys):
    import pytest

    from pipelines.demo import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "--workspace" in text and "--port" not in text
