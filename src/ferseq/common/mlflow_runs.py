"""The one place that opens MLflow runs.

Every training and evaluation step logs through :func:`start_run` (MLflow's
fluent API) or :func:`open_run` (a :class:`ferseq.common.mlflow_outbox.RunLog`, which
survives an unreachable tracking server), so every run of a configuration lands
in one experiment (named by ``config["experiment"]``) and carries the same
tags: stage, fold, git commit and a hash of the config.

Reruns never collide with earlier runs: a step that runs again (after a change
of config or input) logs into a new run, and its earlier runs are kept but
marked superseded (:func:`supersede`: tagged ``ferseq.superseded_by`` and moved
to MLflow's deleted runs, so the UI lists the current runs; the "Deleted" state
filter shows the earlier ones, ``mlflow runs restore`` brings one back).
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
SUPERSEDED_TAG = "ferseq.superseded_by"
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


def artifact_location(mlflow_cfg: dict[str, Any]) -> str | None:
    """Where a new experiment keeps its artifacts: ``mlflow.artifact_location``, else beside a local sqlite store."""
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


def check_uri(uri: str) -> None:
    """Raise ValueError naming ``mlflow.tracking_uri`` unless ``uri`` is one MLflow knows."""
    scheme = urlparse(uri).scheme
    if scheme not in ("sqlite", "http", "https", "file", "postgresql", "mysql", "databricks", ""):
        raise ValueError(f"mlflow.tracking_uri: {uri!r} is not a tracking URI MLflow knows (sqlite:///path.db or http://host:port)")


def experiment_id(config: dict[str, Any]) -> str:
    """Set the tracking URI from ``config["mlflow"]`` and return the experiment's id, creating it once."""
    import mlflow

    mlflow_cfg = config.get("mlflow", {})
    uri = mlflow_cfg.get("tracking_uri", DEFAULT_URI)
    check_uri(uri)
    mlflow.set_tracking_uri(uri)
    name = config.get("experiment", "ferseq")
    with _setup_lock(uri):
        experiment = mlflow.get_experiment_by_name(name)
        if experiment is None:
            return mlflow.create_experiment(name, artifact_location=artifact_location(mlflow_cfg), tags=EXPERIMENT_TAGS)
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


def _step_filter(step: str) -> str:
    quoted = step.replace("'", "\\'")
    return f"tags.{STEP_TAG} = '{quoted}'"


def end_stale_runs(experiment: str, step: str, name: str, keep: str | None = None) -> list[str]:
    """Mark the still-RUNNING runs of ``step`` (run ``name``) KILLED, with a warning, and return their ids.

    A job killed by SIGKILL, a node failure or a time limit never ends its run;
    Snakemake never runs one step twice at once, so a RUNNING run of the step
    that is starting again is one that was killed. ``keep``: a run that is
    being resumed, left as it is.
    """
    import mlflow

    client = mlflow.MlflowClient()
    stale = [run for run in client.search_runs([experiment], f"{_step_filter(step)} and attributes.status = 'RUNNING'")
             if run.info.run_id != keep]
    for run in stale:
        client.set_terminated(run.info.run_id, status="KILLED")
    killed = [run.info.run_id for run in stale]
    if killed:
        log.warning("MLflow: run(s) %s of %s were left RUNNING by a killed job: marked KILLED", ", ".join(killed), name)
    return killed


def supersede(experiment: str, step: str, current: str) -> list[str]:
    """Mark the earlier runs of ``step`` superseded by run ``current``, and return their ids.

    Each is tagged ``ferseq.superseded_by`` = ``current`` and deleted (MLflow
    keeps deleted runs, restorable, until ``mlflow gc``), so the UI lists the
    current runs while the history stays. A rerun then never logs into, nor
    conflicts with, what an earlier run logged.
    """
    import mlflow

    client = mlflow.MlflowClient()
    earlier = [run.info.run_id for run in client.search_runs([experiment], _step_filter(step))
               if run.info.run_id != current]
    return _supersede(client, earlier, current)


def supersede_runs(experiment: str, filter_string: str, keep: set[str], current: str) -> list[str]:
    """Mark the runs matching ``filter_string`` that are not in ``keep`` superseded by run ``current``
    (e.g. a fold's grid points that are no longer in the grid); return their ids."""
    import mlflow

    client = mlflow.MlflowClient()
    earlier = [run.info.run_id for run in client.search_runs([experiment], filter_string) if run.info.run_id not in keep]
    return _supersede(client, earlier, current)


def _supersede(client: Any, run_ids: list[str], current: str) -> list[str]:
    for run_id in run_ids:
        client.set_tag(run_id, SUPERSEDED_TAG, current)
        client.delete_run(run_id)
    if run_ids:
        log.info("MLflow: earlier run(s) %s superseded by %s (kept among the deleted runs)", ", ".join(run_ids), current)
    return run_ids


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
            supersede(exp, tags[STEP_TAG], run_ids[-1])
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
        supersede(exp, all_tags[STEP_TAG], run.info.run_id)
        mlflow.log_dict(config, "config.json")
        yield run


@contextmanager
def open_run(config: dict[str, Any], stage: str, fold: int | str | None = None, run_name: str | None = None,
             parent: dict[str, str] | None = None, tags: dict[str, str] | None = None,
             resume: str | Path | None = None) -> Iterator[Any]:
    """:func:`start_run`'s run as a :class:`ferseq.common.mlflow_outbox.RunLog`: logged through a local journal, so
    that an unreachable tracking server neither fails nor stalls the step (see :mod:`ferseq.common.mlflow_outbox`).

    ``parent``: the parent run's reference (``RunLog.ref`` or ``{"run_id": id}``); ``resume``: the journal
    of an interrupted attempt of this step, whose run goes on (a new run when it is gone). The run ends
    with the block: FINISHED, KILLED when the step was stopped (``ferseq.common.resume.Stopped``, Ctrl-C), else FAILED.
    """
    from ferseq.common.mlflow_outbox import RunLog
    from ferseq.common.resume import Stopped

    run = (RunLog.resume(resume) if resume else None) or RunLog.create(config, stage, fold, run_name, parent, tags)
    try:
        yield run
    except (Stopped, KeyboardInterrupt):
        run.end("KILLED")
        raise
    except BaseException:
        run.end("FAILED")
        raise
    run.end("FINISHED")


def attach_run(config: dict[str, Any], run: dict[str, str], name: str) -> Any:
    """A :class:`ferseq.common.mlflow_outbox.RunLog` that logs into an existing run (``run``: ``{"run_id": id}`` or a
    journal reference), e.g. the selection on the search's parent run; its ``end()`` leaves the run's status."""
    from ferseq.common.mlflow_outbox import RunLog

    return RunLog.attach(config, run, name)


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
