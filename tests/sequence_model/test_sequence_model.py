"""Sequence heads (LSTMs, GRU, transformer), weighted loss, early stopping, grid points trained together, and their
selection."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch

from conftest import ferseq_log, write_config
from ferseq.common import config as config_check
from ferseq.common import mlflow_outbox, mlflow_runs, resume
from ferseq.common.errors import ConfigError
from ferseq.sequence_model import classifier, fused_training, grid_plan, grid_search, selection
from ferseq.sequences import windows


def windows_of(n: int, classes: int, rng: np.random.Generator, separable: bool = True, dim: int = 8, length: int = 6):
    y = rng.integers(0, classes, n)
    x = rng.normal(size=(n, length, dim)).astype(np.float32)
    if separable:
        x[:, :, 0] += 2.0 * y[:, None]  # the class shifts one feature over the whole window
    return x, y


@pytest.mark.parametrize("arch", ["lstm", "lstm2", "bilstm", "gru"])
def test_architectures_map_windows_to_class_logits(arch):
    model = classifier.SequenceClassifier(arch, input_dim=8, hidden=5, num_classes=3, dropout=0.5)
    assert model(torch.zeros(4, 16, 8)).shape == (4, 3)
    kind, layers, bidirectional = classifier.ARCHITECTURES[arch]
    rnn = model.lstm if kind == "lstm" else model.gru
    assert rnn.num_layers == layers and rnn.bidirectional == bidirectional
    assert rnn.dropout == (0.5 if arch == "lstm2" else 0.0)


def test_every_head_is_named_alike_by_the_classifier_the_grid_plan_and_the_schema():
    import yaml

    from conftest import REPO

    schema = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
    enum = schema["properties"]["sequence_model"]["properties"]["architectures"]["items"]["enum"]
    assert list(classifier.ARCHITECTURES) == list(grid_plan.FAMILIES) == enum


def test_the_transformer_reads_windows_up_to_its_position_table_and_refuses_longer_ones():
    model = classifier.SequenceClassifier("transformer", input_dim=8, hidden=8, num_classes=3, dropout=0.5,
                                          window_length=6).eval()
    assert model(torch.zeros(4, 6, 8)).shape == model(torch.zeros(4, 3, 8)).shape == (4, 3)
    assert len(model.encoder.layers) == classifier.TRANSFORMER_LAYERS
    with pytest.raises(ValueError, match="a window of 7 frames is longer than the 6 positions it was built for"):
        model(torch.zeros(1, 7, 8))
    with pytest.raises(ValueError, match="sequence_model.hidden: 6 is not divisible by the transformer's 4 heads"):
        classifier.SequenceClassifier("transformer", input_dim=8, hidden=6, num_classes=3, dropout=0.5, window_length=6)


def test_the_config_check_names_a_transformer_width_its_heads_do_not_divide(tmp_path):
    """Caught when the config is checked (before any job), by its key; the same widths pass for the recurrent heads."""
    import yaml

    config = yaml.safe_load(write_config(tmp_path / "config.yaml").read_text())
    config["sequence_model"].update(architectures=["lstm", "transformer"], hidden=[64, 30, 6])
    with pytest.raises(ConfigError, match=r"sequence_model.hidden: \[30, 6\] not divisible by 4, the transformer's"):
        config_check.check(config)
    config["sequence_model"]["architectures"] = ["lstm", "gru"]
    config_check.check(config)
    config["sequence_model"].update(architectures=["transformer"], hidden=[64, 32])
    config_check.check(config)


def test_class_weights_are_inverse_frequency():
    weights = classifier.class_weights(np.array([0, 0, 0, 1, 2, 2]), 4)
    assert torch.allclose(weights, torch.tensor([6 / 9, 6 / 3, 6 / 6, 0.0]))


def test_training_lowers_the_loss_and_keeps_the_best_epoch():
    rng = np.random.default_rng(0)
    train_x, train_y = windows_of(96, 3, rng)
    val_x, val_y = windows_of(48, 3, rng)
    result = classifier.train(train_x, train_y, val_x, val_y, arch="lstm", lr=0.01, hidden=16, dropout=0.2,
                                  num_classes=3, epochs=30, patience=5, batch_size=16, seed=1)
    losses = [h["train_loss"] for h in result.history]
    assert losses[-1] < 0.5 * losses[0]
    assert result.val_macro_f1 > 0.8
    best = min(result.history, key=lambda h: h["val_loss"])
    assert result.best_epoch == best["epoch"] and result.val_loss == best["val_loss"]


def test_early_stopping_stops_after_patience():
    rng = np.random.default_rng(1)
    train_x, train_y = windows_of(64, 2, rng)
    val_x, val_y = windows_of(32, 2, rng, separable=False)  # val labels are noise: val loss stops improving
    result = classifier.train(train_x, train_y, val_x, val_y, arch="bilstm", lr=0.05, hidden=16, dropout=0.0,
                                  num_classes=2, epochs=200, patience=3, batch_size=16, seed=1)
    assert len(result.history) == result.best_epoch + 3 < 200


def test_same_seed_same_result():
    rng = np.random.default_rng(2)
    train_x, train_y = windows_of(32, 2, rng)
    val_x, val_y = windows_of(16, 2, rng)
    kwargs = dict(arch="lstm2", lr=0.01, hidden=8, dropout=0.3, num_classes=2, epochs=3, patience=3, batch_size=8, seed=7)
    a = classifier.train(train_x, train_y, val_x, val_y, **kwargs)
    b = classifier.train(train_x, train_y, val_x, val_y, **kwargs)
    assert [h["val_loss"] for h in a.history] == [h["val_loss"] for h in b.history]


def test_grid_expands_every_point_and_cuts_it_into_jobs():
    cfg = {"architectures": ["lstm", "bilstm"], "lr": [0.01, 0.001], "hidden": [64, 32], "dropout": [0.5, 0.4]}
    points = grid_plan.grid(cfg)
    assert len(points) == len(set(points)) == 16 and ("bilstm", "lr0.001_h32_d0.4") in points
    assert grid_plan.jobs(cfg) == [("lstm", 64), ("lstm", 32), ("bilstm", 64), ("bilstm", 32)]
    outputs = grid_plan.job_outputs(cfg, "f{{fold}}/{{arch}}/{point}.pt")
    assert outputs == ["f{fold}/{arch}/lr0.01_h{hidden}_d0.5.pt", "f{fold}/{arch}/lr0.01_h{hidden}_d0.4.pt",
                       "f{fold}/{arch}/lr0.001_h{hidden}_d0.5.pt", "f{fold}/{arch}/lr0.001_h{hidden}_d0.4.pt"]
    # Every point belongs to exactly one job's outputs.
    filled = {(arch, o.format(fold=0, arch=arch, hidden=h).split("/")[-1][:-3])
              for arch, h in grid_plan.jobs(cfg) for o in outputs}
    assert filled == set(points)


def test_the_searchs_small_jobs_start_without_torch():
    # open_search and select_sequence_model run as jobs of their own: torch's import (seconds) is not theirs to pay.
    code = "import sys; import ferseq.sequence_model.selection; print(sorted({'torch', 'sklearn'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_grid_point_and_selection_log_to_mlflow(tmp_path, monkeypatch):
    rng = np.random.default_rng(3)
    classes = ["happy", "sad"]
    for split, n in (("train", 40), ("val", 20)):
        x, y = windows_of(n, 2, rng)
        table = pd.DataFrame({
            "window_id": np.arange(n), "segment_id": np.arange(n), "video_id": "v", "subject": "s",
            "label": [classes[i] for i in y], "first_frame": 0, "last_frame": 5})
        windows.write(tmp_path / "w" / f"{split}.parquet", table, {"embedding": x, "probs": np.zeros((n, 6, 2), np.float32)})
    config = {"experiment": "grid-test", "seed": 0, "classes": {"names": classes},
              "mlflow": {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db"},
              "sequence_model": {"architectures": ["lstm"], "lr": [0.01, 0.1], "hidden": [8], "dropout": [0.5],
                                 "epochs": 4, "patience": 2, "batch_size": 8}}
    parent = selection.open_search(config, 0, tmp_path / "run_id.txt")
    # The store answers only once training is over, as a busy server would: the run ids the files name
    # must still be their runs' (CI once saw None where the sender thread had not yet created the runs).
    trained = threading.Event()
    send, train_points = mlflow_outbox.RunLog.send, fused_training.train_points

    def late_send(self, *args, **kwargs):
        trained.wait(timeout=30)
        return send(self, *args, **kwargs)

    def train_then_answer(*args, **kwargs):
        try:
            return train_points(*args, **kwargs)
        finally:
            trained.set()

    monkeypatch.setattr(mlflow_outbox.RunLog, "send", late_send)
    monkeypatch.setattr(fused_training, "train_points", train_then_answer)
    # One job: both lr points of (lstm, hidden 8), the windows read once.
    points = grid_plan.job_points(config["sequence_model"])
    stems = [tmp_path / "lstm" / grid_plan.point_name(lr, 8, dropout) for lr, dropout in points]
    grid_search.run_points(tmp_path / "w", "lstm", 8, points, config, 0, parent,
                      [f"{s}.pt" for s in stems], [f"{s}.json" for s in stems])
    files = [f"{s}.json" for s in stems]
    best = selection.select(files, config, 0, parent, tmp_path / "best.json")
    scores = [json.loads(open(f).read()) for f in files]
    assert best["val_macro_f1"] == max(s["val_macro_f1"] for s in scores)
    model, checkpoint = grid_search.load_model(best["model"])
    assert checkpoint["classes"] == classes and not model.training
    runs = mlflow.search_runs(experiment_names=["grid-test"], output_format="list")
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent]
    assert len(children) == 2 and all(r.data.tags["stage"] == "sequence_model" for r in children)
    (parent_run,) = [r for r in runs if r.info.run_id == parent]
    # the choice is a tag (a rerun that chooses another point overwrites it), never a param
    assert parent_run.data.tags["best.lr"] == str(best["lr"]) and "best.lr" not in parent_run.data.params
    # The points trained together, each with its own finished child run and per-epoch metrics.
    client = mlflow.MlflowClient()
    for stem in stems:
        checkpoint = torch.load(f"{stem}.pt", weights_only=True)  # data only: tensors and plain values
        run = client.get_run(checkpoint["metrics"]["run_id"])
        assert run.info.status == "FINISHED" and run.data.tags["mlflow.parentRunId"] == parent
        assert run.info.run_name == f"lstm-{stem.name}" and run.data.params["lr"] == str(checkpoint["metrics"]["lr"])
        assert run.data.params["device"] == "cpu"
        history = client.get_metric_history(run.info.run_id, "val_loss")
        assert [m.step for m in history] == [h["epoch"] for h in checkpoint["history"]]
        assert [m.value for m in history] == pytest.approx([h["val_loss"] for h in checkpoint["history"]])
        assert run.data.metrics["best_epoch"] == checkpoint["metrics"]["best_epoch"]
        assert checkpoint["features"] == "embedding" and set(checkpoint) >= {
            "state_dict", "arch", "input_dim", "hidden", "dropout", "classes", "window_length", "history", "metrics"}
        model, _ = grid_search.load_model(f"{stem}.pt")
        loaded = model.state_dict()
        assert loaded.keys() == checkpoint["state_dict"].keys()
        assert all(torch.equal(loaded[k], checkpoint["state_dict"][k]) for k in loaded)


def test_every_head_is_written_and_loaded_back_as_data_giving_the_same_outputs(tmp_path):
    """write_point -> load_model (what evaluation, `ferseq predict` and export use) for each architecture."""
    rng = np.random.default_rng(10)
    train_x, train_y = windows_of(24, 2, rng)
    val_x, val_y = windows_of(8, 2, rng)
    config = {"seed": 0, "classes": {"names": ["happy", "sad"]}, "sequence_model": {}}
    for arch in classifier.ARCHITECTURES:
        result = classifier.train(train_x, train_y, val_x, val_y, arch=arch, lr=0.01, hidden=8, dropout=0.5,
                                  num_classes=2, epochs=1, patience=1, batch_size=8, seed=3)
        grid_search.write_point(result, arch, 0.01, 8, 0.5, config, 0, "run", train_x.shape, tmp_path / f"{arch}.pt",
                                tmp_path / f"{arch}.json")
        model, checkpoint = grid_search.load_model(tmp_path / f"{arch}.pt")
        assert checkpoint["arch"] == arch and checkpoint["window_length"] == 6 and not model.training
        trained = classifier.SequenceClassifier(arch, 8, 8, 2, 0.5, window_length=6)
        trained.load_state_dict(result.state_dict)
        with torch.inference_mode():
            assert torch.equal(model(torch.tensor(val_x)), trained.eval()(torch.tensor(val_x)))


def test_a_job_asking_for_cuda_without_a_gpu_stops_before_writing(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    config = {"seed": 0, "classes": {"names": ["a", "b"]}, "sequence_model": {"device": "cuda"}}
    with pytest.raises(ValueError, match="sequence_model.device is 'cuda'"):
        grid_search.run_points(tmp_path / "w", "lstm", 8, [(0.01, 0.5)], config, 0, "parent",
                          [tmp_path / "m.pt"], [tmp_path / "m.json"])
    assert not list(tmp_path.iterdir())
    with pytest.raises(ValueError, match="sequence_model.device: 'gpu'"):
        fused_training.choose_device("gpu")
    assert fused_training.choose_device("auto") == fused_training.choose_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize("arch", ["lstm", "lstm2", "bilstm", "gru", "transformer"])
def test_a_point_trained_with_others_equals_the_point_trained_alone(arch):
    """Item 4 of the fused trainer: same seed and batch order -> same loss curves, best epoch and weights
    as the reference path (nn.LSTM SequenceClassifier + torch.optim.Adam), while the other points differ."""
    rng = np.random.default_rng(4)
    train_x, train_y = windows_of(70, 3, rng, dim=8)
    val_x, val_y = windows_of(30, 3, rng, dim=8)
    train_x[:, :, 0] *= 0.5  # a harder task: val loss turns within a few epochs, so points stop early
    # Different lr and dropout (0 included: no masks drawn); lr 0.05 overfits and stops first. (The transformer
    # takes 0.02: at 0.05 its last epochs, past the best one, amplify rounding to ~1e-2; 0.02 also stops first.)
    fast = 0.02 if arch == "transformer" else 0.05
    points = [fused_training.Point(0.01, 0.5, 7), fused_training.Point(fast, 0.0, 7), fused_training.Point(0.003, 0.3, 7)]
    common = dict(num_classes=3, epochs=15, patience=3, batch_size=16)
    # Two fused stacks (points 0-1 and point 2), as the CPU cuts a large job.
    hidden = 8 if arch == "transformer" else 5  # (the transformer's width divides by its 4 heads)
    together = fused_training.train_points(train_x, train_y, val_x, val_y, arch=arch, hidden=hidden, points=points,
                                           order_seed=7, stack_size=2, **common)
    stopped = set()
    for point, fused in zip(points, together):
        alone = classifier.train(train_x, train_y, val_x, val_y, arch=arch, lr=point.lr, hidden=hidden,
                                     dropout=point.dropout, seed=7, **common)
        assert len(fused.history) == len(alone.history) and fused.best_epoch == alone.best_epoch
        # Rounding differs (batched products vs the oneDNN LSTM kernel) by ~1e-7 at first; a point that
        # fits its train set fast (lstm2, lr 0.05) amplifies that to ~3e-4 by epoch 11. Points that differ
        # in lr or dropout differ by more than 1e-2 (checked below).
        for key in ("train_loss", "val_loss"):
            assert [h[key] for h in fused.history] == pytest.approx([h[key] for h in alone.history], rel=1e-3)
        assert [h["val_macro_f1"] for h in fused.history] == [h["val_macro_f1"] for h in alone.history]
        assert fused.state_dict.keys() == alone.state_dict.keys()
        for name, value in alone.state_dict.items():
            assert torch.allclose(fused.state_dict[name], value, atol=1e-3), name
        stopped.add(len(fused.history))
        # The checkpoint layout is the classifier's (nn.LSTM's, nn.GRU's): a SequenceClassifier loads it as it is.
        model = classifier.SequenceClassifier(arch, 8, hidden, 3, point.dropout, window_length=6)
        model.load_state_dict(fused.state_dict)
    assert len(stopped) > 1 and min(stopped) < common["epochs"]  # points stopped at different epochs
    first, third = ([h["train_loss"] for h in p.history[:3]] for p in (together[0], together[2]))
    assert first != pytest.approx(third, rel=1e-2)


def test_points_trained_together_stop_on_their_own_val_loss():
    rng = np.random.default_rng(1)
    train_x, train_y = windows_of(64, 2, rng)
    val_x, val_y = windows_of(32, 2, rng, separable=False)  # val labels are noise: val loss stops improving
    points = [fused_training.Point(lr, 0.0, 1) for lr in (0.05, 0.01)]
    results = fused_training.train_points(train_x, train_y, val_x, val_y, arch="bilstm", hidden=16, points=points,
                                          num_classes=2, epochs=200, patience=3, batch_size=16, order_seed=1)
    for result in results:
        assert len(result.history) == result.best_epoch + 3 < 200
        best = min(result.history, key=lambda h: h["val_loss"])
        assert result.best_epoch == best["epoch"] and result.val_loss == best["val_loss"]


def test_the_gpu_way_on_the_cpu_trains_every_point_and_leaves_dropout_free_points_as_alone():
    """exact=False is what a GPU runs (one mask draw for all points, Adam on whole stacks): run it here.
    A point without dropout draws no mask, so it still equals the point trained alone."""
    rng = np.random.default_rng(7)
    train_x, train_y = windows_of(60, 3, rng)
    val_x, val_y = windows_of(30, 3, rng)
    points = [fused_training.Point(0.01, 0.0, 3), fused_training.Point(0.01, 0.5, 3), fused_training.Point(0.03, 0.8, 3)]
    common = dict(num_classes=3, epochs=6, patience=6, batch_size=16)
    results = fused_training.train_points(train_x, train_y, val_x, val_y, arch="lstm2", hidden=6, points=points,
                                          order_seed=3, exact=False, **common)
    alone = classifier.train(train_x, train_y, val_x, val_y, arch="lstm2", lr=0.01, hidden=6, dropout=0.0,
                                 seed=3, **common)
    assert [h["val_loss"] for h in results[0].history] == pytest.approx([h["val_loss"] for h in alone.history], rel=1e-4)
    for result in results[1:]:
        losses = [h["train_loss"] for h in result.history]
        assert losses[-1] < losses[0] and result.best_epoch > 0


def test_dropout_drawn_at_once_keeps_each_points_rate():
    x = torch.ones(3, 400, 50)
    out = fused_training.Dropout([0.0, 0.5, 0.8], None, torch.device("cpu"), 0)(x)
    assert torch.equal(out[0], x[0])
    for k, p in ((1, 0.5), (2, 0.8)):
        kept = out[k] != 0
        assert abs(kept.float().mean().item() - (1 - p)) < 0.02
        assert torch.allclose(out[k][kept], torch.tensor(1 / (1 - p)))


def test_points_with_their_own_seeds_start_from_their_own_weights():
    rng = np.random.default_rng(5)
    train_x, train_y = windows_of(20, 2, rng)
    val_x, val_y = windows_of(10, 2, rng)
    points = [fused_training.Point(0.01, 0.5, seed) for seed in (1, 2)]
    a, b = fused_training.train_points(train_x, train_y, val_x, val_y, arch="lstm", hidden=4, points=points,
                                       num_classes=2, epochs=1, patience=1, batch_size=8, order_seed=1)
    assert not torch.equal(a.state_dict["lstm.weight_hh_l0"], b.state_dict["lstm.weight_hh_l0"])


def test_macro_f1_of_many_points_is_sklearns():
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(6)
    y = rng.integers(0, 4, 50)
    y[y == 2] = 1  # a class absent from the labels does not count
    preds = rng.integers(0, 4, (5, 50))
    preds[0] = y
    expected = [f1_score(y, p, labels=np.unique(y), average="macro", zero_division=0) for p in preds]
    assert list(fused_training.macro_f1(y, preds)) == expected and expected[0] == 1.0


def test_the_written_out_backward_pass_matches_autograd():
    """The recurrence's hand-written backpropagation through time against numerical gradients (double)."""
    torch.manual_seed(0)
    steps, groups, batch, hidden = 4, 3, 2, 3
    gx = torch.randn(steps, groups, batch, 4 * hidden, dtype=torch.float64, requires_grad=True)
    w_hh = torch.randn(groups, 4 * hidden, hidden, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda g, w: fused_training.LSTMRecurrence.apply(g, w, True), (gx, w_hh))
    assert torch.autograd.gradcheck(lambda g, w: fused_training.LSTMRecurrence.apply(g, w, True)[1], (gx, w_hh))
    gx = torch.randn(steps, groups, batch, 3 * hidden, dtype=torch.float64, requires_grad=True)
    w_hh = torch.randn(groups, 3 * hidden, hidden, dtype=torch.float64, requires_grad=True)
    b_hh = torch.randn(groups, 3 * hidden, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda g, w, b: fused_training.GRURecurrence.apply(g, w, b, True), (gx, w_hh, b_hh))
    assert torch.autograd.gradcheck(lambda g, w, b: fused_training.GRURecurrence.apply(g, w, b, True)[1],
                                    (gx, w_hh, b_hh))


