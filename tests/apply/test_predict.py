"""`ferseq predict` and `ferseq export` on a finished demo run: the same numbers as the workflow, real files out;
a bundle proves what it is (manifest, checksums, model card) and never runs code from its files."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import DEMO, FIXTURES
from ferseq.apply import manifest, predict
from ferseq.common.model_files import ModelFileError
from ferseq.sequence_model import grid_search
from ferseq.sequences import windows

WOMAN = DEMO / "videos" / "woman_sad_to_happy.mp4"


@pytest.fixture(scope="module")
def exported(demo_run, tmp_path_factory):
    """A bundle of the demo run (copy it before changing it)."""
    return predict.export(demo_run / "results", tmp_path_factory.mktemp("exported") / "bundle")


class WouldRun:
    """A pickled object whose unpickling would create ``marker``: the payload of a hostile model file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def rehash(bundle, name):
    """Give ``name`` its new SHA-256 in the manifest, as someone who forges a bundle would."""
    info = json.loads((bundle / "manifest.json").read_text())
    info["files"][name] = hashlib.sha256((bundle / name).read_bytes()).hexdigest()
    (bundle / "manifest.json").write_text(json.dumps(info))


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
    model, checkpoint = grid_search.load_model(demo_run / best["model"])
    inputs = windows.inputs({k: v[first] for k, v in per_frame.items()}, checkpoint.get("features", "embedding"))
    ends = np.arange(15, 140)
    with torch.inference_mode():
        expected = model(torch.from_numpy(np.stack([inputs[e - 15:e + 1] for e in ends]))).softmax(dim=1).numpy()
    lstm = table[[f"cnn_lstm_{c}" for c in classes]].to_numpy()
    assert np.allclose(lstm[ends], expected, atol=1e-5)
    assert np.isnan(lstm[:15]).all() and not table["window"][:15].any() and table["window"][15:].all()
    assert (table.loc[ends, "cnn_lstm_label"] == [classes[i] for i in expected.argmax(axis=1)]).all()


def test_segments_read_back_as_an_annotation_table(predicted):
    from ferseq.data import annotations

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


def test_an_exported_bundle_predicts_the_same_elsewhere(demo_run, predicted, exported, tmp_path):
    moved = tmp_path / "elsewhere"
    shutil.copytree(exported, moved)  # self-contained: nothing points back into the run
    results, failed = predict.predict_many([WOMAN], moved, tmp_path / "out", num_workers=0)
    assert not failed
    again = pd.read_parquet(tmp_path / "out/woman_sad_to_happy.parquet")
    first = pd.read_parquet(predicted[0] / "woman_sad_to_happy.parquet")
    probs = [c for c in first.columns if c.startswith("cnn_") and not c.endswith("_label")]
    assert np.allclose(again[probs].to_numpy(float), first[probs].to_numpy(float), atol=1e-6, equal_nan=True)
    assert again["cnn_lstm_label"].equals(first["cnn_lstm_label"])
    with pytest.raises(predict.FerseqError, match="exists"):
        predict.export(demo_run / "results", moved)


def test_the_manifest_and_model_card_say_what_the_bundle_is(demo_run, exported):
    info = json.loads((exported / "manifest.json").read_text())
    assert info["format_version"] == manifest.FORMAT_VERSION and info["ferseq_version"] and info["created"]
    assert info["classes"] == ["neutral", "happy", "sad", "pensive"] and info["window_length"] == 16
    assert info["features"] == "embedding" and info["fold"] == 0 and info["faces"]["detector"] == "hog"
    # Every file but the manifest, with its SHA-256.
    files = {p.name for p in exported.iterdir()} - {"manifest.json"}
    assert files == set(info["files"]) == {"frame_model.pt", "sequence_model.pt", "landmark_baseline.json",
                                          "MODEL_CARD.md"}
    assert all(hashlib.sha256((exported / n).read_bytes()).hexdigest() == h for n, h in info["files"].items())
    # The config the grid point was trained with, and its hash.
    best = json.loads((demo_run / "results/folds/0/sequence_model/best.json").read_text())
    _, checkpoint = grid_search.load_model(demo_run / best["model"])
    assert info["config"] == checkpoint["config"] and info["config"]["frame_model"]["pretrained"] is False
    assert info["config_hash"] == checkpoint["config_hash"]
    assert info["models"]["sequence_model"]["arch"] == best["arch"]
    assert info["models"]["sequence_model"]["val_macro_f1"] == best["val_macro_f1"]
    # The train/val/test summary is the fold's split table's.
    splits = pd.read_parquet(demo_run / "results/data/splits.parquet").merge(
        pd.read_parquet(demo_run / "results/data/segments.parquet", columns=["segment_id", "frames"]))
    for split, rows in splits[splits["fold"] == 0].groupby("split"):
        assert info["data"][split]["segments"] == rows.groupby("label").size().to_dict()
        assert info["data"][split]["frames"] == rows.groupby("label")["frames"].sum().to_dict()
        assert info["data"][split]["subjects"] == rows["subject"].nunique()
    card = (exported / "MODEL_CARD.md").read_text()
    for text in ("neutral, happy, sad, pensive", "16-frame windows", "Identity leak", "From-scratch CNN",
                 "`detector`: hog", "| happy |", info["config_hash"]):
        assert text in card, text
    # The run's evaluation: segment-level scores with their intervals (one fold: the fold's own table is the same).
    assert {(r["method"], r["metric"]) for r in info["scores"]["run"]} >= {("cnn_lstm", "uar"), ("per_frame", "war")}
    assert info["scores"]["fold"] and "95% intervals" in card and "| CNN-LSTM | " in card


