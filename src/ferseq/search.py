"""Grid search over sequence models, and the selection of the best.

One DAG job per architecture and hidden size trains its (lr, dropout) points
together, in one fused computation (:mod:`ferseq.fused_lstm`).

MLflow: each fold's search is a parent run (opened by :func:`open_search`),
each grid point a child run, and :func:`select` records the choice on the parent.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from ferseq import fused_lstm, sequence_model, tracking, windows
from ferseq.grid import point_name
from ferseq.outputs import atomic_path

log = logging.getLogger(__name__)


def load_split(path: str | Path, classes: list[str], features: str = "embedding") -> tuple[np.ndarray, np.ndarray]:
    """Sequence-model inputs (N, L, D) for ``windows.features`` and class indices (N,) of one split's windows file."""
    table, matrices = windows.read(path, windows.FEATURE_COLUMNS.get(features, ()))
    index = {name: i for i, name in enumerate(classes)}
    return windows.inputs(matrices, features), table["label"].map(index).to_numpy(dtype=np.int64)


def input_features(config: dict[str, Any]) -> str:
    """What the sequence models read: ``windows.features`` (default the reference's frame embeddings)."""
    return config.get("windows", {}).get("features", "embedding")


def open_search(config: dict[str, Any], fold: int, out_run_id: str | Path) -> str:
    """Create the fold's parent MLflow run for the search and write its id for the grid jobs."""
    import mlflow

    with tracking.start_run(config, "sequence_search", fold=fold) as run:
        mlflow.log_params({f"grid.{k}": str(v) for k, v in config["sequence_model"].items()})
    with atomic_path(out_run_id) as tmp:
        tmp.write_text(run.info.run_id + "\n")
    return run.info.run_id


def device_setting(config: dict[str, Any]) -> str:
    """``sequence_model.device``: ``auto`` (the default: CUDA when the job sees a GPU), ``cpu`` or ``cuda``."""
    return config["sequence_model"].get("device", "auto")


def run_points(windows_dir: str | Path, arch: str, hidden: int, points: Sequence[tuple[float, float]],
               config: dict[str, Any], fold: int, parent_run_id: str, out_models: Sequence[str | Path],
               out_metrics: Sequence[str | Path]) -> list[dict[str, Any]]:
    """Train the ``(lr, dropout)`` points of one architecture and hidden size together on a fold's windows.

    The windows are read once and moved to the device once; the points are
    trained in one fused computation (:mod:`ferseq.fused_lstm`), each
    early-stopped on its own val loss, each a child run of the fold's search.
    Each writes its model and val metrics to the matching entries of
    ``out_models`` and ``out_metrics``.
    """
    import mlflow
    from mlflow.entities import Metric, Param

    cfg, classes, features = config["sequence_model"], config["classes"]["names"], input_features(config)
    if not len(points) == len(out_models) == len(out_metrics):
        raise ValueError(f"{len(points)} grid points but {len(out_models)} model and {len(out_metrics)} metrics outputs")
    device = fused_lstm.choose_device(device_setting(config))
    (train_x, train_y) = load_split(Path(windows_dir) / "train.parquet", classes, features)
    (val_x, val_y) = load_split(Path(windows_dir) / "val.parquet", classes, features)
    if len(train_x) == 0:
        raise ValueError(f"fold {fold}: no train windows in {windows_dir}")
    names = [point_name(lr, hidden, dropout) for lr, dropout in points]
    log.info("%s h%d: %d grid points together on %s (%d train, %d val windows)", arch, hidden, len(points), device,
             len(train_x), len(val_x))
    with tracking.open_child_runs(config, "sequence_model", fold, [f"{arch}-{n}" for n in names], parent_run_id) as runs:
        client = mlflow.MlflowClient()  # after open_child_runs has set the tracking URI
        for (lr, dropout), run_id in zip(points, runs):
            params = {"arch": arch, "lr": lr, "hidden": hidden, "dropout": dropout, "epochs": cfg["epochs"],
                      "patience": cfg["patience"], "batch_size": cfg["batch_size"], "train_windows": len(train_x),
                      "val_windows": len(val_x), "device": device.type}
            client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])

        def on_epoch(index: int, m: dict) -> None:
            now = int(time.time() * 1000)
            client.log_batch(runs[index], metrics=[Metric(k, m[k], now, m["epoch"])
                                                   for k in ("train_loss", "val_loss", "val_macro_f1")])
            log.info("%s %s epoch %d: train loss %.4f, val loss %.4f, val macro F1 %.3f", arch, names[index],
                     m["epoch"], m["train_loss"], m["val_loss"], m["val_macro_f1"])

        # Every point starts from the config's seed, as a point trained alone would (see fused_lstm).
        grid_points = [fused_lstm.Point(lr, dropout, config["seed"]) for lr, dropout in points]
        results = fused_lstm.train_points(train_x, train_y, val_x, val_y, arch=arch, hidden=hidden, points=grid_points,
                                          num_classes=len(classes), epochs=cfg["epochs"], patience=cfg["patience"],
                                          batch_size=cfg["batch_size"], order_seed=config["seed"], device=device,
                                          on_epoch=on_epoch)
        done = []
        for (lr, dropout), result, run_id, out_model, out_metric in zip(points, results, runs, out_models, out_metrics):
            client.log_batch(run_id, metrics=[Metric(k, v, int(time.time() * 1000), 0) for k, v in (
                ("best_epoch", result.best_epoch), ("best_val_loss", result.val_loss),
                ("best_val_macro_f1", result.val_macro_f1))])
            done.append(write_point(result, arch, lr, hidden, dropout, config, fold, run_id, train_x.shape,
                                    out_model, out_metric))
    return done


