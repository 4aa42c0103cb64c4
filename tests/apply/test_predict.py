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
from ferseq.data import videos
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
    for source, frames in ((WOMAN, 472), (FIXTURES / "no_face.mp4", 95)):
        name, info = source.stem, videos.probe(source)
        assert len(pd.read_parquet(out / f"{name}.parquet")) == frames
        assert list(pd.read_csv(out / f"{name}.csv").columns) == ["video", "subject", "label", "start_frame", "end_frame"]
        timeline(out / f"{name}.png")  # decodes, at the timeline's size
        video = decoded(out / f"{name}.annotated.mp4")  # every decoded frame, at the input's size
        assert len(video) == frames and {image.shape for image in video} == {(info.height, info.width, 3)}, name
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


# --------------------------------------------------------------------------- face gaps, stride, normalise, folds
# What predict's windows should be, computed here from the faces and feature stages' output with plain loops.

GAPS = FIXTURES / "face_then_no_face.mov"  # a face in the first ~70 of 169 frames, then a title animation
MAN = DEMO / "videos" / "man_neutral_to_happy.mp4"
CLASSES = ["neutral", "happy", "sad", "pensive"]


def stage_features(video: Path, fold_dir: Path, tmp: Path) -> tuple[np.ndarray, dict[str, np.ndarray], str]:
    """The faces stage over every frame of ``video`` and the feature stage with the fold's frame model:
    (face frame numbers, name -> (faces, D) features, the run's faces.missing_face)."""
    from ferseq.faces import face_extraction
    from ferseq.features import feature_extraction
    from ferseq.frame_model.network import load_frame_model

    frames = videos.probe(video).frames
    cfg = {**face_extraction.DEFAULTS, **torch.load(fold_dir / "frame_model/model.pt", weights_only=True)["faces"]}
    whole = pd.DataFrame([{"segment_id": 0, "label": "", "start": 0, "end": frames}])
    face_extraction.extract_faces(video, whole, cfg, tmp / "faces.parquet", tmp / "qc.csv", name=video.stem, to_end=True)
    feature_extraction.extract_video(load_frame_model(fold_dir / "frame_model/model.pt"), tmp / "faces.parquet", {0: ""},
                                     tmp / "features.parquet", video_id=video.stem, num_workers=0)
    stored, per_frame = windows.read_features(tmp / "features.parquet")
    return stored["frame"].to_numpy(), per_frame, cfg["missing_face"]


def expected_windows(face_frames: np.ndarray, per_frame: dict[str, np.ndarray], n: int, stride: int, policy: str,
                     model, normalise: str, length: int = 16) -> np.ndarray:
    """The sequence model's probabilities (n, C) of the window ending at every ``stride``-th sequence position from
    the first full window on (NaN elsewhere). ``repeat``: every frame is a position and reads the last face frame at
    or before it (the first face frame before any), and a window none of whose frames has a face is not scored;
    ``drop``: the face frames are the positions. ``subject``: each embedding minus the median embedding of the
    video's face frames."""
    x = per_frame["embedding"].astype(np.float64)
    if normalise == "subject":
        x = x - np.median(x, axis=0)
    if policy == "repeat":
        positions = list(range(n))
        source = [max(0, int(np.sum(face_frames <= f)) - 1) for f in positions]
    else:
        positions, source = list(face_frames), list(range(len(face_frames)))
    out = np.full((n, len(CLASSES)), np.nan)
    with torch.inference_mode():
        for end in range(length - 1, len(positions), stride):
            if policy == "repeat" and not any(positions[end] - length < f <= positions[end] for f in face_frames):
                continue
            window = torch.tensor(x[source[end - length + 1:end + 1]][None], dtype=torch.float32)
            out[positions[end]] = model(window).softmax(dim=1).numpy()[0]
    return out


def selected_model(fold_dir: Path):
    best = json.loads((fold_dir / "sequence_model/best.json").read_text())
    named = Path(best["model"])
    return grid_search.load_model(fold_dir / "sequence_model" / named.parent.name / named.name)


