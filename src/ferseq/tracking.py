"""The one place that opens MLflow runs.

Every training and evaluation step logs through :func:`start_run`, so every run
of a configuration lands in one experiment (named by ``config["experiment"]``)
and carries the same tags: stage, fold, git commit and a hash of the config.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlparse

DEFAULT_URI = "sqlite:///results/mlflow.db"


def config_hash(config: dict[str, Any]) -> str:
    """A short, stable hash of a configuration (key order does not matter)."""
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


@functools.cache
def git_commit() -> str:
    """The commit of the ferseq source tree (``+dirty`` if it has changes), or ``unknown``."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (relative to the working directory), else None."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///"):])


def is_local_store(config: dict[str, Any]) -> bool:
    """Whether the config tracks into a local sqlite file (fine on one machine, unsafe from many nodes)."""
    return _sqlite_path(config.get("mlflow", {}).get("tracking_uri", DEFAULT_URI)) is not None


def _artifact_location(mlflow_cfg: dict[str, Any]) -> str | None:
    configured = mlflow_cfg.get("artifact_location")
    if configured:
        return configured
    db = _sqlite_path(mlflow_cfg.get("tracking_uri", DEFAULT_URI))
    # Local store: artifacts beside the database, not in an mlruns/ of whatever the working directory is.
    return (db.resolve().parent / "mlartifacts").as_uri() if db else None


@contextmanager
def _setup_lock(uri: str) -> Iterator[None]:
    """Serialise store creation between processes sharing a local sqlite file.

    Two jobs starting at once would otherwise both create the schema or the
    experiment and one would fail.
    """
    db = _sqlite_path(uri)
    if db is None:
        yield
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def experiment_id(config: dict[str, Any]) -> str:
    """Set the tracking URI from ``config["mlflow"]`` and return the experiment's id, creating it once."""
    import mlflow

    mlflow_cfg = config.get("mlflow", {})
    uri = mlflow_cfg.get("tracking_uri", DEFAULT_URI)
    scheme = urlparse(uri).scheme
    if scheme not in ("sqlite", "http", "https", "file", "postgresql", "mysql", "databricks", ""):
        raise ValueError(f"mlflow.tracking_uri: {uri!r} is not a tracking URI MLflow knows (sqlite:///path.db or http://host:port)")
    mlflow.set_tracking_uri(uri)
    name = config.get("experiment", "ferseq")
    with _setup_lock(uri):
        experiment = mlflow.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        return mlflow.create_experiment(name, artifact_location=_artifact_location(mlflow_cfg))


@contextmanager
def start_run(config: dict[str, Any], stage: str, fold: int | str | None = None, run_name: str | None = None,
              parent_run_id: str | None = None, tags: dict[str, str] | None = None) -> Iterator[Any]:
    """Open an MLflow run for one step of the pipeline, tagged and with the config attached.

    ``parent_run_id`` makes it a child run (e.g. one grid point of a search).
    Yields the active ``mlflow.ActiveRun``; the run ends (FAILED on error) with the block.
    """
    import mlflow

    exp = experiment_id(config)
    all_tags = {
        "stage": stage,
        "git_commit": git_commit(),
        "config_hash": config_hash(config),
        "mlflow.source.git.commit": git_commit(),
    }
    if fold is not None:
        all_tags["fold"] = str(fold)
    all_tags.update(tags or {})
    name = run_name or (stage if fold is None else f"{stage}-fold{fold}")
    nested = parent_run_id is not None or mlflow.active_run() is not None
    with mlflow.start_run(experiment_id=exp, run_name=name, tags=all_tags, nested=nested, parent_run_id=parent_run_id) as run:
        mlflow.log_dict(config, "config.json")
        yield run
