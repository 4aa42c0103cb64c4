"""The evaluate stage of one fold: every method's predictions on the same test data, then their scores.

First :func:`ferseq.evaluation.predictions.predict_fold` writes ``predictions.parquet``
(every method at frame, window and segment level); every score of the stage is
then computed from that file alone (:func:`score_fold`), so anyone can
recompute, pool or test them. Per method, ``{method}.csv`` holds precision,
recall, F1 and support per class, UAR (``macro avg`` recall), macro F1
(``macro avg`` f1) and WAR (``accuracy``) at the method's own level (frame or
window) and at segment level, and ``{method}.png`` their confusion matrices.
Test windows never overlap, so each test frame is scored once per method.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ferseq.common import mlflow_runs
from ferseq.common.outputs import atomic_path
from ferseq.evaluation import metrics, plots, predictions

log = logging.getLogger(__name__)

PREDICTIONS = "predictions.parquet"


def level_tables(ids: pd.DataFrame, probs: dict[str, np.ndarray], classes: list[str],
                 method: str) -> dict[str, tuple[pd.DataFrame, np.ndarray]]:
    """``level -> (class table, confusion matrix)`` of one method at each level it scores."""
    y = predictions.labels(ids, classes)
    out = {}
    for level in predictions.method_levels(method):
        rows = (ids["level"] == level).to_numpy()
        cm = metrics.confusion(y[rows], probs[method][rows].argmax(axis=1), len(classes))
        out[level] = (metrics.class_table(cm, classes), cm)
    return out


def score_fold(predictions_path: str | Path, config: dict[str, Any], fold: int, out_dir: str | Path,
               model_names: dict[str, str] | None = None) -> dict[str, pd.DataFrame]:
    """Write ``{method}.csv`` and ``{method}.png`` from a fold's predictions, and log one MLflow run per method.

    ``model_names``: method -> the sequence model file it used, logged as the run's ``sequence_model`` param
    (the other methods log the first sequence model's, as the evaluation's reference).
    """
    ids, probs, classes, names = predictions.read(predictions_path)
    model_names = model_names or {}
    default_model = next(iter(model_names.values()), "")
    out_dir = Path(out_dir)
    results = {}
    for method, name in names.items():
        levels = level_tables(ids, probs, classes, method)
        table = pd.concat([t.assign(level=level) for level, (t, _) in levels.items()], ignore_index=True)
        table = table[["level", "class", "precision", "recall", "f1", "support"]]
        with atomic_path(out_dir / f"{method}.csv") as tmp:
            table.to_csv(tmp, index=False, float_format="%.4f")
        plots.plot_confusion({level: cm for level, (_, cm) in levels.items()}, classes,
                                        f"fold {fold}: {name}", out_dir / f"{method}.png")
        summary = {}
        for level, (t, _) in levels.items():
            macro, accuracy = t.iloc[-2], t.iloc[-1]
            summary.update({f"{level}_uar": macro["recall"], f"{level}_war": accuracy["f1"],
                            f"{level}_macro_f1": macro["f1"], f"{level}_items": int(accuracy["support"])})
            log.info("fold %d %s, %d %ss: UAR %.4f, WAR %.4f, macro F1 %.4f", fold, name, accuracy["support"], level,
                     macro["recall"], accuracy["f1"], macro["f1"])
        native = predictions.native_level(method)
        own, _ = levels[native]
        # Logged through a journal (tracking.open_run): an unreachable tracking server neither fails nor stalls it.
        with mlflow_runs.open_run(config, "evaluate", fold=fold, run_name=f"evaluate-{method}-fold{fold}",
                               tags={"method": method}) as run:
            run.log_params({"method": method, "name": name, "level": native, "sequence_model": model_names.get(method, default_model),
                            "test_items": int(own.iloc[-1]["support"])})
            # macro_f1 and accuracy at the method's own level: the names of the reference's tables
            run.log_metrics({**summary, "macro_f1": own.iloc[-2]["f1"], "accuracy": own.iloc[-1]["f1"]})
            for _, row in own.iloc[:-2].iterrows():
                run.log_metrics({f"{k}_{row['class']}": row[k] for k in ("precision", "recall", "f1")})
            run.log_artifact(out_dir / f"{method}.csv")
            run.log_artifact(out_dir / f"{method}.png")
        results[method] = table
    return results


def selected_models(best_json: str | Path, config: dict[str, Any]) -> dict[str, str]:
    """family -> the model file of that family's best grid point (``best.json``), in the grid's family order."""
    from ferseq.sequence_model.grid_plan import families, family

    best = json.loads(Path(best_json).read_text())
    chosen = best.get("families") or {family(best["arch"]): best}
    order = [f for f in families(config["sequence_model"]) if f in chosen] or list(chosen)
    return {f: chosen[f]["model"] for f in order}


def evaluate_fold(test_windows: str | Path, best_json: str | Path, baseline_path: str | Path, splits_path: str | Path,
                  config: dict[str, Any], fold: int, out_dir: str | Path,
                  finetuned: str | Path | None = None) -> dict[str, pd.DataFrame]:
    """The evaluate stage: ``predictions.parquet`` first, then every method's tables and plots from it.

    ``finetuned``: the finetune stage's test window probabilities, when it ran (the row "CNN-LSTM fine-tuned").
    """
    models = selected_models(best_json, config)
    out_dir = Path(out_dir)
    ids, _, names = predictions.predict_fold(test_windows, models, baseline_path, splits_path,
                                         config["classes"]["names"], fold, out_dir / PREDICTIONS, finetuned)
    counts = ids["level"].value_counts()
    log.info("fold %d predictions: %d frames, %d windows, %d segments (%d shorter than one window) -> %s", fold,
             counts.get("frame", 0), counts.get("window", 0), counts.get("segment", 0),
             int(ids.loc[ids["level"] == "segment", "short_segment"].sum()), out_dir / PREDICTIONS)
    return score_fold(out_dir / PREDICTIONS, config, fold, out_dir,
                      {key: Path(models[f]).name for key, _, f in predictions.sequence_rows(names)})