@pytest.mark.parametrize("arch, exact", [("lstm2", True), ("bilstm", False), ("gru", True), ("transformer", False)])
def test_points_resumed_from_a_saved_state_end_as_uninterrupted_ones(arch, exact, tmp_path):
    """The state saved after the epoch where the first point stops early (its stack is smaller then), through a
    real file (torch.save, read back as data only), continues to the same histories, best epochs and weights."""
    rng = np.random.default_rng(8)
    train_x, train_y = windows_of(60, 3, rng)
    val_x, val_y = windows_of(30, 3, rng)
    train_x[:, :, 0] *= 0.5
    points = [fused_training.Point(0.05, 0.0, 7), fused_training.Point(0.01, 0.5, 7), fused_training.Point(0.003, 0.3, 7)]
    common = dict(arch=arch, hidden=8 if arch == "transformer" else 5, points=points, num_classes=3, epochs=10,
                  patience=2, batch_size=16, order_seed=7, stack_size=2, exact=exact)
    store = resume.Store(tmp_path, "key", "test")

    # off the exact path a one-point stack on the CPU draws its dropout from torch's global generator: both
    # runs start it alike (the saved state holds it)
    torch.manual_seed(0)
    whole = fused_training.train_points(train_x, train_y, val_x, val_y, **common)
    first_stop = min(len(r.history) for r in whole)
    assert first_stop < max(len(r.history) for r in whole)

    def save_and_stop(epoch, snapshot):
        if epoch == first_stop:
            store.save({"train": snapshot()})
            raise resume.Stopped(f"stopped after epoch {epoch}")

    torch.manual_seed(0)
    with pytest.raises(resume.Stopped):
        fused_training.train_points(train_x, train_y, val_x, val_y, **common, on_epoch_end=save_and_stop)
    saved = store.load()["train"]
    assert saved["epoch"] == first_stop and sum(len(stack["index"]) for stack in saved["stacks"]) < len(points)
    resumed = fused_training.train_points(train_x, train_y, val_x, val_y, **common, resume_from=saved)
    for a, b in zip(whole, resumed):
        assert a.history == [{**h, "seconds": a.history[i]["seconds"]} for i, h in enumerate(b.history)]
        assert a.best_epoch == b.best_epoch and a.state_dict.keys() == b.state_dict.keys()
        assert all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)


