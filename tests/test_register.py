"""The register stage: the promotion rule and its floor, like-with-like champion figures, idempotence, end to end
on a sqlite registry, racing registrations, concurrent write_json, no server."""

from __future__ import annotations

import copy
import json
import multiprocessing
import random
import re
import shutil
import time
from pathlib import Path

import pytest

from pipelines.register import decide, run
from pipelines.tracking import TrackingUnavailable, check_reachable, configure, write_json
from tests.server_process import free_port
from yolov1.config import Params, RegisterConfig, params_from_dict

TEST_HASH = "a" * 64  # the test split every model here was scored on, unless a test says otherwise
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


def test_decide_floor_blocks_a_model_below_min_map_even_without_a_champion():
    # No champion, mAP 0.0 < floor 0.2: not promoted (a 0.0 model is not champion "because there is none").
    promoted, reason = decide(0.0, None, 0.005, min_map=0.2)
    assert not promoted and reason == "mAP 0.0000 is below the floor register.min_map 0.2: never promoted"
    # Below the floor, even a large gain over a weak champion does not promote: 0.19 - 0.05 = +0.14.
    assert not decide(0.19, 0.05, 0.005, min_map=0.2)[0]
    # At the floor (0.2 >= 0.2) the usual rules apply; 0.2000004 rounds to the tags' 0.200000 and passes too.
    assert decide(0.2, None, 0.005, min_map=0.2) == (True, "no champion yet: the first model at or above the floor "
                                                           "becomes champion")
    assert decide(0.1999996, None, 0.005, min_map=0.2)[0]
    assert not decide(0.199999, None, 0.005, min_map=0.2)[0]


# --- helpers: a sqlite registry in tmp_path with tiny pyfunc models ------------------------------------------


def _make_params(raw: dict, min_improvement: float = 0.005, min_map: float = 0.2) -> Params:
    raw = copy.deepcopy(raw)
    raw["register"]["min_improvement"] = min_improvement
    raw["register"]["min_map"] = min_map
    return params_from_dict(raw)