def write_point(result: sequence_model.TrainResult, arch: str, lr: float, hidden: int, dropout: float,
                config: dict[str, Any], fold: int, run_id: str, train_shape: tuple[int, ...],
                out_model: str | Path, out_metrics: str | Path) -> dict[str, Any]:
    """Write one trained grid point: its checkpoint (loadable by :func:`load_model`) and its val metrics."""
    metrics = {"arch": arch, "lr": lr, "hidden": hidden, "dropout": dropout, "fold": fold,
               "best_epoch": result.best_epoch, "val_loss": result.val_loss, "val_macro_f1": result.val_macro_f1,
               "epochs_run": len(result.history), "run_id": run_id}
    checkpoint = {"state_dict": result.state_dict, "arch": arch, "features": input_features(config),
                  "input_dim": int(train_shape[2]), "hidden": hidden,
                  "dropout": dropout, "classes": config["classes"]["names"], "window_length": int(train_shape[1]),
                  "history": result.history, "metrics": metrics}
    with atomic_path(out_model) as model_tmp, atomic_path(out_metrics) as metrics_tmp:
        torch.save(checkpoint, model_tmp)
        metrics_tmp.write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def load_model(path: str | Path) -> tuple[sequence_model.SequenceClassifier, dict[str, Any]]:
    """A trained grid point, in eval mode, with its checkpoint dict."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    model = sequence_model.SequenceClassifier(checkpoint["arch"], checkpoint["input_dim"], checkpoint["hidden"],
                                              len(checkpoint["classes"]), checkpoint["dropout"])
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval(), checkpoint


def select(metrics_files: Iterable[str | Path], config: dict[str, Any], fold: int, parent_run_id: str,
           out_best: str | Path) -> dict[str, Any]:
    """Pick the grid point with the best val macro F1 (ties: lower val loss) and record it."""
    import mlflow

    points = []
    for path in metrics_files:
        m = json.loads(Path(path).read_text())
        m["model"] = str(Path(path).with_suffix(".pt"))
        points.append(m)
    best = min(points, key=lambda m: (-m["val_macro_f1"], m["val_loss"]))
    log.info("fold %d: best of %d grid points: %s (val macro F1 %.3f, val loss %.4f)", fold, len(points),
             Path(best["model"]).relative_to(Path(best["model"]).parents[1]), best["val_macro_f1"], best["val_loss"])
    tracking.experiment_id(config)
    with mlflow.start_run(run_id=parent_run_id):
        mlflow.log_params({f"best.{k}": best[k] for k in ("arch", "lr", "hidden", "dropout")})
        mlflow.log_metrics({"best_val_macro_f1": best["val_macro_f1"], "best_val_loss": best["val_loss"]})
        mlflow.log_dict({"points": points}, "grid.json")
    with atomic_path(out_best) as tmp:
        tmp.write_text(json.dumps({**best, "points": len(points)}, indent=2) + "\n")
    return best
