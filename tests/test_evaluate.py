"""Metrics match scikit-learn, every method sees the same test windows, the summary is honest."""

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


def fitted_baseline(tmp_path, rng):
    """A real landmark baseline, fitted on random landmarks, saved as the rule saves it."""
    import pickle

    from ferseq import landmark_baseline

    x, y = rng.normal(size=(60, 136)).astype(np.float32), np.arange(60) % 3
    model, _ = landmark_baseline.fit((x, y), (x, y))
    (tmp_path / "baseline.pkl").write_bytes(pickle.dumps({"model": model, "classes": CLASSES}))
    return model


@pytest.mark.parametrize("features", ["embedding", "landmarks", "both"])
def test_every_method_is_scored_on_the_same_test_windows(tmp_path, features):
    rng = np.random.default_rng(0)
    n, length, dim = 7, 4, 6
    labels = rng.integers(0, 3, n)
    probs = rng.dirichlet(np.ones(3), size=(n, length)).astype(np.float32)
    table = pd.DataFrame({"window_id": np.arange(n), "segment_id": np.arange(n), "video_id": "v", "subject": "s",
                          "label": [CLASSES[i] for i in labels], "first_frame": np.arange(n) * length,
                          "last_frame": np.arange(n) * length + length - 1})
    matrices = {"embedding": rng.normal(size=(n, length, dim)).astype(np.float32), "probs": probs,
                "landmarks": rng.normal(size=(n, length, 136)).astype(np.float32)}
    windows.write(tmp_path / "test.parquet", table, matrices)
    inputs = windows.inputs(matrices, features)
    model = sequence_model.SequenceClassifier("bilstm", inputs.shape[2], 5, 3, 0.5)
    torch.save({"state_dict": model.state_dict(), "arch": "bilstm", "features": features, "input_dim": inputs.shape[2],
                "hidden": 5, "dropout": 0.5, "classes": CLASSES}, tmp_path / "m.pt")
    baseline = fitted_baseline(tmp_path, rng)
    out = evaluate.predict(tmp_path / "test.parquet", tmp_path / "m.pt", CLASSES, tmp_path / "baseline.pkl")
    assert set(out) == set(evaluate.METHODS)
    for method in ("aggregation", "cnn_lstm", "landmarks_aggregation"):
        assert np.array_equal(out[method][0], labels)
    for method in evaluate.FRAME_METHODS:  # every frame of those windows, once: the same frames for both
        assert np.array_equal(out[method][0], np.repeat(labels, length))
    assert np.array_equal(out["per_frame"][1], probs.argmax(axis=2).reshape(-1))
    assert np.array_equal(out["aggregation"][1], probs.mean(axis=1).argmax(axis=1))
    frame_probs = baseline.predict_proba(matrices["landmarks"].reshape(-1, 136))
    assert np.array_equal(out["landmarks"][1], frame_probs.argmax(axis=1))
    assert np.array_equal(out["landmarks_aggregation"][1], frame_probs.reshape(n, length, 3).mean(axis=1).argmax(axis=1))
    with torch.inference_mode():
        expected = model.eval()(torch.tensor(inputs)).argmax(dim=1).numpy()
    assert np.array_equal(out["cnn_lstm"][1], expected)


def test_a_model_for_other_classes_is_refused(tmp_path):
    rng = np.random.default_rng(1)
    fitted_baseline(tmp_path, rng)
    model = sequence_model.SequenceClassifier("lstm", 6, 5, 2, 0.5)
    torch.save({"state_dict": model.state_dict(), "arch": "lstm", "input_dim": 6, "hidden": 5, "dropout": 0.5,
                "classes": ["a", "b"]}, tmp_path / "m.pt")
    with pytest.raises(ValueError, match="trained for classes"):
        evaluate.predict(tmp_path / "test.parquet", tmp_path / "m.pt", CLASSES, tmp_path / "baseline.pkl")


def fold_tables(tmp_path, scores: dict[str, list[tuple[float, float]]]) -> list:
    """Per-fold method CSVs with the given (macro F1, accuracy) per method and fold."""
    folds = []
    for fold in range(len(next(iter(scores.values())))):
        d = tmp_path / str(fold)
        d.mkdir()
        for method in evaluate.METHODS:
            f1, acc = scores.get(method, scores["default"])[fold]
            pd.DataFrame({"class": ["a", "macro avg", "accuracy"], "precision": [1, 1, np.nan], "recall": [1, 1, np.nan],
                          "f1": [1, f1, acc], "support": [1, 1, 1]}).to_csv(d / f"{method}.csv", index=False)
        folds.append(d)
    return folds


def test_summary_means_over_folds_and_says_identity_leaks(tmp_path):
    folds = fold_tables(tmp_path, {"default": [(0.5, 0.8), (0.7, 0.6)]})
    pd.DataFrame({"split_unit": ["segment"], "identity_leak": [True]}).to_csv(tmp_path / "splits.csv", index=False)
    summary = evaluate.summarize(folds, tmp_path / "splits.csv", tmp_path / "s.csv", tmp_path / "s.md")
    assert summary["macro_f1"].tolist() == pytest.approx([60.0] * len(evaluate.METHODS))
    assert summary["macro_f1_std"].tolist() == pytest.approx([10.0] * len(evaluate.METHODS))
    assert summary["scored_on"].tolist() == ["frames", "windows", "windows", "frames", "windows"]
    md = (tmp_path / "s.md").read_text()
    assert "60.00 ± 10.00" in md and "Identity leaks across splits" in md and "different, private" in md
    assert "landmark baseline, per frame" in md and "above the landmark baseline" in md
    assert pd.read_csv(tmp_path / "s.csv")["identity_leak"].all()


@pytest.mark.parametrize("cnn, expected", [
    ([(0.2, 0.3), (0.3, 0.4)], "below the landmark baseline on every fold"),
    ([(0.2, 0.3), (0.9, 0.9)], "below the landmark baseline on 1 of 2 folds"),
])
def test_summary_says_when_the_cnn_is_below_the_landmark_baseline(tmp_path, cnn, expected):
    folds = fold_tables(tmp_path, {"default": [(0.5, 0.5), (0.5, 0.5)], "per_frame": cnn})
    pd.DataFrame({"split_unit": ["subject"], "identity_leak": [False]}).to_csv(tmp_path / "splits.csv", index=False)
    evaluate.summarize(folds, tmp_path / "splits.csv", tmp_path / "s.csv", tmp_path / "s.md")
    md = (tmp_path / "s.md").read_text()
    assert expected in md and "frame_model.pretrained" in md
    assert pd.read_csv(tmp_path / "s.csv")["cnn_below_landmarks_folds"].iloc[0] == (2 if "every" in expected else 1)


def test_confusion_png_is_written(tmp_path):
    evaluate.plot_confusion(np.array([[3, 1, 0], [0, 2, 0], [0, 0, 0]]), CLASSES, "t", tmp_path / "c.png")
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