@pytest.fixture(scope="module")
def template_db(tmp_path_factory) -> Path:
    """An initialised, empty MLflow sqlite database: creating the tables costs ~10 s, copying the file ~0."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments(max_results=1)
    return path


# Clients below name the registry explicitly: configure() sets a process-global registry URI that would otherwise
# point a new MlflowClient(store) at the previous test's database.
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


def _inputs(folder: Path, meta: dict, map_voc07: float, test_hash: str = TEST_HASH,
            rule: str = ">=") -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    meta_path, metrics_path = folder / "yolov1.json", folder / "metrics.json"
    meta_path.write_text(json.dumps(meta))
    metrics_path.write_text(json.dumps({"map_voc07": map_voc07, "map_area": map_voc07 / 2, "test_split_hash": test_hash,
                                        "match_comparison": rule, "match_iou_threshold": 0.5}))
    return meta_path, metrics_path


def _aliases(client, name: str) -> dict[str, str]:
    return {alias: str(version) for alias, version in client.get_registered_model(name).aliases.items()}


def _no_rescoring(mv) -> float:
    raise AssertionError(f"champion v{mv.version} was scored like the new model: it must not be re-evaluated")


def _register(params: Params, folder: Path, meta: dict, map_voc07: float, *, test_hash: str = TEST_HASH,
              scorer=_no_rescoring) -> dict:
    meta_path, metrics_path = _inputs(folder, meta, map_voc07, test_hash)
    return run(params, meta_path=meta_path, metrics_path=metrics_path, out_path=folder / "registration.json",
               scorer=scorer)


def _previous(summary: dict) -> tuple:
    return summary["previous_champion"]["version"], summary["previous_champion"]["map_voc07"]


# --- end to end ------------------------------------------------------------------------------------------------


def test_run_promotes_only_a_clear_improvement(store, tmp_path, repo_params_dict):
    from mlflow.tracking import MlflowClient

    params = _make_params(repo_params_dict)
    name = params.register.model_name
    client = MlflowClient(store, registry_uri=store)

    first = _register(params, tmp_path / "m1", _log_model(params, LINEAGE), 0.6)
    assert (first["version"], first["alias"], first["promoted"]) == ("1", "champion", True)
    assert _previous(first) == (None, None) and first["already_registered"] is False
    assert json.loads((tmp_path / "m1" / "registration.json").read_text()) == first
    tags = client.get_model_version(name, "1").tags
    assert tags["map_voc07"] == "0.600000" and tags["map_area"] == "0.300000"
    assert (tags["test_split_hash"], tags["match_comparison"], tags["match_iou_threshold"]) == (TEST_HASH, ">=", "0.5")
    for key, value in LINEAGE.items():
        assert tags[key] == value
    assert tags["promotion"] == first["reason"]

    # 0.58 - 0.60 = -0.02: challenger, the champion stays v1. This run had no lineage tags: none are invented.
    second = _register(params, tmp_path / "m2", _log_model(params, {}), 0.58)
    assert (second["version"], second["alias"], second["promoted"]) == ("2", "challenger", False)
    assert "gain -0.0200 < 0.005" in second["reason"]
    assert _previous(second) == ("1", 0.6) and second["previous_champion"]["reevaluated"] is False
    assert not set(LINEAGE) & set(client.get_model_version(name, "2").tags)
    assert _aliases(client, name) == {"champion": "1", "challenger": "2"}

    # 0.70 - 0.60 = +0.10 >= 0.005: v3 takes champion from v1; v2 keeps challenger.
    third = _register(params, tmp_path / "m3", _log_model(params, LINEAGE), 0.7)
    assert (third["version"], third["alias"], third["promoted"]) == ("3", "champion", True)
    assert _previous(third) == ("1", 0.6)
    assert third["model_uri"] == f"models:/{name}/3"
    assert _aliases(client, name) == {"champion": "3", "challenger": "2"}
    registration = json.loads((tmp_path / "m3" / "registration.json").read_text())
    assert {registration[k] for k in ("version", "alias", "reason")} == {"3", "champion", third["reason"]}


def test_floor_keeps_a_weak_first_model_from_becoming_champion(store, tmp_path, repo_params_dict):
    from mlflow.tracking import MlflowClient

    params = _make_params(repo_params_dict, min_map=0.2)
    name = params.register.model_name
    client = MlflowClient(store, registry_uri=store)
    # 0.0 < 0.2: registered (v1, challenger) but no champion exists afterwards.
    weak = _register(params, tmp_path / "w", _log_model(params, LINEAGE), 0.0)
    assert (weak["version"], weak["alias"], weak["promoted"]) == ("1", "challenger", False)
    assert "below the floor register.min_map 0.2" in weak["reason"]
    assert _aliases(client, name) == {"challenger": "1"}
    # 0.35 >= 0.2 and there is still no champion: champion.
    good = _register(params, tmp_path / "g", _log_model(params, LINEAGE), 0.35)
    assert (good["version"], good["alias"], good["promoted"]) == ("2", "champion", True)
    assert _aliases(client, name) == {"challenger": "1", "champion": "2"}


def test_champion_scored_on_other_test_data_is_scored_again_before_deciding(store, tmp_path, repo_params_dict):
    from mlflow.tracking import MlflowClient

    params = _make_params(repo_params_dict)
    name = params.register.model_name
    client = MlflowClient(store, registry_uri=store)
    old_hash, new_hash = "1" * 64, "2" * 64
    _register(params, tmp_path / "v1", _log_model(params, LINEAGE), 0.6, test_hash=old_hash)

    # v2 scored 0.5 on the new test split; v1's recorded 0.6 was on the old one. On the new split v1 scores 0.45:
    # 0.50 - 0.45 = +0.05 >= 0.005, so v2 is champion although 0.5 < 0.6.
    calls = []

    def rescore(mv) -> float:
        calls.append(str(mv.version))
        return 0.45

    second = _register(params, tmp_path / "v2", _log_model(params, LINEAGE), 0.5, test_hash=new_hash, scorer=rescore)
    assert calls == ["1"]  # once, for the champion
    assert (second["version"], second["alias"], second["promoted"]) == ("2", "champion", True)
    assert "beats the champion's 0.4500 by +0.0500" in second["reason"]
    assert second["previous_champion"] == {"version": "1", "map_voc07": 0.6, "test_split_hash": old_hash,
                                           "map_voc07_current_test": 0.45, "reevaluated": True}
    assert json.loads((tmp_path / "v2" / "registration.json").read_text()) == second
    tags = client.get_model_version(name, "2").tags
    assert (tags["champion_compared"], tags["champion_map_voc07_recorded"], tags["champion_map_voc07_current_test"]) \
        == ("1", "0.600000", "0.450000")
    assert tags["test_split_hash"] == new_hash

    # v3 on the same split as the champion v2: compared with v2's recorded 0.5, nothing is re-evaluated.
    third = _register(params, tmp_path / "v3", _log_model(params, LINEAGE), 0.52, test_hash=new_hash)
    assert (third["alias"], third["previous_champion"]["reevaluated"]) == ("champion", False)
    assert _previous(third) == ("2", 0.5)


def test_champion_scored_under_another_match_rule_is_scored_again(store, tmp_path, repo_params_dict):
    params = _make_params(repo_params_dict)
    meta_path, metrics_path = _inputs(tmp_path / "v1", _log_model(params, LINEAGE), 0.6, rule=">")
    strict = _make_params({**repo_params_dict, "eval": {**repo_params_dict["eval"], "match_comparison": ">"}})
    run(strict, meta_path=meta_path, metrics_path=metrics_path, out_path=tmp_path / "v1" / "r.json",
        scorer=_no_rescoring)
    second = _register(params, tmp_path / "v2", _log_model(params, LINEAGE), 0.6, scorer=lambda mv: 0.61)
    assert second["previous_champion"]["reevaluated"] is True and second["alias"] == "challenger"  # -0.01


def test_metrics_scored_under_another_rule_than_params_are_refused(store, tmp_path, repo_params_dict):
    params = _make_params(repo_params_dict)  # eval.match_comparison ">="
    meta_path, metrics_path = _inputs(tmp_path / "m", {"mlflow_run_id": "r", "model_uri": "models:/m-1"}, 0.6, rule=">")
    with pytest.raises(ValueError, match=r"match_comparison '>' differs from params eval.match_comparison '>='"):
        run(params, meta_path=meta_path, metrics_path=metrics_path, out_path=tmp_path / "r.json")
    metrics_path.write_text(json.dumps({"map_voc07": 0.5}))
    with pytest.raises(ValueError, match="metrics.json: missing key.*test_split_hash"):
        run(params, meta_path=meta_path, metrics_path=metrics_path, out_path=tmp_path / "r.json")
    metrics_path.write_text(json.dumps({"map_voc07": "0.5", "test_split_hash": TEST_HASH, "match_comparison": ">=",
                                        "match_iou_threshold": 0.5}))
    with pytest.raises(ValueError, match="map_voc07 is 0.5 .*not a number"):
        run(params, meta_path=meta_path, metrics_path=metrics_path, out_path=tmp_path / "r.json")
    assert not (tmp_path / "r.json").exists()


def test_registering_the_same_run_again_adds_no_version(store, tmp_path, repo_params_dict):
    import mlflow
    from mlflow.tracking import MlflowClient

    params = _make_params(repo_params_dict)
    name = params.register.model_name
    client = MlflowClient(store, registry_uri=store)
    meta = _log_model(params, LINEAGE)
    first = _register(params, tmp_path / "a", meta, 0.6)
    again = _register(params, tmp_path / "b", meta, 0.6)
    assert again == {**first, "already_registered": True}
    assert json.loads((tmp_path / "b" / "registration.json").read_text()) == again
    assert [str(mv.version) for mv in client.search_model_versions(f"name='{name}'")] == ["1"]
    assert _aliases(client, name) == {"champion": "1"}

    # A registration that died after creating its version but before deciding: the re-run decides for that
    # version instead of creating another one.
    other = _log_model(params, LINEAGE)
    mlflow.register_model(other["model_uri"], name, tags={"mlflow_run_id": other["mlflow_run_id"]})
    finished = _register(params, tmp_path / "c", other, 0.7)
    assert (finished["version"], finished["alias"], finished["already_registered"]) == ("2", "champion", False)
    assert sorted(str(mv.version) for mv in client.search_model_versions(f"name='{name}'")) == ["1", "2"]


# --- write_json under concurrency --------------------------------------------------------------------------------


def _json_writer(path: str, writer: int, count: int) -> None:
    for i in range(count):
        write_json(Path(path), {"writer": writer, "i": i, "pad": "x" * (i % 7) * 500})


def test_write_json_concurrent_writers_and_readers_never_see_a_torn_file(tmp_path):
    # 4 processes x 300 writes of one file, read back continuously meanwhile. The old fixed temp name made writers
    # delete each other's temp file (FileNotFoundError) and readers see half-written JSON.
    target = tmp_path / "reports" / "registration.json"
    write_json(target, {"writer": -1, "i": -1, "pad": ""})
    ctx = multiprocessing.get_context("fork")
    writers = [ctx.Process(target=_json_writer, args=(str(target), w, 300)) for w in range(4)]
    for p in writers:
        p.start()
    reads = 0
    while any(p.is_alive() for p in writers) or reads == 0:
        payload = json.loads(target.read_text())  # raises on a torn or empty file
        assert set(payload) == {"writer", "i", "pad"}
        reads += 1
    for p in writers:
        p.join(timeout=60)
    assert [p.exitcode for p in writers] == [0, 0, 0, 0]
    assert json.loads(target.read_text())["i"] == 299
    assert reads > 10
    assert [p.name for p in target.parent.iterdir()] == ["registration.json"]  # no temp file left behind


def test_write_json_respects_the_umask(tmp_path):
    import os

    old = os.umask(0o022)
    try:
        write_json(tmp_path / "a.json", {"a": 1})
        os.umask(0o077)
        write_json(tmp_path / "b.json", {"b": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644  # readable by others, like any normal file
    assert (tmp_path / "b.json").stat().st_mode & 0o777 == 0o600


# --- racing registrations ----------------------------------------------------------------------------------------


def _race_worker(params: Params, folder: Path, barrier) -> None:
    from pipelines.tracking import tracking_uri

    # Import mlflow and open the store (~7 s of CPU) before the barrier, so that the registrations race, not that.
    check_reachable(tracking_uri(params.tracking))
    barrier.wait(timeout=120)
    run(params, meta_path=folder / "yolov1.json", metrics_path=folder / "metrics.json",
        out_path=folder / "registration.json", scorer=_no_rescoring)


def run_racing_registrations(params, tmp_path, *, join_timeout: float) -> tuple[list[float], list[Path]]:
    """Log one model per mAP in 0.5/0.6/0.7/0.8 (shuffled, seeded), then register all four at once from spawned
    processes released by one barrier; asserts every racer exited 0. Returns the mAPs and the racers' folders,
    in racer order."""
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
        p.join(timeout=join_timeout)
    assert [p.exitcode for p in racers] == [0] * len(racers), "a registration failed (its traceback is above)"
    return maps, folders


def test_racing_registrations_keep_every_version_and_one_rightful_champion(store, tmp_path, repo_params_dict):
    from mlflow.tracking import MlflowClient

    params = _make_params(repo_params_dict)
    name = params.register.model_name
    maps, folders = run_racing_registrations(params, tmp_path, join_timeout=180)

    client = MlflowClient(store, registry_uri=store)
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
    champion = (None, None)
    final = {}
    for s in summaries:
        assert versions[s["version"]] == s["map_voc07"]
        promoted, reason = decide(s["map_voc07"], champion[1], params.register.min_improvement,
                                  params.register.min_map)
        assert (s["promoted"], s["reason"], _previous(s)) == (promoted, reason, champion)
        assert s["alias"] == ("champion" if promoted else "challenger")
        final[s["alias"]] = s["version"]
        if promoted:
            champion = (s["version"], s["map_voc07"])
    assert aliases == final


# --- a lost alias write on a server: the conflict PostgreSQL reports -------------------------------------------

# What a client of `mlflow server` on PostgreSQL raises when a concurrent request inserted the same alias row first
# (MLflow's ManagedSessionMaker turns the IntegrityError into BAD_REQUEST; the REST client re-raises it).
PG_ALIAS_CONFLICT = ('(psycopg2.errors.UniqueViolation) duplicate key value violates unique constraint '
                     '"registered_model_alias_pk"\nDETAIL:  Key (name, alias)=(m, champion) already exists.\n'
                     '[SQL: INSERT INTO registered_model_aliases (workspace, alias, version, name) VALUES (...)]')


class _FakeVersion:
    def __init__(self, version: str, map_voc07: float):
        self.version = version
        self.tags = {"map_voc07": f"{map_voc07:.6f}", "test_split_hash": TEST_HASH, "match_comparison": ">=",
                     "match_iou_threshold": "0.5"}


class _RacedRegistry:
    """The registry calls promote() makes, in memory, with a concurrent registration squeezed in: before each of
    the first len(`races`) alias writes, `races[i]` = (alias, version) is written by "someone else" and this
    client's write fails with `error`, as a server's does when the other INSERT commits first."""

    def __init__(self, maps: dict[str, float], races: list[tuple[str, str]], error: Exception):
        self.versions = {v: _FakeVersion(v, m) for v, m in maps.items()}
        self.aliases: dict[str, str] = {}
        self.races, self.error, self.writes = list(races), error, []

    def get_registered_model(self, name):
        return type("RegisteredModel", (), {"aliases": dict(self.aliases)})()

    def get_model_version(self, name, version):
        return self.versions[str(version)]

    def set_registered_model_alias(self, name, alias, version):
        self.writes.append((alias, str(version)))
        if self.races:
            other_alias, other_version = self.races.pop(0)
            self.aliases[other_alias] = other_version
            raise self.error
        self.aliases[alias] = str(version)


def _conflict():
    from mlflow.exceptions import RestException

    return RestException({"error_code": "BAD_REQUEST", "message": PG_ALIAS_CONFLICT})


EVALUATION = {"test_split_hash": TEST_HASH, "match_comparison": ">=", "match_iou_threshold": "0.5"}
RULES = RegisterConfig(model_name="m", min_improvement=0.005, min_map=0.2)


def test_alias_conflict_to_a_better_racer_is_a_lost_race_not_a_failure():
    from pipelines.register import is_write_conflict, promote

    assert is_write_conflict(_conflict())
    # v2 (0.7) reads no champion and decides to take it; v1 (0.8) inserts the champion row first.
    client = _RacedRegistry({"1": 0.8, "2": 0.7}, races=[("champion", "1")], error=_conflict())
    decision = promote(client, "m", "2", 0.7, RULES, EVALUATION, _no_rescoring)
    # Re-read: champion v1 at 0.8, gain 0.7 - 0.8 = -0.1 < 0.005, so v2 is challenger and v1 stays the one champion.
    assert client.writes == [("champion", "2"), ("challenger", "2")]
    assert client.aliases == {"champion": "1", "challenger": "2"}
    assert (decision["alias"], decision["promoted"], decision["previous_champion"]["version"]) == (
        "challenger", False, "1")
    assert decision["reason"] == decide(0.7, 0.8, 0.005, 0.2)[1]


def test_alias_conflict_to_a_worse_racer_decides_again_and_promotes():
    from pipelines.register import promote

    # v2 (0.8) collides with v1 (0.6) taking the champion row; re-read: 0.8 - 0.6 = +0.2 >= 0.005, v2 takes it.
    client = _RacedRegistry({"1": 0.6, "2": 0.8}, races=[("champion", "1")], error=_conflict())
    decision = promote(client, "m", "2", 0.8, RULES, EVALUATION, _no_rescoring)
    assert client.writes == [("champion", "2"), ("champion", "2")]
    assert client.aliases == {"champion": "2"}
    assert (decision["alias"], decision["promoted"], decision["previous_champion"]["version"]) == (
        "champion", True, "1")


def test_alias_conflicts_without_end_stop_after_the_bounded_attempts():
    from pipelines.register import AliasNotSettled, promote

    client = _RacedRegistry({"1": 0.6, "2": 0.8}, races=[("challenger", "1")] * 10, error=_conflict())
    with pytest.raises(AliasNotSettled, match="after 3 attempts"):
        promote(client, "m", "2", 0.8, RULES, EVALUATION, _no_rescoring, attempts=3)
    assert len(client.writes) == 3


@pytest.mark.parametrize("code, message", [
    ("PERMISSION_DENIED", "user alice may not set aliases on m"),
    ("BAD_REQUEST", "Invalid alias name 'champion!'"),  # BAD_REQUEST without a duplicate key is not a race
    ("INTERNAL_ERROR", "(psycopg2.OperationalError) server closed the connection"),
])
def test_other_registry_errors_are_not_retried(code, message):
    from mlflow.exceptions import RestException

    from pipelines.register import is_write_conflict, promote

    error = RestException({"error_code": code, "message": message})
    assert not is_write_conflict(error)
    client = _RacedRegistry({"1": 0.6, "2": 0.8}, races=[("champion", "1")], error=error)
    with pytest.raises(RestException) as raised:
        promote(client, "m", "2", 0.8, RULES, EVALUATION, _no_rescoring)
    assert raised.value is error and len(client.writes) == 1


def test_register_main_reports_a_registry_error_in_one_redacted_line(tmp_path, monkeypatch, capsys):
    from mlflow.exceptions import RestException

    import pipelines.register as register

    secret_uri = "postgresql://mlflow:S3cr3t@db.internal:5432/mlflow"
    error = RestException({"error_code": "PERMISSION_DENIED",
                           "message": f"cannot write to {secret_uri}\nTraceback (most recent call last):\n  ..."})

    def refuse(params):
        raise error

    monkeypatch.setattr(register, "run", refuse)
    monkeypatch.setattr(register, "load_params", lambda path: None)
    assert register.main(["--params", str(tmp_path / "params.yaml")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == ["yolov1 register: error: PERMISSION_DENIED: cannot write to "
                                "postgresql://mlflow:***@db.internal:5432/mlflow"]


# --- no tracking server ------------------------------------------------------------------------------------------


def test_unreachable_tracking_server_is_named_without_waiting():
    uri = f"http://127.0.0.1:{free_port()}"
    start = time.monotonic()
    with pytest.raises(TrackingUnavailable, match=re.escape(uri)):
        check_reachable(uri, timeout=5.0)
    assert time.monotonic() - start < 5.0  # refused at once, not by waiting out the timeout


def test_register_main_reports_an_unreachable_server_in_one_line(tmp_path, monkeypatch, repo_params_dict, capsys):
    import yaml

    from pipelines.register import main

    uri = f"http://127.0.0.1:{free_port()}"
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


# --- tracking helpers the registry relies on -----------------------------------------------------------------------


def _prepared(folder: Path, test_box: float = 10.0, train_box: float = 10.0) -> Path:
    import pandas as pd

    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"image_id": ["2007_000001", "2007_000002"], "split": ["train", "test"], "year": [2007, 2007],
                  "path": ["a.jpg", "b.jpg"], "width": [50, 60], "height": [40, 30]}).to_parquet(
        folder / "images.parquet", index=False)
    pd.DataFrame({"image_id": ["2007_000001", "2007_000002"], "class_name": ["cat", "dog"], "class_index": [7, 11],
                  "xmin": [0.0, 1.0], "ymin": [0.0, 2.0], "xmax": [train_box, test_box], "ymax": [5.0, 6.0],
                  "difficult": [0, 1]}).to_parquet(folder / "objects.parquet", index=False)
    return folder


def test_test_split_hash_follows_the_test_split_only(tmp_path):
    from pipelines.tracking import hash_test_split

    base = hash_test_split(_prepared(tmp_path / "a"))
    assert len(base) == 64 and base == hash_test_split(_prepared(tmp_path / "b"))  # content, not the folder
    assert hash_test_split(_prepared(tmp_path / "c", train_box=12.0)) == base  # training data changed: same
    assert hash_test_split(_prepared(tmp_path / "d", test_box=10.5)) != base  # one test box moved: different


def test_params_artifact_is_the_loaded_params_not_the_cwd_params_yaml(store, tmp_path, repo_params_dict):
    import mlflow
    import yaml

    from pipelines.params import load_params
    from pipelines.tracking import log_params_artifact

    # The cwd holds a decoy params.yaml; the stage was given --params other.yaml, whose mirror URL holds a token.
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"decoy": True}))
    raw = copy.deepcopy(repo_params_dict)
    raw["register"]["model_name"] = "from-other-yaml"
    raw["data"]["archives"][0]["mirrors"] = ["https://mirror.example/voc.tar?token=S3cr3tT0ken"]
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    params = load_params(tmp_path / "other.yaml")
    experiment_id = configure(params.tracking)
    with mlflow.start_run(experiment_id=experiment_id) as active:
        log_params_artifact(params)
    text = Path(mlflow.artifacts.download_artifacts(run_id=active.info.run_id, artifact_path="params.yaml",
                                                    dst_path=str(tmp_path / "dl"))).read_text()
    logged = yaml.safe_load(text)
    assert "decoy" not in logged and logged["register"]["model_name"] == "from-other-yaml"
    assert "S3cr3tT0ken" not in text and "token=***" in text
    raw["data"]["archives"][0]["mirrors"] = logged["data"]["archives"][0]["mirrors"]
    assert params_from_dict(logged) == params_from_dict(raw)  # everything else exactly as loaded