@pytest.fixture(scope="module")
def gaps(demo_run, tmp_path_factory):
    """``ferseq predict --stride 3 --annotate`` on the clip whose face leaves, and what its windows should be."""
    out = tmp_path_factory.mktemp("gaps")
    results, failed = predict.predict_many([GAPS], demo_run / "results", out / "predicted", stride=3, annotate=True,
                                           num_workers=0)
    assert not failed and len(results) == 1
    fold = demo_run / "results/folds/0"
    face_frames, per_frame, policy = stage_features(GAPS, fold, out)
    assert policy == "repeat"  # the demo run's faces.missing_face: every frame is a sequence position
    table = pd.read_parquet(out / "predicted/face_then_no_face.parquet")
    expected = expected_windows(face_frames, per_frame, len(table), 3, policy, selected_model(fold)[0], "none")
    return out / "predicted", table, face_frames, per_frame, expected, results[0]


def test_a_clip_whose_face_leaves_keeps_every_frame_and_scores_only_face_frames_with_the_cnn(gaps):
    out, table, face_frames, per_frame, _, result = gaps
    assert len(table) == 169 and table["frame"].tolist() == list(range(169)) and result.frames == 169
    # The face is there at the start and gone for the title animation; rows for every frame either way.
    assert table["face_found"].to_numpy().nonzero()[0].tolist() == face_frames.tolist()
    assert 50 < len(face_frames) < 100 and face_frames.max() < 100 and result.faces == len(face_frames)
    cnn = table[[f"cnn_{c}" for c in CLASSES]].to_numpy()
    assert np.allclose(cnn[face_frames], per_frame["probs"], atol=1e-5)
    assert np.isnan(cnn[~table["face_found"]]).all() and table.loc[~table["face_found"], "cnn_label"].isna().all()
    assert table.loc[table["face_found"], "cnn_label"].tolist() == [CLASSES[i] for i in per_frame["probs"].argmax(1)]


def test_stride_scores_every_third_window_with_the_selected_model(gaps):
    out, table, _, _, expected, result = gaps
    lstm = table[[f"cnn_lstm_{c}" for c in CLASSES]].to_numpy()
    scored = ~np.isnan(expected[:, 0])
    # windows end at the 16th sequence position and every 3rd one after it, and nowhere else
    assert table["window"].to_numpy().tolist() == scored.tolist() and scored.sum() > 20
    assert np.allclose(lstm[scored], expected[scored], atol=1e-5) and np.isnan(lstm[~scored]).all()
    assert table.loc[scored, "cnn_lstm_label"].tolist() == [CLASSES[i] for i in expected[scored].argmax(1)]
    assert table.loc[~scored, "cnn_lstm_label"].isna().all()
    # No window is scored once the face has been gone for a whole window (16 frames): no label long after it left.
    last_face = int(table.index[table["face_found"]].max())
    assert scored[last_face:last_face + 16].any() and not scored[last_face + 16:].any()
    # The segments are runs of the scored windows' labels, each held until the next scored window (3 frames):
    # with --stride they are as long as without it, not cut into one-frame runs that --min-segment drops.
    held = np.full(len(table), -1)
    ends = np.flatnonzero(scored)
    for end in ends:
        held[end:end + 3] = expected[end].argmax()
    assert result.segments == predict.segments_of(held, CLASSES, 8) and result.segments
    segments = pd.read_csv(out / "face_then_no_face.csv")
    assert list(segments[["label", "start_frame", "end_frame"]].itertuples(index=False, name=None)) == result.segments


def test_a_strided_window_stands_for_the_sequence_positions_up_to_the_next():
    has_window = np.zeros(10, bool)
    # drop: the face frames are the positions (frame 4 has no face); windows end at every 2nd position
    has_window[[2, 5, 7, 9]] = True
    faces = np.array([0, 1, 2, 3, 5, 6, 7, 8, 9])
    assert predict.held_windows(has_window, faces, 10, 2, "drop").tolist() == [-1, -1, 2, 2, -1, 5, 5, 7, 7, 9]
    # repeat: every frame is a position
    has_window[:] = False
    has_window[[2, 4, 6, 8]] = True
    assert predict.held_windows(has_window, faces, 10, 2, "repeat").tolist() == [-1, -1, 2, 2, 4, 4, 6, 6, 8, 8]
    assert predict.held_windows(has_window, faces, 10, 1, "repeat").tolist() == [-1, -1, 2, -1, 4, -1, 6, -1, 8, -1]


