"""MLflow runs through ferseq.common.mlflow_runs, against a real local sqlite store."""

from __future__ import annotations

import multiprocessing as mp

import mlflow
import pytest

from conftest import ferseq_log
from ferseq.common import mlflow_runs


def config(tmp_path, experiment="ferseq-test"):
    return {"experiment": experiment, "seed": 1, "mlflow": {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db", "artifact_location": None}}


def test_runs_are_tagged_and_carry_the_config(tmp_path):
    cfg = config(tmp_path)
    with mlflow_runs.start_run(cfg, "frame_model", fold=2) as parent:
        mlflow.log_metric("loss", 0.5, step=1)
        with mlflow_runs.start_run(cfg, "grid_point", fold=2, parent_run_id=parent.info.run_id) as child:
            mlflow.log_param("lr", 0.01)
    runs = mlflow.search_runs(experiment_names=["ferseq-test"], output_format="list")
    by_stage = {run.data.tags["stage"]: run for run in runs}
    assert set(by_stage) == {"frame_model", "grid_point"}
    run = by_stage["frame_model"]
    assert run.data.tags["fold"] == "2"
    assert run.data.tags["config_hash"] == mlflow_runs.config_hash(cfg)
    assert run.data.tags["git_commit"] == mlflow_runs.git_commit() != ""
    assert run.data.metrics["loss"] == 0.5
    assert by_stage["grid_point"].data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert by_stage["grid_point"].info.run_id == child.info.run_id
    # The config travels with the run, and artifacts sit beside the database.
    assert mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/config.json") == cfg
    assert (tmp_path / "mlartifacts").is_dir()


def test_failed_step_marks_the_run_failed(tmp_path):
    cfg = config(tmp_path)
    with pytest.raises(RuntimeError):
        with mlflow_runs.start_run(cfg, "features", fold=0):
            raise RuntimeError("boom")
    (run,) = mlflow.search_runs(experiment_names=["ferseq-test"], output_format="list")
    assert run.info.status == "FAILED"


def test_config_hash_ignores_key_order():
    assert mlflow_runs.config_hash({"a": 1, "b": {"c": 2, "d": 3}}) == mlflow_runs.config_hash({"b": {"d": 3, "c": 2}, "a": 1})
    assert mlflow_runs.config_hash({"a": 1}) != mlflow_runs.config_hash({"a": 2})


def test_bad_tracking_uri_names_the_key(tmp_path):
    with pytest.raises(ValueError, match="mlflow.tracking_uri"):
        mlflow_runs.experiment_id({"experiment": "x", "mlflow": {"tracking_uri": "ftp://nowhere"}})


def _log_from_process(db_dir: str, worker: int, barrier) -> None:
    cfg = {"experiment": "concurrent", "mlflow": {"tracking_uri": f"sqlite:///{db_dir}/mlflow.db"}}
    barrier.wait()  # both processes create the store and the experiment at the same moment
    with mlflow_runs.start_run(cfg, "worker", fold=worker):
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


def _start_and_hang(db_dir: str, started) -> None:
    cfg = {"experiment": "killed", "mlflow": {"tracking_uri": f"sqlite:///{db_dir}/mlflow.db"}}
    with mlflow_runs.start_run(cfg, "frame_model", fold=0):
        mlflow.log_metric("train_loss", 1.0, step=1)
        started.set()
        import time

        time.sleep(600)  # killed long before


def test_a_killed_steps_run_is_marked_killed_when_the_step_runs_again(tmp_path):
    ctx = mp.get_context("spawn")
    started = ctx.Event()
    proc = ctx.Process(target=_start_and_hang, args=(str(tmp_path), started))
    proc.start()
    assert started.wait(120)
    proc.kill()  # SIGKILL: the run cannot end itself
    proc.join(30)
    cfg = {"experiment": "killed", "mlflow": {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db"}}
    mlflow.set_tracking_uri(cfg["mlflow"]["tracking_uri"])
    (orphan,) = mlflow.search_runs(experiment_names=["killed"], output_format="list")
    assert orphan.info.status == "RUNNING"
    # Another step's run leaves it alone; the same step (stage, fold, run name) starting again ends it.
    with mlflow_runs.start_run(cfg, "frame_model", fold=1):
        pass
    assert mlflow.get_run(orphan.info.run_id).info.status == "RUNNING"
    with mlflow_runs.start_run(cfg, "frame_model", fold=0) as again:
        pass
    assert mlflow.get_run(orphan.info.run_id).info.status == "KILLED"
    assert mlflow.get_run(again.info.run_id).info.status == "FINISHED"


def test_runs_name_their_step_as_source_and_the_experiment_opens_on_training_runs(tmp_path):
    cfg = config(tmp_path)
    with mlflow_runs.start_run(cfg, "evaluate", fold=3, run_name="evaluate-cnn_lstm-fold3") as run:
        pass
    tags = mlflow.get_run(run.info.run_id).data.tags
    assert tags["mlflow.source.name"] == "ferseq evaluate (fold 3)" and tags["mlflow.source.type"] == "JOB"
    experiment = mlflow.get_experiment_by_name("ferseq-test")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    # A store made before the tag existed gets it the next time a run starts.
    client = mlflow.MlflowClient()
    client.delete_experiment_tag(experiment.experiment_id, "mlflow.experimentKind")
    with mlflow_runs.start_run(cfg, "features", fold=0):
        pass
    assert mlflow.get_experiment_by_name("ferseq-test").tags["mlflow.experimentKind"] == "custom_model_development"


def test_ui_address_opens_the_experiments_runs_as_model_training(tmp_path):
    cfg = config(tmp_path)
    assert mlflow_runs.runs_url(cfg, "http://127.0.0.1:5000") == "http://127.0.0.1:5000/#/?workflowType=machine_learning"
    with mlflow_runs.start_run(cfg, "frame_model", fold=0):
        pass
    experiment = mlflow.get_experiment_by_name("ferseq-test").experiment_id
    assert mlflow_runs.runs_url(cfg, "http://h:5000/") == (
        f"http://h:5000/#/experiments/{experiment}/runs?workflowType=machine_learning")


def test_sibling_child_runs_are_open_at_once_and_end_together(tmp_path):
    cfg = config(tmp_path)
    with mlflow_runs.start_run(cfg, "sequence_search", fold=0) as parent:
        pass
    client = mlflow.MlflowClient()
    with mlflow_runs.open_child_runs(cfg, "sequence_model", 0, ["lstm-a", "lstm-b"], parent.info.run_id) as (a, b):
        assert {client.get_run(r).info.status for r in (a, b)} == {"RUNNING"}
        client.log_batch(b, metrics=[mlflow.entities.Metric("val_loss", 0.5, 0, 1)])
    for run_id, name in ((a, "lstm-a"), (b, "lstm-b")):
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED" and run.info.run_name == name
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id and run.data.tags["stage"] == "sequence_model"
        assert run.data.tags[mlflow_runs.STEP_TAG] == f"sequence_model|0|{name}"
        assert mlflow.artifacts.load_dict(f"runs:/{run_id}/config.json") == cfg
    assert client.get_run(b).data.metrics["val_loss"] == 0.5
    # A point's run left RUNNING by a killed job is marked KILLED when the job runs again.
    experiment = mlflow_runs.experiment_id(cfg)
    orphan = client.create_run(experiment, tags=mlflow_runs.run_tags(cfg, "sequence_model", 0, "lstm-b")).info.run_id
    # An error ends every run FAILED.
    with pytest.raises(RuntimeError):
        with mlflow_runs.open_child_runs(cfg, "sequence_model", 0, ["lstm-a", "lstm-b"], parent.info.run_id) as failed:
            raise RuntimeError("training diverged")
    assert {client.get_run(r).info.status for r in failed} == {"FAILED"}
    assert client.get_run(orphan).info.status == "KILLED"


def test_a_rerun_of_a_step_supersedes_its_earlier_runs_and_logs_anew(tmp_path):
    """Another config (or input) reruns a step: the new run may log other param values; the earlier run is kept,
    tagged and among the deleted runs, so the UI lists the current one."""
    cfg = config(tmp_path)
    with mlflow_runs.start_run(cfg, "evaluate", fold=0, run_name="evaluate-cnn_lstm-fold0") as first:
        mlflow.log_params({"sequence_model": "lr0.01_h16_d0.5.pt"})
    with mlflow_runs.start_run(cfg, "evaluate", fold=0, run_name="evaluate-cnn_lstm-fold0") as second:
        mlflow.log_params({"sequence_model": "lr0.003_h16_d0.5.pt"})
    with mlflow_runs.open_run(cfg, "evaluate", fold=0, run_name="evaluate-per_frame-fold0") as other:
        other.log_params({"method": "per_frame"})
    (current,) = mlflow.search_runs(experiment_names=["ferseq-test"], output_format="list",
                                    filter_string="attributes.run_name = 'evaluate-cnn_lstm-fold0'")
    assert current.info.run_id == second.info.run_id
    assert current.data.params["sequence_model"] == "lr0.003_h16_d0.5.pt"
    earlier = mlflow.get_run(first.info.run_id)
    assert earlier.info.lifecycle_stage == "deleted" and earlier.data.params["sequence_model"] == "lr0.01_h16_d0.5.pt"
    assert earlier.data.tags[mlflow_runs.SUPERSEDED_TAG] == second.info.run_id
    assert mlflow.get_run(other.run_id).info.lifecycle_stage == "active"  # another step: left alone


def test_an_unreachable_store_costs_the_job_nothing_and_sync_delivers_later(tmp_path, monkeypatch, capsys):
    """A tracking server on a port where nothing listens: every call returns at once and the run's end says what
    was not delivered. A store that cannot be opened (its folder is a file here) is the same; once it can be,
    `ferseq mlflow sync` sends the journal, in order, and removes it."""
    from ferseq import cli
    from ferseq.common import mlflow_outbox
    from mlflow_server import free_port

    monkeypatch.setenv("FERSEQ_MLFLOW_WAIT", "0")
    nowhere = {"experiment": "away", "mlflow": {"tracking_uri": f"http://127.0.0.1:{free_port()}"}}
    with ferseq_log() as messages:
        run = mlflow_outbox.RunLog.create(nowhere, "frame_model", 0, folder=tmp_path / "away")
        for epoch in range(1, 51):
            run.log_metrics({"val_loss": 1.0 / epoch}, step=epoch)
        run.end()
    assert run.run_id is None and len([m for m in messages if "does not answer" in m]) == 1
    assert any("not delivered to" in m and "the run itself; 50 metric values (steps 1-50)" in m for m in messages)

    (tmp_path / "store").write_text("not a folder")
    cfg = {"experiment": "later", "mlflow": {"tracking_uri": f"sqlite:///{tmp_path}/store/mlflow.db"}}
    folder = tmp_path / "logs/frame_model.mlflow"
    run = mlflow_outbox.RunLog.create(cfg, "frame_model", 0, folder=folder)
    run.log_params({"lr": 0.01})
    for epoch in (1, 2, 3):
        run.log_metrics({"val_loss": 1.0 / epoch}, step=epoch)
    assert not run.end()
    capsys.readouterr()
    assert cli.main(["mlflow", "sync", str(folder)]) == 1  # still not there: kept, and the store's error named
    said = capsys.readouterr().err  # the command's log goes to stderr
    assert f"not delivered to {cfg['mlflow']['tracking_uri']} (FileExistsError" in said and "1 still pending" in said
    (tmp_path / "store").unlink()
    assert cli.main(["mlflow", "sync", str(tmp_path / "logs")]) == 0
    assert not list(folder.glob("*.jsonl"))
    client = mlflow.MlflowClient(cfg["mlflow"]["tracking_uri"])
    (stored,) = client.search_runs([client.get_experiment_by_name("later").experiment_id])
    assert stored.info.status == "FINISHED" and stored.data.params["lr"] == "0.01"
    assert [m.step for m in client.get_metric_history(stored.info.run_id, "val_loss")] == [1, 2, 3]
    assert mlflow.artifacts.load_dict(f"runs:/{stored.info.run_id}/config.json") == cfg


def test_a_run_that_ends_without_waiting_still_tries_the_store_once(tmp_path, monkeypatch):
    """FERSEQ_MLFLOW_WAIT=0: the end does not wait for an unreachable store, but it tries a reachable one
    (one round of the sender) before it says what was not delivered, so a run that could be sent is sent."""
    from ferseq.common import mlflow_outbox

    monkeypatch.setenv("FERSEQ_MLFLOW_WAIT", "0")
    cfg = config(tmp_path)
    folder = tmp_path / "logs/evaluate.mlflow"
    run = mlflow_outbox.RunLog.create(cfg, "evaluate", 0, folder=folder)
    run.log_metrics({"macro_f1": 0.5}, step=0)
    assert run.end()
    assert not list(folder.glob("*.jsonl"))
    assert mlflow.get_run(run.run_id).info.status == "FINISHED"


def test_sync_waits_for_a_journal_another_process_is_sending_and_says_so_when_it_cannot(tmp_path, monkeypatch,
                                                                                        capsys):
    """A job's sender thread (or another sync) holds a journal's lock while it sends: sync waits for it up
    to a bound, then says that this is why the journal is still pending; once it is free, sync delivers."""
    import fcntl

    from ferseq import cli
    from ferseq.common import mlflow_outbox

    monkeypatch.setenv("FERSEQ_MLFLOW_WAIT", "0")
    monkeypatch.setattr(mlflow_outbox, "LOCK_WAIT", 0.5)
    (tmp_path / "store").write_text("not a folder")
    cfg = {"experiment": "locked", "mlflow": {"tracking_uri": f"sqlite:///{tmp_path}/store/mlflow.db"}}
    folder = tmp_path / "logs/frame_model.mlflow"
    run = mlflow_outbox.RunLog.create(cfg, "frame_model", 0, folder=folder)
    run.log_params({"lr": 0.01})
    assert not run.end()
    (journal,) = folder.glob("*.jsonl")
    (tmp_path / "store").unlink()
    with open(journal.with_name(journal.name + ".lock"), "w") as lock:  # another open file: flock conflicts
        fcntl.flock(lock, fcntl.LOCK_EX)
        capsys.readouterr()
        assert cli.main(["mlflow", "sync", str(folder)]) == 1
        fcntl.flock(lock, fcntl.LOCK_UN)
    assert "(another process is sending this journal at the moment" in capsys.readouterr().err
    assert cli.main(["mlflow", "sync", str(folder)]) == 0
    client = mlflow.MlflowClient(cfg["mlflow"]["tracking_uri"])
    (stored,) = client.search_runs([client.get_experiment_by_name("locked").experiment_id])
    assert stored.info.status == "FINISHED" and stored.data.params["lr"] == "0.01"
