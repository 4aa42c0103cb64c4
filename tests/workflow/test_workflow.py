"""The real Snakemake DAG on the demo data, and the config errors a user can make."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from conftest import DEMO, REPO, SMALL, run_snakemake, write_config
from ferseq.faces.batch_plan import batch_name

DATA_OUTPUTS = ["results/data/segments.parquet", "results/data/splits.parquet", "results/data/split_summary.csv"]


def demo_batch() -> str:
    """The name of the demo's one faces batch: the batch of its first video id (the file name without suffix)."""
    first = sorted(Path(video).stem for video in pd.read_csv(DEMO / "annotations.csv")["video"])[0]
    return batch_name(first)


def test_demo_dag_from_raw_videos_to_summary_then_nothing_to_do(demo_run, tmp_path):
    config = demo_run / "config.yaml"
    results = demo_run / "results"

    # data: the demo config cuts segments to <= 48 frames and splits by segment, so every split has every class.
    segments = pd.read_parquet(results / "data/segments.parquet")
    splits = pd.read_parquet(results / "data/splits.parquet")
    assert segments["frames"].max() <= 48 and segments.groupby("row")["frames"].sum().sum() == 599
    assert set(splits["segment_id"]) == set(segments["segment_id"])
    counts = splits.groupby(["split", "label"]).size().unstack(fill_value=0)
    assert set(counts.index) == {"train", "val", "test"} and (counts.loc[["train", "test"]] > 0).all().all()
    assert pq.read_schema(results / "data/splits.parquet").metadata[b"ferseq.identity_leak"] == b"true"
    assert "identity leaks" in (results / "logs/data/splits.log").read_text()

    # faces: one batch job for the three videos, a row for every annotated frame, faces in (nearly) all of them.
    qc = pd.read_csv(results / "faces/qc.csv")
    videos = qc[qc["label"] == "all"].set_index("video")
    assert videos["frames"].to_dict() == {"man_after_title": 65, "man_neutral_to_happy": 68, "woman_sad_to_happy": 466}
    assert (videos["detection_rate"] > 0.95).all()

    # features: one row per face frame, 512-d embeddings and one probability per class.
    for video in videos.index:
        faces = pd.read_parquet(results / f"faces/{video}.parquet", columns=["frame", "face_found"])
        features = pd.read_parquet(results / f"folds/0/features/{video}.parquet")
        assert features["frame"].tolist() == faces.loc[faces["face_found"], "frame"].tolist()
        assert {len(e) for e in features["embedding"]} == {512} and {len(p) for p in features["probs"]} == {4}

    # windows, grid search, evaluation: every method on the same test items, at their levels and per segment.
    test_windows = pd.read_parquet(results / "folds/0/windows/test.parquet", columns=["window_id", "segment_id", "padded"])
    full = test_windows[~test_windows["padded"]]
    best = json.loads((results / "folds/0/sequence_model/best.json").read_text())
    assert best["arch"] in ("lstm", "bilstm") and best["points"] == 2
    methods = ("per_frame", "aggregation", "cnn_lstm", "landmarks", "landmarks_aggregation")
    tables = {m: pd.read_csv(results / f"folds/0/evaluation/{m}.csv").set_index(["level", "class"]) for m in methods}
    for method in ("aggregation", "cnn_lstm", "landmarks_aggregation"):
        assert tables[method].at[("window", "accuracy"), "support"] == len(full)
    # The landmark baseline is scored on exactly the per-frame CNN's test frames, class by class.
    assert tables["per_frame"].at[("frame", "accuracy"), "support"] == 16 * len(full)
    assert tables["landmarks"]["support"].tolist() == tables["per_frame"]["support"].tolist()
    # Segment level: every test segment with a face, for every method (a short one through its padded window).
    for method in methods:
        assert tables[method].at[("segment", "accuracy"), "support"] == test_windows["segment_id"].nunique()
    predicted = pd.read_parquet(results / "folds/0/evaluation/predictions.parquet", columns=["level", "segment_id"])
    assert set(predicted["segment_id"]) == set(test_windows["segment_id"])
    assert predicted["level"].value_counts().to_dict() == {"frame": 16 * len(full), "window": len(full),
                                                           "segment": test_windows["segment_id"].nunique()}
    baseline = json.loads((results / "folds/0/landmark_baseline/metrics.json").read_text())
    assert baseline["train_frames"] > 100 and baseline["C"] > 0
    # The grid points really trained on the demo windows: the training loss went down.
    for point in results.glob("folds/0/sequence_model/*/*.pt"):
        history = torch.load(point, weights_only=True)["history"]
        assert history[-1]["train_loss"] < history[0]["train_loss"], point
    summary = (results / "evaluation/summary.md").read_text()
    assert "CNN-LSTM" in summary and "Identity leaks across splits" in summary and "private" in summary
    assert "landmark baseline, per frame" in summary and "landmark baseline, window mean" in summary
    assert summary.startswith("# ferseq evaluation summary\n\n**Verdict.** On ") and "segment UAR" in summary
    assert "Frame CNN initialised from random weights." in summary  # the demo's frame_model.init: none
    table = pd.read_csv(results / "evaluation/summary.csv")
    assert set(table["frame_cnn_init"]) == {"random weights"}
    assert set(table["method"]) == set(methods) and table["identity_leak"].all()
    scores = table[table["kind"] == "score"]
    assert len(scores) == 5 * 2 * 3  # five methods, at their own level and per segment, UAR, WAR and macro F1
    assert (scores["ci_low"] <= scores["value"]).all() and (scores["value"] <= scores["ci_high"]).all()
    # One row per resampled unit: a test person, though the demo splits by segment.
    per_person = pd.read_csv(results / "evaluation/per_person.csv")
    tested = pd.read_parquet(results / "folds/0/evaluation/predictions.parquet", columns=["subject"])
    assert len(per_person) == tested["subject"].nunique() and "cnn_lstm_segment_uar" in per_person

    # MLflow: every training and evaluation step has its tagged run in the local store.
    mlflow.set_tracking_uri(f"sqlite:///{results}/mlflow.db")
    runs = mlflow.search_runs(experiment_names=["ferseq-demo"], output_format="list")
    stages = pd.Series([r.data.tags["stage"] for r in runs]).value_counts().to_dict()
    assert stages == {"frame_model": 1, "features": 1, "landmark_baseline": 1, "sequence_search": 1,
                      "sequence_model": 2, "evaluate": 5, "summary": 1}
    assert {r.data.tags.get("fold") for r in runs} == {"0", None}  # the summary pools the folds
    assert all(r.info.status == "FINISHED" for r in runs)
    assert {r.data.tags["mlflow.source.name"] for r in runs if r.data.tags["stage"] == "evaluate"} == {"ferseq evaluate (fold 0)"}

    again = run_snakemake(demo_run, "--configfile", str(config), "--cores", "2", "-n")
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr
    report = run_snakemake(demo_run, "--configfile", str(config), "--report", str(tmp_path / "report.html"))
    assert report.returncode == 0, report.stdout[-2000:] + report.stderr[-2000:]
    assert (tmp_path / "report.html").stat().st_size > 100_000


