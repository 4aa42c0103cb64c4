"""Frame CNN on real face crops of the demo clips: head, class weights, training loop, checkpoint, MLflow.

The crops come from the real faces stage (dlib HOG + landmarks, aligned) on
short frame ranges of the three demo videos, at 64 px; models are tiny
(resnet18 at 32 px, legacy_xception at 64 px) so that everything runs on a CPU.
The helpers :func:`demo_faces` and :func:`make_config` (tests/demo_faces.py) are shared with the features and
landmark-baseline tests.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import mlflow
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import timm
import torch
import yaml

from conftest import CLASSES, REPO, ferseq_log, torch_threads
from demo_faces import DemoFaces, demo_faces, make_config
from ferseq.common import resume
from ferseq.common.errors import ConfigError
from ferseq.frame_model import crops, network, training
from ferseq.frame_model.network import FrameModel
from ferseq.frame_model.training import FrameDataError


@pytest.fixture(scope="session")
def demo(tmp_path_factory) -> DemoFaces:
    return demo_faces(tmp_path_factory.getbasetemp() / "demo_faces")


def train(demo: DemoFaces, folder: Path, config: dict, segments: Path | None = None, splits: Path | None = None) -> dict:
    return training.train_frame_model(demo.faces, segments or demo.segments, splits or demo.splits, 0, config,
                                         folder / "model.pt", folder / "metrics.csv")


def test_package_defaults_are_the_schema_defaults():
    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    props = schema["properties"]["frame_model"]["properties"]
    assert network.DEFAULTS == {key: spec["default"] for key, spec in props.items()}


def test_head_gives_the_fc512_embedding_and_class_logits():
    model = FrameModel("resnet18", CLASSES["names"], input_size=32).eval()
    assert [layer.out_features for layer in model.fc] == [1024, 512, 256]
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    embedding, logits = model.embed(images)
    assert embedding.shape == (3, 512) and logits.shape == (3, 4) and model.embedding_dim == 512
    assert (embedding >= 0).all()  # taken after the ReLU
    assert torch.allclose(logits, model(images))
    # Normalisation comes from the backbone's pretrained config (ImageNet mean/std for resnet18).
    assert model.arch["mean"] == pytest.approx(list(timm.create_model("resnet18").pretrained_cfg["mean"]))
    with pytest.raises(ConfigError, match="frame_model.embedding_layer"):
        FrameModel("resnet18", CLASSES["names"], embedding_layer=3)
    with pytest.raises(ConfigError, match="frame_model.backbone"):
        FrameModel("no_such_net", CLASSES["names"])


def test_class_weights_are_inverse_frequency_and_name_an_absent_class():
    counts = np.array([10, 30, 20, 40])
    weights = training.class_weights(counts, CLASSES["names"])
    assert torch.allclose(weights, torch.tensor([100 / 40, 100 / 120, 100 / 80, 100 / 160]))
    assert float((weights * torch.tensor(counts, dtype=torch.float32)).sum()) == pytest.approx(100)
    with pytest.raises(FrameDataError, match="sad"):
        training.class_weights(np.array([10, 30, 0, 40]), CLASSES["names"])


def test_fold_frames_take_face_frames_of_train_and_val_with_stride(demo):
    all_frames = training.fold_frames(demo.faces, demo.segments, demo.splits, 0, CLASSES["names"])
    strided = training.fold_frames(demo.faces, demo.segments, demo.splits, 0, CLASSES["names"], stride=3)
    found = pd.concat([pd.read_parquet(p, columns=["segment_id", "face_found"]) for p in demo.faces.values()])
    per_segment = found[found["face_found"]].groupby("segment_id").size()
    split_of = demo.table.set_index("segment_id")["split"]
    for split in ("train", "val"):
        mine = per_segment[split_of[per_segment.index] == split]
        assert len(all_frames[split][1]) == mine.sum()
        assert len(strided[split][1]) == sum(-(-n // 3) for n in mine)  # ceil(n / 3) per segment
    # Segment 11 (train) starts on the title card: its faceless frames are not training frames.
    assert per_segment[11] < 20
    names = CLASSES["names"]
    train_labels = demo.table[demo.table["split"] == "train"].set_index("segment_id")["label"]
    expected = np.bincount([names.index(train_labels[s]) for s in per_segment.index if s in train_labels.index
                            for _ in range(per_segment[s])], minlength=4)
    assert (np.bincount(all_frames["train"][1], minlength=4) == expected).all()


def test_training_lowers_the_loss_and_checkpoints_the_best_epoch(demo, tmp_path):
    """legacy_xception (the reference backbone) at 64 px: the loop, model.pt, metrics CSV and MLflow run."""
    # lr 3e-4 (the reference's default is 1e-4): at 1e-3 Adam with batches of 16 jumps out of the minimum it
    # found by epoch 2 for some data orders
    config = make_config(tmp_path, backbone="legacy_xception", input_size=64, epochs=3, lr=3e-4)
    result = train(demo, tmp_path, config)
    history = pd.read_csv(tmp_path / "metrics.csv")
    assert list(history.columns) == ["epoch", "train_loss", "val_loss", "val_macro_f1", "seconds"]
    assert len(history) == 3 and history["train_loss"].iloc[-1] < 0.9 * history["train_loss"].iloc[0]
    best = history.loc[history["val_loss"].idxmin()]
    assert result["best_epoch"] == best["epoch"] and result["val_loss"] == pytest.approx(best["val_loss"])

    checkpoint = network.read_checkpoint(tmp_path / "model.pt")
    assert checkpoint["arch"]["backbone"] == "legacy_xception" and checkpoint["arch"]["classes"] == CLASSES["names"]
    assert checkpoint["arch"]["input_size"] == 64 and checkpoint["arch"]["fc"] == [1024, 512, 256]
    assert checkpoint["arch"]["mean"] == [0.5, 0.5, 0.5]  # legacy_xception's own normalisation
    assert checkpoint["best_epoch"] == best["epoch"]
    _, train_labels = training.fold_frames(demo.faces, demo.segments, demo.splits, 0, CLASSES["names"])["train"]
    train_counts = np.bincount(train_labels)
    assert checkpoint["class_weights"] == pytest.approx(training.class_weights(train_counts, CLASSES["names"]).tolist())
    model = network.load_frame_model(tmp_path / "model.pt", "cpu")
    assert not model.training and model.input_size == 64

    (run,) = mlflow.search_runs(experiment_names=["frame-test"], output_format="list")
    assert run.data.tags["stage"] == "frame_model" and run.data.tags["fold"] == "0"
    assert run.data.params["frame_model.backbone"] == "legacy_xception"
    assert float(run.data.params["class_weight.sad"]) == pytest.approx(checkpoint["class_weights"][2], rel=1e-4)
    client = mlflow.MlflowClient()
    logged = [m.value for m in client.get_metric_history(run.info.run_id, "train_loss")]
    assert logged == pytest.approx(history["train_loss"].tolist())
    assert run.data.metrics["best_epoch"] == best["epoch"]
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"model.pt", "metrics.csv", "config.json"}


def test_early_stopping_stops_after_patience(demo, tmp_path):
    # Val labels shifted by one class: the better the model fits train, the worse the val loss.
    names = CLASSES["names"]
    table = demo.table.copy()
    val = table["split"] == "val"
    table.loc[val, "label"] = table.loc[val, "label"].map(lambda name: names[(names.index(name) + 1) % 4])
    segments, splits = demo.write_tables(tmp_path / "data", table)
    result = train(demo, tmp_path, make_config(tmp_path, epochs=20, patience=2, lr=3e-3), segments, splits)
    assert result["epochs_run"] == result["best_epoch"] + 2 < 20
    assert len(pd.read_csv(tmp_path / "metrics.csv")) == result["epochs_run"]


def test_same_seed_same_training_with_workers_and_augmentation(demo, tmp_path):
    config = make_config(tmp_path, epochs=2, augment=True, num_workers=2, frame_stride=2)
    a = train(demo, tmp_path / "a", config)
    b = train(demo, tmp_path / "b", config)
    assert [h["train_loss"] for h in a["history"]] == [h["train_loss"] for h in b["history"]]
    state_a = network.read_checkpoint(tmp_path / "a" / "model.pt")["state_dict"]
    state_b = network.read_checkpoint(tmp_path / "b" / "model.pt")["state_dict"]
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)


def test_training_with_crops_decoded_on_the_device(demo, tmp_path):
    """The GPU path of the training loop (DeviceBatches: batched decode, tensor augmentation), on the CPU;
    test_device_crops checks that its batches and augmentations follow the seed."""
    config = make_config(tmp_path, epochs=2, augment=True, frame_stride=2)
    result = training.train_frame_model(demo.faces, demo.segments, demo.splits, 0, config, tmp_path / "model.pt",
                                           tmp_path / "metrics.csv", decode="device")
    losses = [row["train_loss"] for row in result["history"]]
    assert len(losses) == 2 and np.isfinite(losses).all() and losses[1] < losses[0]
    assert network.read_checkpoint(tmp_path / "model.pt")["best_epoch"] == result["best_epoch"]
    assert mlflow.get_run(result["run_id"]).data.params["decode"] == "device"


def test_channels_last_changes_the_layout_not_the_outputs(tmp_path):
    torch.manual_seed(0)
    model = FrameModel("resnet18", CLASSES["names"], input_size=32).eval()
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    with torch.inference_mode():
        expected = model.embed(images)
    model = network.to_device(model, "cpu")
    assert model.memory_format == torch.channels_last
    assert model.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        got = model.embed(images)
    assert all(torch.allclose(e, g, atol=1e-5) for e, g in zip(expected, got))
    # model.pt holds the default layout, whatever the layout the model trained in.
    network.save_checkpoint(tmp_path / "model.pt", model)
    state = network.read_checkpoint(tmp_path / "model.pt")["state_dict"]
    assert state["backbone.conv1.weight"].is_contiguous()
    loaded = network.load_frame_model(tmp_path / "model.pt", "cpu")
    assert loaded.memory_format == torch.channels_last and torch.allclose(loaded.embed(images)[1], expected[1], atol=1e-5)


def test_a_class_without_train_frames_is_an_error_naming_it(demo, tmp_path):
    table = demo.table.copy()
    table.loc[table["label"] == "pensive", "split"] = "val"
    segments, splits = demo.write_tables(tmp_path / "data", table)
    with pytest.raises(FrameDataError, match="fold 0: class.*pensive"):
        train(demo, tmp_path, make_config(tmp_path), segments, splits)
    assert not (tmp_path / "model.pt").exists()


def test_pretrained_checkpoint_is_loaded_into_the_backbone(tmp_path):
    source = timm.create_model("resnet18", pretrained=False)  # with its 1000-class fc, as downloaded weights are
    torch.save(source.state_dict(), tmp_path / "resnet18.pth")
    model = FrameModel("resnet18", CLASSES["names"], pretrained=str(tmp_path / "resnet18.pth"))
    assert torch.equal(model.backbone.conv1.weight, source.conv1.weight)
    # A ferseq model.pt works too (its backbone weights are under "backbone.").
    network.save_checkpoint(tmp_path / "model.pt", model)
    again = FrameModel("resnet18", CLASSES["names"], pretrained=str(tmp_path / "model.pt"))
    assert torch.equal(again.backbone.layer4[1].conv2.weight, source.layer4[1].conv2.weight)

    with pytest.raises(ConfigError, match="frame_model.init.*does not exist"):
        FrameModel("resnet18", CLASSES["names"], pretrained=str(tmp_path / "missing.pth"))
    with pytest.raises(ConfigError, match="frame_model.init.*does not fit backbone resnet34"):
        FrameModel("resnet34", CLASSES["names"], pretrained=str(tmp_path / "resnet18.pth"))
    (tmp_path / "junk.pth").write_text("not a checkpoint")
    with pytest.raises(ConfigError, match="frame_model.init.*cannot be read"):
        FrameModel("resnet18", CLASSES["names"], pretrained=str(tmp_path / "junk.pth"))


def test_a_last_batch_of_one_frame_is_dropped(demo, tmp_path):
    # 88 train frames in batches of 29 leave one: BatchNorm cannot train on one 1x1 feature map (resnet18 at 32 px).
    crops_, labels = training.fold_frames(demo.faces, demo.segments, demo.splits, 0, CLASSES["names"])["train"]
    assert len(labels) == 88 and len(labels) % 29 == 1  # the precondition: real detection found 88 train faces
    config = make_config(tmp_path, epochs=1, batch_size=29)
    batches = training.frame_batches(crops_, labels, network.settings(config), torch.device("cpu"), torch.Generator())
    assert [len(y) for _, y in batches] == [29, 29, 29] and len(batches) == 3  # the lone 88th frame is left out
    result = train(demo, tmp_path, config)
    assert result["epochs_run"] == 1 and np.isfinite(result["history"][0]["train_loss"])


def test_block_order_reads_each_row_group_once_an_epoch_and_shuffles_within_blocks():
    # 50 units of 8 items (400 crops in memory), blocks of about 64 crops
    data = pa.array([f"crop {i}".encode() for i in range(400)], pa.binary())
    source = crops.MemoryCrops(data, unit_size=8)
    reads = []
    read = source.read
    source.read = lambda unit: reads.append(unit) or read(unit)
    labels = np.arange(400) % 4
    stream = crops.StreamBatches(source, np.arange(400), labels, 16, torch.Generator().manual_seed(0), buffer=64)
    orders = []
    for _ in range(2):
        reads.clear()
        items = [bytes(b.data[b.offsets[i]:b.offsets[i + 1]]) for b in stream for i in range(len(b.offsets) - 1)]
        assert sorted(items) == sorted(data.to_pylist())  # every crop once
        assert sorted(reads) == list(range(50))  # every row group read once an epoch
        order = [int(item.split()[1]) for item in items]
        # the 8 items of a unit lie within one block of 64 (plus the unit that fills it): never spread over the epoch
        spans = [np.ptp([p for p, i in enumerate(order) if i // 8 == unit]) for unit in range(50)]
        assert max(spans) < 72 and order != sorted(order)
        orders.append(order)
    assert orders[0] != orders[1]
    # a resumed epoch: the first batches are left out unread
    again = crops.StreamBatches(source, np.arange(400), labels, 16, torch.Generator().manual_seed(0), buffer=64)
    again.skip, reads[:] = 20, []
    rest = [int(bytes(b.data[b.offsets[i]:b.offsets[i + 1]]).split()[1]) for b in again for i in range(len(b.offsets) - 1)]
    assert rest == orders[0][20 * 16:] and len(set(reads)) == len(reads) < 50


def test_each_block_holds_the_classes_as_the_epoch_does_when_row_groups_are_one_class_each():
    # Long segments: 60 row groups of 8 crops, each group one class, the file sorted by class (30, 20, 10 groups);
    # blocks of 6 groups. Each block holds each class's groups in its share of the epoch (3, 2, 1), within one.
    data = pa.array([f"crop {i}".encode() for i in range(480)], pa.binary())
    labels = np.repeat([0] * 30 + [1] * 20 + [2] * 10, 8)
    stream = crops.StreamBatches(crops.MemoryCrops(data, unit_size=8), np.arange(480), labels, 16,
                                 torch.Generator().manual_seed(1), buffer=48)
    for _ in range(3):
        order = [int(bytes(b.data[b.offsets[i]:b.offsets[i + 1]]).split()[1]) for b in stream
                 for i in range(len(b.offsets) - 1)]
        assert sorted(order) == list(range(480))
        for block in np.asarray(order).reshape(10, 48):
            groups = np.bincount(labels[block], minlength=3) / 8
            assert np.all(np.abs(groups - [3, 2, 1]) <= 1), groups
    # The spread itself: a random order within each class, every unit once.
    spread = crops.spread_units(np.repeat([0, 1, 2], [30, 20, 10]), torch.Generator().manual_seed(2))
    assert sorted(spread) == list(range(60)) and spread[spread < 30].tolist() != list(range(30))


def test_training_streams_every_train_crop_once_an_epoch_in_a_new_order_that_follows_the_seed(demo, tmp_path,
                                                                                               monkeypatch):
    """A real training run (loader worker, augmentation): the crops that reach the decoding worker each epoch are
    the fold's train crops (read apart from the faces files), each exactly once, in a new order every epoch; the
    same seed gives the same orders, another seed others."""
    epochs: list[list[str]] = []
    original = crops.StreamBatches.__iter__

    def recording(stream):  # a generator function, as the original: DataLoader calls iter() more than it iterates
        seen: list[str] = []
        if stream.generator is not None:  # the train batches
            epochs.append(seen)
        for batch in original(stream):
            seen += [hashlib.sha1(batch.data[a:b]).hexdigest() for a, b in zip(batch.offsets[:-1], batch.offsets[1:])]
            yield batch

    monkeypatch.setattr(crops.StreamBatches, "__iter__", recording)
    train_segments = set(demo.table.loc[demo.table["split"] == "train", "segment_id"])
    expected = sorted(hashlib.sha1(crop).hexdigest() for path in demo.faces.values()
                      for segment, found, crop in pq.read_table(path, columns=["segment_id", "face_found", "crop"])
                      .to_pandas().itertuples(index=False) if found and crop is not None and segment in train_segments)
    assert len(expected) == 88
    runs = []
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        epochs.clear()
        config = {**make_config(tmp_path, epochs=3, augment=True, num_workers=1), "seed": seed}  # one MLflow store
        result = train(demo, tmp_path / name, config)
        assert result["epochs_run"] == 3 and len(epochs) == 3
        assert all(sorted(epoch) == expected for epoch in epochs)  # every train crop, once an epoch
        assert len({tuple(epoch) for epoch in epochs}) == 3  # a new order every epoch
        runs.append([list(epoch) for epoch in epochs])
    assert runs[0] == runs[1] and runs[0] != runs[2]


# Resume and tracking outages, on the smallest real training that shows them: timm's test_resnet at 32 px on the
# demo crops, batches of two (44 a epoch: a kill lands inside an epoch), augmentation in one loader worker, one
# torch thread (on 2 shared cores, torch's spinning threads beside another busy process slow a step 20-fold).
TINY = {"backbone": "test_resnet", "input_size": 32, "fc": [64, 32, 16], "epochs": 5, "patience": 5, "batch_size": 2,
        "augment": True, "num_workers": 1}
FRAME_JOB = """import json, logging, os, signal, sys
import torch
from ferseq.frame_model import training
from ferseq.common import logs
torch.set_num_threads(1)
args = json.loads(sys.argv[1])
kill_at = args.pop("kill_at", None)

