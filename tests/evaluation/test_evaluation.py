"""The evaluation: scores equal scikit-learn and hand computations, every method sees the same test items at each
level, the intervals and p-values behave as they must, and the summary's verdict follows from them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support, recall_score

from ferseq.evaluation import fold_scores, metrics, predictions, summary
from ferseq.sequence_model import classifier
from ferseq.sequences import windows

CLASSES = ["neutral", "happy", "sad"]


def test_scores_equal_scikit_learn_on_hand_made_predictions():
    y_true = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 1])
    y_pred = np.array([0, 1, 0, 1, 2, 2, 2, 0, 2, 1])
    cm = metrics.confusion(y_true, y_pred, 3)
    table = metrics.class_table(cm, CLASSES).set_index("class")
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=[0, 1, 2], zero_division=0)
    assert np.allclose(table.loc[CLASSES, "precision"], p) and np.allclose(table.loc[CLASSES, "recall"], r)
    assert np.allclose(table.loc[CLASSES, "f1"], f) and table.loc[CLASSES, "support"].tolist() == s.tolist()
    got = metrics.scores(cm)
    assert got["uar"] == pytest.approx(recall_score(y_true, y_pred, average="macro"))
    assert got["war"] == pytest.approx(accuracy_score(y_true, y_pred)) == table.at["accuracy", "f1"]
    assert got["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro")) == table.at["macro avg", "f1"]
    # By hand: neutral R=2/3, happy R=2/3, sad R=3/4 -> UAR 25/36; 7 of 10 right -> WAR 0.7.
    assert got["uar"] == pytest.approx(25 / 36) and table.at["macro avg", "recall"] == pytest.approx(25 / 36)
    # The same arithmetic on a stack of matrices (people, resamples), and NaN for one without items.
    stacked = metrics.scores(np.stack([cm, np.zeros_like(cm), 2 * cm]))
    assert stacked["uar"][[0, 2]] == pytest.approx([25 / 36] * 2) and np.isnan(stacked["uar"][1])


def test_means_over_classes_leave_out_classes_absent_from_the_items():
    y_true, y_pred = np.array([0, 0, 1, 1]), np.array([0, 1, 1, 2])
    got = metrics.scores(metrics.confusion(y_true, y_pred, 3))
    assert got["uar"] == pytest.approx(recall_score(y_true, y_pred, labels=[0, 1], average="macro"))
    assert got["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, labels=[0, 1], average="macro"))


def fitted_baseline(tmp_path, rng):
    """A real landmark baseline, fitted on random landmarks, saved as the rule saves it."""
    from ferseq.evaluation import landmark_baseline

    x, y = rng.normal(size=(60, 136)).astype(np.float32), np.arange(60) % 3
    model, _ = landmark_baseline.fit((x, y), (x, y))
    landmark_baseline.save(tmp_path / "baseline.json", model, CLASSES)
    return model


def test_windows_table(segments: list[tuple[int, str, str, int]], length: int, rng) -> tuple[pd.DataFrame, dict]:
    """Test windows cut by the windows stage from segments ``(segment_id, subject, label, frames)``."""
    spans, start = [], 0
    for segment_id, subject, label, frames in segments:
        spans.append({"segment_id": segment_id, "video_id": f"v{subject}", "subject": subject, "label": label,
                      "start": start, "end": start + frames})
        start += frames + 5
    spans = pd.DataFrame(spans)
    rows = pd.DataFrame([(s.segment_id, f) for s in spans.itertuples() for f in range(s.start, s.end)],
                        columns=["segment_id", "frame"])
    n = len(rows)
    per_frame = {"embedding": rng.normal(size=(n, 6)).astype(np.float32),
                 "probs": rng.dirichlet(np.ones(3), size=n).astype(np.float32),
                 "landmarks": rng.normal(size=(n, 136)).astype(np.float32)}
    return windows.cut(rows, per_frame, spans, length, {}, pad_short=True)


test_windows_table.__test__ = False  # a helper, not a test


@pytest.mark.parametrize("features", ["embedding", "landmarks", "both"])
def test_every_method_is_scored_on_the_same_test_items_at_every_level(tmp_path, features):
    rng = np.random.default_rng(0)
    # Subject a: a 40-frame segment (2 windows of 16) and a 10-frame one (shorter than one window);
    # subject b: one 16-frame segment.
    table, m = test_windows_table([(0, "a", "happy", 40), (1, "a", "sad", 10), (2, "b", "neutral", 16)], 16, rng)
    windows.write(tmp_path / "test.parquet", table, m)
    inputs = windows.inputs(m, features)
    model = classifier.SequenceClassifier("bilstm", inputs.shape[2], 5, 3, 0.5)
    torch.save({"state_dict": model.state_dict(), "arch": "bilstm", "features": features, "input_dim": inputs.shape[2],
                "hidden": 5, "dropout": 0.5, "classes": CLASSES, "window_length": 16}, tmp_path / "m.pt")
    # a second family of the grid (its best point), and the fine-tuned CNN-LSTM's window probabilities
    other = classifier.SequenceClassifier("gru", inputs.shape[2], 4, 3, 0.5)
    torch.save({"state_dict": other.state_dict(), "arch": "gru", "features": features, "input_dim": inputs.shape[2],
                "hidden": 4, "dropout": 0.5, "classes": CLASSES, "window_length": 16}, tmp_path / "gru.pt")
    tuned = rng.dirichlet(np.ones(3), size=len(table)).astype(np.float32)
    order = rng.permutation(len(table))  # any row order: matched by window_id
    pq.write_table(pa.table({"window_id": table["window_id"].to_numpy()[order],
                             "probs": pa.FixedSizeListArray.from_arrays(pa.array(tuned[order].reshape(-1)), 3)}),
                   tmp_path / "tuned.parquet")
    baseline = fitted_baseline(tmp_path, rng)
    pd.DataFrame({"fold": 0, "segment_id": [0, 1, 2], "unit": ["a", "a", "b"], "split": "test",
                  "label": ["happy", "sad", "neutral"], "video_id": ["va", "va", "vb"],
                  "subject": ["a", "a", "b"]}).to_parquet(tmp_path / "splits.parquet")
    ids, probs, names = predictions.predict_fold(tmp_path / "test.parquet", {"lstm": tmp_path / "m.pt",
                                                 "gru": tmp_path / "gru.pt"}, tmp_path / "baseline.json",
                                                 tmp_path / "splits.parquet", CLASSES, 0, tmp_path / "p.parquet",
                                                 tmp_path / "tuned.parquet" if features == "embedding" else None)
    seq, gru = predictions.sequence_method(features), predictions.sequence_method(features, "gru")
    tuned_rows = ["cnn_lstm_finetuned"] if features == "embedding" else []
    assert list(names) == ["per_frame", "aggregation", seq, gru, *tuned_rows, "landmarks", "landmarks_aggregation"]
    assert names[gru] == {"embedding": "CNN-GRU", "landmarks": "landmark-GRU", "both": "CNN+landmark GRU"}[features]
    # the verdict's comparison first; every other family and the fine-tuned model against it and aggregation
    frame_ref = "landmarks_aggregation" if features == "landmarks" else "aggregation"
    assert predictions.pairs(names)[0] == (seq, frame_ref)
    assert {(gru, seq), (gru, frame_ref)} <= set(predictions.pairs(names))
    if tuned_rows:
        assert np.allclose(probs["cnn_lstm_finetuned"][ids["level"] == "window"], tuned[[0, 1, 3]])
        assert ("cnn_lstm_finetuned", "cnn_lstm") in predictions.pairs(names)
    with torch.inference_mode():
        assert np.allclose(probs[gru][ids["level"] == "window"],
                           other.eval()(torch.tensor(inputs)).softmax(dim=1).numpy()[[0, 1, 3]], atol=1e-6)
    level = ids["level"].to_numpy()
    # Windows: the 3 full ones; frames: their 48 frames, once; segments: all 3, the short one flagged.
    assert (level == "window").sum() == 3 and (level == "frame").sum() == 48 and (level == "segment").sum() == 3
    segs = ids[level == "segment"]
    assert segs["segment_id"].tolist() == [0, 1, 2] and segs["short_segment"].tolist() == [False, True, False]
    assert segs["unit"].tolist() == ["a", "a", "b"] and segs["label"].tolist() == ["happy", "sad", "neutral"]
    for method in names:  # each method scores its own level and the segments, nothing else
        scored = np.isfinite(probs[method][:, 0])
        own = predictions.native_level(method)
        assert set(level[scored]) == {own, "segment"}, method
    # Frame level: every frame of the full windows, with the per-frame CNN's and the baseline's probabilities.
    frames = ids[level == "frame"]
    assert np.array_equal(frames["frame"].to_numpy(), m["frames"][[0, 1, 3]].reshape(-1))
    assert np.allclose(probs["per_frame"][level == "frame"], m["probs"][[0, 1, 3]].reshape(-1, 3))
    landmark_frames = baseline.predict_proba(m["landmarks"][[0, 1, 3]].reshape(-1, 136))
    assert np.allclose(probs["landmarks"][level == "frame"], landmark_frames, atol=1e-6)
    # Window level: the mean softmax, and the sequence model on exactly these windows.
    assert np.allclose(probs["aggregation"][level == "window"], m["probs"][[0, 1, 3]].mean(axis=1))
    with torch.inference_mode():
        expected = model.eval()(torch.tensor(inputs)).softmax(dim=1).numpy()
    assert np.allclose(probs[seq][level == "window"], expected[[0, 1, 3]], atol=1e-6)
    # Segment level: window methods the mean of the segment's windows, frame methods of its distinct frames;
    # the 10-frame segment through its one padded window (its last frame repeated 6 times, counted once).
    assert np.allclose(probs[seq][level == "segment"][0], expected[[0, 1]].mean(axis=0), atol=1e-6)
    assert np.allclose(probs[seq][level == "segment"][1], expected[2], atol=1e-6)
    assert np.allclose(probs["aggregation"][level == "segment"][1], m["probs"][2].mean(axis=0))
    assert np.allclose(probs["per_frame"][level == "segment"][1], m["probs"][2, :10].mean(axis=0))
    # The file round-trips: every score is recomputed from it.
    back, back_probs, classes, back_names = predictions.read(tmp_path / "p.parquet")
    pd.testing.assert_frame_equal(back, ids)
    assert classes == CLASSES and back_names == names
    assert all(np.array_equal(back_probs[k], probs[k], equal_nan=True) for k in names)


def test_a_model_for_other_classes_is_refused(tmp_path):
    rng = np.random.default_rng(1)
    fitted_baseline(tmp_path, rng)
    model = classifier.SequenceClassifier("lstm", 6, 5, 2, 0.5)
    torch.save({"state_dict": model.state_dict(), "arch": "lstm", "input_dim": 6, "hidden": 5, "dropout": 0.5,
                "classes": ["a", "b"], "window_length": 16}, tmp_path / "m.pt")
    with pytest.raises(ValueError, match="trained for classes"):
        predictions.predict_fold(tmp_path / "test.parquet", {"lstm": tmp_path / "m.pt"}, tmp_path / "baseline.json",
                                 tmp_path / "splits.parquet", CLASSES, 0, tmp_path / "p.parquet")


def fake_predictions(path, fold: int, people: dict[str, list[tuple[int, int, int]]], rng,
                     names: dict[str, str] | None = None) -> None:
    """A predictions file: per person, segments ``(true, per_frame_pred, sequence_pred)`` of one window of 4
    frames each; the frame methods predict per frame, the window methods per window, as given."""
    names = names or predictions.methods("embedding")
    rows, probs = [], {m: [] for m in names}
    segment = fold * 1000

    def onehot(k: int) -> np.ndarray:
        p = np.full(3, 0.1, np.float32)
        p[k] = 0.8
        return p

    for person, segments in people.items():
        for true, frame_pred, seq_pred in segments:
            segment += 1
            base = {"fold": fold, "unit": person, "subject": person, "video_id": person, "segment_id": segment,
                    "label": CLASSES[true], "short_segment": False, "face_missing": False}
            for level, count in (("frame", 4), ("window", 1), ("segment", 1)):
                for i in range(count):
                    rows.append({**base, "level": level, "window_id": segment if level != "segment" else -1,
                                 "frame": i if level == "frame" else -1})
                    for method in names:
                        frame_method = method in predictions.FRAME_METHODS
                        scores_here = level == "segment" or (level == "frame") == frame_method
                        pred = frame_pred if method in ("per_frame", "aggregation", "landmarks",
                                                        "landmarks_aggregation") else seq_pred
                        probs[method].append(onehot(pred) if scores_here else np.full(3, np.nan, np.float32))
    ids = pd.DataFrame(rows)[predictions.ID_COLUMNS]
    predictions.write(path, ids, {m: np.stack(v) for m, v in probs.items()}, CLASSES, names)


def split_summary(path, unit="subject", leak=False, test_segments=0):
    pd.DataFrame({"fold": [0], "split": ["test"], "label": ["happy"], "segments": [test_segments],
                  "split_unit": [unit], "identity_leak": [leak]}).to_csv(path, index=False)
    return path


def outputs(tmp_path):
    return {"csv": tmp_path / "s.csv", "md": tmp_path / "s.md", "per_person": tmp_path / "pp.csv",
            "per_person_png": tmp_path / "pp.png", "differences_png": tmp_path / "d.png"}


def diff(table, a, b, level="segment", metric="uar"):
    rows = table[(table["kind"] == "difference") & (table["method"] == a) & (table["versus"] == b)
                 & (table["level"] == level) & (table["metric"] == metric)]
    assert len(rows) == 1
    return rows.iloc[0]


def test_identical_methods_differ_by_zero_with_a_zero_width_interval_and_p_one(tmp_path):
    rng = np.random.default_rng(2)
    people = {f"p{i}": [(k % 3, int(rng.integers(3)), 0) for k in range(4)] for i in range(12)}
    fake_predictions(tmp_path / "f0.parquet", 0, people, rng)
    table = summary.summarize([tmp_path / "f0.parquet"], split_summary(tmp_path / "split.csv", test_segments=48),
                              outputs(tmp_path), resamples=2000, seed=1)
    # per_frame and aggregation predict the same on every item; so do the landmark methods.
    for a, b, level in (("aggregation", "per_frame", "window vs frame"), ("aggregation", "per_frame", "segment"),
                        ("landmarks_aggregation", "landmarks", "segment")):
        for metric in metrics.METRICS:
            row = diff(table, a, b, level, metric)
            assert row["value"] == 0 and row["ci_low"] == 0 and row["ci_high"] == 0 and row["p_value"] == 1


def test_a_method_right_for_every_person_beats_one_wrong_for_every_person(tmp_path):
    rng = np.random.default_rng(3)
    # The sequence model is right on every segment, the frame methods wrong on every one, for 10 people.
    people = {f"p{i}": [(k % 3, (k + 1) % 3, k % 3) for k in range(3)] for i in range(10)}
    fake_predictions(tmp_path / "f0.parquet", 0, people, rng)
    out = outputs(tmp_path)
    table = summary.summarize([tmp_path / "f0.parquet"], split_summary(tmp_path / "split.csv", test_segments=30), out)
    row = diff(table, "cnn_lstm", "aggregation")
    assert row["value"] == 100 and row["ci_low"] > 0 and row["p_value"] == pytest.approx(2 / 2 ** 10)
    md = out["md"].read_text()
    verdict = md.split("**Verdict.** ")[1].split("\n")[0]
    assert verdict.startswith("On 10 test people (1 fold), CNN-LSTM beats frame aggregation by +100.0 UAR points "
                              "at segment level (95% CI +100.0 to +100.0; p = 0.002).")
    # Every number of the Markdown is in the CSV, and the per-person table has each person's UAR.
    assert set(pd.read_csv(out["csv"])["kind"]) == {"score", "fold", "difference"}
    people_table = pd.read_csv(out["per_person"])
    assert len(people_table) == 10 and (people_table["cnn_lstm_segment_uar"] == 100).all()
    assert (people_table["per_frame_frame_uar"] == 0).all() and (people_table["segments"] == 3).all()
    for png in ("per_person_png", "differences_png"):  # written whole (what they show: tests/evaluation/test_plots.py)
        assert out[png].is_file()


def test_few_people_or_a_small_difference_make_no_claim(tmp_path):
    rng = np.random.default_rng(4)
    right = [(k % 3, (k + 1) % 3, k % 3) for k in range(3)]
    fake_predictions(tmp_path / "few.parquet", 0, {"a": right, "b": right, "c": right}, rng)
    out = outputs(tmp_path)
    summary.summarize([tmp_path / "few.parquet"], split_summary(tmp_path / "split.csv"), out)
    assert ("with 3 test people (3 of them scored differently by the two methods) no difference can be told from "
            "chance: the smallest p-value the sign-flip test can give here is 0.25, not below 0.05") in out["md"].read_text()
    # 12 people, the sequence model right on one more segment than aggregation for half of them, worse for the rest.
    people = {f"p{i}": [(0, 0, 0), (1, 1, 2 if i % 2 else 1), (2, 2 if i % 2 else 0, 2)] for i in range(12)}
    fake_predictions(tmp_path / "mixed.parquet", 0, people, rng)
    summary.summarize([tmp_path / "mixed.parquet"], split_summary(tmp_path / "split.csv"), out)
    assert "is within chance at this number of people" in out["md"].read_text()


def test_the_bootstrap_resamples_people_not_items_and_is_reproducible(tmp_path):
    rng = np.random.default_rng(5)
    # One person holds 40 of the 49 segments, all right for the sequence model and wrong for aggregation;
    # the other 9 people's segments are the other way round.
    people = {"big": [(k % 3, (k + 1) % 3, k % 3) for k in range(40)],
              **{f"p{i}": [(i % 3, i % 3, (i + 1) % 3)] for i in range(9)}}
    fake_predictions(tmp_path / "f0.parquet", 0, people, rng)
    a = summary.summarize([tmp_path / "f0.parquet"], split_summary(tmp_path / "s.csv"), outputs(tmp_path), seed=7)
    b = summary.summarize([tmp_path / "f0.parquet"], split_summary(tmp_path / "s.csv"), outputs(tmp_path), seed=7)
    pd.testing.assert_frame_equal(a, b)
    row = diff(a, "cnn_lstm", "aggregation", metric="war")
    # Resampling segments (items) instead: 49 draws, each segment +1 or -1; the interval would be narrow.
    per_item = np.array([1.0] * 40 + [-1.0] * 9)
    draws = np.random.default_rng(0).choice(per_item, size=(2000, len(per_item))).mean(axis=1) * 100
    item_low, item_high = np.percentile(draws, [2.5, 97.5])
    assert row["value"] == pytest.approx(100 * 31 / 49)
    # Over people, whether "big" is drawn decides almost everything: the interval reaches far below 0.
    assert row["ci_low"] < 0 < item_low and (row["ci_high"] - row["ci_low"]) > 2 * (item_high - item_low)
    other = summary.summarize([tmp_path / "f0.parquet"], split_summary(tmp_path / "s.csv"), outputs(tmp_path), seed=8)
    assert not np.allclose(other[["ci_low", "ci_high"]].to_numpy(float), a[["ci_low", "ci_high"]].to_numpy(float),
                           equal_nan=True)  # another seed, other resamples


def test_pooled_folds_summary_says_leaks_and_weak_cnn(tmp_path):
    rng = np.random.default_rng(6)
    names = predictions.methods("landmarks")
    # Two folds; the per-frame CNN wrong where the landmark baseline is right (same predictions as aggregation).
    for fold in (0, 1):
        people = {f"f{fold}p{i}": [(k % 3, (k + 1) % 3, k % 3) for k in range(3)] for i in range(4)}
        fake_predictions(tmp_path / f"f{fold}.parquet", fold, people, rng, names)
    out = outputs(tmp_path)
    table = summary.summarize([tmp_path / "f0.parquet", tmp_path / "f1.parquet"],
                              split_summary(tmp_path / "split.csv", "segment", True, 25), out)
    md = out["md"].read_text()
    assert "On 8 test people (2 folds), landmark-LSTM" in md and "landmark baseline, window mean" in md
    assert "Identity leaks across splits" in md and "different, private" in md
    assert "24 of 25 test segments are scored (the other 1 have no face frame)" in md
    assert "segment UAR / WAR, mean ± sd over folds" in md
    assert set(table["folds"]) == {2} and table["identity_leak"].all()
    # landmark-LSTM is paired with the landmark methods, not the CNN's.
    pairs = set(zip(table.loc[table["kind"] == "difference", "method"], table.loc[table["kind"] == "difference", "versus"]))
    assert ("landmark_lstm", "landmarks_aggregation") in pairs and ("landmark_lstm", "aggregation") not in pairs


def test_summary_says_when_the_cnn_is_below_the_landmark_baseline(tmp_path):
    rng = np.random.default_rng(7)
    names = predictions.methods("embedding")
    for fold in (0, 1):
        people = {f"f{fold}p{i}": [(k % 3, k % 3, k % 3) for k in range(3)] for i in range(3)}
        fake_predictions(tmp_path / f"f{fold}.parquet", fold, people, rng, names)
    # Make the per-frame CNN wrong on fold 1's frames only: below the (right) baseline on 1 of 2 folds.
    ids, probs, classes, _ = predictions.read(tmp_path / "f1.parquet")
    frames = (ids["level"] == "frame").to_numpy()
    probs["per_frame"][frames] = np.roll(probs["per_frame"][frames], 1, axis=1)
    predictions.write(tmp_path / "f1.parquet", ids, probs, classes, names)
    out = outputs(tmp_path)
    table = summary.summarize([tmp_path / "f0.parquet", tmp_path / "f1.parquet"], split_summary(tmp_path / "s.csv"), out)
    md = out["md"].read_text()
    assert "below the landmark baseline on 1 of 2 folds" in md and "frame_model.init" in md
    assert set(table["cnn_below_landmarks_folds"]) == {1}


def test_on_clips_shorter_than_a_window_the_floor_is_checked_on_the_segments(tmp_path):
    # CK+-like clips: every test segment shorter than one window, so no frame-level scores at all. The per-frame CNN
    # is wrong on every segment of both folds: it is below the landmark baseline everywhere, and must be said so
    # (comparing the missing frame scores, every fold once passed as "above").
    rng = np.random.default_rng(9)
    names = predictions.methods("embedding")
    files = []
    for fold in (0, 1):
        people = {f"f{fold}p{i}": [(k % 3, k % 3, k % 3) for k in range(3)] for i in range(3)}
        fake_predictions(tmp_path / f"f{fold}.parquet", fold, people, rng, names)
        ids, probs, classes, _ = predictions.read(tmp_path / f"f{fold}.parquet")
        keep = (ids["level"] == "segment").to_numpy()
        probs = {m: p[keep] for m, p in probs.items()}
        probs["per_frame"] = np.roll(probs["per_frame"], 1, axis=1)
        predictions.write(tmp_path / f"f{fold}.parquet", ids[keep].reset_index(drop=True), probs, classes, names)
        files.append(tmp_path / f"f{fold}.parquet")
    out = outputs(tmp_path)
    table = summary.summarize(files, split_summary(tmp_path / "s.csv"), out)
    md = out["md"].read_text()
    assert ("**The frame CNN is below the landmark baseline on every fold** (macro F1 of the test segments: no fold "
            "has frame-level scores") in md and "is above the landmark baseline" not in md
    assert set(table["cnn_below_landmarks_folds"]) == {2} and set(table["cnn_landmarks_level"]) == {"segment"}
    assert set(table["cnn_landmarks_compared_folds"]) == {2}


def test_the_floor_note_counts_only_the_folds_scored_by_both():
    floor = summary.Floor(below=0, compared=2, level="frame")
    assert summary.baseline_note(floor, 3).startswith("The per-frame CNN is above the landmark baseline on the 2 of 3 "
                                                     "folds scored by both (macro F1)")
    assert "below the landmark baseline on 1 of 2 folds scored by both" in summary.baseline_note(
        summary.Floor(1, 2, "frame"), 3)
    assert "is not known" in summary.baseline_note(summary.Floor(0, 0, None), 2)


def test_fold_scores_and_confusion_plots_come_from_the_predictions_file(tmp_path, monkeypatch):
    rng = np.random.default_rng(8)
    people = {"a": [(0, 0, 1), (1, 1, 1)], "b": [(2, 0, 2)]}
    fake_predictions(tmp_path / "predictions.parquet", 0, people, rng)
    config = {"experiment": "t", "classes": {"names": CLASSES}, "mlflow": {"tracking_uri": f"sqlite:///{tmp_path}/m.db"}}
    monkeypatch.chdir(tmp_path)
    tables = fold_scores.score_fold(tmp_path / "predictions.parquet", config, 0, tmp_path)
    cnn_lstm = tables["cnn_lstm"].set_index(["level", "class"])
    # By hand, segments: neutral -> happy (wrong), happy -> happy, sad -> sad: UAR (0 + 1 + 1) / 3, WAR 2/3.
    assert cnn_lstm.at[("segment", "macro avg"), "recall"] == pytest.approx(2 / 3)
    assert cnn_lstm.at[("segment", "accuracy"), "f1"] == pytest.approx(2 / 3)
    per_frame = tables["per_frame"].set_index(["level", "class"])
    assert per_frame.at[("frame", "accuracy"), "support"] == 12 and per_frame.at[("segment", "accuracy"), "support"] == 3
    assert set(tables["aggregation"]["level"]) == {"window", "segment"}
    assert (tmp_path / "cnn_lstm.png").is_file()  # what a confusion plot shows: tests/evaluation/test_plots.py
