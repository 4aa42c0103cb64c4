"""A test segment without any face frame is scored by every method (the fold's training prior) and flagged.

Built from real faces: the faces stage's files of the demo clips (tests/demo_faces.py), where frames
88-95 of ``man_after_title.mov`` show a title card and no face. Here that stretch is a test segment of
its own. Its frames reach the faces file with ``face_found`` false, so the features (face frames only)
and the windows stage give it no window; the predictions must still hold a segment row for it, for
every method, and never leave it out.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from conftest import CLASSES as CLASS_CONFIG
from demo_faces import demo_faces
from ferseq.evaluation import fold_scores, landmark_baseline, metrics, predictions
from ferseq.faces import landmark_features
from ferseq.sequence_model import classifier
from ferseq.sequences import windows

CLASSES = CLASS_CONFIG["names"]  # neutral, happy, sad, pensive
TITLE = (88, 96)  # man2's frames without a face (the title card)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return demo_faces(tmp_path_factory.getbasetemp() / "demo_faces")


def fold_inputs(demo, folder, label: str, sampling: str):
    """Segments and splits where segment 11 is the title card (test, ``label``), the test windows, a fitted
    landmark baseline and an (untrained) sequence model, as the evaluate rule reads them."""
    table = demo.table.copy()
    row = table["segment_id"] == 11
    table.loc[row, ["start", "end", "frames", "label", "split"]] = [*TITLE, TITLE[1] - TITLE[0], label, "test"]
    segments_path, splits_path = demo.write_tables(folder, table)
    # The features stage's rows: the face frames of the segments, with their normalised landmarks.
    rows, points = [], []
    for video_id, path in demo.faces.items():
        faces = pq.read_table(path, columns=["segment_id", "frame", "face_found", "landmarks"]).to_pandas()
        faces = faces[faces["face_found"]]
        for seg in table[table["video_id"] == video_id].itertuples():
            mine = faces[(faces["frame"] >= seg.start) & (faces["frame"] < seg.end)]
            rows += [(seg.segment_id, frame) for frame in mine["frame"]]
            points += [np.asarray(p, np.float32) for p in mine["landmarks"]]
    features = pd.DataFrame(rows, columns=["segment_id", "frame"])
    x = landmark_features.normalise(np.stack(points))
    data = landmark_baseline.fold_landmarks(demo.faces, segments_path, splits_path, 0, CLASSES)
    model, _ = landmark_baseline.fit(data["train"], data["val"])
    landmark_baseline.save(folder / "baseline.json", model, CLASSES)
    per_frame = {"embedding": x, "probs": landmark_baseline.predict_proba(model, x, len(CLASSES)), "landmarks": x}
    test = table[table["split"] == "test"].assign(subject=lambda t: t["subject"].astype(str))
    windows_table, matrices = windows.cut(features, per_frame, test, 16, {}, "repeat", sampling=sampling,
                                          pad_short=True)
    windows.write(folder / "test.parquet", windows_table, matrices)
    torch.manual_seed(0)
    lstm = classifier.SequenceClassifier("lstm", x.shape[1], 8, len(CLASSES), 0.5)
    torch.save({"state_dict": lstm.state_dict(), "arch": "lstm", "features": "embedding", "input_dim": x.shape[1],
                "hidden": 8, "dropout": 0.5, "classes": CLASSES, "window_length": 16}, folder / "lstm.pt")
    return table, windows_table, splits_path


@pytest.mark.parametrize("label,sampling", [("neutral", "consecutive"), ("happy", "uniform")])
def test_a_test_segment_without_a_face_is_scored_by_every_method_and_flagged(demo, tmp_path, label, sampling):
    table, windows_table, splits_path = fold_inputs(demo, tmp_path, label, sampling)
    # The trace: the title card has frames (all face_found false), but no feature row and so no window.
    faces = pd.read_parquet(demo.faces["man2"], columns=["frame", "face_found"])
    assert not faces.loc[faces["frame"].between(TITLE[0], TITLE[1] - 1), "face_found"].any()
    assert set(windows_table["segment_id"]) == {10, 12}

    ids, probs, names = predictions.predict_fold(tmp_path / "test.parquet", {"lstm": tmp_path / "lstm.pt"},
                                                 tmp_path / "baseline.json", splits_path, CLASSES, 0,
                                                 tmp_path / "predictions.parquet")
    segments = ids[ids["level"] == "segment"]
    assert sorted(segments["segment_id"]) == [10, 11, 12]  # every test segment of the fold
    assert segments.set_index("segment_id")["face_missing"].to_dict() == {10: False, 11: True, 12: False}
    missing = (ids["face_missing"]).to_numpy()
    assert set(ids.loc[missing, "level"]) == {"segment"}  # no frame or window of it is made up
    row = ids.index[missing][0]
    assert ids.loc[row, "label"] == label and ids.loc[row, "unit"] == "segment"
    # Every method (landmark baseline, per-frame CNN, aggregation, CNN-LSTM) gives it the training prior: the class
    # frequencies of the fold's train segments (1 sad, 1 pensive, 2 happy, 1 neutral), counted here by hand.
    train = table.loc[table["split"] == "train", "label"]
    assert sorted(train) == ["happy", "happy", "neutral", "pensive", "sad"]
    prior = np.array([(train == c).mean() for c in CLASSES])
    assert list(names) == ["per_frame", "aggregation", "cnn_lstm", "landmarks", "landmarks_aggregation"]
    for method in names:
        assert np.allclose(probs[method][row], prior), method

    # Scored like any prediction: it says "happy" (the most frequent training class), right only when it is happy.
    y = predictions.labels(ids, CLASSES)
    for method in names:
        tables = fold_scores.level_tables(ids, probs, CLASSES, method)
        _, cm = tables["segment"]
        assert cm.sum() == 3, method
        rest = (ids["level"] == "segment").to_numpy() & ~missing
        without = metrics.confusion(y[rest], probs[method][rest].argmax(axis=1), len(CLASSES))
        added = np.zeros_like(cm)
        added[CLASSES.index(label), CLASSES.index("happy")] = 1
        assert np.array_equal(cm, without + added), method

    # The file keeps the flag; a file without it (an older ferseq's) is refused rather than read as all faces.
    back, _, _, _ = predictions.read(tmp_path / "predictions.parquet")
    assert back["face_missing"].tolist() == ids["face_missing"].tolist()
    arrow = pq.read_table(tmp_path / "predictions.parquet")
    pq.write_table(arrow.drop_columns(["face_missing"]), tmp_path / "old.parquet")
    with pytest.raises(ValueError, match=r"no column\(s\) face_missing\); rerun the evaluate stage"):
        predictions.read(tmp_path / "old.parquet")


def test_the_training_prior_and_the_segments_without_a_window():
    splits = pd.DataFrame({"fold": [0, 0, 0, 0, 0, 1, 0], "segment_id": [1, 2, 3, 4, 5, 6, 7],
                           "split": ["train", "train", "train", "test", "test", "train", "val"],
                           "label": ["b", "b", "a", "a", "c", "c", "c"], "video_id": "v", "subject": "s"})
    # fold 0's train segments: b, b, a (fold 1's and val's do not count); c never trains: probability 0
    assert predictions.training_prior(splits, 0, ["a", "b", "c"]) == pytest.approx([1 / 3, 2 / 3, 0])
    assert predictions.no_face_segments(splits, 0, [5])["segment_id"].tolist() == [4]
    with pytest.raises(ValueError, match="fold 2: no training segment"):
        predictions.training_prior(splits, 2, ["a", "b", "c"])


def test_the_demo_run_scores_every_test_segment_of_every_fold(demo_run):
    """The real DAG: each fold's predictions hold every test segment of the splits table, for every method."""
    splits = pd.read_parquet(demo_run / "results" / "data" / "splits.parquet")
    files = sorted((demo_run / "results" / "folds").glob("*/evaluation/predictions.parquet"))
    assert files
    for path in files:
        fold = int(path.parent.parent.name)
        ids, probs, _, names = predictions.read(path)
        segments = (ids["level"] == "segment").to_numpy()
        test = splits.loc[(splits["fold"] == fold) & (splits["split"] == "test"), "segment_id"]
        assert sorted(ids.loc[segments, "segment_id"]) == sorted(test), path
        assert ids["face_missing"].dtype == bool and not ids.loc[~segments, "face_missing"].any()
        for method in names:
            assert np.isfinite(probs[method][segments]).all(), (path, method)