def test_windows_features_and_normalise_retrain_the_grid_only(demo_run, tmp_path):
    # Landmark sequences, each person's features against their own median, and a GRU beside the LSTM: windows
    # hold every per-frame column and each person's medians, so these rerun the grid and evaluation only.
    # The grid changes too (lstm2 and gru), so the selected point changes: the rerun logs into new MLflow runs
    # (or tags that may change), never into what the first run logged.
    shutil.copytree(demo_run, tmp_path / "run", symlinks=True)
    tmp_path = tmp_path / "run"
    results = tmp_path / "results"
    before = json.loads((results / "folds/0/sequence_model/best.json").read_text())
    both = write_config(tmp_path / "both.yaml", **{**SMALL, "sequence_model": {
        **SMALL["sequence_model"], "architectures": ["lstm2", "gru"]}},
        windows={"length": 16, "features": "both", "normalise": "subject"})
    rerun = run_snakemake(tmp_path, "--configfile", str(both), "--cores", "2")
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    ran = rerun.stdout + rerun.stderr
    for upstream in (f"faces_{demo_batch()}", "frame_model", "landmark_baseline", "features", "windows"):
        assert f"rule {upstream}" not in ran, upstream
    assert "rule sequence_model:" in ran and "rule evaluate:" in ran
    best = json.loads((results / "folds/0/sequence_model/best.json").read_text())
    assert set(best["families"]) == {"lstm", "gru"} and best["families"]["lstm"]["arch"] == "lstm2"
    assert best["model"] in {m["model"] for m in best["families"].values()}
    checkpoint = torch.load(tmp_path / best["families"]["lstm"]["model"], weights_only=True)
    assert checkpoint["features"] == "both" and checkpoint["input_dim"] == 512 + 136
    assert checkpoint["normalise"] == "subject" and before["arch"] != "lstm2"
    # MLflow agrees with the new selection; the runs of the points no longer in the grid are superseded
    mlflow.set_tracking_uri(f"sqlite:///{results}/mlflow.db")
    runs = mlflow.search_runs(experiment_names=["ferseq-demo"], output_format="list")
    (search,) = [r for r in runs if r.data.tags["stage"] == "sequence_search"]
    assert search.data.tags["best.arch"] == best["arch"] and search.data.tags["best.lr"] == str(best["lr"])
    assert sorted(r.info.run_name for r in runs if r.data.tags["stage"] == "sequence_model") == [
        "gru-lr0.01_h16_d0.5", "lstm2-lr0.01_h16_d0.5"]
    (cnn_lstm,) = [r for r in runs if r.data.tags.get("method") == "cnn_landmark_lstm"]
    assert cnn_lstm.data.params["sequence_model"] == best["families"]["lstm"]["model"].rsplit("/", 1)[-1]
    assert all(r.info.status == "FINISHED" for r in runs)
    # Each family's row is named by what it reads, paired with both inputs' frame methods (the reference's LSTM)
    # and with the LSTM (the GRU); the summary says the features were normalised per person.
    table = pd.read_csv(results / "evaluation/summary.csv")
    assert {"cnn_landmark_lstm", "cnn_landmark_gru"} <= set(table["method"]) and "cnn_lstm" not in set(table["method"])
    pairs = set(zip(table.loc[table["kind"] == "difference", "method"], table.loc[table["kind"] == "difference", "versus"]))
    assert {("cnn_landmark_lstm", "landmarks_aggregation"), ("cnn_landmark_gru", "cnn_landmark_lstm")} <= pairs
    text = (results / "evaluation/summary.md").read_text()
    assert "CNN+landmark LSTM" in text and "CNN+landmark GRU" in text and "Per-person normalisation" in text
    # ferseq predict applies such a model to a new video, the video's own frames standing for its person's
    from ferseq import cli

    out = tmp_path / "predicted"
    assert cli.main(["predict", str(DEMO / "videos/man_neutral_to_happy.mp4"), "--run", str(results),
                     "-o", str(out)]) == 0
    predicted = pd.read_parquet(out / "man_neutral_to_happy.parquet")
    assert predicted["window"].sum() == 72 - 15 and predicted["cnn_lstm_label"].notna().sum() == 72 - 15


