"""Grid search over sequence models (one DAG job per architecture and hidden size), and the selection of the best.

MLflow: each fold's search is a parent run (opened by :func:`open_search`),
each grid point a child run, and :func:`select` records the choice on the parent.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from ferseq import sequence_model, tracking, windows
from ferseq.grid import point_name
from ferseq.outputs import atomic_path

log = logging.getLogger(__name__)


def load_split(path: str | Path, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Window embeddings (N, L, D) and class indices (N,) of one split's windows file."""
    table, embeddings, _ = windows.read(path)
    index = {name: i for i, name in enumerate(classes)}
    return embeddings, table["label"].map(index).to_numpy(dtype=np.int64)


def open_search(config: dict[str, Any], fold: int, out_run_id: str | Path) -> str:
    """Create the fold's parent MLflow run for the search and write its id for the grid jobs."""
    import mlflow

    with tracking.start_run(config, "sequence_search", fold=fold) as run:
        mlflow.log_params({f"grid.{k}": str(v) for k, v in config["sequence_model"].items()})
    with atomic_path(out_run_id) as tmp:
        tmp.write_text(run.info.run_id + "\n")
    return run.info.run_id


def run_points(windows_dir: str | Path, arch: str, hidden: int, points: Sequence[tuple[float, float]],
               config: dict[str, Any], fold: int, parent_run_id: str, out_models: Sequence[str | Path],
               out_metrics: Sequence[str | Path]) -> list[dict[str, Any]]:
    """Train the ``(lr, dropout)`` points of one architecture and hidden size on a fold's windows, read once.

    Each point is early-stopped on val and writes its model and val metrics to
    the matching entries of ``out_models`` and ``out_metrics``.
    """
    classes = config["classes"]["names"]
    train = load_split(Path(windows_dir) / "train.parquet", classes)
    val = load_split(Path(windows_dir) / "val.parquet", classes)
    if len(train[0]) == 0:
        raise ValueError(f"fold {fold}: no train windows in {windows_dir}")
    return [train_point(train, val, arch, lr, hidden, dropout, config, fold, parent_run_id, model, metrics)
            for (lr, dropout), model, metrics in zip(points, out_models, out_metrics, strict=True)]


def train_point(train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray], arch: str, lr: float,
                hidden: int, dropout: float, config: dict[str, Any], fold: int, parent_run_id: str,
                out_model: str | Path, out_metrics: str | Path) -> dict[str, Any]:
    """Train one grid point as a child run of the fold's search; write its model and val metrics."""
    import mlflow

    cfg, classes = config["sequence_model"], config["classes"]["names"]
    (train_x, train_y), (val_x, val_y) = train, val
    params = {"arch": arch, "lr": lr, "hidden": hidden, "dropout": dropout}
    with tracking.start_run(config, "sequence_model", fold=fold, run_name=f"{arch}-{point_name(lr, hidden, dropout)}",
                            parent_run_id=parent_run_id) as run:
        mlflow.log_params({**params, "epochs": cfg["epochs"], "patience": cfg["patience"], "batch_size": cfg["batch_size"],
                           "train_windows": len(train_x), "val_windows": len(val_x)})

        def on_epoch(m: dict) -> None:
            mlflow.log_metrics({k: m[k] for k in ("train_loss", "val_loss", "val_macro_f1")}, step=m["epoch"])
            log.info("%s %s epoch %d: train loss %.4f, val loss %.4f, val macro F1 %.3f", arch,
                     point_name(lr, hidden, dropout), m["epoch"], m["train_loss"], m["val_loss"], m["val_macro_f1"])

        result = sequence_model.train(train_x, train_y, val_x, val_y, arch=arch, lr=lr, hidden=hidden, dropout=dropout,
                                      num_classes=len(classes), epochs=cfg["epochs"], patience=cfg["patience"],
                                      batch_size=cfg["batch_size"], seed=config["seed"], on_epoch=on_epoch)
        metrics = {**params, "fold": fold, "best_epoch": result.best_epoch, "val_loss": result.val_loss,
                   "val_macro_f1": result.val_macro_f1, "epochs_run": len(result.history), "run_id": run.info.run_id}
        mlflow.log_metrics({"best_epoch": result.best_epoch, "best_val_loss": result.val_loss,
                            "best_val_macro_f1": result.val_macro_f1})
    checkpoint = {"state_dict": result.state_dict, "arch": arch, "input_dim": int(train_x.shape[2]), "hidden": hidden,
                  "dropout": dropout, "classes": classes, "window_length": int(train_x.shape[1]),
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