def test_a_checkpoint_carrying_code_is_refused_and_never_run(exported, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(exported, bundle)
    checkpoint = torch.load(bundle / "sequence_model.pt", weights_only=True)
    torch.save({**checkpoint, "extra": WouldRun(tmp_path / "ran")}, bundle / "sequence_model.pt")
    with pytest.raises(manifest.BundleError, match="sequence_model.pt: changed since export"):
        predict.load_run(bundle)
    rehash(bundle, "sequence_model.pt")  # a forged manifest: the file itself is still refused, unread
    done = subprocess.run([sys.executable, "-m", "ferseq", "predict", str(WOMAN), "--run", str(bundle), "-o",
                           str(tmp_path / "out")], capture_output=True, text=True)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "sequence_model.pt: not a sequence model that loads as data only" in done.stderr
    assert "posix.system" in done.stderr
    assert not (tmp_path / "ran").exists() and not (tmp_path / "out").exists()


def test_a_pickled_landmark_baseline_is_refused_and_never_run(demo_run, exported, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(exported, bundle)
    payload = pickle.dumps({"model": WouldRun(tmp_path / "ran"), "classes": ["neutral", "happy", "sad", "pensive"]})
    (bundle / "model.pkl").write_bytes(payload)  # beside the bundle's own files
    with pytest.raises(manifest.BundleError, match="model.pkl: not part of the bundle as exported"):
        predict.load_run(bundle)
    (bundle / "model.pkl").unlink()
    (bundle / "landmark_baseline.json").write_bytes(payload)  # in place of its own, with a forged checksum
    rehash(bundle, "landmark_baseline.json")
    with pytest.raises(ModelFileError, match="landmark_baseline.json: a pickled landmark baseline"):
        predict.load_run(bundle)
    # A results folder of an older ferseq, whose baseline is a pickle: export says how to get a bundle.
    results = tmp_path / "results"
    shutil.copytree(demo_run / "results/folds", results / "folds")
    (results / "folds/0/landmark_baseline/model.json").unlink()
    (results / "folds/0/landmark_baseline/model.pkl").write_bytes(payload)
    with pytest.raises(ModelFileError, match="model.pkl: a pickled landmark baseline .* rebuild it as .*model.json"):
        predict.export(results, tmp_path / "new")
    assert not (tmp_path / "ran").exists() and not (tmp_path / "new").exists()


def test_a_changed_byte_a_missing_file_or_a_newer_format_is_refused(exported, tmp_path, caplog):
    bundle = tmp_path / "bundle"
    shutil.copytree(exported, bundle)
    (bundle / "notes.txt").write_text("where this came from\n")  # a document beside the files: only warned about
    assert predict.load_run(bundle).classes == ["neutral", "happy", "sad", "pensive"]
    assert "notes.txt: not part of the bundle as exported" in caplog.text
    with open(bundle / "frame_model.pt", "r+b") as f:
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 1]))
    (bundle / "landmark_baseline.json").unlink()
    with pytest.raises(manifest.BundleError) as refused:
        predict.load_run(bundle)
    assert "frame_model.pt: changed since export" in str(refused.value)
    assert "landmark_baseline.json: missing" in str(refused.value) and "sequence_model" not in str(refused.value)
    info = json.loads((bundle / "manifest.json").read_text())
    (bundle / "manifest.json").write_text(json.dumps({**info, "format_version": manifest.FORMAT_VERSION + 1}))
    with pytest.raises(manifest.BundleError, match=f"bundle format {manifest.FORMAT_VERSION + 1}.*upgrade ferseq"):
        predict.load_run(bundle)
    (bundle / "manifest.json").rename(bundle / "bundle.json")  # what ferseq wrote before the manifest
    with pytest.raises(manifest.BundleError, match="older ferseq.*ferseq export --run RESULTS"):
        predict.load_run(bundle)


def test_a_results_folder_is_read_as_data_only(demo_run, tmp_path):
    results = tmp_path / "results"
    shutil.copytree(demo_run / "results/folds", results / "folds")
    best = json.loads((results / "folds/0/sequence_model/best.json").read_text())
    point = results / "folds/0/sequence_model" / Path(best["model"]).parent.name / Path(best["model"]).name
    torch.save({**torch.load(point, weights_only=True), "extra": WouldRun(tmp_path / "ran")}, point)
    with pytest.raises(ModelFileError, match=f"{point.name}: not a sequence model that loads as data only"):
        predict.load_run(results, fold=0)
    assert not (tmp_path / "ran").exists()


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
