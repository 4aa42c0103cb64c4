"""LSTM family, weighted loss, early stopping, grid points and their selection."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch

from ferseq import grid, search, sequence_model, windows


def windows_of(n: int, classes: int, rng: np.random.Generator, separable: bool = True, dim: int = 8, length: int = 6):
    y = rng.integers(0, classes, n)
    x = rng.normal(size=(n, length, dim)).astype(np.float32)
    if separable:
        x[:, :, 0] += 2.0 * y[:, None]  # the class shifts one feature over the whole window
    return x, y


@pytest.mark.parametrize("arch", ["lstm", "lstm2", "bilstm"])
def test_architectures_map_windows_to_class_logits(arch):
    model = sequence_model.SequenceClassifier(arch, input_dim=8, hidden=5, num_classes=3, dropout=0.5)
    assert model(torch.zeros(4, 16, 8)).shape == (4, 3)
    layers, bidirectional = sequence_model.ARCHITECTURES[arch]
    assert model.lstm.num_layers == layers and model.lstm.bidirectional == bidirectional
    assert model.lstm.dropout == (0.5 if arch == "lstm2" else 0.0)


def test_class_weights_are_inverse_frequency():
    weights = sequence_model.class_weights(np.array([0, 0, 0, 1, 2, 2]), 4)
    assert torch.allclose(weights, torch.tensor([6 / 9, 6 / 3, 6 / 6, 0.0]))


def test_training_lowers_the_loss_and_keeps_the_best_epoch():
    rng = np.random.default_rng(0)
    train_x, train_y = windows_of(96, 3, rng)
    val_x, val_y = windows_of(48, 3, rng)
    result = sequence_model.train(train_x, train_y, val_x, val_y, arch="lstm", lr=0.01, hidden=16, dropout=0.2,
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
    result = sequence_model.train(train_x, train_y, val_x, val_y, arch="bilstm", lr=0.05, hidden=16, dropout=0.0,
                                  num_classes=2, epochs=200, patience=3, batch_size=16, seed=1)
    assert len(result.history) == result.best_epoch + 3 < 200


def test_same_seed_same_result():
    rng = np.random.default_rng(2)
    train_x, train_y = windows_of(32, 2, rng)
    val_x, val_y = windows_of(16, 2, rng)
    kwargs = dict(arch="lstm2", lr=0.01, hidden=8, dropout=0.3, num_classes=2, epochs=3, patience=3, batch_size=8, seed=7)
    a = sequence_model.train(train_x, train_y, val_x, val_y, **kwargs)
    b = sequence_model.train(train_x, train_y, val_x, val_y, **kwargs)
    assert [h["val_loss"] for h in a.history] == [h["val_loss"] for h in b.history]


def test_grid_expands_every_point_and_cuts_it_into_jobs():
    cfg = {"architectures": ["lstm", "bilstm"], "lr": [0.01, 0.001], "hidden": [64, 32], "dropout": [0.5, 0.4]}
    points = grid.grid(cfg)
    assert len(points) == len(set(points)) == 16 and ("bilstm", "lr0.001_h32_d0.4") in points
    assert grid.jobs(cfg) == [("lstm", 64), ("lstm", 32), ("bilstm", 64), ("bilstm", 32)]
    outputs = grid.job_outputs(cfg, "f{{fold}}/{{arch}}/{point}.pt")
    assert outputs == ["f{fold}/{arch}/lr0.01_h{hidden}_d0.5.pt", "f{fold}/{arch}/lr0.01_h{hidden}_d0.4.pt",
                       "f{fold}/{arch}/lr0.001_h{hidden}_d0.5.pt", "f{fold}/{arch}/lr0.001_h{hidden}_d0.4.pt"]
    # Every point belongs to exactly one job's outputs.
    filled = {(arch, o.format(fold=0, arch=arch, hidden=h).split("/")[-1][:-3])
              for arch, h in grid.jobs(cfg) for o in outputs}
    assert filled == set(points)


def test_grid_point_and_selection_log_to_mlflow(tmp_path):
    rng = np.random.default_rng(3)
    classes = ["happy", "sad"]
    for split, n in (("train", 40), ("val", 20)):
        x, y = windows_of(n, 2, rng)
        table = pd.DataFrame({
            "window_id": np.arange(n), "segment_id": np.arange(n), "video_id": "v", "subject": "s",
            "label": [classes[i] for i in y], "first_frame": 0, "last_frame": 5})
        windows.write(tmp_path / "w" / f"{split}.parquet", table, x, np.zeros((n, 6, 2), np.float32))
    config = {"experiment": "grid-test", "seed": 0, "classes": {"names": classes},
              "mlflow": {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db"},
              "sequence_model": {"architectures": ["lstm"], "lr": [0.01, 0.1], "hidden": [8], "dropout": [0.5],
                                 "epochs": 4, "patience": 2, "batch_size": 8}}
    parent = search.open_search(config, 0, tmp_path / "run_id.txt")
    # One job: both lr points of (lstm, hidden 8), the windows read once.
    points = grid.job_points(config["sequence_model"])
    stems = [tmp_path / "lstm" / grid.point_name(lr, 8, dropout) for lr, dropout in points]
    search.run_points(tmp_path / "w", "lstm", 8, points, config, 0, parent,
                      [f"{s}.pt" for s in stems], [f"{s}.json" for s in stems])
    files = [f"{s}.json" for s in stems]
    best = search.select(files, config, 0, parent, tmp_path / "best.json")
    scores = [json.loads(open(f).read()) for f in files]
    assert best["val_macro_f1"] == max(s["val_macro_f1"] for s in scores)
    model, checkpoint = search.load_model(best["model"])
    assert checkpoint["classes"] == classes and not model.training
    runs = mlflow.search_runs(experiment_names=["grid-test"], output_format="list")
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent]
    assert len(children) == 2 and all(r.data.tags["stage"] == "sequence_model" for r in children)
    (parent_run,) = [r for r in runs if r.info.run_id == parent]
    assert parent_run.data.params["best.lr"] == str(best["lr"])
    assert len(mlflow.MlflowClient().get_metric_history(children[0].info.run_id, "val_loss")) == len(
        torch.load(tmp_path / "lstm" / (grid.point_name(0.01, 8, 0.5) + ".pt"), weights_only=False)["history"])
