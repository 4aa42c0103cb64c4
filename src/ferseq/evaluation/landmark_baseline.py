"""The landmark baseline: a per-frame classifier on the pose-normalised 68 landmarks of the faces stage.

It needs no download and no GPU, and on posed expressions it is strong, so it is
the floor a sound frame CNN must clear: a CNN below it points at the CNN's
initialisation or training, not at the data. Per fold, a class-balanced
logistic regression (standardised inputs) is trained on every face frame of the
train segments; its inverse regularisation ``C`` is chosen on the val frames
(best macro F1, ties: the smaller C). The evaluation scores it on the test
windows' frames, per frame and as the window mean of its probabilities.

The saved model is its arrays in JSON (scaler mean and scale, coefficients,
intercepts, the train classes, C), never a pickle; :func:`predict_proba`
computes scikit-learn's probabilities from them.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import pyarrow.compute as pc
import pyarrow.parquet as pq
from scipy.special import expit
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from ferseq.common import mlflow_runs
from ferseq.common.errors import FerseqError
from ferseq.common.model_files import ModelFileError, looks_like_pickle
from ferseq.common.outputs import atomic_path
from ferseq.faces import landmark_features

log = logging.getLogger(__name__)

C_GRID = (0.001, 0.01, 0.1, 1.0, 10.0, 100.0)
FEATURES = "landmarks68_eye_normalised"
FORMAT = "ferseq.landmark_baseline"  # the file format's name (not the module's)
FORMAT_VERSION = 1


@dataclass(frozen=True)
class LandmarkModel:
    """A fitted baseline as its arrays: ``(x - mean) / scale`` then a multinomial logistic regression."""

    mean: np.ndarray  # (136,)
    scale: np.ndarray  # (136,)
    coef: np.ndarray  # (K, 136); K = 1 for two train classes, else one row per train class
    intercept: np.ndarray  # (K,)
    train_classes: np.ndarray  # (C',) class indices present in train, the columns of the probabilities
    C: float

    @classmethod
    def of(cls, pipeline: Pipeline) -> LandmarkModel:
        """The arrays of a pipeline :func:`fit` returned."""
        scaler, logistic = pipeline[0], pipeline[-1]
        return cls(scaler.mean_, scaler.scale_, logistic.coef_, logistic.intercept_,
                   np.asarray(logistic.classes_, np.int64), float(logistic.C))


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


def predict_proba(model: LandmarkModel | Pipeline, landmarks: np.ndarray, num_classes: int) -> np.ndarray:
    """Class probabilities (..., num_classes) of normalised landmarks (..., 136); a class absent from train gets 0.

    ``model``: a saved baseline (:func:`load`) or a pipeline :func:`fit`
    returned. The arithmetic is scikit-learn's own, step by step.
    """
    if isinstance(model, Pipeline):
        model = LandmarkModel.of(model)
    flat = landmarks.reshape(-1, landmark_features.WIDTH)
    probs = np.zeros((len(flat), num_classes), np.float32)
    if len(flat):
        x = flat.astype(np.float32 if flat.dtype == np.float32 else np.float64)  # the scaler keeps float32
        x = (x - model.mean.astype(x.dtype)) / model.scale.astype(x.dtype)
        scores = x @ model.coef.T + model.intercept
        if len(model.train_classes) == 2:  # scikit-learn's binary case: one logistic
            positive = expit(scores[:, 0])
            scores = np.stack([1 - positive, positive], axis=1)
        else:  # softmax, as sklearn.utils.extmath.softmax computes it
            scores = np.exp(scores - scores.max(axis=1, keepdims=True))
            scores /= scores.sum(axis=1, keepdims=True)
        probs[:, model.train_classes] = scores
    return probs.reshape(*landmarks.shape[:-1], num_classes)


def train_fold(faces: Mapping[str, str | Path], segments_path: str | Path, splits_path: str | Path, fold: int,
               config: Mapping[str, Any], out_model: str | Path, out_metrics: str | Path) -> dict[str, Any]:
    """Train one fold's baseline; write the model (JSON arrays, :func:`save`) and its val scores; log an MLflow run."""
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
    with mlflow_runs.open_run(dict(config), "landmark_baseline", fold=fold) as run:  # journalled: outages do not fail it
        run.log_params({"C": metrics["C"], "C_grid": list(C_GRID), "train_frames": metrics["train_frames"],
                        "val_frames": metrics["val_frames"], "class_weight": "balanced"})
        run.log_metrics({"val_macro_f1": metrics["val_macro_f1"], "val_accuracy": metrics["val_accuracy"]})
        run.log_dict(metrics, "landmark_baseline.json")
    with atomic_path(out_metrics) as metrics_tmp:
        metrics_tmp.write_text(json.dumps(metrics, indent=2) + "\n")
        save(out_model, model, classes)  # inside the metrics block: a failed save leaves neither file
    return metrics


