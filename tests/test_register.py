"""The register stage: the promotion rule, end to end on a sqlite registry, racing registrations, no server."""

from __future__ import annotations

import copy
import json
import multiprocessing
import random
import re
import shutil
import socket
import time
from pathlib import Path

import pytest

from pipelines.register import decide, run
from pipelines.tracking import TrackingUnavailable, check_reachable, configure
from yolov1.config import Params, params_from_dict

LINEAGE = {"git_commit": "0123abc", "dvc_data_hash": "d41d8cd98f00b204e9800998ecf8427e.dir",
           "prefect_flow_run_id": "5f0c6a1e-0000-4000-8000-000000000001"}


# --- the rule -------------------------------------------------------------------------------------------------


def test_decide_first_model_is_champion():
    promoted, reason = decide(0.1, None, 0.005)
    assert promoted
    assert "no champion yet" in reason


def test_decide_promotes_a_gain_of_at_least_min_improvement():
    # 0.70 - 0.60 = +0.10 >= 0.005
    promoted, reason = decide(0.70, 0.60, 0.005)
    assert promoted
    assert "+0.1000" in reason
    # Exactly the threshold: in floats 0.470 - 0.465 = 0.00499999999999995 < 0.005, but the tags keep 6 decimals
    # and at that precision the gain is 0.005, which must promote.
    assert 0.470 - 0.465 < 0.005
    assert decide(0.470, 0.465, 0.005)[0]


def test_decide_keeps_the_champion_on_a_smaller_gain_or_a_loss():
    # +0.004 < 0.005
    promoted, reason = decide(0.604, 0.600, 0.005)
    assert not promoted
    assert reason == "mAP 0.6040 vs the champion's 0.6000: gain +0.0040 < 0.005"
    # 0.58 - 0.60 = -0.02
    promoted, reason = decide(0.58, 0.60, 0.005)
    assert not promoted
    assert "gain -0.0200 < 0.005" in reason
    # The rule is ">=": with a zero threshold an equal model (gain 0) is promoted.
    assert decide(0.6, 0.6, 0.0)[0]


# --- helpers: a sqlite registry in tmp_path with tiny pyfunc models ------------------------------------------


def _make_params(raw: dict, min_improvement: float = 0.005) -> Params:
    raw = copy.deepcopy(raw)
    raw["register"]["min_improvement"] = min_improvement
    return params_from_dict(raw)


@pytest.fixture(scope="module")
def template_db(tmp_path_factory) -> Path:
    """An initialised, empty MLflow sqlite database: creating the tables costs ~10 s, copying the file ~0."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments(max_results=1)
    return path


@pytest.fixture
def store(tmp_path, monkeypatch, template_db) -> str:
    """MLFLOW_TRACKING_URI on a fresh sqlite registry in tmp_path, which is also the cwd."""
    shutil.copy(template_db, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    return uri


def _log_model(params: Params, run_tags: dict[str, str]) -> dict[str, str]:
    """A trained model's models/yolov1.json: a run with `run_tags` holding a trivial pyfunc model."""
    import mlflow
    import mlflow.pyfunc

    class Echo(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input: list[str], params=None) -> list[str]:
            return model_input

    experiment_id = configure(params.tracking)
    with mlflow.start_run(experiment_id=experiment_id, tags=run_tags) as active:
        info = mlflow.pyfunc.log_model(name="model", python_model=Echo(), pip_requirements=["mlflow"])
    return {"mlflow_run_id": active.info.run_id, "model_uri": info.model_uri}


def _inputs(folder: Path, meta: dict, map_voc07: float) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    meta_path, metrics_path = folder / "yolov1.json", folder / "metrics.json"
    meta_path.write_text(json.dumps(meta))
    metrics_path.write_text(json.dumps({"map_voc07": map_voc07, "map_area": map_voc07 / 2}))
    return meta_path, metrics_path


def _aliases(client, name: str) -> dict[str, str]:
    return {alias: str(version) for alias, version in client.get_registered_model(name).aliases.items()}


def _register(params: Params, folder: Path, meta: dict, map_voc07: float) -> dict:
    meta_path, metrics_path = _inputs(folder, meta, map_voc07)
    return run(params, meta_path=meta_path, metrics_path=metrics_path, out_path=folder / "registration.json")


# --- end to end ------------------------------------------------------------------------------------------------


