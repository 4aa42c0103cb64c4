"""Grid search over sequence models: the jobs that train the grid's points.

One DAG job per architecture (LSTMs, GRU, transformer) and hidden size trains its
(lr, dropout) points together, in one fused computation
(:mod:`ferseq.sequence_model.fused_training`).

MLflow: each grid point is a child run of the fold's search
(:mod:`ferseq.sequence_model.selection` opens the search's parent run and records
the choice of the best point). Every run goes through a journal
(:mod:`ferseq.common.mlflow_outbox`): an unreachable tracking server stops
neither the search nor the grid jobs.

A grid job keeps its training state in ``resume_dir`` (at most every
``save_every`` seconds, at an epoch's end, and when SIGTERM or SIGUSR1 asks it to
stop); a new attempt with the same windows and settings continues every point
from there, logging into the same child runs (:mod:`ferseq.common.resume`).
"""

from __future__ import annotations

import json
import logging
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ferseq.common import mlflow_runs, model_files, resume
from ferseq.common.outputs import atomic_path
from ferseq.sequence_model import classifier, fused_training
from ferseq.sequence_model.grid_plan import point_name
from ferseq.sequence_model.selection import parent_ref
from ferseq.sequences import subject_medians, windows

log = logging.getLogger(__name__)


def load_split(path: str | Path, classes: list[str], features: str = "embedding",
               medians: tuple | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Sequence-model inputs (N, L, D) for ``windows.features`` and class indices (N,) of one split's windows file;
    with ``medians`` (:func:`ferseq.sequences.subject_medians.read`), each window normalised by its person's."""
    table, matrices = windows.read(path, windows.FEATURE_COLUMNS.get(features, ()))
    if medians is not None:
        matrices = subject_medians.normalise(matrices, table["subject"], medians, str(path))
    index = {name: i for i, name in enumerate(classes)}
    return windows.inputs(matrices, features), table["label"].map(index).to_numpy(dtype=np.int64)


def input_features(config: dict[str, Any]) -> str:
    """What the sequence models read: ``windows.features`` (default the reference's frame embeddings)."""
    return config.get("windows", {}).get("features", "embedding")


def device_setting(config: dict[str, Any]) -> str:
    """``sequence_model.device``: ``auto`` (the default: CUDA when the job sees a GPU), ``cpu`` or ``cuda``."""
    return config["sequence_model"].get("device", "auto")


# A grid job saves its state at an epoch's end once this many seconds have passed since the last save: a
# grid epoch takes seconds and a state of 25 points is hundreds of MB.
SAVE_EVERY = 30.0


def run_points(windows_dir: str | Path, arch: str, hidden: int, points: Sequence[tuple[float, float]],
               config: dict[str, Any], fold: int, parent_run_id: str, out_models: Sequence[str | Path],
               out_metrics: Sequence[str | Path], resume_dir: str | Path | None = None,
               save_every: float = SAVE_EVERY) -> list[dict[str, Any]]:
    """Train the ``(lr, dropout)`` points of one architecture and hidden size together on a fold's windows.

    The windows are read once and moved to the device once; the points are
    trained in one fused computation (:mod:`ferseq.sequence_model.fused_training`), each
    early-stopped on its own val loss, each a child run of the fold's search
    (``parent_run_id``: as :func:`ferseq.sequence_model.selection.open_search` wrote it). Each writes its model
    and val metrics to the matching entries of ``out_models`` and
    ``out_metrics``. ``resume_dir``: where the training state is kept between
    attempts (see the module docstring; removed on success). A point's
    per-epoch metrics reach MLflow when the state that holds them is saved.
    """
    cfg, classes, features = config["sequence_model"], config["classes"]["names"], input_features(config)
    if not len(points) == len(out_models) == len(out_metrics):
        raise ValueError(f"{len(points)} grid points but {len(out_models)} model and {len(out_metrics)} metrics outputs")
    device = fused_training.choose_device(device_setting(config))
    train_path, val_path = Path(windows_dir) / "train.parquet", Path(windows_dir) / "val.parquet"
    normalise = subject_medians.mode(config)
    medians = subject_medians.read(Path(windows_dir) / subject_medians.FILE) if normalise == "subject" else None
    (train_x, train_y) = load_split(train_path, classes, features, medians)
    (val_x, val_y) = load_split(val_path, classes, features, medians)
    if len(train_x) == 0:
        raise ValueError(f"fold {fold}: no train windows in {windows_dir}")
    names = [f"{arch}-{point_name(lr, hidden, dropout)}" for lr, dropout in points]
    log.info("%s h%d: %d grid points together on %s (%d train, %d val windows)", arch, hidden, len(points), device,
             len(train_x), len(val_x))
    store = None
    if resume_dir is not None:
        key = resume.fingerprint("sequence_model", fold, arch, hidden, [list(p) for p in points],
                                 {k: cfg.get(k) for k in ("epochs", "patience", "batch_size")}, classes, config["seed"],
                                 features, normalise,
                                 resume.stamps([train_path, val_path, *([Path(windows_dir) / subject_medians.FILE]
                                                                      if medians is not None else [])]),
                                 device.type)
        store = resume.Store(resume_dir, key, f"fold {fold} {arch} h{hidden}")
    saved = store.load() if store else None
    if saved:
        log.info("%s h%d: resuming at epoch %d from the state saved in %s", arch, hidden, saved["train"]["epoch"] + 1,
                 resume_dir)
    parent = parent_ref(parent_run_id)

    with ExitStack() as runs_open, resume.StopSignal() as stop:
        runs = [runs_open.enter_context(mlflow_runs.open_run(config, "sequence_model", fold, name, parent=parent,
                                                          resume=saved["journals"][i] if saved else None))
                for i, name in enumerate(names)]
        if not saved:
            for (lr, dropout), run in zip(points, runs):
                run.log_params({"arch": arch, "lr": lr, "hidden": hidden, "dropout": dropout, "epochs": cfg["epochs"],
                                "patience": cfg["patience"], "batch_size": cfg["batch_size"],
                                "train_windows": len(train_x), "val_windows": len(val_x), "device": device.type})
        histories: list[list[dict]] = [[] for _ in points]
        last_save = time.monotonic()

        def log_epochs() -> None:
            """Each point's epochs that its run does not have yet (after the state that holds them is saved)."""
            for run, history in zip(runs, histories):
                for m in history[run.last_step("val_loss"):]:
                    run.log_metrics({k: m[k] for k in ("train_loss", "val_loss", "val_macro_f1")}, step=m["epoch"])

        def on_epoch(index: int, m: dict) -> None:
            histories[index].append(m)
            log.info("%s epoch %d: train loss %.4f, val loss %.4f, val macro F1 %.3f", names[index], m["epoch"],
                     m["train_loss"], m["val_loss"], m["val_macro_f1"])

        def on_epoch_end(epoch: int, snapshot) -> None:
            nonlocal last_save
            if store is not None and not stop() and time.monotonic() - last_save < save_every:
                return
            if store is not None:
                store.save({"train": snapshot(), "journals": [str(run.journal.path) for run in runs]})
                last_save = time.monotonic()
            log_epochs()
            if stop():
                raise resume.Stopped(f"{arch} h{hidden}: {stop.received} after epoch {epoch}: state saved in "
                                     f"{resume_dir}; a new attempt resumes at epoch {epoch + 1}")

        if saved:
            histories = [list(r["history"]) for r in saved["train"]["results"]]
            log_epochs()
        # Every point starts from the config's seed, as a point trained alone would (see fused_training).
        grid_points = [fused_training.Point(lr, dropout, config["seed"]) for lr, dropout in points]
        results = fused_training.train_points(train_x, train_y, val_x, val_y, arch=arch, hidden=hidden, points=grid_points,
                                              num_classes=len(classes), epochs=cfg["epochs"], patience=cfg["patience"],
                                              batch_size=cfg["batch_size"], order_seed=config["seed"], device=device,
                                              on_epoch=on_epoch, on_epoch_end=on_epoch_end,
                                              resume_from=saved["train"] if saved else None)
        histories = [result.history for result in results]
        log_epochs()
        for result, run in zip(results, runs):
            run.log_metrics({"best_epoch": result.best_epoch, "best_val_loss": result.val_loss,
                             "best_val_macro_f1": result.val_macro_f1})
    # Written once the runs have ended: a run's end waits for the store, so each file names its run's id
    # whenever the store answers (while the runs are open their creation may still be on its way).
    done = [write_point(result, arch, lr, hidden, dropout, config, fold, run.run_id, train_x.shape, model, metric)
            for (lr, dropout), result, run, model, metric in zip(points, results, runs, out_models, out_metrics)]
    if store is not None:
        store.clear()
    return done


def write_point(result: classifier.TrainResult, arch: str, lr: float, hidden: int, dropout: float,
                config: dict[str, Any], fold: int, run_id: str | None, train_shape: tuple[int, ...],
                out_model: str | Path, out_metrics: str | Path) -> dict[str, Any]:
    """Write one trained grid point: its checkpoint (loadable by :func:`load_model`) and its val metrics.

    The checkpoint is data only: CPU tensors and plain JSON values (see
    :mod:`ferseq.common.model_files`), with the config it was trained with. ``run_id``: the point's MLflow
    run, None when the tracking store has not had it (its journal keeps the calls, see
    :mod:`ferseq.common.mlflow_outbox`).
    """
    metrics = {"arch": arch, "lr": lr, "hidden": hidden, "dropout": dropout, "fold": fold,
               "best_epoch": result.best_epoch, "val_loss": result.val_loss, "val_macro_f1": result.val_macro_f1,
               "epochs_run": len(result.history), "run_id": run_id}
    info = model_files.plain({
        "arch": arch, "features": input_features(config), "normalise": subject_medians.mode(config),
        "input_dim": int(train_shape[2]), "hidden": hidden,
        "dropout": dropout, "classes": config["classes"]["names"], "window_length": int(train_shape[1]),
        "history": result.history, "metrics": metrics,
        # the config as JSON would write it (a YAML date becomes its text), for the bundle's manifest
        "config": json.loads(json.dumps(config, default=str)), "config_hash": mlflow_runs.config_hash(config)})
    state = {k: v.detach().cpu().contiguous() for k, v in result.state_dict.items()}
    with atomic_path(out_model) as model_tmp, atomic_path(out_metrics) as metrics_tmp:
        torch.save({"state_dict": state, **info}, model_tmp)
        metrics_tmp.write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def load_model(path: str | Path) -> tuple[classifier.SequenceClassifier, dict[str, Any]]:
    """A trained grid point, in eval mode, with its checkpoint dict; read as data only (never unpickled code)."""
    checkpoint = model_files.read_torch(path, "sequence model")
    try:
        model = classifier.SequenceClassifier(checkpoint["arch"], checkpoint["input_dim"], checkpoint["hidden"],
                                              len(checkpoint["classes"]), checkpoint["dropout"],
                                              window_length=checkpoint["window_length"])
        model.load_state_dict(checkpoint["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise model_files.ModelFileError(f"{path}: not a ferseq sequence model ({type(err).__name__}: "
                                         f"{str(err)[:200]})") from None
    return model.eval(), checkpoint