def save(path: str | Path, model: LandmarkModel | Pipeline, classes: Sequence[str]) -> None:
    """Write a baseline as JSON: its arrays, the class names, C and the input features (atomically)."""
    if isinstance(model, Pipeline):
        model = LandmarkModel.of(model)
    saved = {"format": FORMAT, "format_version": FORMAT_VERSION, "features": FEATURES, "classes": list(classes),
             "C": model.C, "train_classes": model.train_classes.tolist(), "scaler_mean": model.mean.tolist(),
             "scaler_scale": model.scale.tolist(), "coef": model.coef.tolist(), "intercept": model.intercept.tolist(),
             # float32 when fitted on float32 frames: scikit-learn then scores in float32, and so does predict_proba
             "coef_dtype": model.coef.dtype.name}
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(saved) + "\n")  # floats round-trip exactly through JSON


def load(path: str | Path) -> tuple[LandmarkModel, list[str]]:
    """A trained baseline (its arrays) and its class names; the file is read as JSON data, never unpickled."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no landmark baseline there (the landmark_baseline rule writes it)")
    data = path.read_bytes()
    if looks_like_pickle(data):
        raise ModelFileError(f"{path}: a pickled landmark baseline (as ferseq before its JSON model files wrote "
                             "them); ferseq never loads a pickle. Rebuild it with the workflow (snakemake writes "
                             "landmark_baseline/model.json), then export again")
    try:
        saved = json.loads(data)
        if saved.get("format") != FORMAT:
            raise ValueError(f"format {saved.get('format')!r}, not {FORMAT!r}")
        if saved["format_version"] > FORMAT_VERSION:
            raise ValueError(f"format version {saved['format_version']} is newer than this ferseq reads "
                             f"({FORMAT_VERSION}); upgrade ferseq")
        dtype = {"float32": np.float32, "float64": np.float64}[saved["coef_dtype"]]
        model = LandmarkModel(np.asarray(saved["scaler_mean"], np.float64),
                              np.asarray(saved["scaler_scale"], np.float64), np.asarray(saved["coef"], dtype),
                              np.asarray(saved["intercept"], dtype), np.asarray(saved["train_classes"], np.int64),
                              float(saved["C"]))
        classes = [str(c) for c in saved["classes"]]
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise ModelFileError(f"{path}: not a ferseq landmark baseline ({type(err).__name__}: {err})") from None
    k, width = len(model.train_classes), landmark_features.WIDTH
    rows = 1 if k == 2 else k  # scikit-learn keeps one row of coefficients for two classes
    if (model.mean.shape != (width,) or model.scale.shape != (width,) or model.coef.shape != (rows, width)
            or model.intercept.shape != (rows,) or k < 2 or model.train_classes.min() < 0
            or model.train_classes.max() >= len(classes)):
        raise ModelFileError(f"{path}: a landmark baseline whose arrays do not fit together (scaler "
                             f"{model.mean.shape}, coefficients {model.coef.shape}, {k} train classes of {len(classes)})")
    return model, classes
