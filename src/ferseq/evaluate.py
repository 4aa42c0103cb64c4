"""Score the methods on exactly the same test windows of a fold, and summarise the folds.

- ``per_frame``: the frame CNN's argmax on every frame of every test window,
  against the window's (segment's) label;
- ``aggregation``: the argmax of the mean per-frame softmax over each window;
- ``cnn_lstm``: the selected sequence model on each window's inputs
  (``windows.features``);
- ``landmarks``: the landmark baseline (:mod:`ferseq.landmark_baseline`) on
  every frame of the test windows, the frames the per-frame CNN is scored on;
- ``landmarks_aggregation``: the argmax of the baseline's mean probabilities
  over each window.

Test windows never overlap, so each test frame is scored once per method.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from ferseq import landmark_baseline, tracking, windows
from ferseq.outputs import atomic_path

log = logging.getLogger(__name__)

METHODS = {"per_frame": "per-frame CNN", "aggregation": "frame aggregation", "cnn_lstm": "CNN-LSTM",
           "landmarks": "landmark baseline, per frame", "landmarks_aggregation": "landmark baseline, window mean"}
FRAME_METHODS = ("per_frame", "landmarks")  # scored per frame; the others per window
# DESIGN.md: the original report's figures, on its private 3-class data; shown for orientation only.
REFERENCE = {"per_frame": (48.23, 81.49), "aggregation": (50.41, 84.04), "cnn_lstm": (62.43, 83.30)}


def scores(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]) -> pd.DataFrame:
    """Precision, recall, F1 and support per class, their macro average, and accuracy (as the reference tables)."""
    labels = list(range(len(classes)))
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    table = pd.DataFrame({"class": classes, "precision": precision, "recall": recall, "f1": f1, "support": support})
    # Macro over the classes present in the test data: an absent class has no recall to average.
    present = support > 0
    macro = {"class": "macro avg", "precision": precision[present].mean(), "recall": recall[present].mean(),
             "f1": f1[present].mean(), "support": int(support.sum())}
    accuracy = {"class": "accuracy", "precision": np.nan, "recall": np.nan, "f1": float(np.mean(y_true == y_pred)),
                "support": int(support.sum())}
    return pd.concat([table, pd.DataFrame([macro, accuracy])], ignore_index=True)


def predict(test_windows: str | Path, model_path: str | Path, classes: list[str],
            baseline_path: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``method -> (y_true, y_pred)`` on the fold's test windows."""
    import torch

    from ferseq import search

    model, checkpoint = search.load_model(model_path)
    if checkpoint["classes"] != classes:
        raise ValueError(f"{model_path}: trained for classes {checkpoint['classes']}, config has {classes}")
    baseline, baseline_classes = landmark_baseline.load(baseline_path)
    if baseline_classes != classes:
        raise ValueError(f"{baseline_path}: trained for classes {baseline_classes}, config has {classes}")
    features = checkpoint.get("features", "embedding")
    table, matrices = windows.read(test_windows)
    index = {name: i for i, name in enumerate(classes)}
    y = table["label"].map(index).to_numpy(dtype=np.int64)
    with torch.inference_mode():
        x = torch.tensor(windows.inputs(matrices, features), dtype=torch.float32)
        lstm = model(x).argmax(dim=1).numpy() if len(y) else y
    probs = matrices["probs"]
    landmark_probs = landmark_baseline.predict_proba(baseline, matrices["landmarks"], len(classes))
    length = probs.shape[1]
    return {
        "per_frame": (np.repeat(y, length), probs.argmax(axis=2).reshape(-1)),
        "aggregation": (y, probs.mean(axis=1).argmax(axis=1)),
        "cnn_lstm": (y, lstm),
        "landmarks": (np.repeat(y, length), landmark_probs.argmax(axis=2).reshape(-1)),
        "landmarks_aggregation": (y, landmark_probs.mean(axis=1).argmax(axis=1)),
    }


