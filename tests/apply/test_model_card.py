"""The bundle manifest's data summary and test scores from a results folder's tables, and the model card written
from them: with the evaluation's intervals when the run has them, saying so plainly when it has not."""

from __future__ import annotations

import pandas as pd

from ferseq.apply import manifest, model_card

CLASSES = ["neutral", "happy", "sad"]


def write_data(run):
    """segments.parquet and splits.parquet of two folds: fold 0 splits by subject except one leaked person."""
    rows = [  # segment_id, video_id, subject, label, frames, fold-0 split
        (1, "v1", "ann", "neutral", 40, "train"), (2, "v1", "ann", "happy", 30, "train"),
        (3, "v2", "bob", "sad", 20, "train"), (4, "v3", "cy", "happy", 25, "val"),
        (5, "v4", "dee", "sad", 35, "test"), (6, "v5", "ann", "neutral", 10, "test"),
    ]
    segments = pd.DataFrame([r[:5] for r in rows], columns=["segment_id", "video_id", "subject", "label", "frames"])
    (run / "data").mkdir(parents=True)
    segments.to_parquet(run / "data" / "segments.parquet")
    splits = pd.DataFrame({"fold": 0, "segment_id": [r[0] for r in rows], "split": [r[5] for r in rows],
                           "unit": "subject"})
    other = splits.assign(fold=1, split="train")  # another fold, which must not count
    pd.concat([splits, other]).to_parquet(run / "data" / "splits.parquet")


