"""MLflow tracking for the stages: where runs go, a reachability check before work starts, lineage tags.

Embedded default: tracking + registry on ``sqlite:///mlflow.db`` with artifacts under ``mlartifacts/`` (params
`tracking`); ``MLFLOW_TRACKING_URI`` overrides it for a real server (e.g. an MLflow server on PostgreSQL with S3
artifacts). mlflow is imported lazily: it costs 1-3 s and the library never needs it.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from yolov1.config import TrackingConfig

FLOW_RUN_ENV = "YOLOV1_FLOW_RUN_ID"  # set by the Prefect tasks for the stage processes they start


class TrackingUnavailable(RuntimeError):
    """The tracking server cannot be reached; raised before any training starts."""


def tracking_uri(cfg: TrackingConfig) -> str:
    """MLFLOW_TRACKING_URI when set, else params `tracking.uri` (a relative sqlite path is relative to the cwd).

    Credentials in an http(s) URI (``http://alice:S3cr3t@host``) are moved to MLFLOW_TRACKING_USERNAME /
    MLFLOW_TRACKING_PASSWORD (where MLflow reads them, unless already set) and the URI comes back without them,
    so MLflow never prints or stores the password (its run links, errors and the registry all see the bare URI).
    """
    env_uri = os.environ.get("MLFLOW_TRACKING_URI")
    uri, user, password = split_credentials(env_uri or cfg.uri)
    if user is not None or password is not None:
        if not (os.environ.get("MLFLOW_TRACKING_USERNAME") or os.environ.get("MLFLOW_TRACKING_PASSWORD")):
            os.environ["MLFLOW_TRACKING_USERNAME"] = user or ""
            os.environ["MLFLOW_TRACKING_PASSWORD"] = password or ""
        if env_uri:
            os.environ["MLFLOW_TRACKING_URI"] = uri  # child processes (pyfunc env checks) inherit the bare URI
    return uri


def split_credentials(uri: str) -> tuple[str, str | None, str | None]:
    """``http://alice:S3cr3t@host:5000/x`` -> ``("http://host:5000/x", "alice", "S3cr3t")`` (percent-decoded).

    Only http(s) URIs are split; database URIs (``postgresql://u:p@host/db``) keep their credentials, which
    their driver needs, and are only ever shown through `yolov1.redact.redact`.
    """
    from urllib.parse import unquote, urlsplit, urlunsplit

    if not uri.lower().startswith(("http://", "https://")):
        return uri, None, None
    try:
        parts = urlsplit(uri)
    except ValueError:
        return uri, None, None
    if "@" not in parts.netloc:
        return uri, None, None
    userinfo, _, host = parts.netloc.rpartition("@")
    user, sep, password = userinfo.partition(":")
    bare = urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
    return bare, unquote(user) or None, unquote(password) if sep else None


def configure(cfg: TrackingConfig) -> str:
    """Point mlflow at the tracking store, check it answers, and return the experiment id (created if new)."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow

    uri = tracking_uri(cfg)
    check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    experiment = mlflow.get_experiment_by_name(cfg.experiment)
    if experiment is not None:
        return experiment.experiment_id
    artifact_location = None
    if not uri.startswith(("http://", "https://", "databricks")):
        artifact_location = Path(cfg.artifact_root).resolve().as_uri()  # local folder beside the sqlite store
    return mlflow.create_experiment(cfg.experiment, artifact_location=artifact_location)


def _auth_header(user: str | None, password: str | None) -> dict[str, str]:
    """Basic auth from the URI's or MLflow's env credentials, else MLFLOW_TRACKING_TOKEN as a bearer token."""
    import base64

    user = user if user is not None else os.environ.get("MLFLOW_TRACKING_USERNAME")
    password = password if password is not None else os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user or password:
        token = base64.b64encode(f"{user or ''}:{password or ''}".encode()).decode()
        return {"Authorization": f"Basic {token}"}
    if os.environ.get("MLFLOW_TRACKING_TOKEN"):
        return {"Authorization": f"Bearer {os.environ['MLFLOW_TRACKING_TOKEN']}"}
    return {}


def check_reachable(uri: str, timeout: float = 10.0) -> None:
    """Raise `TrackingUnavailable` naming the URI (credentials redacted) unless the store answers a cheap query.

    An http(s) server is asked for ``/health`` with the same credentials MLflow will use (in the URI or in
    MLFLOW_TRACKING_USERNAME / _PASSWORD / _TOKEN); a 401/403 says so instead of "cannot be reached".
    """
    from yolov1.redact import redact

    shown = redact(uri)
    if uri.startswith(("http://", "https://")):
        import urllib.error
        import urllib.request

        bare, user, password = split_credentials(uri)
        request = urllib.request.Request(bare.rstrip("/") + "/health", headers=_auth_header(user, password))
        try:
            with urllib.request.urlopen(request, timeout=timeout) as resp:  # noqa: S310 (http(s) only, checked above)
                if resp.status != 200:
                    raise TrackingUnavailable(f"MLflow tracking server {shown} answered HTTP {resp.status} on /health")
        except urllib.error.HTTPError as err:
            hint = (" (check MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD)" if err.code in (401, 403) else "")
            raise TrackingUnavailable(
                f"MLflow tracking server {shown} answered HTTP {err.code} on /health{hint}") from None
        except (urllib.error.URLError, OSError, ValueError) as err:
            raise TrackingUnavailable(
                f"MLflow tracking server {shown} cannot be reached ({redact(err)}); start it or unset "
                "MLFLOW_TRACKING_URI to use the embedded sqlite store"
            ) from None
        return
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        parent = db.parent if str(db.parent) else Path(".")
        if not parent.exists() or not os.access(parent, os.W_OK):
            raise TrackingUnavailable(f"MLflow tracking store {shown}: folder {parent} is missing or not writable")
    from mlflow.tracking import MlflowClient

    try:
        MlflowClient(uri).search_experiments(max_results=1)
    except Exception as err:  # any failure here means no training should start
        raise TrackingUnavailable(f"MLflow tracking store {shown} cannot be used: {redact(err)}") from None


def git_facts(cwd: Path | None = None) -> dict[str, str]:
    """The commit the code came from and whether the tree had uncommitted changes."""
    def git(*args: str) -> str:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=False)
        return out.stdout.strip() if out.returncode == 0 else ""

    commit = git("rev-parse", "HEAD") or "unknown"
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"git_commit": commit, "git_dirty": str(bool(status)).lower()}