class KillAt(logging.Handler):  # SIGKILL itself at a log line: where it dies does not depend on the load
    def emit(self, record):
        if kill_at and kill_at in record.getMessage():
            os.kill(os.getpid(), signal.SIGKILL)

with logs.step(args.pop("log")):  # as workflow/scripts/frame_model.py runs it
    logging.getLogger("ferseq").addHandler(KillAt())  # after logs.step, which sets the logger's handlers
    training.train_frame_model(**args)
"""


@pytest.fixture(scope="module")
def reference(demo, tmp_path_factory) -> tuple[dict, dict]:
    """An uninterrupted run of the TINY training: its result and weights."""
    folder = tmp_path_factory.mktemp("reference")
    with torch_threads(1):
        result = train(demo, folder, make_config(folder, **TINY))
    return result, network.read_checkpoint(folder / "model.pt")["state_dict"]


def job_args(demo: DemoFaces, folder: Path, config: dict) -> dict:
    return {"faces": {k: str(v) for k, v in demo.faces.items()}, "segments_path": str(demo.segments),
            "splits_path": str(demo.splits), "fold": 0, "config": config, "out_model": str(folder / "model.pt"),
            "out_metrics": str(folder / "metrics.csv"), "resume_dir": str(folder / ".resume")}


class SignalAt(logging.Handler):
    """Sends this process ``how`` when the ``ferseq`` log shows ``line_part`` (as a scheduler's signal arrives)."""

    def __init__(self, line_part: str, how: int = signal.SIGTERM):
        super().__init__()
        self.line_part, self.how = line_part, how

    def emit(self, record):
        if self.line_part in record.getMessage():
            os.kill(os.getpid(), self.how)


@contextmanager
def signal_at(line_part: str) -> Iterator[None]:
    logger = logging.getLogger("ferseq")
    handler = SignalAt(line_part)
    logger.addHandler(handler)
    try:
        with ferseq_log():
            yield
    finally:
        logger.removeHandler(handler)


def test_a_stopped_then_killed_training_resumes_into_its_run_and_ends_with_the_uninterrupted_model(
        demo, reference, one_thread, tmp_path):
    config = make_config(tmp_path, **TINY)
    args = job_args(demo, tmp_path, config)
    # SIGTERM (a SLURM time limit, or the --signal warning before it) inside epoch 2: the loop saves its state
    # at the end of that batch, the run ends KILLED, the job fails (Snakemake's retry runs it again).
    with signal_at("fold 0 epoch 2: batch 4/44"), pytest.raises(resume.Stopped, match="SIGTERM at epoch 2, batch 4"):
        training.train_frame_model(**args)
    saved = torch.load(tmp_path / ".resume/state.pt", weights_only=True)
    assert saved["epoch"] == 1 and saved["progress"]["batches"] == 4
    (run,) = mlflow.search_runs(experiment_names=["frame-test"], output_format="list")
    assert run.info.status == "KILLED"
    # The next attempt, a process of its own, goes on from that batch; kill -9 inside its third epoch.
    job = subprocess.Popen([sys.executable, "-c", FRAME_JOB, json.dumps(
        {**args, "log": str(tmp_path / "job.log"), "kill_at": "fold 0 epoch 3: batch"})])  # SIGKILL: nothing saved
    assert job.wait() == -9
    assert "fold 0: resuming at epoch 2, batch 5 from the state saved in" in (tmp_path / "job.log").read_text()
    saved = torch.load(tmp_path / ".resume/state.pt", weights_only=True)
    assert saved["epoch"] == 2 and saved["progress"]["batches"] == 0 and not (tmp_path / "model.pt").exists()
    # (The run's status now is KILLED or RUNNING: the attempt's journal reaches the store in the background,
    # and a SIGKILL may come before the resumed status does. What counts is below: the next attempt logs into
    # the same run and ends it FINISHED with every epoch once.)

    with ferseq_log() as messages:
        result = training.train_frame_model(**args)
    assert f"fold 0: resuming at epoch 3 from the state saved in {tmp_path / '.resume'} (best epoch so far " \
           f"{saved['best']['epoch']})" in messages
    expected, weights = reference
    assert [h["train_loss"] for h in result["history"]] == [h["train_loss"] for h in expected["history"]]
    state = network.read_checkpoint(tmp_path / "model.pt")["state_dict"]
    assert state.keys() == weights.keys() and all(torch.equal(state[k], weights[k]) for k in weights)
    # One run for the fold: the first attempt's, continued, with every epoch once.
    (finished,) = mlflow.search_runs(experiment_names=["frame-test"], output_format="list")
    assert finished.info.run_id == run.info.run_id == result["run_id"] and finished.info.status == "FINISHED"
    history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "train_loss")
    assert [m.step for m in history] == [1, 2, 3, 4, 5]
    assert [m.value for m in history] == pytest.approx([h["train_loss"] for h in expected["history"]])
    assert not (tmp_path / ".resume").exists()


