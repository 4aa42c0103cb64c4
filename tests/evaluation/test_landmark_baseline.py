"""Landmark normalisation (invariances on real dlib landmarks) and the landmark baseline on real demo faces."""

from __future__ import annotations

import json
import os
import pickle

import mlflow
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from demo_faces import demo_faces  # real faces files of short ranges of the demo clips
from ferseq.common.errors import FerseqError
from ferseq.evaluation import landmark_baseline
from ferseq.faces import landmark_features

CLASSES = ["neutral", "happy", "sad", "pensive"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return demo_faces(tmp_path_factory.getbasetemp() / "demo_faces")


@pytest.fixture(scope="module")
def real_landmarks(demo) -> np.ndarray:
    """The raw 68 dlib landmarks (frame pixels) of every face frame of the demo faces files, (N, 68, 2)."""
    parts = []
    for path in demo.faces.values():
        table = pq.read_table(path, columns=["face_found", "landmarks"]).to_pandas()
        parts += [np.asarray(p, np.float64).reshape(68, 2) for p in table.loc[table["face_found"], "landmarks"]]
    return np.stack(parts)


def similarity(points: np.ndarray, angle: float, scale: float, shift: tuple[float, float]) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return scale * points @ np.array([[c, s], [-s, c]]) + np.array(shift)


def test_normalised_landmarks_ignore_translation_scale_and_rotation(real_landmarks):
    assert len(real_landmarks) > 100
    reference = landmark_features.normalise(real_landmarks)
    assert reference.shape == (len(real_landmarks), 136) and reference.dtype == np.float32
    rng = np.random.default_rng(0)
    for _ in range(5):
        angle, scale, shift = rng.uniform(-0.8, 0.8), rng.uniform(0.3, 3.0), rng.uniform(-500, 500, 2)
        moved = similarity(real_landmarks, angle, scale, tuple(shift))
        assert np.allclose(landmark_features.normalise(moved), reference, atol=1e-4)
    # Flat (N, 136) input, as stored in the faces files, is the same as (N, 68, 2).
    assert np.array_equal(landmark_features.normalise(real_landmarks.reshape(-1, 136)), reference)


def test_eye_centres_land_on_the_x_axis_one_unit_apart(real_landmarks):
    points = landmark_features.normalise(real_landmarks).reshape(-1, 68, 2)
    assert np.allclose(points[:, 36:42].mean(axis=1), [-0.5, 0.0], atol=1e-5)
    assert np.allclose(points[:, 42:48].mean(axis=1), [0.5, 0.0], atol=1e-5)
    # The shape is still a face: the mouth (48-67) lies below the eyes (image y grows downwards).
    assert (points[:, 48:68, 1].mean(axis=1) > 0.5).all()


@pytest.fixture(scope="module")
def woman_shapes(demo) -> dict[int, np.ndarray]:
    """One person's normalised landmarks, (N, 68, 2) per demo segment: the woman's sad (segments 1, 2) and happy
    (5, 6) frames."""
    table = pq.read_table(demo.faces["woman"], columns=["segment_id", "face_found", "landmarks"]).to_pandas()
    table = table[table["face_found"]]
    return {sid: landmark_features.normalise(np.stack([np.asarray(p, np.float64) for p in rows["landmarks"]]))
            .reshape(-1, 68, 2) for sid, rows in table.groupby("segment_id")}


def test_expression_survives_normalisation(woman_shapes):
    # Frames of one person, so what differs between them is her expression, not who she is. Each frame of a sad
    # and of a happy segment is nearer to the mean shape of her other segment of the same expression.
    assert all(len(woman_shapes[sid]) >= 12 for sid in (1, 2, 5, 6))
    sad, happy = woman_shapes[1].mean(axis=0), woman_shapes[5].mean(axis=0)
    for sid, same, other in ((2, sad, happy), (6, happy, sad)):
        near = np.linalg.norm(woman_shapes[sid] - same, axis=(1, 2))
        far = np.linalg.norm(woman_shapes[sid] - other, axis=(1, 2))
        assert (near < far).all(), sid
    # Her smile widens the mouth (corners 48 and 54) in units of the distance between the eyes.
    width = {sid: np.linalg.norm(woman_shapes[sid][:, 54] - woman_shapes[sid][:, 48], axis=1).mean()
             for sid in (1, 2, 5, 6)}
    assert min(width[5], width[6]) > max(width[1], width[2]) + 0.03, width


def test_degenerate_landmarks_are_refused():
    with pytest.raises(ValueError, match="eye centres"):
        landmark_features.normalise(np.zeros((1, 136)))


def test_fold_landmarks_take_every_face_frame_of_train_and_val(demo):
    data = landmark_baseline.fold_landmarks(demo.faces, demo.segments, demo.splits, 0, CLASSES)
    expected = {}
    for video_id, path in demo.faces.items():
        table = pq.read_table(path, columns=["segment_id", "face_found"]).to_pandas()
        table = table[table["face_found"]].merge(demo.table[["segment_id", "split", "label"]], on="segment_id")
        for split, rows in table.groupby("split"):
            expected.setdefault(split, []).extend(rows["label"].map(CLASSES.index))
    for split in ("train", "val"):
        x, y = data[split]
        assert x.shape == (len(expected[split]), 136)
        assert sorted(y.tolist()) == sorted(expected[split])
    assert not set(data) - {"train", "val"}  # test frames never reach training


def test_baseline_learns_the_demo_faces_and_chooses_c_on_val(demo, tmp_path):
    config = {"experiment": "baseline-test", "seed": 0, "classes": {"names": CLASSES},
              "mlflow": {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db"}}
    metrics = landmark_baseline.train_fold(demo.faces, demo.segments, demo.splits, 0, config,
                                           tmp_path / "model.json", tmp_path / "metrics.json")
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["C"] == metrics["C"] in landmark_baseline.C_GRID
    grid = pd.DataFrame(saved["grid"])
    assert len(grid) == len(landmark_baseline.C_GRID)
    best = grid["val_macro_f1"].max()
    assert saved["val_macro_f1"] == pytest.approx(best)
    assert saved["C"] == grid.loc[np.isclose(grid["val_macro_f1"], best), "C"].min()  # ties: the smaller C
    model, classes = landmark_baseline.load(tmp_path / "model.json")
    assert classes == CLASSES and model.C == saved["C"]
    data = landmark_baseline.fold_landmarks(demo.faces, demo.segments, demo.splits, 0, CLASSES)
    train_x, train_y = data["train"]
    # Fits its own train frames far above chance (4 classes).
    probs = landmark_baseline.predict_proba(model, train_x, len(CLASSES))
    assert np.mean(probs.argmax(axis=1) == train_y) > 0.8
    probs = landmark_baseline.predict_proba(model, train_x.reshape(-1, 4, 136)[:3], len(CLASSES))
    assert probs.shape == (3, 4, 4) and np.allclose(probs.sum(axis=-1), 1, atol=1e-5)
    (run,) = mlflow.search_runs(experiment_names=["baseline-test"], output_format="list")
    assert run.data.tags["stage"] == "landmark_baseline" and run.data.params["C"] == str(saved["C"])
    assert run.data.tags["mlflow.source.name"] == "ferseq landmark_baseline (fold 0)"


def test_a_class_absent_from_train_gets_zero_probability():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 136)).astype(np.float32), np.arange(40) % 2  # classes 0 and 1 of 3
    model, _ = landmark_baseline.fit((x, y), (x, y))
    probs = landmark_baseline.predict_proba(model, x[:5], 3)
    assert np.all(probs[:, 2] == 0) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)


