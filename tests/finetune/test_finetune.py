"""The finetune stage on the demo run: the fold's frame model and LSTM trained together on real windows of real crops
lower their loss, write a model that `ferseq predict --finetuned` runs, and score every test window once; the DAG
plans one job per fold and refuses settings it cannot fine-tune."""

from __future__ import annotations

import logging
import shutil

import cv2
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from conftest import DEMO, REPO, run_snakemake, write_config
from ferseq import cli
from ferseq.apply import predict
from ferseq.common import config as config_checks
from ferseq.common.errors import ConfigError
from ferseq.finetune import cnn_lstm, training, window_crops
from ferseq.sequences import windows

CLASSES = ["neutral", "happy", "sad", "pensive"]
TINY = {"enabled": True, "epochs": 2, "patience": 2, "lr": 0.001, "backbone_lr": 0.0001, "batch_size": 2}


@pytest.fixture(scope="module")
def finetuned(demo_run, tmp_path_factory):
    """A copy of the demo run's fold 0 (models, faces) fine-tuned on 2 of its train windows, which are also its val
    windows (so the val loss that picks the best epoch is the train loss, without dropout), and all of its test
    windows. Returns (results folder, config, windows folder, what finetune returned)."""
    results = tmp_path_factory.mktemp("finetuned") / "results"
    shutil.copytree(demo_run / "results" / "folds" / "0", results / "folds" / "0",
                    ignore=shutil.ignore_patterns("features", "windows", ".*"))
    shutil.copytree(demo_run / "results" / "faces", results / "faces", ignore=shutil.ignore_patterns("batches"))
    source, small = demo_run / "results" / "folds" / "0" / "windows", results.parent / "windows"
    small.mkdir()
    train = pq.read_table(source / "train.parquet").slice(0, 2)
    pq.write_table(train, small / "train.parquet")
    pq.write_table(train, small / "val.parquet")
    shutil.copy(source / "test.parquet", small / "test.parquet")
    config = yaml.safe_load((demo_run / "config.yaml").read_text())
    config["finetune"] = TINY
    shutil.copy(demo_run / "results" / "mlflow.db", results / "mlflow.db")  # a store made already: no migrations
    config["mlflow"] = {"tracking_uri": f"sqlite:///{results / 'mlflow.db'}"}
    faces = {path.stem: path for path in (results / "faces").glob("*.parquet")}
    out = results / "folds" / "0" / "finetune"
    done = training.finetune(faces, results / "folds/0/frame_model/model.pt", results / "folds/0/sequence_model/best.json",
                             small, 0, config, out / "model.pt", out / "model.json", out / "test_windows.parquet",
                             resume_dir=out / ".resume")
    return results, config, small, faces, done


def test_package_defaults_are_the_schema_defaults():
    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    props = schema["properties"]["finetune"]["properties"]
    assert training.DEFAULTS == {key: spec["default"] for key, spec in props.items()}


def test_finetuning_lowers_the_loss_and_trains_the_backbone(finetuned):
    results, config, small, faces, done = finetuned
    fold = results / "folds" / "0"
    start, frame_ckpt, _ = training.build(fold / "frame_model/model.pt",
                                          training.start_model(fold / "sequence_model/best.json"), torch.device("cpu"))
    train = window_crops.read(small / "train.parquet", faces, CLASSES)
    # the crops of each window position are the ones the features stage embedded for that window
    images, _ = next(iter(window_crops.batches(train, start.frame.input_size, 2, torch.device("cpu"), on_device=False)))
    with torch.inference_mode():
        embedding = start.eval().frame.embed(images.flatten(0, 1))[0].view(2, 16, -1)
    stored = windows.read(small / "train.parquet", ["embedding"])[1]["embedding"]
    assert torch.allclose(embedding, torch.tensor(stored), rtol=1e-3, atol=1e-4)
    weights = torch.tensor(torch.load(fold / "finetune/model.pt", weights_only=True)["class_weights"])
    before, _, _ = training.evaluate(start, window_crops.batches(train, start.frame.input_size, 2, torch.device("cpu"), on_device=False),
                                     weights, torch.device("cpu"))
    # the best epoch's val loss is the loss on the train windows (val = train here), in eval mode
    assert done["val_loss"] < before - 1e-3, (before, done["history"])
    assert [row["epoch"] for row in done["history"]] == [1, 2] and not (fold / "finetune/.resume").exists()
    tuned, saved = cnn_lstm.load(fold / "finetune/model.pt", "cpu")
    assert saved["metrics"]["best_epoch"] == done["best_epoch"] and saved["frame_model"]["faces"] == frame_ckpt["faces"]
    state = tuned.frame.state_dict()
    # the backbone and the FC layers up to the embedding moved; the layers after it (no gradient) did not
    assert not torch.equal(state["backbone.conv1.weight"], frame_ckpt["state_dict"]["backbone.conv1.weight"])
    assert not torch.equal(state["fc.0.weight"], frame_ckpt["state_dict"]["fc.0.weight"])
    assert torch.equal(state["classifier.weight"], frame_ckpt["state_dict"]["classifier.weight"])


