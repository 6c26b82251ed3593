"""The register stage: a new MLflow model version, promoted to ``champion`` only when it beats the champion.

The evaluated model (``models/yolov1.json`` names its MLflow model) becomes a new version of
``register.model_name``, tagged with its mAP, the rule and test data that produced it (``match_comparison``,
``test_split_hash``), git commit, DVC data hash and Prefect flow run id. The rules, in order:

1. Floor: a model whose VOC07 mAP is below ``register.min_map`` is never promoted, champion or not (a 0.0 model
   does not become champion just because there is none yet).
2. Like with like: when the champion was scored on other test data or under another match rule (its
   ``test_split_hash`` / ``match_comparison`` tags differ from the new ``reports/metrics.json``), its weights are
   evaluated again on the current test split before deciding; both of its figures (recorded and re-measured) go
   on the new version's tags and into ``reports/registration.json``.
3. It takes ``champion`` if its mAP beats that comparable champion mAP by at least ``register.min_improvement``
   (the first model above the floor becomes champion); otherwise it gets ``challenger`` and the reason is logged.

Idempotent: registering the same MLflow run again adds no version; it reports the decision already recorded on
that run's version (and finishes the decision if an earlier attempt died between creating and deciding).
What was done is written to ``reports/registration.json`` (inside the lock) and printed.

Racing registrations: the alias decision is serialised. On the embedded sqlite store a file lock beside the
database makes register-and-decide atomic across processes, so version order is decision order; on any store the
champion is re-read after the alias is set and the decision is redone if another registration moved it in
between. On a server two first writes of the same alias can collide in the database (PostgreSQL's duplicate key on
``registered_model_alias_pk``, returned as BAD_REQUEST): that is a lost race too, so the champion is re-read and
the decision redone, a bounded number of times. On a tracking server (no lock) the re-check narrows the race but
cannot close it: MLflow aliases have no compare-and-set, so run one registration at a time there (e.g. a Prefect
concurrency limit of 1).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import logging
import math
import re
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from pipelines.params import load_params
from pipelines.tracking import (
    TrackingUnavailable,
    configure,
    describe_version,
    model_card,
    tracking_uri,
    write_json,
)
from yolov1.config import Params, RegisterConfig
from yolov1.redact import redact

log = logging.getLogger("yolov1.register")
CHAMPION, CHALLENGER = "champion", "challenger"
META_PATH = Path("models/yolov1.json")
METRICS_PATH = Path("reports/metrics.json")
OUT_PATH = Path("reports/registration.json")
# What makes two mAPs comparable: the same test split, the same match rule and threshold.
EVALUATION_KEYS = ("test_split_hash", "match_comparison", "match_iou_threshold")
REGISTRATION_TAG = "registration"  # the decision as JSON on the version: what a re-run reports


class AliasNotSettled(RuntimeError):
    """Concurrent registrations kept moving the champion alias for every allowed attempt."""


# (model version entity) -> its VOC07 mAP on the current test split under the current rule
ChampionScorer = Callable[[object], float]


@contextlib.contextmanager
def registry_lock(uri: str):
    """An exclusive inter-process lock for local stores; a no-op for servers (the re-check covers those)."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    lock_path = Path(uri.removeprefix("sqlite:///") + ".register.lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def champion_version(client, name: str):
    """The champion's ModelVersion, or None when the model or the alias does not exist."""
    from mlflow.exceptions import MlflowException

    # Read the alias map rather than catching get_model_version_by_alias's error: that error is also what a
    # transient store failure looks like, and taking it for "no champion" would crown a worse model.
    try:
        aliases = client.get_registered_model(name).aliases
    except MlflowException as err:
        if err.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        return None
    if CHAMPION not in aliases:
        return None
    return client.get_model_version(name, str(aliases[CHAMPION]))


def champion_of(client, name: str) -> tuple[str | None, float | None]:
    """(version, recorded VOC07 mAP) of the current champion, or (None, None) when there is none."""
    mv = champion_version(client, name)
    return (None, None) if mv is None else (str(mv.version), float(mv.tags.get("map_voc07", "nan")))