def write_evaluation(run):
    """The evaluation's tables in the issue-23 format: a fold's per-method CSV and the run's long summary."""
    folder = run / "folds" / "0" / "evaluation"
    folder.mkdir(parents=True)
    for level, recall, f1, acc in (("window", 0.5, 0.4, 0.6), ("segment", 0.55, 0.45, 0.65)):
        pd.DataFrame([
            {"level": level, "class": c, "precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2} for c in CLASSES
        ] + [{"level": level, "class": "macro avg", "precision": 0.5, "recall": recall, "f1": f1, "support": 6},
             {"level": level, "class": "accuracy", "precision": None, "recall": None, "f1": acc, "support": 6}]
        ).to_csv(folder / "cnn_lstm.csv", mode="a", header=level == "window", index=False)
    common = {"versus": "", "p_value": None, "fold_std": 1.5, "units": 4, "items": 9, "split_unit": "subject",
              "identity_leak": False, "cnn_below_landmarks_folds": 1, "folds": 2, "confidence": 0.9}
    rows = [{"kind": "score", "method": "cnn_lstm", "name": "CNN-LSTM", "level": "segment", "metric": m,
             "value": v, "ci_low": v - 10, "ci_high": v + 10, "fold_mean": v, **common}
            for m, v in (("uar", 52.5), ("war", 61.0), ("macro_f1", 44.25))]
    rows += [{"kind": "score", "method": "cnn_lstm", "name": "CNN-LSTM", "level": "window", "metric": "uar",
              "value": 99.0, "ci_low": 98.0, "ci_high": 99.5, "fold_mean": 99.0, **common},
             {"kind": "difference", "method": "cnn_lstm", "name": "CNN-LSTM − per-frame CNN", "level": "segment",
              "metric": "uar", "value": 7.0, "ci_low": -2.0, "ci_high": 15.0, "fold_mean": 7.0, **common,
              "versus": "per_frame", "p_value": 0.2}]
    (run / "evaluation").mkdir()
    pd.DataFrame(rows).to_csv(run / "evaluation" / "summary.csv", index=False)


def a_manifest(run, config=None):
    return manifest.new(
        exported_from=f"{run} fold 0", fold=0, classes=CLASSES, window_length=16, features="embedding",
        faces={"detector": "hog", "crop_size": 224, "dnn_model": None},
        models={"frame_model": {"backbone": "legacy_xception", "input_size": 299, "val_macro_f1": 0.5, "best_epoch": 3},
                "sequence_model": {"arch": "lstm", "hidden": 64, "lr": 0.001, "dropout": 0.5, "val_macro_f1": 0.6,
                                   "best_epoch": 7},
                "landmark_baseline": {"C": 0.1, "val_macro_f1": 0.55}},
        data=manifest.data_summary(run, 0), scores=manifest.evaluation_scores(run, 0), config=config,
        config_hash="abc123" if config else None)


def test_data_summary_counts_the_folds_splits(tmp_path):
    write_data(tmp_path)
    data = manifest.data_summary(tmp_path, 0)
    assert data["train"] == {"videos": 2, "subjects": 2, "segments": {"happy": 1, "neutral": 1, "sad": 1},
                             "frames": {"happy": 30, "neutral": 40, "sad": 20}}
    assert data["val"]["segments"] == {"happy": 1} and data["test"]["frames"] == {"neutral": 10, "sad": 35}
    assert data["shared_subjects"] == ["ann"]  # ann has train segments and a test segment
    assert manifest.data_summary(tmp_path / "nothing", 0) is None


def test_the_card_gives_segment_scores_with_their_intervals_and_the_limits(tmp_path):
    write_data(tmp_path)
    write_evaluation(tmp_path)
    scores = manifest.evaluation_scores(tmp_path, 0)
    # Only the summary's segment-level scores, never its differences or other levels.
    assert [(r["metric"], r["value"], r["ci_low"]) for r in scores["run"]] == [
        ("uar", 52.5, 42.5), ("war", 61.0, 51.0), ("macro_f1", 44.25, 34.25)]
    assert scores["fold"] == [
        {"method": "cnn_lstm", "level": "window", "uar": 50.0, "war": 60.0, "macro_f1": 40.0, "support": 6},
        {"method": "cnn_lstm", "level": "segment", "uar": 55.0, "war": 65.0, "macro_f1": 45.0, "support": 6}]
    assert scores["limits"] == {"split_unit": "subject", "identity_leak": False, "cnn_below_landmarks_folds": 1,
                                "folds": 2, "confidence": 0.9}
    config = {"frame_model": {"pretrained": True}, "split": {"unit": "subject"}}
    card = model_card.render(a_manifest(tmp_path, config))
    assert "| CNN-LSTM | 52.50 [42.50, 62.50] | 61.00 [51.00, 71.00] | 44.25 [34.25, 54.25] |" in card
    assert "with 90% intervals from a bootstrap over the test people" in card  # evaluation.confidence 0.9
    assert "| CNN-LSTM | segment | 55.00 | 65.00 | 45.00 | 6 |" in card  # this fold's own, two folds in the run
    assert "99.00" not in card and "7.00" not in card
    assert "| train | 2 | 2 | 3 | 90 |" in card and "| sad | 1 (20) | 0 (0) | 1 (35) |" in card
    assert "below the landmark baseline on 1 of 2 fold(s)" in card
    # The leaked person is named, though the summary says there is no leak.
    assert "**Identity leak**: the split lets people leak: this fold's test subjects also in its train or val " \
           "split: 1 (ann)" in card
    assert "From-scratch" not in card and "`dnn_model`" not in card and "`detector`: hog" in card
    assert "config hash `abc123`" in card and "neutral, happy, sad" in card


def test_an_older_run_without_evaluation_is_said_plainly(tmp_path):
    card = model_card.render(a_manifest(tmp_path))
    scores = manifest.evaluation_scores(tmp_path, 0)
    assert scores["run"] == [] and scores["fold"] == [] and len(scores["notes"]) == 2
    assert "No test scores" in card and "Not recorded: the results folder had no `data/splits.parquet`" in card
    assert "config was not recorded" in card and "config hash `not recorded`" in card
    assert "clears the landmark baseline is not recorded" in card
    assert "Validation" in card and "- LSTM: 60.00" in card  # what the checkpoints recorded is still there


def terms_section(card: str) -> str:
    return card.split("## Licences and terms", 1)[1]


def test_the_card_states_the_terms_of_the_models_the_bundle_needs(tmp_path):
    # The 68-point landmark model is in every bundle's pipeline: its non-commercial terms are always stated.
    config = {"frame_model": {"pretrained": True, "backbone": "legacy_xception"}}
    info = a_manifest(tmp_path, config)
    info["faces"] = {"detector": "opencv_dnn", "dnn_model": "res10_300x300_ssd_iter_140000.caffemodel"}
    terms = terms_section(model_card.render(info))
    assert "iBUG 300-W" in terms and "non-commercial use" in terms and "commercial product" in terms
    assert "OpenCV's ResNet-10 SSD" in terms and "Apache 2.0" in terms and "dlib's HOG" not in terms
    assert "`legacy_xception` started from timm's ImageNet weights" in terms and "random weights" not in terms
    assert "MIT-licensed" in terms and "Training data" in terms

    # Another detector, a CNN from scratch: the card follows the manifest, not a fixed text.
    info = a_manifest(tmp_path, {"frame_model": {"pretrained": False, "backbone": "resnet18"}})
    terms = terms_section(model_card.render(info))
    assert "dlib's HOG frontal face detector" in terms and "Boost Software License" in terms
    assert "`resnet18` trained from random weights" in terms and "ImageNet" not in terms
    assert "iBUG 300-W" in terms  # the landmark model is needed whatever the detector

    # An older run without its config: the ImageNet terms may apply, and the card says it does not know.
    terms = terms_section(model_card.render(a_manifest(tmp_path)))
    assert "not recorded" in terms and "`legacy_xception`" in terms


def test_a_frame_cnn_started_from_a_pretraining_says_so_and_carries_the_image_sets_terms(tmp_path):
    config = {"frame_model": {"init": "pretrain", "backbone": "legacy_xception"},
              "pretrain": {"images": {"format": "rafdb", "path": "/data/RAF-DB/basic"}, "init": "imagenet"}}
    info = a_manifest(tmp_path, config)
    info["models"]["frame_model"]["initialised_from"] = ("its pretraining on the rafdb image set /data/RAF-DB/basic "
                                                         "(results/pretrain/model.pt)")
    card = model_card.render(info)
    assert ("a per-frame CNN (legacy_xception, 299 px aligned face crops, initialised from its pretraining on the "
            "rafdb image set /data/RAF-DB/basic (results/pretrain/model.pt))") in card
    terms = terms_section(card)
    assert ("`legacy_xception` started from its pretraining on the rafdb image set /data/RAF-DB/basic "
            "(results/pretrain/model.pt), itself started from ImageNet weights of legacy_xception") in terms
    assert "the image set's licence or agreement (rafdb" in terms and "From-scratch" not in card