def test_no_val_frames_is_an_error_naming_the_fold(demo, tmp_path):
    table = demo.table.copy()
    table.loc[table["split"] == "val", "split"] = "test"
    segments, splits = demo.write_tables(tmp_path / "data", table)
    config = {"experiment": "x", "seed": 0, "classes": {"names": CLASSES},
              "mlflow": {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db"}}
    with pytest.raises(FerseqError, match="fold 0: the landmark baseline needs train and val face frames"):
        landmark_baseline.train_fold(demo.faces, segments, splits, 0, config, tmp_path / "m.json",
                                     tmp_path / "metrics.json")
    assert not (tmp_path / "m.json").exists() and not (tmp_path / "metrics.json").exists()


def test_saved_arrays_give_scikit_learns_probabilities_on_the_test_frames(demo, tmp_path):
    data = landmark_baseline.fold_landmarks(demo.faces, demo.segments, demo.splits, 0, CLASSES)
    pipeline, _ = landmark_baseline.fit(data["train"], data["val"])
    landmark_baseline.save(tmp_path / "model.json", pipeline, CLASSES)
    text = (tmp_path / "model.json").read_text()
    assert json.loads(text)["classes"] == CLASSES and "sklearn" not in text  # arrays and names, no objects
    model, classes = landmark_baseline.load(tmp_path / "model.json")
    # The demo's test frames: fold_landmarks of the same table with test and val swapped.
    table = demo.table.replace({"split": {"test": "val", "val": "test"}})
    test_x, test_y = landmark_baseline.fold_landmarks(demo.faces, *demo.write_tables(tmp_path / "t", table), 0,
                                                      CLASSES)["val"]
    assert len(test_y) > 10 and set(test_y.tolist()) == {0, 1}  # neutral and happy frames of segments 10 and 12
    expected = pipeline.predict_proba(test_x).astype(np.float32)
    probs = landmark_baseline.predict_proba(model, test_x, len(CLASSES))
    assert np.array_equal(probs[:, pipeline.classes_], expected)
    assert np.array_equal(probs.argmax(axis=1), pipeline.predict(test_x))


class WouldRun:
    """A pickled object that would create ``marker`` when unpickled: what a hostile model file carries."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_pickled_baseline_is_refused_unread(tmp_path):
    (tmp_path / "model.pkl").write_bytes(pickle.dumps({"model": WouldRun(tmp_path / "ran"), "classes": CLASSES}))
    with pytest.raises(landmark_baseline.ModelFileError, match="model.pkl: a pickled landmark baseline"):
        landmark_baseline.load(tmp_path / "model.pkl")
    assert not (tmp_path / "ran").exists()
    (tmp_path / "other.json").write_text('{"format": "something else"}')
    with pytest.raises(landmark_baseline.ModelFileError, match="other.json: not a ferseq landmark baseline"):
        landmark_baseline.load(tmp_path / "other.json")