def subject_fold(source: Path, target: Path, **best_json) -> None:
    """A copy of ``source``'s frame model and selected sequence model as another fold, the sequence model marked as
    trained with ``windows.normalise: subject`` and its best.json scores replaced by ``best_json``."""
    (target / "frame_model").mkdir(parents=True)
    shutil.copy2(source / "frame_model/model.pt", target / "frame_model/model.pt")
    best = json.loads((source / "sequence_model/best.json").read_text())
    named = Path(best["model"])
    (target / "sequence_model" / named.parent.name).mkdir(parents=True)
    checkpoint = torch.load(source / "sequence_model" / named.parent.name / named.name, weights_only=True)
    torch.save({**checkpoint, "normalise": "subject"}, target / "sequence_model" / named.parent.name / named.name)
    (target / "sequence_model/best.json").write_text(json.dumps({**best, **best_json}))


@pytest.fixture(scope="module")
def folds(demo_run, tmp_path_factory):
    """A results folder with three folds: 0 as the demo run's; 1 and 2 its models, the sequence model marked
    ``normalise: subject``, fold 1 with the best val macro F1 and fold 2 with the same F1 but a higher val loss."""
    run = tmp_path_factory.mktemp("folds") / "results"
    source = demo_run / "results/folds/0"
    shutil.copytree(source / "frame_model", run / "folds/0/frame_model")
    shutil.copytree(source / "sequence_model", run / "folds/0/sequence_model")
    best = json.loads((source / "sequence_model/best.json").read_text())
    subject_fold(source, run / "folds/1", val_macro_f1=best["val_macro_f1"] + 0.1, val_loss=best["val_loss"])
    subject_fold(source, run / "folds/2", val_macro_f1=best["val_macro_f1"] + 0.1, val_loss=best["val_loss"] + 1)
    return run


def test_the_default_fold_is_the_best_val_macro_f1_then_the_lowest_val_loss(folds):
    bundle = predict.load_run(folds)
    assert bundle.fold == 1 and bundle.normalise == "subject" and "fold 1" in bundle.source
    assert bundle.frame_model == folds / "folds/1/frame_model/model.pt"
    assert bundle.sequence_model.is_relative_to(folds / "folds/1/sequence_model")
    assert predict.load_run(folds, fold=0).normalise == "none" and predict.load_run(folds, fold=2).fold == 2
    # Fold 1 worse than fold 0 now: fold 0 is chosen.
    best = json.loads((folds / "folds/0/sequence_model/best.json").read_text())
    one = json.loads((folds / "folds/1/sequence_model/best.json").read_text())
    worse = folds.parent / "worse"
    shutil.copytree(folds, worse)
    (worse / "folds/1/sequence_model/best.json").write_text(json.dumps({**one, "val_macro_f1": best["val_macro_f1"] - 0.1}))
    (worse / "folds/2/sequence_model/best.json").unlink()  # an unfinished fold is not a candidate
    assert predict.load_run(worse).fold == 0


def test_subject_normalisation_takes_the_videos_own_median_in_predict(folds, tmp_path):
    # The default fold (1) reads each embedding minus the median of the video's own face frames.
    results, failed = predict.predict_many([MAN], folds, tmp_path / "out", num_workers=0)
    assert not failed and results[0].frames == 72
    table = pd.read_parquet(tmp_path / "out/man_neutral_to_happy.parquet")
    face_frames, per_frame, policy = stage_features(MAN, folds / "folds/1", tmp_path)
    model = selected_model(folds / "folds/1")[0]
    expected = expected_windows(face_frames, per_frame, 72, 1, policy, model, "subject")
    plain = expected_windows(face_frames, per_frame, 72, 1, policy, model, "none")
    scored = ~np.isnan(expected[:, 0])
    assert scored.sum() == 72 - 15 and table["window"].tolist() == scored.tolist()
    assert np.abs(expected[scored] - plain[scored]).max() > 1e-3  # the medians matter to this model
    lstm = table[[f"cnn_lstm_{c}" for c in CLASSES]].to_numpy()
    assert np.allclose(lstm[scored], expected[scored], atol=1e-5)
    # The per-frame CNN is never normalised.
    cnn = table[[f"cnn_{c}" for c in CLASSES]].to_numpy()
    assert np.allclose(cnn[face_frames], per_frame["probs"], atol=1e-5)


