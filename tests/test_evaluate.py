"""Metrics match scikit-learn, the three methods see the same test windows, the summary is honest."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

from ferseq import evaluate, sequence_model, windows

CLASSES = ["neutral", "happy", "sad"]


def test_scores_equal_scikit_learn_on_hand_made_predictions():
    y_true = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 1])
    y_pred = np.array([0, 1, 0, 1, 2, 2, 2, 0, 2, 1])
    table = evaluate.scores(y_true, y_pred, CLASSES).set_index("class")
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=[0, 1, 2], zero_division=0)
    assert np.allclose(table.loc[CLASSES, "precision"], p) and np.allclose(table.loc[CLASSES, "recall"], r)
    assert np.allclose(table.loc[CLASSES, "f1"], f) and table.loc[CLASSES, "support"].tolist() == s.tolist()
    assert table.at["macro avg", "f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro"))
    assert table.at["accuracy", "f1"] == pytest.approx(accuracy_score(y_true, y_pred))
    # By hand: neutral P=2/3 R=2/3; happy P=2/3 R=2/3; sad P=3/4 R=3/4.
    assert table.at["sad", "f1"] == pytest.approx(0.75) and table.at["accuracy", "f1"] == pytest.approx(0.7)


def test_macro_average_leaves_out_classes_absent_from_test():
    y_true, y_pred = np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1])
    table = evaluate.scores(y_true, y_pred, CLASSES).set_index("class")
    assert table.at["sad", "support"] == 0
    assert table.at["macro avg", "f1"] == pytest.approx(f1_score(y_true, y_pred, labels=[0, 1], average="macro"))


def test_three_methods_are_scored_on_the_same_test_windows(tmp_path):
    rng = np.random.default_rng(0)
    n, length, dim = 7, 4, 6
    labels = rng.integers(0, 3, n)
    probs = rng.dirichlet(np.ones(3), size=(n, length)).astype(np.float32)
    table = pd.DataFrame({"window_id": np.arange(n), "segment_id": np.arange(n), "video_id": "v", "subject": "s",
                          "label": [CLASSES[i] for i in labels], "first_frame": np.arange(n) * length,
                          "last_frame": np.arange(n) * length + length - 1})
    embeddings = rng.normal(size=(n, length, dim)).astype(np.float32)
    windows.write(tmp_path / "test.parquet", table, embeddings, probs)
    model = sequence_model.SequenceClassifier("bilstm", dim, 5, 3, 0.5)
    torch.save({"state_dict": model.state_dict(), "arch": "bilstm", "input_dim": dim, "hidden": 5, "dropout": 0.5,
                "classes": CLASSES}, tmp_path / "m.pt")
    out = evaluate.predict(tmp_path / "test.parquet", tmp_path / "m.pt", CLASSES)
    assert np.array_equal(out["aggregation"][0], labels) and np.array_equal(out["cnn_lstm"][0], labels)
    assert np.array_equal(out["per_frame"][0], np.repeat(labels, length))  # every frame of those windows, once
    assert np.array_equal(out["per_frame"][1], probs.argmax(axis=2).reshape(-1))
    assert np.array_equal(out["aggregation"][1], probs.mean(axis=1).argmax(axis=1))
    with torch.inference_mode():
        expected = model.eval()(torch.tensor(embeddings)).argmax(dim=1).numpy()
    assert np.array_equal(out["cnn_lstm"][1], expected)


def test_summary_means_over_folds_and_says_identity_leaks(tmp_path):
    for fold, (f1, acc) in enumerate([(0.5, 0.8), (0.7, 0.6)]):
        d = tmp_path / str(fold)
        d.mkdir()
        for method in evaluate.METHODS:
            pd.DataFrame({"class": ["a", "macro avg", "accuracy"], "precision": [1, 1, np.nan], "recall": [1, 1, np.nan],
                          "f1": [1, f1, acc], "support": [1, 1, 1]}).to_csv(d / f"{method}.csv", index=False)
    pd.DataFrame({"split_unit": ["segment"], "identity_leak": [True]}).to_csv(tmp_path / "splits.csv", index=False)
    summary = evaluate.summarize([tmp_path / "0", tmp_path / "1"], tmp_path / "splits.csv", tmp_path / "s.csv", tmp_path / "s.md")
    assert summary["macro_f1"].tolist() == pytest.approx([60.0] * 3)
    assert summary["macro_f1_std"].tolist() == pytest.approx([10.0] * 3)
    md = (tmp_path / "s.md").read_text()
    assert "60.00 ± 10.00" in md and "Identity leaks across splits" in md and "different, private" in md
    assert pd.read_csv(tmp_path / "s.csv")["identity_leak"].all()


def test_confusion_png_is_written(tmp_path):
    evaluate.plot_confusion(np.array([[3, 1, 0], [0, 2, 0], [0, 0, 0]]), CLASSES, "t", tmp_path / "c.png")
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