def data_hash(prepared_dir: Path, lock_path: Path = Path("dvc.lock")) -> str:
    """DVC's hash of the prepared data: from dvc.lock when the prepare stage is recorded, else hashed here."""
    if lock_path.is_file():
        try:
            import yaml

            lock = yaml.safe_load(lock_path.read_text()) or {}
            for out in lock.get("stages", {}).get("prepare", {}).get("outs", []):
                if Path(out.get("path", "")).as_posix().rstrip("/") == prepared_dir.as_posix().rstrip("/"):
                    return str(out["md5"])
        except (OSError, ValueError, KeyError):
            pass
    digest = hashlib.md5()
    for path in sorted(p for p in prepared_dir.rglob("*") if p.is_file()):
        digest.update(path.relative_to(prepared_dir).as_posix().encode())
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest() + ".dir-local"


def flow_run_id() -> str | None:
    """The Prefect flow run this stage belongs to, if any (env set by the flow's tasks, or Prefect's own)."""
    return os.environ.get(FLOW_RUN_ENV) or os.environ.get("PREFECT__FLOW_RUN_ID") or None


def lineage_tags(prepared_dir: Path) -> dict[str, str]:
    """Tags that tie a run to its code, data and orchestration."""
    tags = git_facts()
    tags["dvc_data_hash"] = data_hash(prepared_dir)
    run_id = flow_run_id()
    if run_id:
        tags["prefect_flow_run_id"] = run_id
    return tags


def system_tags(device: str) -> dict[str, str]:
    """Facts about where a run ran."""
    import torch
    import torchvision

    tags = {"device": device, "torch_version": torch.__version__, "torchvision_version": torchvision.__version__,
            "python_version": platform.python_version(), "host_cpu": platform.processor() or platform.machine()}
    if device.startswith("cuda") and torch.cuda.is_available():
        tags["gpu"] = torch.cuda.get_device_name(0)
    return tags


class MlflowCallbacks:
    """Training callbacks that log step and epoch metrics to the active MLflow run (rank 0 only)."""

    def __init__(self) -> None:
        import mlflow

        self._mlflow = mlflow
        self.history: list[dict[str, float]] = []

    def on_step(self, step: int, metrics: dict[str, Any]) -> None:
        clean = {f"train/{k}": float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        self._mlflow.log_metrics(clean, step=step)
        self.history.append({"step": step, **{k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}})

    def on_epoch_end(self, epoch: int, metrics: dict[str, Any]) -> None:
        clean = {f"epoch/{k}": float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        self._mlflow.log_metrics(clean, step=epoch)


def write_json(path: Path, payload: Any) -> None:
    """Atomic JSON write through `yolov1.io.atomic_write_bytes`: a uniquely named temp file beside `path`, then
    `os.replace`, so concurrent writers never share a temp file and a reader sees the old or a new complete file;
    the file mode follows the umask (mkstemp would force 0600)."""
    from yolov1.io import atomic_write_bytes

    atomic_write_bytes(path, (json.dumps(payload, indent=2, sort_keys=True) + "\n").encode())


def hash_test_split(prepared_dir: Path) -> str:
    """SHA-256 of the test split alone: its image rows and their objects from ``prepared_dir`` (canonical CSV).

    Two evaluations are comparable when this hash (and the match rule) agree: it changes when a test image, box,
    label or difficult flag changes, and not when only the training data does (unlike `data_hash`)."""
    from yolov1.data import load_split

    images, objects = load_split(Path(prepared_dir), "test")
    image_cols = [c for c in ("image_id", "year", "path", "width", "height") if c in images.columns]
    object_cols = [c for c in ("image_id", "class_name", "class_index", "xmin", "ymin", "xmax", "ymax", "difficult")
                   if c in objects.columns]
    digest = hashlib.sha256()
    for name, frame, cols in (("images", images, image_cols), ("objects", objects, object_cols)):
        table = frame[cols].sort_values(cols, kind="stable").reset_index(drop=True)
        digest.update(f"{name}\n".encode())
        digest.update(table.to_csv(index=False, float_format="%.17g", lineterminator="\n").encode())
    return digest.hexdigest()


def log_params_artifact(params: Any, artifact_path: str | None = None, name: str = "params.yaml") -> None:
    """Log the params actually used (the loaded, validated `Params`, whatever file they came from) to the active
    MLflow run as ``[artifact_path/]name``, with credentials in URLs (mirrors, tracking URI) redacted."""
    import tempfile

    import mlflow
    import yaml

    from yolov1.config import params_to_dict
    from yolov1.redact import MASK, redact

    def clean(value: Any) -> Any:  # value by value, and only where a secret was masked: other URLs stay verbatim
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list):
            return [clean(v) for v in value]
        if isinstance(value, str):
            redacted = redact(value)
            return redacted if MASK in redacted and MASK not in value else value
        return value

    text = yaml.safe_dump(clean(params_to_dict(params)), sort_keys=False)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / name).write_text(text)
        mlflow.log_artifact(str(Path(tmp) / name), artifact_path=artifact_path)


