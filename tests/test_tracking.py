"""MLflow runs through ferseq.tracking, against a real local sqlite store."""

from __future__ import annotations

import multiprocessing as mp

import mlflow
import pytest

from ferseq import tracking


def config(tmp_path, experiment="ferseq-test"):
    return {"experiment": experiment, "seed": 1, "mlflow": {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db", "artifact_location": None}}


def test_runs_are_tagged_and_carry_the_config(tmp_path):
    cfg = config(tmp_path)
    with tracking.start_run(cfg, "frame_model", fold=2) as parent:
        mlflow.log_metric("loss", 0.5, step=1)
        with tracking.start_run(cfg, "grid_point", fold=2, parent_run_id=parent.info.run_id) as child:
            mlflow.log_param("lr", 0.01)
    runs = mlflow.search_runs(experiment_names=["ferseq-test"], output_format="list")
    by_stage = {run.data.tags["stage"]: run for run in runs}
    assert set(by_stage) == {"frame_model", "grid_point"}
    run = by_stage["frame_model"]
    assert run.data.tags["fold"] == "2"
    assert run.data.tags["config_hash"] == tracking.config_hash(cfg)
    assert run.data.tags["git_commit"] == tracking.git_commit() != ""
    assert run.data.metrics["loss"] == 0.5
    assert by_stage["grid_point"].data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert by_stage["grid_point"].info.run_id == child.info.run_id
    # The config travels with the run, and artifacts sit beside the database.
    assert mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/config.json") == cfg
    assert (tmp_path / "mlartifacts").is_dir()


def test_failed_step_marks_the_run_failed(tmp_path):
    cfg = config(tmp_path)
    with pytest.raises(RuntimeError):
        with tracking.start_run(cfg, "features", fold=0):
            raise RuntimeError("boom")
    (run,) = mlflow.search_runs(experiment_names=["ferseq-test"], output_format="list")
    assert run.info.status == "FAILED"


def test_config_hash_ignores_key_order():
    assert tracking.config_hash({"a": 1, "b": {"c": 2, "d": 3}}) == tracking.config_hash({"b": {"d": 3, "c": 2}, "a": 1})
    assert tracking.config_hash({"a": 1}) != tracking.config_hash({"a": 2})


def test_bad_tracking_uri_names_the_key(tmp_path):
    with pytest.raises(ValueError, match="mlflow.tracking_uri"):
        tracking.experiment_id({"experiment": "x", "mlflow": {"tracking_uri": "ftp://nowhere"}})


def _log_from_process(db_dir: str, worker: int, barrier) -> None:
    cfg = {"experiment": "concurrent", "mlflow": {"tracking_uri": f"sqlite:///{db_dir}/mlflow.db"}}
    barrier.wait()  # both processes create the store and the experiment at the same moment
    with tracking.start_run(cfg, "worker", fold=worker):
        for step in range(20):
            mlflow.log_metric("value", worker * 100 + step, step=step)


def test_two_processes_log_into_one_new_store_at_once(tmp_path):
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_log_from_process, args=(str(tmp_path), w, barrier)) for w in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    runs = mlflow.search_runs(experiment_names=["concurrent"], output_format="list")
    assert sorted(r.data.tags["fold"] for r in runs) == ["0", "1"]
    client = mlflow.MlflowClient()
    for run in runs:
        history = client.get_metric_history(run.info.run_id, "value")
        assert len(history) == 20
        assert sorted(m.step for m in history) == list(range(20))
