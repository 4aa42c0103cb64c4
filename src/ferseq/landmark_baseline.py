"""The landmark baseline: a per-frame classifier on the pose-normalised 68 landmarks of the faces stage.

It needs no download and no GPU, and on posed expressions it is strong, so it is
the floor a sound frame CNN must clear: a CNN below it points at the CNN's
initialisation or training, not at the data. Per fold, a class-balanced
logistic regression (standardised inputs) is trained on every face frame of the
train segments; its inverse regularisation ``C`` is chosen on the val frames
(best macro F1, ties: the smaller C). The evaluation scores it on the test
windows' frames, per frame and as the window mean of its probabilities.
"""

from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import pyarrow.compute as pc
import pyarrow.parquet as pq
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from ferseq import landmark_features, tracking
from ferseq.errors import FerseqError
from ferseq.outputs import atomic_path

log = logging.getLogger(__name__)

C_GRID = (0.001, 0.01, 0.1, 1.0, 10.0, 100.0)


def fold_landmarks(faces: Mapping[str, str | Path], segments_path: str | Path, splits_path: str | Path, fold: int,
                   classes: Sequence[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Normalised landmarks (N, 136) and class indices (N,) of every face frame of the fold's train and val segments.

    ``faces``: video_id -> faces Parquet file. Returns split -> (x, y).
    """
    segments = pd.read_parquet(segments_path, columns=["segment_id", "video_id", "label"])
    splits = pd.read_parquet(splits_path, columns=["fold", "segment_id", "split"])
    wanted = segments.merge(splits.loc[(splits["fold"] == fold) & splits["split"].isin(["train", "val"]),
                                       ["segment_id", "split"]], on="segment_id")
    if wanted.empty:
        raise FerseqError(f"{splits_path}: fold {fold} has no train or val segments")
    index = {name: i for i, name in enumerate(classes)}
    wanted = wanted.assign(y=wanted["label"].map(index)).set_index("segment_id")
    parts: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {"train": [], "val": []}
    for video_id, mine in wanted.groupby("video_id", sort=True):
        if video_id not in faces:
            raise FerseqError(f"fold {fold}: no faces file given for video {video_id!r}")
        table = pq.read_table(faces[video_id], columns=["segment_id", "face_found", "landmarks"],
                              filters=[("segment_id", "in", mine.index.tolist())])
        table = table.filter(pc.and_(table["face_found"], pc.is_valid(table["landmarks"])))
        points = table["landmarks"].combine_chunks().flatten().to_numpy(zero_copy_only=False)
        x = landmark_features.normalise(points.reshape(len(table), landmark_features.WIDTH))
        rows = wanted.loc[table["segment_id"].to_numpy()]
        for split in parts:
            keep = (rows["split"] == split).to_numpy()
            parts[split].append((x[keep], rows["y"].to_numpy(np.int64)[keep]))
    return {split: (np.concatenate([x for x, _ in chunks]) if chunks else np.zeros((0, landmark_features.WIDTH), np.float32),
                    np.concatenate([y for _, y in chunks]) if chunks else np.zeros(0, np.int64))
            for split, chunks in parts.items()}


def fit(train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray], seed: int = 0,
        c_grid: Sequence[float] = C_GRID) -> tuple[Pipeline, pd.DataFrame]:
    """The baseline trained on ``train`` with C chosen on ``val``, and the val score of every C."""
    (train_x, train_y), (val_x, val_y) = train, val
    if len(train_y) == 0 or len(val_y) == 0:
        raise FerseqError(f"the landmark baseline needs train and val face frames (train {len(train_y)}, val {len(val_y)})")
    if len(np.unique(train_y)) < 2:
        raise FerseqError("the landmark baseline needs at least two classes among the train face frames")
    rows, models = [], []
    for c in c_grid:
        model = make_pipeline(StandardScaler(), LogisticRegression(C=c, class_weight="balanced", max_iter=2000,
                                                                   random_state=seed))
        model.fit(train_x, train_y)
        pred = model.predict(val_x)
        rows.append({"C": c, "val_macro_f1": f1_score(val_y, pred, labels=np.unique(val_y), average="macro",
                                                      zero_division=0),
                     "val_accuracy": float(np.mean(pred == val_y))})
        models.append(model)
    table = pd.DataFrame(rows)
    best = min(range(len(rows)), key=lambda i: (-round(rows[i]["val_macro_f1"], 12), rows[i]["C"]))
    table["chosen"] = table.index == best
    return models[best], table


def predict_proba(model: Pipeline, landmarks: np.ndarray, num_classes: int) -> np.ndarray:
    """Class probabilities (..., num_classes) of normalised landmarks (..., 136); a class absent from train gets 0."""
    flat = landmarks.reshape(-1, landmark_features.WIDTH)
    probs = np.zeros((len(flat), num_classes), np.float32)
    if len(flat):
        probs[:, model.classes_] = model.predict_proba(flat)
    return probs.reshape(*landmarks.shape[:-1], num_classes)


def train_fold(faces: Mapping[str, str | Path], segments_path: str | Path, splits_path: str | Path, fold: int,
               config: Mapping[str, Any], out_model: str | Path, out_metrics: str | Path) -> dict[str, Any]:
    """Train one fold's baseline; write the model (pickle) and its val scores (JSON); log one MLflow run."""
    import mlflow

    classes = list(config["classes"]["names"])
    data = fold_landmarks(faces, segments_path, splits_path, fold, classes)
    counts = {split: dict(zip(classes, np.bincount(y, minlength=len(classes)).tolist())) for split, (_, y) in data.items()}
    log.info("fold %s landmark baseline: %d train and %d val face frames; train frames per class: %s", fold,
             len(data["train"][1]), len(data["val"][1]), counts["train"])
    try:
        model, grid = fit(data["train"], data["val"], int(config.get("seed", 42)))
    except FerseqError as err:
        raise FerseqError(f"fold {fold}: {err}") from None
    chosen = grid[grid["chosen"]].iloc[0]
    log.info("fold %s landmark baseline: val macro F1 per C:\n%s\nchosen C = %g", fold,
             grid.to_string(index=False, float_format="%.4f"), chosen["C"])
    metrics = {"fold": fold, "C": float(chosen["C"]), "val_macro_f1": float(chosen["val_macro_f1"]),
               "val_accuracy": float(chosen["val_accuracy"]), "train_frames": len(data["train"][1]),
               "val_frames": len(data["val"][1]), "train_frames_per_class": counts["train"],
               "grid": grid.drop(columns="chosen").to_dict(orient="records")}
    with tracking.start_run(dict(config), "landmark_baseline", fold=fold):
        mlflow.log_params({"C": metrics["C"], "C_grid": list(C_GRID), "train_frames": metrics["train_frames"],
                           "val_frames": metrics["val_frames"], "class_weight": "balanced"})
        mlflow.log_metrics({"val_macro_f1": metrics["val_macro_f1"], "val_accuracy": metrics["val_accuracy"]})
        mlflow.log_dict(metrics, "landmark_baseline.json")
    with atomic_path(out_model) as model_tmp, atomic_path(out_metrics) as metrics_tmp:
        model_tmp.write_bytes(pickle.dumps({"model": model, "classes": classes, "features": "landmarks68_eye_normalised"}))
        metrics_tmp.write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def load(path: str | Path) -> tuple[Pipeline, list[str]]:
    """A trained baseline and its classes."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no landmark baseline there (the landmark_baseline rule writes it)")
    saved = pickle.loads(path.read_bytes())
    return saved["model"], saved["classes"]
