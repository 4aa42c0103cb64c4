"""The real Snakemake DAG on the demo data, and the config errors a user can make."""

from __future__ import annotations

import pandas as pd
import pyarrow.parquet as pq
import yaml

from conftest import DEMO, REPO, run_snakemake, write_config

DATA_OUTPUTS = ["results/data/segments.parquet", "results/data/splits.parquet", "results/data/split_summary.csv"]
FACE_OUTPUTS = ["results/faces/qc.csv"]


def test_demo_dag_runs_to_the_face_crops_and_then_has_nothing_to_do(tmp_path):
    config = write_config(tmp_path / "config.yaml")
    done = run_snakemake(tmp_path, "--configfile", str(config), "--cores", "2", *DATA_OUTPUTS, *FACE_OUTPUTS)
    assert done.returncode == 0, done.stderr[-3000:]
    segments = pd.read_parquet(tmp_path / "results/data/segments.parquet")
    splits = pd.read_parquet(tmp_path / "results/data/splits.parquet")
    # The demo config cuts segments to <= 48 frames and splits by segment, so every split has every class.
    assert segments["frames"].max() <= 48 and segments.groupby("row")["frames"].sum().sum() == 599
    assert set(splits["segment_id"]) == set(segments["segment_id"])
    counts = splits.groupby(["split", "label"]).size().unstack(fill_value=0)
    assert set(counts.index) == {"train", "val", "test"}
    assert (counts.loc[["train", "test"]] > 0).all().all()
    assert pq.read_schema(tmp_path / "results/data/splits.parquet").metadata[b"ferseq.identity_leak"] == b"true"
    assert "identity leaks" in (tmp_path / "results/logs/data/splits.log").read_text()
    assert (tmp_path / "results/benchmarks/data/segments.tsv").is_file()
    # One faces job per video: a row for every annotated frame, faces in (nearly) all of them.
    qc = pd.read_csv(tmp_path / "results/faces/qc.csv")
    videos = qc[qc["label"] == "all"].set_index("video")
    assert videos["frames"].to_dict() == {"man_after_title": 65, "man_neutral_to_happy": 68, "woman_sad_to_happy": 466}
    assert (videos["detection_rate"] > 0.95).all()
    for video, frames in videos["frames"].items():
        faces = pd.read_parquet(tmp_path / f"results/faces/{video}.parquet", columns=["frame", "face_found"])
        assert len(faces) == frames and faces["frame"].is_monotonic_increasing

    again = run_snakemake(tmp_path, "--configfile", str(config), "--cores", "2", "-n", *DATA_OUTPUTS, *FACE_OUTPUTS)
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr


def test_lint_is_clean():
    done = run_snakemake(REPO, "--lint")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Lints for" not in done.stdout + done.stderr


def test_unknown_config_key_is_named(tmp_path):
    config = write_config(tmp_path / "config.yaml")
    data = yaml.safe_load(config.read_text())
    data["data"]["strcit"] = True
    config.write_text(yaml.safe_dump(data))
    done = run_snakemake(tmp_path, "--configfile", str(config), "-n")
    assert done.returncode != 0
    assert "  data: Additional properties are not allowed ('strcit' was unexpected)" in done.stdout + done.stderr


def test_bad_config_value_is_named(tmp_path):
    config = write_config(tmp_path / "config.yaml", split__scheme="leave-one-out")
    done = run_snakemake(tmp_path, "--configfile", str(config), "-n")
    assert done.returncode != 0
    assert "  split.scheme: 'leave-one-out' is not one of ['holdout', 'kfold']" in done.stdout + done.stderr


def test_class_map_to_unknown_class_is_named(tmp_path):
    config = write_config(tmp_path / "config.yaml", classes={"names": ["happy", "sad"], "map": {"joy": "glad"}})
    done = run_snakemake(tmp_path, "--configfile", str(config), "-n")
    assert done.returncode != 0 and "classes.map.joy: 'glad' is not one of classes.names" in done.stdout + done.stderr


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