def test_run_promotes_only_a_clear_improvement(store, tmp_path, repo_params_dict):
    from mlflow.tracking import MlflowClient

    params = _make_params(repo_params_dict)
    name = params.register.model_name
    client = MlflowClient(store)

    first = _register(params, tmp_path / "m1", _log_model(params, LINEAGE), 0.6)
    assert (first["version"], first["alias"], first["promoted"]) == ("1", "champion", True)
    assert first["previous_champion"] == {"version": None, "map_voc07": None}
    assert json.loads((tmp_path / "m1" / "registration.json").read_text()) == first
    tags = client.get_model_version(name, "1").tags
    assert tags["map_voc07"] == "0.600000" and tags["map_area"] == "0.300000"
    for key, value in LINEAGE.items():
        assert tags[key] == value
    assert tags["promotion"] == first["reason"]

    # 0.58 - 0.60 = -0.02: challenger, the champion stays v1. This run had no lineage tags: none are invented.
    second = _register(params, tmp_path / "m2", _log_model(params, {}), 0.58)
    assert (second["version"], second["alias"], second["promoted"]) == ("2", "challenger", False)
    assert "gain -0.0200 < 0.005" in second["reason"]
    assert second["previous_champion"] == {"version": "1", "map_voc07": 0.6}
    assert not set(LINEAGE) & set(client.get_model_version(name, "2").tags)
    assert _aliases(client, name) == {"champion": "1", "challenger": "2"}

    # 0.70 - 0.60 = +0.10 >= 0.005: v3 takes champion from v1; v2 keeps challenger.
    third = _register(params, tmp_path / "m3", _log_model(params, LINEAGE), 0.7)
    assert (third["version"], third["alias"], third["promoted"]) == ("3", "champion", True)
    assert third["previous_champion"] == {"version": "1", "map_voc07": 0.6}
    assert third["model_uri"] == f"models:/{name}/3"
    assert _aliases(client, name) == {"champion": "3", "challenger": "2"}
    registration = json.loads((tmp_path / "m3" / "registration.json").read_text())
    assert {registration[k] for k in ("version", "alias", "reason")} == {"3", "champion", third["reason"]}


# --- racing registrations ----------------------------------------------------------------------------------------


def _race_worker(params: Params, folder: Path, barrier) -> None:
    from pipelines.tracking import tracking_uri

    # Import mlflow and open the store (~7 s of CPU) before the barrier, so that the registrations race, not that.
    check_reachable(tracking_uri(params.tracking))
    barrier.wait(timeout=120)
    run(params, meta_path=folder / "yolov1.json", metrics_path=folder / "metrics.json",
        out_path=folder / "registration.json")


def test_racing_registrations_keep_every_version_and_one_rightful_champion(store, tmp_path, repo_params_dict):
    from mlflow.tracking import MlflowClient

    params = _make_params(repo_params_dict)
    name = params.register.model_name
    maps = [0.5, 0.6, 0.7, 0.8]  # 0.1 apart, so the best is champion whatever order the lock serialises them in
    random.Random(0).shuffle(maps)
    folders = [tmp_path / f"racer{i}" for i in range(len(maps))]
    for folder, map_voc07 in zip(folders, maps, strict=True):
        _inputs(folder, _log_model(params, LINEAGE), map_voc07)

    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(len(maps))
    racers = [ctx.Process(target=_race_worker, args=(params, folder, barrier)) for folder in folders]
    for p in racers:
        p.start()
    for p in racers:
        p.join(timeout=180)
    assert [p.exitcode for p in racers] == [0] * len(racers), "a registration failed (its traceback is above)"

    client = MlflowClient(store)
    versions = {str(mv.version): float(mv.tags["map_voc07"]) for mv in client.search_model_versions(f"name='{name}'")}
    assert sorted(versions, key=int) == ["1", "2", "3", "4"]  # no version lost
    assert sorted(versions.values()) == sorted(maps)
    aliases = _aliases(client, name)
    assert versions[aliases["champion"]] == max(maps)  # no promotion lost

    # Versions are numbered inside the lock, so version order is decision order: replaying the rule in that
    # order must reproduce every registration.json, and its last champion / challenger are the aliases now.
    summaries = sorted((json.loads((f / "registration.json").read_text()) for f in folders),
                       key=lambda s: int(s["version"]))
    assert [s["version"] for s in summaries] == ["1", "2", "3", "4"]
    champion = {"version": None, "map_voc07": None}
    final = {}
    for s in summaries:
        assert versions[s["version"]] == s["map_voc07"]
        promoted, reason = decide(s["map_voc07"], champion["map_voc07"], params.register.min_improvement)
        assert (s["promoted"], s["reason"], s["previous_champion"]) == (promoted, reason, champion)
        assert s["alias"] == ("champion" if promoted else "challenger")
        final[s["alias"]] = s["version"]
        if promoted:
            champion = {"version": s["version"], "map_voc07": s["map_voc07"]}
    assert aliases == final


# --- no tracking server ------------------------------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


def test_unreachable_tracking_server_is_named_without_waiting():
    uri = f"http://127.0.0.1:{_closed_port()}"
    start = time.monotonic()
    with pytest.raises(TrackingUnavailable, match=re.escape(uri)):
        check_reachable(uri, timeout=5.0)
    assert time.monotonic() - start < 5.0  # refused at once, not by waiting out the timeout


def test_register_main_reports_an_unreachable_server_in_one_line(tmp_path, monkeypatch, repo_params_dict, capsys):
    import yaml

    from pipelines.register import main

    uri = f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(repo_params_dict))
    _inputs(tmp_path / "models", {"mlflow_run_id": "r", "model_uri": "models:/m-1"}, 0.6)
    (tmp_path / "reports").mkdir()
    (tmp_path / "models" / "metrics.json").rename(tmp_path / "reports" / "metrics.json")
    assert main([]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and uri in err
    assert not (tmp_path / "reports" / "registration.json").exists()
