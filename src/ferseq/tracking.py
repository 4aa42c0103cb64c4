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
import logging
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlparse

DEFAULT_URI = "sqlite:///results/mlflow.db"
STEP_TAG = "ferseq_step"
# MLflow 3's UI opens an experiment on the page of its kind; without the tag it guesses GenAI (traces).
EXPERIMENT_KIND = "mlflow.experimentKind"
EXPERIMENT_TAGS = {EXPERIMENT_KIND: "custom_model_development"}

log = logging.getLogger(__name__)


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
        if experiment is None:
            return mlflow.create_experiment(name, artifact_location=_artifact_location(mlflow_cfg), tags=EXPERIMENT_TAGS)
        if experiment.tags.get(EXPERIMENT_KIND) != EXPERIMENT_TAGS[EXPERIMENT_KIND]:  # a store made by an older ferseq
            mlflow.MlflowClient().set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND, EXPERIMENT_TAGS[EXPERIMENT_KIND])
        return experiment.experiment_id


def source_name(stage: str, fold: int | str | None = None) -> str:
    """What the MLflow UI shows as a run's Source: the pipeline step, not Snakemake's temporary script."""
    return f"ferseq {stage}" + ("" if fold is None else f" (fold {fold})")


def run_tags(config: dict[str, Any], stage: str, fold: int | str | None, run_name: str,
             tags: dict[str, str] | None = None) -> dict[str, str]:
    """The tags of every ferseq run: stage, fold, code version, config hash, source and the step key."""
    all_tags = {
        "stage": stage,
        "git_commit": git_commit(),
        "config_hash": config_hash(config),
        "mlflow.source.git.commit": git_commit(),
        "mlflow.source.name": source_name(stage, fold),
        "mlflow.source.type": "JOB",
        # One step of the pipeline (stage, fold, run name): a rerun of the step finds its killed runs by it.
        STEP_TAG: f"{stage}|{'' if fold is None else fold}|{run_name}",
    }
    if fold is not None:
        all_tags["fold"] = str(fold)
    all_tags.update(tags or {})
    return all_tags


def end_stale_runs(experiment: str, step: str, name: str) -> list[str]:
    """Mark the still-RUNNING runs of ``step`` (run ``name``) KILLED, with a warning, and return their ids.

    A job killed by SIGKILL, a node failure or a time limit never ends its run;
    Snakemake never runs one step twice at once, so a RUNNING run of the step
    that is starting again is one that was killed.
    """
    import mlflow

    client = mlflow.MlflowClient()
    quoted = step.replace("'", "\\'")
    stale = client.search_runs([experiment], f"tags.{STEP_TAG} = '{quoted}' and attributes.status = 'RUNNING'")
    for run in stale:
        client.set_terminated(run.info.run_id, status="KILLED")
    killed = [run.info.run_id for run in stale]
    if killed:
        log.warning("MLflow: run(s) %s of %s were left RUNNING by a killed job: marked KILLED", ", ".join(killed), name)
    return killed


@contextmanager
def open_child_runs(config: dict[str, Any], stage: str, fold: int | str | None, run_names: list[str],
                    parent_run_id: str) -> Iterator[list[str]]:
    """Open one child run of ``parent_run_id`` per name, all at once (e.g. grid points trained together).

    The fluent API holds one active run per process, so these are made with
    ``MlflowClient``: the same tags and config artifact as :func:`start_run`.
    Yields their ids, in order; log to them with ``MlflowClient`` (e.g.
    ``log_batch``). They end with the block: FINISHED, or FAILED on an error.
    """
    import mlflow
    from mlflow.tracking.context import registry

    exp = experiment_id(config)
    client = mlflow.MlflowClient()
    run_ids: list[str] = []
    try:
        for name in run_names:
            tags = run_tags(config, stage, fold, name)
            end_stale_runs(exp, tags[STEP_TAG], name)
            # The tags the fluent API adds (user, source), then ours, the parent and the name.
            tags = registry.resolve_tags({**tags, "mlflow.parentRunId": parent_run_id, "mlflow.runName": name})
            run_ids.append(client.create_run(exp, tags=tags, run_name=name).info.run_id)
            client.log_dict(run_ids[-1], config, "config.json")
        yield run_ids
    except BaseException:
        for run_id in run_ids:
            client.set_terminated(run_id, status="FAILED")
        raise
    for run_id in run_ids:
        client.set_terminated(run_id, status="FINISHED")


@contextmanager
def start_run(config: dict[str, Any], stage: str, fold: int | str | None = None, run_name: str | None = None,
              parent_run_id: str | None = None, tags: dict[str, str] | None = None) -> Iterator[Any]:
    """Open an MLflow run for one step of the pipeline, tagged and with the config attached.

    ``parent_run_id`` makes it a child run (e.g. one grid point of a search).
    Yields the active ``mlflow.ActiveRun``; the run ends (FAILED on error) with the block.
    """
    import mlflow

    exp = experiment_id(config)
    name = run_name or (stage if fold is None else f"{stage}-fold{fold}")
    all_tags = run_tags(config, stage, fold, name, tags)
    end_stale_runs(exp, all_tags[STEP_TAG], name)
    nested = parent_run_id is not None or mlflow.active_run() is not None
    with mlflow.start_run(experiment_id=exp, run_name=name, tags=all_tags, nested=nested, parent_run_id=parent_run_id) as run:
        mlflow.log_dict(config, "config.json")
        yield run


# MLflow 3's UI shows every experiment as a GenAI one (traces) unless the page is opened with
# this query or the reader flips its "Model training" switch: ferseq's runs are model training.
UI_QUERY = "workflowType=machine_learning"


def runs_url(config: dict[str, Any], base: str) -> str:
    """The page of the UI at ``base`` (e.g. http://127.0.0.1:5000) that lists this config's runs."""
    import mlflow

    mlflow.set_tracking_uri(config.get("mlflow", {}).get("tracking_uri", DEFAULT_URI))
    experiment = mlflow.get_experiment_by_name(config.get("experiment", "ferseq"))
    page = f"experiments/{experiment.experiment_id}/runs" if experiment else ""
    return f"{base.rstrip('/')}/#/{page}?{UI_QUERY}"