def plot_confusion(counts: np.ndarray, classes: list[str], title: str, out_png: str | Path) -> None:
    """Confusion matrix as counts and row-normalised, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = counts.sum(axis=1, keepdims=True)
    normalised = np.divide(counts, rows, out=np.zeros_like(counts, dtype=float), where=rows > 0)
    fig, axes = plt.subplots(1, 2, figsize=(4 + 1.6 * len(classes), 1.5 + 0.8 * len(classes)))
    for ax, data, name, fmt in ((axes[0], counts, "counts", "d"), (axes[1], normalised, "row-normalised", ".2f")):
        ax.imshow(data, cmap="Blues", vmin=0, vmax=max(data.max(), 1e-9))
        ax.set(xticks=range(len(classes)), yticks=range(len(classes)), xticklabels=classes, yticklabels=classes,
               xlabel="predicted", ylabel="true", title=name)
        ax.tick_params(axis="x", rotation=45)
        for (i, j), value in np.ndenumerate(data):
            ax.text(j, i, format(value, fmt), ha="center", va="center",
                    color="white" if value > 0.6 * max(data.max(), 1e-9) else "black")
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def evaluate_fold(test_windows: str | Path, best_json: str | Path, baseline_path: str | Path, config: dict[str, Any],
                  fold: int, out_dir: str | Path) -> dict[str, pd.DataFrame]:
    """Write ``{method}.csv`` and ``{method}.png`` for every method, and log one MLflow run per method."""
    import mlflow

    classes = config["classes"]["names"]
    best = json.loads(Path(best_json).read_text())
    out_dir = Path(out_dir)
    results = {}
    for method, (y_true, y_pred) in predict(test_windows, best["model"], classes, baseline_path).items():
        table = scores(y_true, y_pred, classes)
        counts = confusion_matrix(y_true, y_pred, labels=list(range(len(classes))))
        with atomic_path(out_dir / f"{method}.csv") as tmp:
            table.to_csv(tmp, index=False, float_format="%.4f")
        unit = "frames" if method in FRAME_METHODS else "windows"
        title = f"fold {fold}: {METHODS[method]} ({len(y_true)} {unit})"
        plot_confusion(counts, classes, title, out_dir / f"{method}.png")
        macro, accuracy = table.iloc[-2]["f1"], table.iloc[-1]["f1"]
        log.info("fold %d %s: macro F1 %.4f, accuracy %.4f on %d %s", fold, METHODS[method], macro, accuracy,
                 len(y_true), unit)
        with tracking.start_run(config, "evaluate", fold=fold, run_name=f"evaluate-{method}-fold{fold}", tags={"method": method}):
            mlflow.log_params({"method": method, "sequence_model": Path(best["model"]).name, "test_items": len(y_true)})
            mlflow.log_metrics({"macro_f1": macro, "accuracy": accuracy, "macro_precision": table.iloc[-2]["precision"],
                                "macro_recall": table.iloc[-2]["recall"]})
            for _, row in table.iloc[:-2].iterrows():
                mlflow.log_metrics({f"{k}_{row['class']}": row[k] for k in ("precision", "recall", "f1")})
            mlflow.log_artifact(str(out_dir / f"{method}.csv"))
            mlflow.log_artifact(str(out_dir / f"{method}.png"))
        results[method] = table
    return results


def summarize(fold_dirs: list[str | Path], split_summary: str | Path, out_csv: str | Path, out_md: str | Path) -> pd.DataFrame:
    """One row per method: macro F1 and accuracy in percent, mean and std over folds, beside the reference figures."""
    rows, per_fold = [], {}
    for method, name in METHODS.items():
        macro, accuracy = [], []
        for fold_dir in fold_dirs:
            table = pd.read_csv(Path(fold_dir) / f"{method}.csv").set_index("class")
            macro.append(100 * table.at["macro avg", "f1"])
            accuracy.append(100 * table.at["accuracy", "f1"])
        per_fold[method] = np.array(macro)
        reference = REFERENCE.get(method, (np.nan, np.nan))
        rows.append({"method": name, "scored_on": "frames" if method in FRAME_METHODS else "windows",
                     "macro_f1": np.mean(macro), "macro_f1_std": np.std(macro) if len(macro) > 1 else np.nan,
                     "accuracy": np.mean(accuracy), "accuracy_std": np.std(accuracy) if len(accuracy) > 1 else np.nan,
                     "folds": len(macro), "reference_macro_f1_private_data": reference[0],
                     "reference_accuracy_private_data": reference[1]})
    summary = pd.DataFrame(rows)
    splits = pd.read_csv(split_summary)
    unit, leak = splits["split_unit"].iloc[0], bool(splits["identity_leak"].iloc[0])
    below = int((per_fold["per_frame"] < per_fold["landmarks"]).sum())
    with atomic_path(out_csv) as tmp:
        summary.assign(split_unit=unit, identity_leak=leak, cnn_below_landmarks_folds=below).to_csv(
            tmp, index=False, float_format="%.2f")
    with atomic_path(out_md) as tmp:
        tmp.write_text(markdown(summary, unit, leak, below))
    return summary


def baseline_note(below: int, folds: int) -> str:
    """What a reader should conclude from the per-frame CNN against the landmark baseline (macro F1 per fold)."""
    if below == 0:
        return (f"The per-frame CNN is above the landmark baseline on {'every fold' if folds > 1 else 'the test data'} "
                "(macro F1): it learns more than the face shape alone gives.")
    where = "every fold" if below == folds else f"{below} of {folds} folds"
    if folds == 1:
        where = "the test data"
    return (f"**The frame CNN is below the landmark baseline on {where}** (macro F1): a sound frame model should clear "
            "this floor. Check frame_model.pretrained (the reference starts from ImageNet weights) and the frame "
            "model's training curve (results/folds/*/frame_model/metrics.csv) before reading the CNN and CNN-LSTM rows.")


def markdown(summary: pd.DataFrame, unit: str, leak: bool, below: int) -> str:
    """The summary as a Markdown table with the caveats a reader needs."""

    def cell(mean: float, std: float) -> str:
        return f"{mean:.2f}" if np.isnan(std) else f"{mean:.2f} ± {std:.2f}"

    def reference(value: float) -> str:
        return "" if np.isnan(value) else f"{value:.2f}"

    folds = int(summary["folds"].iloc[0])
    lines = [
        "# ferseq evaluation summary", "",
        f"Test windows of {folds} fold(s), every method on the same frames; mean ± std over folds when there are "
        "several. Percent.", "",
        "| method | scored on | macro F1 | accuracy | reference macro F1* | reference accuracy* |",
        "|---|---|---|---|---|---|",
    ]
    for row in summary.itertuples():
        lines.append(f"| {row.method} | {row.scored_on} | {cell(row.macro_f1, row.macro_f1_std)} | "
                     f"{cell(row.accuracy, row.accuracy_std)} | {reference(row.reference_macro_f1_private_data)} | "
                     f"{reference(row.reference_accuracy_private_data)} |")
    lines += ["", "\\* Reference figures are from the original report on a different, private 3-class dataset; "
              "they are not comparable to this run's numbers, only a guide to what the protocol achieved there.", "",
              "The landmark baseline is a logistic regression on the 68 pose-normalised face landmarks of each frame "
              "(no CNN, no download): the floor that the frame CNN should clear.", "",
              baseline_note(below, folds), ""]
    if leak:
        lines += [f"**Identity leaks across splits**: this run splits by {unit}, not by subject, so the same person "
                  "appears in train and test and every score above is optimistic.", ""]
    else:
        lines += ["Splits are by subject: no person is in two splits of a fold.", ""]
    return "\n".join(lines)
