"""The Prefect flow runs the real chain end to end in the test harness.

It runs after tests/test_pipeline_e2e.py on the same session workspace (file order), so download and prepare are
up to date; `retrain=True` forces training, so train and register really run under the flow.
"""

from __future__ import annotations

import json

import pytest

from tests.pipeline_fixtures import Workspace, mlflow_client, shared_workspace

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


@pytest.fixture(scope="session")
def ws(tmp_path_factory) -> Workspace:
    return shared_workspace(tmp_path_factory)


def test_flow_reproduces_the_stages_and_registers(ws: Workspace, prefect_api, monkeypatch):
    from prefect.client.orchestration import get_client

    from pipelines.flows import training_pipeline

    client = mlflow_client(ws)
    before = {int(v.version) for v in client.search_model_versions(f"name='{ws.model_name}'")}
    monkeypatch.setenv("PATH", ws.env["PATH"])
    monkeypatch.setenv("MLFLOW_TRACKING_URI", ws.tracking_uri)

    state = training_pipeline(workspace=str(ws.path), retrain=True, return_state=True)

    assert state.is_completed(), state
    summary = state.result()
    stages = summary["stages"]
    assert (stages["download"], stages["prepare"], stages["train"]) == ("up to date", "up to date", "ran")
    # CPU training is deterministic: retrained weights can equal the last ones, and then DVC rightly skips
    # evaluate; register always reruns (the model's metadata - run id, timings - is new).
    assert stages["evaluate"] in ("ran", "up to date") and stages["register"] == "ran"
    new_version = max(before) + 1
    assert summary["version"] == str(new_version)
    assert summary["alias"] in ("champion", "challenger") and summary["reason"]
    assert summary["map_voc07"] == json.loads((ws.path / "reports" / "metrics.json").read_text())["map_voc07"]

    # lineage: the run the flow trained carries the flow run id, and so does the registered version
    version = client.get_model_version(ws.model_name, str(new_version))
    flow_run_id = str(state.state_details.flow_run_id)
    assert version.tags.get("prefect_flow_run_id") == flow_run_id
    run = client.get_run(version.tags["mlflow_run_id"])
    assert run.data.tags.get("prefect_flow_run_id") == flow_run_id

    async def task_names():
        async with get_client() as prefect:
            runs = await prefect.read_task_runs()
            return {r.name.split("-")[0] for r in runs if str(r.flow_run_id) == flow_run_id}

    import asyncio

    assert {"download", "prepare", "train", "evaluate", "register"} <= asyncio.run(task_names())

    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    from pipelines.flows import AP_TABLE_KEY, REPORT_KEY

    with get_client(sync_client=True) as prefect:
        artifacts = prefect.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])))
    by_key = {a.key: a for a in artifacts if a.key}
    assert set(by_key) == {REPORT_KEY, AP_TABLE_KEY}
    assert f"version {new_version} -> **{summary['alias']}**" in by_key[REPORT_KEY].data
    assert {row["class"] for row in json.loads(by_key[AP_TABLE_KEY].data)} == set(
        json.loads((ws.path / "reports" / "metrics.json").read_text())["ap_voc07"])