def decide(new_map: float, champion_map: float | None, min_improvement: float,
           min_map: float = 0.0) -> tuple[bool, str]:
    """Promote or not, and why. ``champion_map`` must have been measured like ``new_map`` (same test split, rule)."""
    if round(new_map, 6) < min_map:  # the tags' 6 decimals, as for the gain
        return False, f"mAP {new_map:.4f} is below the floor register.min_map {min_map}: never promoted"
    if champion_map is None:
        return True, "no champion yet: the first model at or above the floor becomes champion"
    gain = round(new_map - champion_map, 6)  # at the tags' 6 decimals: 0.470 - 0.465 must not fall short by 1e-17
    if gain >= min_improvement:
        return True, f"mAP {new_map:.4f} beats the champion's {champion_map:.4f} by {gain:+.4f} >= {min_improvement}"
    return False, f"mAP {new_map:.4f} vs the champion's {champion_map:.4f}: gain {gain:+.4f} < {min_improvement}"


def comparable_champion(mv, evaluation: dict[str, str], scorer: ChampionScorer | None) -> dict:
    """The champion's figures for the decision: recorded, and re-measured when it was scored differently.

    ``evaluation`` holds the new model's EVALUATION_KEYS as tag strings. Returns {"version", "map_voc07" (as
    recorded), "test_split_hash" (its tag, or None), "map_voc07_current_test" (the figure compared with),
    "reevaluated" (bool)}; all None for no champion."""
    if mv is None:
        return {"version": None, "map_voc07": None, "test_split_hash": None, "map_voc07_current_test": None,
                "reevaluated": False}
    recorded = float(mv.tags.get("map_voc07", "nan"))
    same = all(mv.tags.get(k) == v for k, v in evaluation.items())
    figures = {"version": str(mv.version), "map_voc07": recorded, "test_split_hash": mv.tags.get("test_split_hash"),
               "map_voc07_current_test": recorded, "reevaluated": False}
    if same and not math.isnan(recorded):
        return figures
    if scorer is None:
        theirs = {k: mv.tags.get(k) for k in evaluation}
        raise ValueError(f"champion v{mv.version} was evaluated as {theirs}, the new model as {evaluation}, "
                         "and no scorer was given to evaluate it again")
    log.info("champion v%s was scored on other test data or rule: evaluating it on the current test split", mv.version)
    figures["map_voc07_current_test"] = round(float(scorer(mv)), 6)
    figures["reevaluated"] = True
    return figures


# How stores report two concurrent first writes of one alias row: PostgreSQL (psycopg2's UniqueViolation on
# registered_model_alias_pk), MySQL ("Duplicate entry"), SQLite ("UNIQUE constraint failed"); MLflow's
# ManagedSessionMaker turns the IntegrityError into BAD_REQUEST, a server may say RESOURCE_ALREADY_EXISTS.
_DUPLICATE_KEY = re.compile(r"duplicate key|UniqueViolation|unique constraint|Duplicate entry|IntegrityError",
                            re.IGNORECASE)


def is_write_conflict(err: Exception) -> bool:
    """True when an alias write failed because a concurrent write of the same alias got there first."""
    code = getattr(err, "error_code", None)
    if code == "RESOURCE_ALREADY_EXISTS":
        return True
    return code == "BAD_REQUEST" and _DUPLICATE_KEY.search(str(err)) is not None


