"""Scale-out, run for real: the workspace's data and weights travel through a DVC remote.

`dvc.lock` committed, `dvc push` to the workspace's default remote (a local folder), a fresh `git clone`
elsewhere pointed at that remote (as a second machine would be, through `.dvc/config.local`), `dvc pull`, and
`dvc repro` in the clone finds every stage up to date: nothing is recomputed on the second machine.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.pipeline_fixtures import Workspace, dvc, git_commit, run_cmd, shared_workspace, stages_ran

pytestmark = [pytest.mark.scaleout, pytest.mark.slow]


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Workspace:
    return shared_workspace(tmp_path_factory)


def test_push_clone_pull_then_repro_does_nothing(ws, tmp_path):
    remote = dvc(ws, "remote", "list").stdout.split()  # ["local", "<url>"]
    assert remote and remote[0] == "local", remote
    storage = (ws.path / ".dvc" / remote[1]).resolve() if not remote[1].startswith("/") else remote[1]
    if run_cmd(ws, "git", "status", "--porcelain").stdout.strip():  # dvc.lock (the outputs' hashes) goes by git
        git_commit(ws, "pipeline results")
    pushed = dvc(ws, "push")
    assert "failed" not in (pushed.stdout + pushed.stderr).lower()

    clone = tmp_path / "clone"
    run_cmd(ws, "git", "clone", "-q", str(ws.path), str(clone))
    in_clone = Workspace(path=clone, env=ws.env, tracking_uri=ws.tracking_uri, model_name=ws.model_name,
                         first_repro="", build_seconds=0.0)
    assert not (clone / "models" / "yolov1.pt").exists()  # git holds no weights
    dvc(in_clone, "remote", "modify", "--local", "local", "url", str(storage))  # the shared remote
    pulled = dvc(in_clone, "pull")
    assert "failed" not in (pulled.stdout + pulled.stderr).lower()
    assert (clone / "models" / "yolov1.pt").read_bytes() == (ws.path / "models" / "yolov1.pt").read_bytes()
    assert (clone / "data" / "prepared").is_dir()

    status = dvc(in_clone, "status")
    assert "up to date" in status.stdout.lower(), status.stdout
    repro = run_cmd(in_clone, sys.executable, "-m", "dvc", "repro")
    output = repro.stdout + repro.stderr
    assert stages_ran(output) == set(), output[-2000:]
    assert subprocess.run(["git", "status", "--porcelain"], cwd=clone, capture_output=True, text=True,
                          check=True).stdout.strip() == ""
