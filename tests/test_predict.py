"""`ferseq predict` and `ferseq export` on a finished demo run: the same numbers as the workflow, real files out."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import DEMO, FIXTURES
from ferseq import predict, search, windows

WOMAN = DEMO / "videos" / "woman_sad_to_happy.mp4"


@pytest.fixture(scope="module")
def predicted(demo_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("predicted")
    done = subprocess.run([sys.executable, "-m", "ferseq", "predict", str(WOMAN), str(FIXTURES / "no_face.mp4"),
                           str(DEMO / "videos" / "missing.mp4"), "--run", str(demo_run / "results"), "-o", str(out),
                           "--annotate", "--workers", "1"], capture_output=True, text=True, cwd=demo_run)
    return out, done


def test_every_video_is_reported_and_a_missing_one_fails_the_exit_status(predicted):
    out, done = predicted
    assert done.returncode == 1, done.stderr[-3000:]
    assert "FAILED" in done.stderr and "missing.mp4" in done.stderr
    assert "woman_sad_to_happy: 472 frames, faces in 472" in done.stderr
    # no_face.mp4 decodes to 95 frames (its container says 98)
    assert "no_face: 95 frames, faces in 0" in done.stderr and "no face in any of its 95 frames" in done.stderr
    for name in ("woman_sad_to_happy", "no_face"):
        for suffix in (".parquet", ".csv", ".png", ".annotated.mp4"):
            assert (out / f"{name}{suffix}").stat().st_size > 0, name + suffix
    assert not list(out.glob("missing*")) and not list(out.glob(".*tmp*"))


def test_cnn_probabilities_equal_the_feature_stage_and_windows_the_selected_model(predicted, demo_run):
    out, _ = predicted
    table = pd.read_parquet(out / "woman_sad_to_happy.parquet")
    assert len(table) == 472 and table["frame"].tolist() == list(range(472)) and table["face_found"].all()
    classes = ["neutral", "happy", "sad", "pensive"]
    cnn = table[[f"cnn_{c}" for c in classes]].to_numpy()
    # The workflow's feature store of fold 0 for the same video. Frames 0-139 (the first annotated segment,
    # before any unannotated gap) went through the faces stage exactly as predict's whole-video pass did.
    stored, per_frame = windows.read_features(demo_run / "results/folds/0/features/woman_sad_to_happy.parquet")
    first = stored["frame"].to_numpy() < 140
    frames = stored["frame"].to_numpy()[first]
    assert len(frames) == 140
    assert np.allclose(cnn[frames], per_frame["probs"][first], atol=1e-5)

    # The selected sequence model on the windows that end at frames 15..139, built from the feature store.
    best = json.loads((demo_run / "results/folds/0/sequence_model/best.json").read_text())
    model, checkpoint = search.load_model(demo_run / best["model"])
    inputs = windows.inputs({k: v[first] for k, v in per_frame.items()}, checkpoint.get("features", "embedding"))
    ends = np.arange(15, 140)
    with torch.inference_mode():
        expected = model(torch.from_numpy(np.stack([inputs[e - 15:e + 1] for e in ends]))).softmax(dim=1).numpy()
    lstm = table[[f"cnn_lstm_{c}" for c in classes]].to_numpy()
    assert np.allclose(lstm[ends], expected, atol=1e-5)
    assert np.isnan(lstm[:15]).all() and not table["window"][:15].any() and table["window"][15:].all()
    assert (table.loc[ends, "cnn_lstm_label"] == [classes[i] for i in expected.argmax(axis=1)]).all()


def test_segments_read_back_as_an_annotation_table(predicted):
    from ferseq import annotations

    out, _ = predicted
    table = pd.read_parquet(out / "woman_sad_to_happy.parquet")
    segments = pd.read_csv(out / "woman_sad_to_happy.csv")
    assert list(segments.columns) == ["video", "subject", "label", "start_frame", "end_frame"]
    assert len(segments) >= 1 and (segments["end_frame"] - segments["start_frame"] >= 8).all()
    for row in segments.itertuples():  # each segment is a run of its predicted label
        assert (table.loc[row.start_frame:row.end_frame - 1, "cnn_lstm_label"] == row.label).mean() > 0.5
    raw = annotations.read_table(out / "woman_sad_to_happy.csv")
    assert len(raw) == len(segments)
    faceless = pd.read_parquet(out / "no_face.parquet")
    assert not faceless["face_found"].any() and faceless["cnn_happy"].isna().all()


def test_segments_drop_short_runs_and_join_what_they_separated():
    labels = np.array([-1, -1, 0, 0, 0, 0, 1, 0, 0, 0, 2, 2, 2, 2, 2, -1])
    assert predict.segments_of(labels, ["a", "b", "c"], 3) == [("a", 2, 10), ("c", 10, 15)]
    assert predict.segments_of(labels, ["a", "b", "c"], 1) == [("a", 2, 6), ("b", 6, 7), ("a", 7, 10), ("c", 10, 15)]


def test_an_exported_bundle_predicts_the_same_elsewhere(demo_run, predicted, tmp_path):
    bundle = predict.export(demo_run / "results", tmp_path / "bundle")
    info = json.loads((bundle / "bundle.json").read_text())
    assert info["classes"] == ["neutral", "happy", "sad", "pensive"] and info["window_length"] == 16
    assert info["faces"]["detector"] == "hog" and info["config_hash"]
    moved = tmp_path / "elsewhere"
    shutil.move(bundle, moved)  # self-contained: nothing points back into the run
    results, failed = predict.predict_many([WOMAN], moved, tmp_path / "out", num_workers=0)
    assert not failed
    again = pd.read_parquet(tmp_path / "out/woman_sad_to_happy.parquet")
    first = pd.read_parquet(predicted[0] / "woman_sad_to_happy.parquet")
    probs = [c for c in first.columns if c.startswith("cnn_") and not c.endswith("_label")]
    assert np.allclose(again[probs].to_numpy(float), first[probs].to_numpy(float), atol=1e-6, equal_nan=True)
    assert again["cnn_lstm_label"].equals(first["cnn_lstm_label"])
    with pytest.raises(predict.FerseqError, match="exists"):
        predict.export(demo_run / "results", moved)


def test_a_run_without_a_model_names_what_is_missing(tmp_path, demo_run):
    with pytest.raises(predict.ModelNotFound, match="no folds"):
        predict.load_run(tmp_path)
    partial = tmp_path / "results"
    shutil.copytree(demo_run / "results/folds", partial / "folds")
    (partial / "folds/0/frame_model/model.pt").unlink()
    with pytest.raises(predict.ModelNotFound, match="model.pt: missing \\(the frame model of fold 0\\)"):
        predict.load_run(partial)
    with pytest.raises(predict.ModelNotFound, match="no fold 3"):
        predict.load_run(partial, fold=3)