def test_a_saved_state_of_other_settings_is_not_continued(demo, one_thread, tmp_path):
    config = make_config(tmp_path, **{**TINY, "epochs": 2, "num_workers": 0})
    args = job_args(demo, tmp_path, config)
    with signal_at("fold 0 epoch 1/2:"), pytest.raises(resume.Stopped, match="SIGTERM after epoch 1"):
        training.train_frame_model(**args)
    (killed,) = mlflow.search_runs(experiment_names=["frame-test"], output_format="list")
    assert killed.info.status == "KILLED" and torch.load(tmp_path / ".resume/state.pt", weights_only=True)["epoch"] == 1
    changed = {**config, "frame_model": {**config["frame_model"], "lr": 2e-3}}
    with ferseq_log() as messages:
        result = training.train_frame_model(**{**args, "config": changed})
    assert any("of other inputs or parameters: starting afresh" in m for m in messages)
    assert result["epochs_run"] == 2 and result["run_id"] != killed.info.run_id
    # the interrupted run is kept, marked superseded by the new one; the UI lists the new one only
    assert [r.info.run_id for r in mlflow.search_runs(experiment_names=["frame-test"], output_format="list")] == [
        result["run_id"]]
    earlier = mlflow.get_run(killed.info.run_id)
    assert earlier.info.lifecycle_stage == "deleted" and earlier.data.tags["ferseq.superseded_by"] == result["run_id"]