def params_digest(params: Any) -> str:
    """8 hex digits of the flattened params, data sources (``data.archives``: mirrors, local paths) left out."""
    from yolov1.config import flatten

    flat = {k: v for k, v in flatten(params).items() if not k.startswith("data.archives")}
    return hashlib.sha256(json.dumps(flat, sort_keys=True, default=str).encode()).hexdigest()[:8]


def run_name(stage: str, params: Any, cwd: Path | None = None) -> str:
    """A run name that says what ran: ``train-1a2b3c4-p0f9e8d7c`` (stage, short commit, "+dirty" when the tree
    had uncommitted changes, params digest) instead of MLflow's random ``legendary-sow-331``."""
    facts = git_facts(cwd)
    commit = facts["git_commit"][:7] if facts["git_commit"] != "unknown" else "nogit"
    dirty = "+dirty" if facts["git_dirty"] == "true" else ""
    return f"{stage}-{commit}{dirty}-p{params_digest(params)}"


def log_training_data(prepared_dir: Path, split: str = "train") -> None:
    """Log the prepared split as an MLflow dataset input of the active run (context ``training``).

    Source: the DVC-tracked folder; digest: its DVC hash (from dvc.lock), so the run's Datasets panel names
    exactly the data version ``dvc checkout`` restores. A metadata-only dataset: the data stays in DVC, and no
    schema is inferred from a table (MLflow would flag its integer columns).
    """
    import warnings

    import mlflow
    import pandas as pd
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    digest = data_hash(prepared_dir)
    images = pd.read_parquet(prepared_dir / "images.parquet", columns=["split"])
    with warnings.catch_warnings():  # MLflow registers two identical local-file sources and says so; harmless
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted in multiple")
        source = resolve_dataset_source(str(prepared_dir.resolve()))
    dataset = MetaDataset(source, name=f"{prepared_dir.as_posix()}@{split}", digest=digest[:36])
    mlflow.log_input(dataset, context="training", tags={
        "dvc_path": prepared_dir.as_posix(), "dvc_md5": digest, "split": split,
        "images": str(int((images["split"] == split).sum()))})


def model_card(summary: dict, metrics: dict, data_hash_value: str | None) -> str:
    """A registered version's description (markdown): what it scored per class, on which data, and why it got
    its alias - compared with which champion. `summary` is the register stage's, `metrics` evaluate's."""
    def num(value: Any) -> str:
        return "n/a" if value is None else f"{float(value):.4f}"

    previous = summary.get("previous_champion") or {}
    compared = (f"champion v{previous['version']} (VOC07 mAP {num(previous.get('map_voc07'))})"
                if previous.get("version") else "no champion (first model)")
    lines = [f"**{summary.get('alias')}**: {summary.get('reason')}", "",
             f"- compared with: {compared}",
             f"- test VOC07 mAP {num(metrics.get('map_voc07'))}, area mAP {num(metrics.get('map_area'))}",
             f"- training data: DVC `data/prepared` md5 `{data_hash_value or 'unknown'}`", "",
             "| class | AP (VOC07) | AP (area) |", "|---|---:|---:|"]
    area = metrics.get("ap_area") or {}
    lines += [f"| {name} | {num(ap)} | {num(area.get(name))} |" for name, ap in (metrics.get("ap_voc07") or {}).items()]
    return "\n".join(lines) + "\n"


def describe_version(client: Any, name: str, version: str, card: str) -> None:
    """Set the model card on the version and a one-paragraph description on the registered model."""
    client.update_model_version(name, version, description=card)
    client.update_registered_model(name, description=(
        "YOLOv1 detector trained by the DVC/Prefect pipeline of this project. Each version's description is its "
        "model card (per-class AP, data hash, promotion reason); the `champion` alias is the one to serve."))