def promote(client, name: str, version: str, new_map: float, rules: RegisterConfig, evaluation: dict[str, str],
            scorer: ChampionScorer | None, *, attempts: int = 8) -> dict:
    """Set champion or challenger on `version`; re-checks the champion after writing (see module docstring).

    A write that collides with a concurrent one (`is_write_conflict`) or a champion that moved meanwhile is a lost
    race: the champion is read again and the decision redone, at most ``attempts`` times in all. Each alias row
    collides at most once (later writes update it) and each move is another registration's promotion, so four
    racers settle well within the default. Any other MlflowException propagates unchanged."""
    from mlflow.exceptions import MlflowException

    scored: dict[str, dict] = {}  # a champion re-measured once is not re-measured on a retry
    for _ in range(attempts):
        before = champion_version(client, name)
        key = None if before is None else str(before.version)
        if key not in scored:
            scored[key] = comparable_champion(before, evaluation, scorer)
        champion = scored[key]
        promoted, reason = decide(new_map, champion["map_voc07_current_test"], rules.min_improvement, rules.min_map)
        alias = CHAMPION if promoted else CHALLENGER
        try:
            client.set_registered_model_alias(name, alias, version)
        except MlflowException as err:
            if not is_write_conflict(err):
                raise
            log.warning("setting %s on %s v%s collided with another registration (%s); deciding again",
                        alias, name, version, one_line(err)[:200])
            continue
        after_version, _ = champion_of(client, name)
        expected = version if promoted else key
        if after_version == expected:
            return {"alias": alias, "promoted": promoted, "reason": reason, "previous_champion": champion}
        log.warning("champion moved during registration (now v%s); deciding again", after_version)
    raise AliasNotSettled(f"could not settle the {CHAMPION} alias of {name} after {attempts} attempts "
                          "(other registrations kept moving it: run one registration at a time on a server)")


def version_of_run(client, name: str, run_id: str):
    """The version of `name` already registered from MLflow run `run_id` (its ``mlflow_run_id`` tag), or None."""
    from mlflow.exceptions import MlflowException

    if not re.fullmatch(r"[A-Za-z0-9_-]+", run_id):
        raise ValueError(f"mlflow_run_id {run_id[:40]!r} is not a run id")
    if "'" in name or "\\" in name:
        raise ValueError(f"register.model_name {name[:40]!r}: quotes and backslashes are not allowed")
    try:
        found = client.search_model_versions(f"name = '{name}' and tags.mlflow_run_id = '{run_id}'")
    except MlflowException as err:
        if err.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        return None
    return min(found, key=lambda mv: int(mv.version)) if found else None


def champion_scorer(params: Params) -> ChampionScorer:
    """Scores a model version's weights on the current test split with ``params.eval`` (the evaluate stage's code)."""
    def score(mv) -> float:
        import mlflow
        import yaml

        from pipelines.evaluate import score as evaluate_weights

        with tempfile.TemporaryDirectory(prefix="champion-") as tmp:
            model_dir = Path(mlflow.artifacts.download_artifacts(artifact_uri=mv.source, dst_path=tmp))
            mlmodel = yaml.safe_load((model_dir / "MLmodel").read_text())
            try:
                relative = mlmodel["flavors"]["python_function"]["artifacts"]["weights"]["path"]
            except (KeyError, TypeError):
                raise ValueError(f"model version v{mv.version} ({mv.source}) has no 'weights' artifact") from None
            _, metrics, _, _ = evaluate_weights(params, model_dir / relative)
        if metrics["map_voc07"] is None:
            raise ValueError("the current test split has no ground truth to score the champion on")
        return float(metrics["map_voc07"])

    return score