@pytest.mark.parametrize("scheme,folds", [("holdout", 1), ("kfold", 3)])
def test_grid_expands_to_one_job_per_architecture_hidden_size_and_fold(tmp_path, scheme, folds):
    grid = {"architectures": ["lstm", "lstm2", "bilstm"], "lr": [0.01, 0.001], "hidden": [32, 16], "dropout": [0.4, 0.6]}
    config = write_config(tmp_path / "config.yaml", sequence_model=grid, split={"unit": "segment", "scheme": scheme, "k": 3})
    done = run_snakemake(tmp_path, "--configfile", str(config), "-n")
    assert done.returncode == 0, done.stdout[-2000:]
    jobs = dict(line.split() for line in done.stdout.splitlines()
                if len(line.split()) == 2 and line.split()[1].isdigit())
    assert int(jobs["sequence_model"]) == 6 * folds  # 3 architectures x 2 hidden, each job 2 lr x 2 dropout points
    assert int(jobs["select_sequence_model"]) == int(jobs["frame_model"]) == int(jobs["evaluate"]) == folds
    assert int(jobs["features"]) == folds
    # The demo's three videos (599 frames) are one faces batch, whatever the folds, named by its first video.
    assert [rule for rule in jobs if rule.startswith("faces_")] == ["faces_plan", f"faces_{demo_batch()}", "faces_qc"]
    for arch, name in [("lstm2", "lr0.001_h32_d0.6"), ("bilstm", "lr0.01_h16_d0.4")]:
        assert f"results/folds/0/sequence_model/{arch}/{name}.pt" in done.stdout