def test_device_decoding_gives_the_workers_batches(finetuned):
    # the GPU path (nvJPEG there, libjpeg-turbo here) against OpenCV in workers: same order, same pixels to a grey level
    _, _, small, faces, _ = finetuned
    crops = window_crops.read(small / "test.parquet", faces, CLASSES)
    assert crops.rows.shape == (len(crops), 16) and len(crops) > 2
    cpu = torch.device("cpu")
    on_device = list(window_crops.batches(crops, 64, 3, cpu, on_device=True, generator=torch.Generator().manual_seed(1)))
    workers = list(window_crops.batches(crops, 64, 3, cpu, on_device=False, generator=torch.Generator().manual_seed(1)))
    assert [len(y) for _, y in on_device] == [len(y) for _, y in workers] == [3] * (len(crops) // 3) + [len(crops) % 3] * (len(crops) % 3 > 0)
    for (a, ya), (b, yb) in zip(on_device, workers):
        assert a.shape == b.shape == (len(ya), 16, 3, 64, 64) and torch.equal(ya, yb)
        assert (a.int() - b.int()).abs().max() <= 1


def test_test_windows_have_every_window_once_with_probabilities(finetuned, demo_run):
    results, *_ = finetuned
    table = pq.read_table(results / "folds/0/finetune/test_windows.parquet")
    assert str(table.schema.field("window_id").type) == "int64" and table.schema.field("probs").type.value_type == pa.float32()
    expected = pd.read_parquet(demo_run / "results/folds/0/windows/test.parquet", columns=["window_id"])["window_id"]
    assert table["window_id"].to_pylist() == expected.tolist() and len(expected) > 0
    probs = np.array(table["probs"].to_pylist())
    assert probs.shape == (len(expected), len(CLASSES)) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)


def test_predict_runs_the_finetuned_model(finetuned, tmp_path, capsys):
    results, *_ = finetuned
    clip = tmp_path / "clip"  # the first 24 frames of a demo video, as an image sequence
    clip.mkdir()
    capture = cv2.VideoCapture(str(DEMO / "videos" / "woman_sad_to_happy.mp4"))
    for index in range(24):
        ok, image = capture.read()
        assert ok
        cv2.imwrite(str(clip / f"{index:04d}.jpg"), image)
    capture.release()
    try:  # the command line's own code, in this process (a new interpreter would spend seconds importing)
        status = cli.main(["predict", str(clip), "--run", str(results), "--finetuned", "-o", str(tmp_path / "tuned"),
                           "--workers", "0"])
    finally:  # cli.main routed the ferseq loggers to stderr only
        logging.getLogger("ferseq").handlers.clear()
        logging.getLogger("ferseq").propagate = True
    assert status == 0, capsys.readouterr().err[-3000:]
    plain, failed = predict.predict_many([clip], results, tmp_path / "plain", num_workers=0)
    assert not failed
    tuned, plain = pd.read_parquet(tmp_path / "tuned/clip.parquet"), pd.read_parquet(tmp_path / "plain/clip.parquet")
    windows = [f"cnn_lstm_{c}" for c in CLASSES]
    assert tuned["window"].sum() == 24 - 15  # a window ends at every frame from the 16th on
    assert np.allclose(tuned.loc[tuned["window"], windows].sum(axis=1), 1, atol=1e-5)
    # the per-frame CNN stays the frame model's; the windows are the fine-tuned model's
    cnn = [f"cnn_{c}" for c in CLASSES]
    assert np.allclose(tuned[cnn], plain[cnn], atol=1e-6)
    assert not np.allclose(tuned.loc[tuned["window"], windows], plain.loc[plain["window"], windows], atol=1e-4)


def test_dag_plans_one_finetune_job_per_fold_and_refuses_landmarks(tmp_path):
    config = write_config(tmp_path / "config.yaml", finetune={"enabled": True},
                          split={"unit": "segment", "scheme": "kfold", "k": 2})
    done = run_snakemake(tmp_path, "--configfile", str(config), "-n")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    jobs = dict(line.split() for line in done.stdout.splitlines() if len(line.split()) == 2 and line.split()[1].isdigit())
    assert int(jobs["finetune"]) == int(jobs["frame_model"]) == 2
    assert "results/folds/1/finetune/test_windows.parquet" in done.stdout
    bad = write_config(tmp_path / "bad.yaml", finetune={"enabled": True}, windows={"features": "landmarks"})
    done = run_snakemake(tmp_path, "--configfile", str(bad), "-n")
    output = done.stdout + done.stderr
    assert done.returncode != 0 and "Traceback" not in output
    assert "finetune.enabled: fine-tuning trains the frame CNN under the LSTM, which needs windows.features: embedding, " \
           "not 'landmarks'" in output


@pytest.mark.parametrize("change,message", [
    ({"windows": {"normalise": "subject"}}, "finetune.enabled: windows.normalise: 'subject'"),
    ({"sequence_model": {"architectures": ["gru"]}}, "sequence_model.architectures ['gru'] has none of lstm"),
])
def test_settings_it_cannot_finetune_are_named(change, message):
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["data"] = {"videos": str(DEMO / "videos"), "annotations": str(DEMO / "annotations.csv")}
    config["finetune"] = {"enabled": True}
    for section, values in change.items():
        config[section] = {**config[section], **values}
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        config_checks.check(config)