# --------------------------------------------------------------------------- what the pictures and the video show


def decoded(path: Path) -> list[np.ndarray]:
    """Every frame of a video file, BGR."""
    import cv2

    capture, frames = cv2.VideoCapture(str(path)), []
    ok, image = capture.read()
    while ok:
        frames.append(image)
        ok, image = capture.read()
    capture.release()
    return frames


def green_excess(image: np.ndarray) -> np.ndarray:
    """How much greener than red and blue each pixel is (the face box is drawn pure green)."""
    image = image.astype(np.float64)
    return image[..., 1] - (image[..., 0] + image[..., 2]) / 2


NO_FACE_GREY = 204  # 0.6 grey at alpha 0.5 on white


def timeline(path: Path) -> np.ndarray:
    import matplotlib.image

    image = (matplotlib.image.imread(path)[..., :3] * 255).round().astype(int)
    assert image.shape == (500, 1100, 3)  # 11 x 5 inches at 100 dpi
    return image


def line_pixels(image: np.ndarray) -> int:
    """Strongly coloured pixels: the classes' lines (tab10), not the pale segment bands, the grey or the text."""
    return int((image.max(axis=2) - image.min(axis=2) > 80).sum())


def test_the_annotated_video_has_every_frame_with_the_box_on_face_frames_only(gaps):
    out, table, face_frames, _, _, _ = gaps
    raw, drawn = decoded(GAPS), decoded(out / "face_then_no_face.annotated.mp4")
    assert len(drawn) == len(raw) == 169 and {f.shape for f in drawn} == {raw[0].shape} == {(540, 960, 3)}
    for frame in (int(face_frames[10]), int(face_frames[-1])):  # the face box's top edge is drawn green
        x0, y0, x1, _ = (int(round(v)) for v in table.loc[frame, "bbox"])
        edge = (slice(y0 - 1, y0 + 2), slice(x0 + 5, x1 - 5))
        assert green_excess(drawn[frame][edge]).mean() > green_excess(raw[frame][edge]).mean() + 60, frame
    # After the face left, no box where it was last: the frame as it was, up to the codec's loss.
    x0, y0, x1, y1 = (int(round(v)) for v in table.loc[int(face_frames[-1]), "bbox"])
    for frame in (150, 168):
        assert not table.loc[frame, "face_found"]
        box = (slice(y0 - 2, y1 + 3), slice(x0 - 2, x1 + 3))
        assert np.abs(drawn[frame][box].astype(int) - raw[frame][box]).mean() < 8, frame
    # The labels are written top left on every frame, the no-face ones included ("CNN: -").
    for frame in (0, int(face_frames[-1]), 150):
        text = (slice(10, 70), slice(10, 250))
        assert np.abs(drawn[frame][text].astype(int) - raw[frame][text]).mean() > 15, frame


def test_the_timeline_shows_lines_in_both_panels_and_the_faceless_span_grey(gaps, predicted):
    out, table, _, _, _, _ = gaps
    image = timeline(out / "face_then_no_face.png")
    top, bottom = image[100:230], image[280:440]  # the panels' plotting areas, below the legend
    # Probability lines in both panels; with --stride 3 the CNN-LSTM's too (it scored every third frame).
    assert line_pixels(top) > 300 and line_pixels(bottom) > 300
    # The frames without a face (from frame ~70 of 169 on) are a grey band over the right part of each panel.
    grey = (np.abs(image[150] - NO_FACE_GREY) <= 3).all(axis=1).nonzero()[0]  # across the middle of the panel
    assert len(grey) > 300 and 0.3 * 1100 < grey.min() < 0.6 * 1100
    # The woman's clip has a face in every frame: no grey band.
    woman = timeline(predicted[0] / "woman_sad_to_happy.png")
    assert (np.abs(woman[150] - NO_FACE_GREY) <= 3).all(axis=1).sum() < 20
    assert line_pixels(woman[100:230]) > 300 and line_pixels(woman[280:440]) > 300