def test_lint_and_snakefmt_are_clean():
    done = run_snakemake(REPO, "--lint")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Lints for" not in done.stdout + done.stderr
    # The catalogue's formatting of the Snakefile and the rule files.
    files = [str(REPO / "Snakefile"), str(REPO / "workflow" / "Snakefile"),
             *map(str, sorted((REPO / "workflow" / "rules").glob("*.smk")))]
    formatted = subprocess.run([str(Path(sys.executable).with_name("snakefmt")), "--check", *files],
                               capture_output=True, text=True)
    assert formatted.returncode == 0, formatted.stdout + formatted.stderr
    assert "WARNING" not in formatted.stderr, formatted.stderr


def test_unknown_config_key_is_named(tmp_path):
    config = write_config(tmp_path / "config.yaml")
    data = yaml.safe_load(config.read_text())
    data["data"]["strcit"] = True
    config.write_text(yaml.safe_dump(data))
    done = run_snakemake(tmp_path, "--configfile", str(config), "-n")
    assert done.returncode != 0
    assert ("  data: Additional properties are not allowed ('strcit' was unexpected); did you mean 'strict'?"
            in done.stdout + done.stderr)


def test_bad_config_value_is_named(tmp_path):
    config = write_config(tmp_path / "config.yaml", split__scheme="leave-one-out")
    done = run_snakemake(tmp_path, "--configfile", str(config), "-n")
    assert done.returncode != 0
    assert "  split.scheme: 'leave-one-out' is not one of ['holdout', 'kfold', 'predefined']" in done.stdout + done.stderr


def test_class_map_to_unknown_class_is_named(tmp_path):
    config = write_config(tmp_path / "config.yaml", classes={"names": ["happy", "sad"], "map": {"joy": "glad"}})
    done = run_snakemake(tmp_path, "--configfile", str(config), "-n")
    assert done.returncode != 0 and "classes.map.joy: 'glad' is not one of classes.names" in done.stdout + done.stderr


@pytest.mark.parametrize("lr,message", [
    ([0.01, 0.01], "sequence_model.lr: [0.01, 0.01] has non-unique elements"),
    ([0.001, 0.0010000001], "sequence_model.lr: [0.001, 0.0010000001] has values that are equal to 6 significant digits"),
])
def test_grid_values_that_would_name_one_file_twice_are_named(tmp_path, lr, message):
    config = write_config(tmp_path / "config.yaml", sequence_model__lr=lr)
    done = run_snakemake(tmp_path, "--configfile", str(config), "-n")
    assert done.returncode != 0 and message in done.stdout + done.stderr


def test_a_malformed_annotation_file_stops_the_dag_with_its_line(tmp_path):
    table = tmp_path / "annotations.csv"
    table.write_text((DEMO / "annotations.csv").read_text() + "man_neutral_to_happy.mp4,man,happy,60,70,uk,extra\n")
    config = write_config(tmp_path / "config.yaml", data__annotations=str(table))
    done = run_snakemake(tmp_path, "--configfile", str(config), "-n")
    output = done.stdout + done.stderr
    assert done.returncode != 0 and "line 9: 7 fields, the header has 5" in output and "Traceback" not in output


def test_reference_overlap_fits_a_class_list_without_its_classes(tmp_path):
    # CK+-like classes: the reference overlap (happy, pensive) applies to happy only; no error.
    classes = {"names": ["neutral", "happy", "sad", "anger"], "map": {"pensive": "sad"}}
    config = write_config(tmp_path / "config.yaml", classes=classes, windows={"length": 16})
    done = run_snakemake(tmp_path, "--configfile", str(config), "-n")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    explicit = write_config(tmp_path / "explicit.yaml", classes=classes, windows={"overlap": {"pensive": 0.3}})
    done = run_snakemake(tmp_path, "--configfile", str(explicit), "-n")
    assert done.returncode != 0 and "windows.overlap.pensive: not one of classes.names" in done.stdout + done.stderr


def test_bad_annotation_row_fails_the_run_and_leaves_no_output(tmp_path):
    table = tmp_path / "annotations.csv"
    table.write_text((DEMO / "annotations.csv").read_text() + "man_neutral_to_happy.mp4,man,happy,60,999\n")
    config = write_config(tmp_path / "config.yaml", data__annotations=str(table))
    done = run_snakemake(tmp_path, "--configfile", str(config), "--cores", "1", *DATA_OUTPUTS)
    assert done.returncode != 0
    log = (tmp_path / "results/logs/data/segments.log").read_text()
    assert "row 8, column end_frame: end_frame 999 is past the end of man_neutral_to_happy.mp4 (72 frames)" in log
    assert "Traceback" not in log
    assert not (tmp_path / "results/data/segments.parquet").exists()
