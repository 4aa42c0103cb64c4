"""The pretrain stage in a real Snakemake run: a copy of the session's demo run, given ``frame_model.init: pretrain``
and a tiny image set (the demo run's own face crops in class folders), pretrains once and retrains its fold's frame
model from the pretrained network; the config's mistakes stop the DAG naming their key."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlflow
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from conftest import SMALL, run_snakemake, write_config

SET_NAMES = {"neutral": "neutral", "happy": "happiness", "sad": "sadness", "pensive": "pensive"}


def image_folder(results: Path, root: Path, every: int = 4) -> int:
    """Every ``every``-th face crop of the run's faces files as ``root/<class>/<video>_<frame>.jpg``; the count."""
    labels = pd.read_parquet(results / "data/segments.parquet", columns=["segment_id", "label"])
    labels = labels.set_index("segment_id")["label"]
    written = 0
    for path in sorted((results / "faces").glob("*.parquet")):
        table = pq.read_table(path, columns=["segment_id", "frame", "face_found", "crop"]).to_pandas()
        for r in table.loc[table["face_found"]].iloc[::every].itertuples():
            file = root / SET_NAMES[labels[r.segment_id]] / f"{path.stem}_{r.frame:04d}.jpg"
            file.parent.mkdir(parents=True, exist_ok=True)
            file.write_bytes(r.crop)
            written += 1
    return written


def pretrain_settings(images: Path) -> dict:
    frame = {**SMALL["frame_model"], "backbone": "test_resnet", "input_size": 32, "fc": [64, 32, 16], "init": "pretrain"}
    del frame["pretrained"]
    return {"frame_model": frame,
            "pretrain": {"images": {"format": "folder", "path": str(images)}, "faces": {"detector": "none"},
                         "init": "none", "epochs": 2, "threads": 2,
                         "classes": {"map": {name: study for study, name in SET_NAMES.items()}}}}


@pytest.mark.workflow
def test_pretraining_runs_once_before_the_folds_which_start_from_it(demo_run, tmp_path):
    shutil.copytree(demo_run, tmp_path / "run", symlinks=True)
    workdir, results = tmp_path / "run", tmp_path / "run" / "results"
    images = image_folder(results, tmp_path / "images")
    settings = pretrain_settings(tmp_path / "images")
    config = write_config(workdir / "pretrain.yaml", **{**SMALL, **settings})
    targets = ["results/pretrain/model.json", "results/folds/0/frame_model/model.pt"]
    done = run_snakemake(workdir, "--configfile", str(config), "--cores", "2", *targets)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ran = done.stdout + done.stderr
    # the image set's two jobs, then the fold's frame model (its initial weights changed); the faces and the data
    # stage are the demo run's
    for rule in ("pretrain_faces", "pretrain", "frame_model"):
        assert f"rule {rule}:" in ran, rule
    assert "rule faces_b" not in ran and "rule segments:" not in ran and "rule pretrained_weights:" not in ran

    table = pd.read_parquet(results / "pretrain/images.parquet")
    assert len(table) == images and table["face_found"].all()  # detector none: every crop is a face
    summary = json.loads((results / "pretrain/model.json").read_text())
    assert summary["classes"] == ["neutral", "happy", "sad", "pensive"]  # the map: the study's classes
    assert sum(sum(n.values()) for n in summary["images"].values()) == images and summary["test"] is None
    checkpoint = torch.load(results / "folds/0/frame_model/model.pt", weights_only=True)
    assert checkpoint["init"] == "pretrain"
    assert checkpoint["initialised_from"].startswith(f"its pretraining on the folder image set {tmp_path / 'images'}")
    log = (results / "logs/folds/0/frame_model.log").read_text()
    assert "network started from results/pretrain/model.pt (its classifier too)" in log
    mlflow.set_tracking_uri(f"sqlite:///{results}/mlflow.db")
    runs = mlflow.search_runs(experiment_names=["ferseq-demo"], output_format="list")
    (pretrain,) = [r for r in runs if r.data.tags["stage"] == "pretrain"]
    assert pretrain.info.status == "FINISHED" and pretrain.data.params["images.format"] == "folder"
    folds = [r for r in runs if r.data.tags["stage"] == "frame_model" and r.data.params.get("init") == "pretrain"]
    assert len(folds) == 1 and folds[0].data.params["initial_weights"] == "results/pretrain/model.pt"

    again = run_snakemake(workdir, "--configfile", str(config), "--cores", "2", "-n", *targets)
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr


def test_a_pretraining_without_images_or_with_a_missing_set_stops_the_dag_naming_the_key(tmp_path):
    settings = pretrain_settings(tmp_path / "no_such_set")
    del settings["pretrain"]["images"]
    config = write_config(tmp_path / "config.yaml", **{**SMALL, **settings})
    planned = run_snakemake(tmp_path, "--configfile", str(config), "-n")
    assert planned.returncode != 0 and "frame_model.init: pretrain needs pretrain.images" in planned.stdout + planned.stderr
    config = write_config(tmp_path / "config.yaml", **{**SMALL, **pretrain_settings(tmp_path / "no_such_set")})
    planned = run_snakemake(tmp_path, "--configfile", str(config), "-n")
    assert planned.returncode != 0
    assert f"pretrain.images.path: '{tmp_path / 'no_such_set'}' does not exist" in planned.stdout + planned.stderr


def test_a_checkpoint_of_another_architecture_stops_the_dag_before_any_job(tmp_path):
    from ferseq.frame_model import network

    model = network.FrameModel("test_resnet", ["a", "b"], fc=[64, 32, 16], input_size=32)
    network.save_checkpoint(tmp_path / "lab.pt", model)
    frame = {**SMALL["frame_model"], "pretrained": None, "init": str(tmp_path / "lab.pt")}
    config = write_config(tmp_path / "config.yaml", **{**SMALL, "frame_model": frame})
    planned = run_snakemake(tmp_path, "--configfile", str(config), "-n")
    assert planned.returncode != 0
    assert (f"frame_model.init: the checkpoint '{tmp_path / 'lab.pt'}' is a network with backbone test_resnet, but "
            "frame_model.backbone is legacy_xception") in planned.stdout + planned.stderr
    # the same architecture plans, and the fold's frame model reads the checkpoint
    config = write_config(tmp_path / "config.yaml", **{**SMALL, "frame_model": {
        **frame, "backbone": "test_resnet", "input_size": 32, "fc": [64, 32, 16]}})
    planned = run_snakemake(tmp_path, "--configfile", str(config), "-n", "results/folds/0/frame_model/model.pt")
    assert planned.returncode == 0, planned.stdout[-2000:] + planned.stderr[-2000:]
    assert "rule pretrained_weights" not in planned.stdout and "rule frame_model:" in planned.stdout
