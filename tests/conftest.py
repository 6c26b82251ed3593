"""Test-wide settings: no telemetry, Prefect/MLflow state in temp dirs, seeded RNGs."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Set before any pipeline module imports prefect/mlflow/dvc: their settings are read at import time.
_STATE = Path(tempfile.mkdtemp(prefix="yolov1-tests-"))
os.environ.setdefault("PREFECT_HOME", str(_STATE / "prefect"))
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
os.environ["DVC_NO_ANALYTICS"] = "1"
os.environ["DO_NOT_TRACK"] = "1"
os.environ.setdefault("GIT_AUTHOR_NAME", "tests")
os.environ.setdefault("GIT_AUTHOR_EMAIL", "tests@localhost")
os.environ.setdefault("GIT_COMMITTER_NAME", "tests")
os.environ.setdefault("GIT_COMMITTER_EMAIL", "tests@localhost")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _seed():
    import torch

    torch.manual_seed(0)


@pytest.fixture
def repo_params_dict():
    """params.yaml of the repository as a plain dict (tests modify a copy and build Params from it)."""
    import yaml

    return yaml.safe_load((ROOT / "params.yaml").read_text())


@pytest.fixture(scope="session")
def prefect_api():
    """A real local Prefect API (a server subprocess on SQLite in a temp dir) for the whole session; yields its URL.

    Starting it costs 5-13 s, so every test that needs Prefect should share this one fixture.
    """
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):  # 60 s was missed on a loaded 2-core machine
        yield PREFECT_API_URL.value()