def run(params: Params, *, meta_path: Path = META_PATH, metrics_path: Path = METRICS_PATH,
        out_path: Path = OUT_PATH, scorer: ChampionScorer | None = None) -> dict:
    """Register the evaluated model (once per MLflow run), give it champion or challenger, write `out_path`.

    ``scorer`` re-measures a champion scored on other test data; default: `champion_scorer` (evaluates its weights
    on ``<data.root>/prepared``)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    meta = _read_json(meta_path, ("mlflow_run_id", "model_uri"))
    metrics = _read_json(metrics_path, ("map_voc07", *EVALUATION_KEYS))
    new_map = metrics["map_voc07"]
    if not isinstance(new_map, (int, float)) or isinstance(new_map, bool) or not math.isfinite(new_map):
        raise ValueError(f"{metrics_path}: map_voc07 is {str(new_map)[:40]} (no test ground truth?), not a number")
    if metrics["match_comparison"] != params.eval.match_comparison:
        raise ValueError(f"{metrics_path}: match_comparison {metrics['match_comparison']!r} differs from params "
                         f"eval.match_comparison {params.eval.match_comparison!r}: run evaluate again")
    evaluation = {k: str(metrics[k]) for k in EVALUATION_KEYS}
    configure(params.tracking)
    uri = tracking_uri(params.tracking)
    client = MlflowClient()
    name = params.register.model_name
    run_id = str(meta["mlflow_run_id"])
    run_tags = client.get_run(run_id).data.tags
    map_area = metrics.get("map_area")
    tags = {"map_voc07": f"{new_map:.6f}", "map_area": f"{float('nan') if map_area is None else map_area:.6f}",
            "mlflow_run_id": run_id, **evaluation}
    for key in ("git_commit", "git_dirty", "dvc_data_hash", "prefect_flow_run_id"):
        if key in run_tags:
            tags[key] = run_tags[key]
    with registry_lock(uri):  # every registry write inside, and registration.json too: version order = file order
        mv = version_of_run(client, name, run_id)
        recorded = None if mv is None else mv.tags.get(REGISTRATION_TAG)
        if recorded:
            summary = {**json.loads(recorded), "already_registered": True}
            log.info("run %s is already %s v%s: no new version", run_id, name, mv.version)
        else:
            if mv is None:
                mv = mlflow.register_model(meta["model_uri"], name, tags=tags)
            summary = _decide_and_record(client, name, str(mv.version), float(new_map), params,
                                         evaluation, scorer or champion_scorer(params))
            describe_version(client, name, str(mv.version), model_card(summary, metrics, tags.get("dvc_data_hash")))
            log.info("registered %s v%s as %s: %s", name, mv.version, summary["alias"], summary["reason"])
        write_json(out_path, summary)
    return summary


def _decide_and_record(client, name, version, new_map, params, evaluation, scorer) -> dict:
    decision = promote(client, name, version, new_map, params.register, evaluation, scorer)
    champion = decision["previous_champion"]
    client.set_model_version_tag(name, version, "promotion", decision["reason"])
    if champion["version"] is not None:  # both of the champion's figures, so the decision can be checked
        client.set_model_version_tag(name, version, "champion_compared", champion["version"])
        client.set_model_version_tag(name, version, "champion_map_voc07_recorded", f"{champion['map_voc07']:.6f}")
        client.set_model_version_tag(name, version, "champion_map_voc07_current_test",
                                     f"{champion['map_voc07_current_test']:.6f}")
    summary = {"model_name": name, "version": version, "map_voc07": new_map, "model_uri": f"models:/{name}/{version}",
               "already_registered": False, **evaluation, **decision}
    client.set_model_version_tag(name, version, REGISTRATION_TAG, json.dumps(summary, sort_keys=True))
    return summary


def one_line(err: Exception) -> str:
    """An exception as one redacted line: its error code (MlflowException) and the first line of its message."""
    lines = str(err).strip().splitlines()
    code = getattr(err, "error_code", None)
    text = lines[0] if lines else type(err).__name__
    if code and not text.startswith(str(code)):  # a RestException's text already starts with its code
        text = f"{code}: {text}"
    return redact(text)[:500]


def _read_json(path: Path, keys: tuple[str, ...]) -> dict:
    try:
        payload = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    missing = [k for k in keys if not isinstance(payload, dict) or k not in payload]
    if missing:
        raise ValueError(f"{path}: missing key(s) {', '.join(missing)}")
    return payload


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="yolov1 register", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file (default: %(default)s)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from mlflow.exceptions import MlflowException
    try:
        summary = run(load_params(args.params))
    except (FileNotFoundError, ValueError, TrackingUnavailable) as err:
        print(f"yolov1 register: error: {redact(err)}", file=sys.stderr)
        return 2
    except (MlflowException, AliasNotSettled) as err:  # the registry refused a call, or the alias never settled
        print(f"yolov1 register: error: {one_line(err)}", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    from pipelines.cli import run_main  # Ctrl-C: a short message and exit 130, not a traceback

    raise SystemExit(run_main(main, prog="yolov1 register"))
