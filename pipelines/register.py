"""The register stage: a new MLflow model version, promoted to ``champion`` only when it beats the champion.

The evaluated model (``models/yolov1.json`` names its MLflow model) becomes a new version of
``register.model_name``, tagged with its mAP, git commit, DVC data hash and Prefect flow run id. It takes the
``champion`` alias if its VOC07 mAP beats the current champion's by at least ``register.min_improvement`` (the
first model is champion by default); otherwise it gets ``challenger`` and the reason is logged. What was done is
written to ``reports/registration.json`` and printed.

Racing registrations: the alias decision is serialised. On the embedded sqlite store a file lock beside the
database makes register-and-decide atomic across processes, so version order is decision order; on any store the
champion is re-read after the alias is set and the decision is redone if another registration moved it in
between. On a tracking server (no lock) that re-check narrows the race but cannot close it: MLflow aliases have no
compare-and-set, so run one registration at a time there (e.g. a Prefect concurrency limit of 1).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import logging
import sys
from pathlib import Path

from pipelines.params import load_params
from pipelines.tracking import TrackingUnavailable, configure, tracking_uri, write_json
from yolov1.config import Params

log = logging.getLogger("yolov1.register")
CHAMPION, CHALLENGER = "champion", "challenger"
META_PATH = Path("models/yolov1.json")
METRICS_PATH = Path("reports/metrics.json")
OUT_PATH = Path("reports/registration.json")


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


def champion_of(client, name: str) -> tuple[str | None, float | None]:
    """(version, VOC07 mAP) of the current champion, or (None, None) when the model or the alias does not exist."""
    from mlflow.exceptions import MlflowException

    # Read the alias map rather than catching get_model_version_by_alias's error: that error is also what a
    # transient store failure looks like, and taking it for "no champion" would crown a worse model.
    try:
        aliases = client.get_registered_model(name).aliases
    except MlflowException as err:
        if err.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        return None, None
    if CHAMPION not in aliases:
        return None, None
    mv = client.get_model_version(name, str(aliases[CHAMPION]))
    return str(mv.version), float(mv.tags.get("map_voc07", "nan"))


def decide(new_map: float, champion_map: float | None, min_improvement: float) -> tuple[bool, str]:
    """Promote or not, and why."""
    if champion_map is None:
        return True, "no champion yet: the first model becomes champion"
    gain = round(new_map - champion_map, 6)  # at the tags' 6 decimals: 0.470 - 0.465 must not fall short by 1e-17
    if gain >= min_improvement:
        return True, f"mAP {new_map:.4f} beats the champion's {champion_map:.4f} by {gain:+.4f} >= {min_improvement}"
    return False, f"mAP {new_map:.4f} vs the champion's {champion_map:.4f}: gain {gain:+.4f} < {min_improvement}"


def promote(client, name: str, version: str, new_map: float, min_improvement: float, *, attempts: int = 5) -> dict:
    """Set champion or challenger on `version`; re-checks the champion after writing (see module docstring)."""
    for _ in range(attempts):
        before_version, before_map = champion_of(client, name)
        promoted, reason = decide(new_map, before_map, min_improvement)
        alias = CHAMPION if promoted else CHALLENGER
        client.set_registered_model_alias(name, alias, version)
        after_version, _ = champion_of(client, name)
        expected = version if promoted else before_version
        if after_version == expected:
            return {"alias": alias, "promoted": promoted, "reason": reason,
                    "previous_champion": {"version": before_version, "map_voc07": before_map}}
        log.warning("champion moved during registration (now v%s); deciding again", after_version)
    raise RuntimeError(f"could not settle the {CHAMPION} alias of {name} after {attempts} attempts")


def run(params: Params, *, meta_path: Path = META_PATH, metrics_path: Path = METRICS_PATH,
        out_path: Path = OUT_PATH) -> dict:
    """Register the evaluated model as a new version, give it champion or challenger, write `out_path`."""
    import mlflow
    from mlflow.tracking import MlflowClient

    meta = _read_json(meta_path, ("mlflow_run_id", "model_uri"))
    metrics = _read_json(metrics_path, ("map_voc07",))
    new_map = metrics["map_voc07"]
    if new_map is None:
        raise ValueError(f"{metrics_path}: map_voc07 is null (no test ground truth?)")
    configure(params.tracking)
    uri = tracking_uri(params.tracking)
    client = MlflowClient()
    name = params.register.model_name
    run_tags = client.get_run(meta["mlflow_run_id"]).data.tags
    map_area = metrics.get("map_area")
    tags = {"map_voc07": f"{new_map:.6f}", "map_area": f"{float('nan') if map_area is None else map_area:.6f}",
            "mlflow_run_id": meta["mlflow_run_id"]}
    for key in ("git_commit", "git_dirty", "dvc_data_hash", "prefect_flow_run_id"):
        if key in run_tags:
            tags[key] = run_tags[key]
    with registry_lock(uri):  # every registry write inside: sqlite has one writer at a time anyway
        mv = mlflow.register_model(meta["model_uri"], name, tags=tags)
        decision = promote(client, name, str(mv.version), float(new_map), params.register.min_improvement)
        client.set_model_version_tag(name, str(mv.version), "promotion", decision["reason"])
    summary = {"model_name": name, "version": str(mv.version), "map_voc07": new_map,
               "model_uri": f"models:/{name}/{mv.version}", **decision}
    log.info("registered %s v%s as %s: %s", name, mv.version, decision["alias"], decision["reason"])
    write_json(out_path, summary)
    return summary


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
    try:
        summary = run(load_params(args.params))
    except (FileNotFoundError, ValueError, TrackingUnavailable) as err:
        print(f"yolov1 register: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