def test_training_goes_on_while_its_tracking_server_is_away_and_the_server_gets_every_epoch(
        demo, reference, mlflow_server, one_thread, tmp_path):
    """A real `mlflow server` on loopback, killed after epoch 1 and started again after epoch 3: the job neither
    fails nor waits for it (epochs 2 and 3 train while it is away), ends with the model of the run without the
    outage, and sends what it kept once the server answers."""
    from ferseq.common import logs

    config = {**make_config(tmp_path, **TINY), "experiment": "outage", "mlflow": {"tracking_uri": mlflow_server.uri}}

    class Outage(logging.Handler):
        def emit(self, record):
            if "fold 0 epoch 1/5:" in record.getMessage():
                mlflow_server.kill()  # SIGKILL: gone mid-run, as a crashed host
            elif "fold 0 epoch 3/5:" in record.getMessage():
                # back; the test waits here until it answers (on 2 cores a server starting beside the training
                # would only slow both down)
                mlflow_server.start()

    logs.setup(tmp_path / "logs/frame_model.log")  # as the rule's script does: the journal goes beside the log
    logger = logging.getLogger("ferseq")
    logger.addHandler(Outage())
    try:
        result = training.train_frame_model(demo.faces, demo.segments, demo.splits, 0, config, tmp_path / "model.pt",
                                               tmp_path / "metrics.csv")
    finally:
        logger.handlers.clear()
        logger.propagate = True
    log = (tmp_path / "logs/frame_model.log").read_text()
    assert f"MLflow: {mlflow_server.uri} does not answer" in log and "answers again after" in log
    assert "not delivered" not in log and not list((tmp_path / "logs").rglob("*.jsonl"))
    expected, weights = reference
    state = network.read_checkpoint(tmp_path / "model.pt")["state_dict"]
    assert all(torch.equal(state[k], weights[k]) for k in weights)
    client = mlflow.MlflowClient(mlflow_server.uri)
    run = client.get_run(result["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["stage"] == "frame_model"
    for key in ("train_loss", "val_loss"):
        history = client.get_metric_history(run.info.run_id, key)
        assert [m.step for m in history] == [1, 2, 3, 4, 5]
        assert [m.value for m in history] == pytest.approx([h[key] for h in expected["history"]])
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"model.pt", "metrics.csv", "config.json"}