# A grid job run as the workflow runs it (the windows of two points' job; kill -9 and resume in a new process).
GRID_JOB = """import json, sys
from ferseq.common import logs
from ferseq.sequence_model import grid_search
args = json.loads(sys.argv[1])
logs.setup(args.pop("log"))
grid_search.run_points(**args)
"""


def test_a_killed_grid_job_resumes_its_points_into_their_runs(tmp_path):
    rng = np.random.default_rng(9)
    classes = ["happy", "sad"]
    for split, n in (("train", 400), ("val", 40)):
        x, y = windows_of(n, 2, rng, dim=16, length=16)
        table = pd.DataFrame({"window_id": np.arange(n), "segment_id": np.arange(n), "video_id": "v", "subject": "s",
                              "label": [classes[i] for i in y], "first_frame": 0, "last_frame": 15})
        windows.write(tmp_path / "w" / f"{split}.parquet", table, {"embedding": x, "probs": np.zeros((n, 16, 2), np.float32)})
    config = {"experiment": "grid-resume", "seed": 0, "classes": {"names": classes},
              "mlflow": {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db"},
              "sequence_model": {"architectures": ["lstm"], "lr": [0.01, 0.003], "hidden": [32], "dropout": [0.3],
                                 "epochs": 6, "patience": 6, "batch_size": 8, "device": "cpu"}}
    parent = selection.open_search(config, 0, tmp_path / "run_id.txt")
    points = grid_plan.job_points(config["sequence_model"])

    def args(folder: str) -> dict:
        stems = [tmp_path / folder / grid_plan.point_name(lr, 32, dropout) for lr, dropout in points]
        return dict(windows_dir=str(tmp_path / "w"), arch="lstm", hidden=32, points=points, config=config, fold=0,
                    parent_run_id=parent, out_models=[f"{s}.pt" for s in stems], out_metrics=[f"{s}.json" for s in stems],
                    resume_dir=str(tmp_path / folder / ".resume"), save_every=0)

    whole = grid_search.run_points(**{**args("whole"), "resume_dir": None})
    job = subprocess.Popen([sys.executable, "-c", GRID_JOB, json.dumps({**args("killed"), "log": str(tmp_path / "job.log")})],
                           stderr=subprocess.PIPE, text=True)
    for line in job.stderr:
        if "lr0.003_h32_d0.3 epoch 2:" in line:  # the job's last point has finished epoch 2
            time.sleep(0.05)
            job.kill()
            break
    job.wait()
    epoch = torch.load(tmp_path / "killed/.resume" / resume.STATE, weights_only=True)["train"]["epoch"]
    assert job.returncode == -9 and 2 <= epoch < 6
    client = mlflow.MlflowClient(config["mlflow"]["tracking_uri"])
    killed = {r.info.run_name: r.info.run_id for r in client.search_runs(
        [mlflow_runs.experiment_id(config)], "attributes.status = 'RUNNING'")}
    assert set(killed) == {"lstm-lr0.01_h32_d0.3", "lstm-lr0.003_h32_d0.3"}

    with ferseq_log() as messages:
        resumed = grid_search.run_points(**args("killed"))
    assert f"lstm h32: resuming at epoch {epoch + 1} from the state saved in {tmp_path / 'killed/.resume'}" in messages
    for a, b in zip(whole, resumed):
        assert {k: v for k, v in a.items() if k != "run_id"} == {k: v for k, v in b.items() if k != "run_id"}
        model_a, _ = grid_search.load_model(tmp_path / "whole" / f"{grid_plan.point_name(a['lr'], 32, a['dropout'])}.pt")
        model_b, _ = grid_search.load_model(tmp_path / "killed" / f"{grid_plan.point_name(b['lr'], 32, b['dropout'])}.pt")
        assert all(torch.equal(x, y) for x, y in zip(model_a.state_dict().values(), model_b.state_dict().values()))
        # the killed attempt's run went on: one run per point, every epoch logged once
        assert b["run_id"] == killed[f"lstm-{grid_plan.point_name(b['lr'], 32, b['dropout'])}"]
        run = client.get_run(b["run_id"])
        assert run.info.status == "FINISHED"
        assert [m.step for m in client.get_metric_history(b["run_id"], "val_loss")] == list(range(1, b["epochs_run"] + 1))
    assert not (tmp_path / "killed/.resume").exists()
