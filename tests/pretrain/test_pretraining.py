"""Pretraining on a tiny static image set made of the demo clips' real face crops: the network learns, a killed job
resumes into the uninterrupted network, a fold's frame model starts from it, and the checks that guard it (the
study's test people, the class map, a checkpoint of another architecture).

The image set: the aligned 64 px face crops of :func:`demo_faces` (real faces stage on the demo clips) written as
JPEG files in class folders (the folder form; the CSV form for the people check), its classes spelled as the public
sets spell them (happiness, sadness), with a test folder; its faces found again by the pretraining's faces step
with ``detector: none`` (the images are crops already).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from conftest import CLASSES, ferseq_log, torch_threads, write_config
from demo_faces import DemoFaces, demo_faces, make_config
from ferseq.common import config as config_check
from ferseq.common.errors import ConfigError
from ferseq.common import initialisation
from ferseq.frame_model import crops, network
from ferseq.pretrain import image_faces, image_sets, training
from ferseq.pretrain.training import PretrainDataError

# the demo's classes as a public set names them; pensive stays the set's own class
SET_NAMES = {"neutral": "neutral", "happy": "happiness", "sad": "sadness", "pensive": "pensive"}
TO_STUDY = {name: study for study, name in SET_NAMES.items()}
# timm's test_resnet at 32 px, batches of 8: a few seconds an epoch on one thread
TINY = {"backbone": "test_resnet", "input_size": 32, "fc": [64, 32, 16], "epochs": 4, "patience": 4, "batch_size": 8,
        "augment": True, "num_workers": 0, "lr": 0.003}


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> DemoFaces:
    return demo_faces(tmp_path_factory.getbasetemp() / "demo_faces")


def write_image_set(demo: DemoFaces, root: Path) -> pd.DataFrame:
    """The demo's face crops as ``root/{train,test}/<class>/<video>_<frame>.jpg``: the fold-0 test segments' crops
    in test, the others in train. Returns one row per image (path, label, split, video_id, subject)."""
    segments = demo.table.set_index("segment_id")
    rows = []
    for video_id, path in demo.faces.items():
        table = pq.read_table(path, columns=["segment_id", "frame", "face_found", "crop"]).to_pandas()
        for r in table.loc[table["face_found"]].itertuples():
            segment = segments.loc[r.segment_id]
            split = "test" if segment["split"] == "test" else "train"
            file = root / split / SET_NAMES[segment["label"]] / f"{video_id}_{r.frame:04d}.jpg"
            file.parent.mkdir(parents=True, exist_ok=True)
            file.write_bytes(r.crop)
            rows.append({"path": str(file.relative_to(root)), "label": SET_NAMES[segment["label"]], "split": split,
                         "video_id": video_id, "subject": segment["subject"]})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def image_set(demo, tmp_path_factory) -> tuple[Path, Path, pd.DataFrame]:
    """The image set's faces file and image table (folder form, detector none), and its rows."""
    folder = tmp_path_factory.mktemp("image_set")
    rows = write_image_set(demo, folder / "images")
    images = image_sets.read_image_set("folder", folder / "images")
    image_faces.extract_image_faces(images, {"detector": "none", "crop_size": 64}, folder / "faces.parquet",
                                    folder / "images.parquet")
    return folder / "faces.parquet", folder / "images.parquet", rows


def pretrain_config(tmp_path: Path, mapped: bool = False, **overrides) -> dict:
    config = make_config(tmp_path, **TINY)
    del config["frame_model"]["pretrained"]  # init is set where it matters (its older spelling would disagree)
    config["pretrain"] = {"images": {"format": "folder", "path": "images"}, "init": "none", "val_fraction": 0.2,
                          "classes": {"map": TO_STUDY if mapped else {}}, **overrides}
    return config


def run_pretrain(image_set, folder: Path, config: dict, splits: Path | None = None, **kwargs) -> dict:
    faces, images, _ = image_set
    return training.pretrain(faces, images, config, folder / "model.pt", folder / "model.json", folder / "metrics.csv",
                             splits_path=splits, **kwargs)


@pytest.fixture(scope="module")
def reference(image_set, tmp_path_factory) -> tuple[Path, dict]:
    """An uninterrupted pretraining on the set's own classes (one torch thread): its folder and summary."""
    folder = tmp_path_factory.mktemp("reference")
    with torch_threads(1):
        summary = run_pretrain(image_set, folder, pretrain_config(folder))
    return folder, summary


def predictions(model_path: Path, faces: Path, image_ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings and logits of a saved network on the crops of ``image_ids`` (decoded here, as training does)."""
    model = network.load_frame_model(model_path, "cpu")
    rows = crops.index_face_rows([faces], image_ids)
    source = crops.ParquetCrops(rows)
    images = []
    for unit in range(len(source.starts) - 1):
        _, data, offsets = source.read(unit)
        images += [crops.to_tensor(crops.decode(data[offsets[i]:offsets[i + 1]], model.input_size))
                   for i in range(len(offsets) - 1)]
    with torch.inference_mode():
        embedding, logits = model.embed(torch.stack(images))
    return embedding.numpy(), logits.numpy()


def test_pretraining_learns_the_image_set_and_scores_its_test_images(image_set, reference):
    faces, images, rows = image_set
    folder, summary = reference
    history = pd.read_csv(folder / "metrics.csv")
    assert history["train_loss"].iloc[-1] < history["train_loss"].iloc[0]  # it learns
    assert summary["classes"] == ["neutral", "happiness", "sadness", "pensive"]  # the public order, then the own
    table = pd.read_parquet(images)
    assert summary["faces_found"] == {"images": len(rows), "with_face": int(table["face_found"].sum())}
    counts = summary["images"]
    assert sum(counts["test"].values()) == (rows["split"] == "test").sum()
    # the val images were held out of the train folder: a stratified 20% of each class
    for name in summary["classes"]:
        train = ((rows["split"] == "train") & (rows["label"] == name)).sum()
        assert counts["val"][name] == round(0.2 * train) and counts["train"][name] + counts["val"][name] == train
    # the test scores, computed again from the saved network's outputs
    test = table.loc[table["split"] == "test"]
    _, logits = predictions(folder / "model.pt", faces, test["image_id"].tolist())
    true = test["label"].map({name: i for i, name in enumerate(summary["classes"])}).to_numpy()
    pred = logits.argmax(axis=1)
    recalls = [np.mean(pred[true == c] == c) for c in np.unique(true)]
    assert summary["test"]["accuracy"] == pytest.approx(np.mean(pred == true))
    assert summary["test"]["uar"] == pytest.approx(np.mean(recalls))
    checkpoint = network.read_checkpoint(folder / "model.pt")
    assert checkpoint["stage"] == "pretrain" and checkpoint["arch"]["classes"] == summary["classes"]
    assert json.loads((folder / "model.json").read_text()) == summary
    # one MLflow run of stage pretrain, with its epochs and test scores
    mlflow.set_tracking_uri(pretrain_config(folder)["mlflow"]["tracking_uri"])
    (run,) = mlflow.search_runs(experiment_names=["frame-test"], output_format="list")
    assert run.data.tags["stage"] == "pretrain" and run.data.params["init"] == "none"
    assert run.data.metrics["test_accuracy"] == pytest.approx(summary["test"]["accuracy"])


PRETRAIN_JOB = """import json, logging, os, signal, sys
import torch
from ferseq.common import logs
from ferseq.pretrain import training
torch.set_num_threads(1)
args = json.loads(sys.argv[1])

class KillAt(logging.Handler):  # SIGKILL itself at a log line: where it dies does not depend on the load
    def emit(self, record):
        if "pretraining epoch 3: batch" in record.getMessage():
            os.kill(os.getpid(), signal.SIGKILL)

with logs.step(args.pop("log")):  # as workflow/scripts/pretrain.py runs it
    logging.getLogger("ferseq").addHandler(KillAt())
    training.pretrain(**args)
"""


def test_a_killed_pretraining_resumes_and_ends_with_the_uninterrupted_network(image_set, reference, one_thread,
                                                                               tmp_path):
    faces, images, _ = image_set
    config = pretrain_config(tmp_path)
    args = {"faces_path": str(faces), "images_path": str(images), "config": config,
            "out_model": str(tmp_path / "model.pt"), "out_json": str(tmp_path / "model.json"),
            "out_metrics": str(tmp_path / "metrics.csv"), "resume_dir": str(tmp_path / ".resume")}
    job = subprocess.run([sys.executable, "-c", PRETRAIN_JOB, json.dumps({**args, "log": str(tmp_path / "job.log")})])
    assert job.returncode == -9  # kill -9 inside epoch 3: nothing saved then
    saved = torch.load(tmp_path / ".resume/state.pt", weights_only=True)
    assert saved["epoch"] == 2 and not (tmp_path / "model.pt").exists()
    with ferseq_log() as messages:
        summary = training.pretrain(**args)
    assert any(m.startswith("pretraining: resuming at epoch 3 from the state saved in") for m in messages)
    folder, expected = reference
    assert summary["best_epoch"] == expected["best_epoch"] and summary["test"] == expected["test"]
    weights = network.read_checkpoint(folder / "model.pt")["state_dict"]
    state = network.read_checkpoint(tmp_path / "model.pt")["state_dict"]
    assert state.keys() == weights.keys() and all(torch.equal(state[k], weights[k]) for k in weights)
    assert pd.read_csv(tmp_path / "metrics.csv")["train_loss"].tolist() == \
        pd.read_csv(folder / "metrics.csv")["train_loss"].tolist()
    assert not (tmp_path / ".resume").exists()


def test_a_fold_starts_from_the_pretrained_network_with_its_classifier_when_it_learnt_the_studys_classes(
        image_set, reference, tmp_path):
    faces, images, _ = image_set
    ids = pd.read_parquet(images).query("face_found")["image_id"].head(8).tolist()
    # mapped to the study's classes: the whole network, classifier included, carries over
    mapped = pretrain_config(tmp_path, mapped=True, epochs=1)
    summary = run_pretrain(image_set, tmp_path, mapped)
    assert summary["classes"] == CLASSES["names"]
    fold = {**mapped, "frame_model": {**mapped["frame_model"], "init": "pretrain"}}
    model = network.build_model(fold, tmp_path / "model.pt").eval()
    network.save_checkpoint(tmp_path / "fold.pt", model)
    embedding, logits = predictions(tmp_path / "model.pt", faces, ids)
    fold_embedding, fold_logits = predictions(tmp_path / "fold.pt", faces, ids)
    np.testing.assert_array_equal(fold_embedding, embedding)
    np.testing.assert_array_equal(fold_logits, logits)
    # the set's own classes: the network carries over, the study's classifier starts anew
    own, _ = reference
    model = network.build_model(fold, own / "model.pt").eval()
    network.save_checkpoint(tmp_path / "fold_own.pt", model)
    own_embedding, own_logits = predictions(own / "model.pt", faces, ids)
    fold_embedding, fold_logits = predictions(tmp_path / "fold_own.pt", faces, ids)
    np.testing.assert_array_equal(fold_embedding, own_embedding)
    assert fold_logits.shape == (8, len(CLASSES["names"])) and own_logits.shape == (8, 4)
    assert not np.allclose(fold_logits, own_logits)
    # a fold without the pretraining starts elsewhere
    scratch = network.build_model({**fold, "frame_model": {**fold["frame_model"], "init": "none"}}).eval()
    network.save_checkpoint(tmp_path / "scratch.pt", scratch)
    assert not np.allclose(predictions(tmp_path / "scratch.pt", faces, ids)[0], own_embedding)


def test_a_checkpoint_of_another_architecture_fails_naming_the_key_and_the_mismatch(reference, tmp_path):
    folder, _ = reference  # test_resnet, fc [64, 32, 16]
    config = make_config(tmp_path, **{**TINY, "backbone": "resnet18", "pretrained": None,
                                      "init": str(folder / "model.pt")})
    with pytest.raises(ConfigError, match=r"frame_model.init: the checkpoint .*model.pt' is a network with backbone "
                                          r"test_resnet, but frame_model.backbone is resnet18"):
        network.build_model(config, folder / "model.pt")
    config = make_config(tmp_path, **{**TINY, "fc": [64, 32], "pretrained": None, "init": str(folder / "model.pt")})
    with pytest.raises(ConfigError, match=r"frame_model.init: .* fc \[64, 32, 16\], but frame_model.fc is \[64, 32\]"):
        network.build_model(config)
    # the same architecture: the checkpoint's network, without a config's pretrain section
    config = make_config(tmp_path, **{**TINY, "pretrained": None, "init": str(folder / "model.pt")})
    model = network.build_model(config)
    saved = network.read_checkpoint(folder / "model.pt")["state_dict"]
    assert torch.equal(model.state_dict()["fc.1.weight"], saved["fc.1.weight"])


def test_images_of_a_study_test_person_stop_the_pretraining_naming_them(demo, image_set, tmp_path):
    faces, images, rows = image_set
    # the CSV form, whose subject column names the people: the demo's own
    (tmp_path / "images").symlink_to(Path(image_set[0]).parent / "images")
    rows.assign(path="images/" + rows["path"])[["path", "label", "subject"]].to_csv(tmp_path / "set.csv", index=False)
    named = image_sets.read_image_set("csv", tmp_path / "set.csv")
    assert sorted(named.table["subject"].unique()) == ["man", "woman"]
    image_faces.extract_image_faces(named, {"detector": "none", "crop_size": 64}, tmp_path / "faces.parquet",
                                    tmp_path / "images.parquet")
    config = pretrain_config(tmp_path)
    with pytest.raises(PretrainDataError, match=r"images of 1 of the study's test people \(man; test people of "
                                                r"fold\(s\) \[0\]\)"):
        training.pretrain(tmp_path / "faces.parquet", tmp_path / "images.parquet", config, tmp_path / "model.pt",
                          tmp_path / "model.json", tmp_path / "metrics.csv", splits_path=demo.splits)
    assert not (tmp_path / "model.pt").exists()
    # people who are not the study's pass (and are held out whole for val)
    table = pd.read_parquet(tmp_path / "images.parquet")
    table["subject"] = table["subject"].map({"man": "set-a", "woman": "set-b"}).astype("string")
    training.check_people(table, demo.splits)
    people = table.assign(subject=table["image_id"].map(lambda i: f"p{i % 5}"), split=pd.NA)
    held = training.hold_out(people, 0.2, seed=1)
    val = held.loc[held["split"] == "val"]
    assert not set(val["subject"]) & set(held.loc[held["split"] == "train", "subject"])  # whole people
    # people in a random order until a fifth of the images: without the last one taken, it was less
    largest = held["subject"].value_counts(normalize=True)[sorted(set(val["subject"]))].max()
    assert 0.2 <= len(val) / len(held) < 0.2 + largest
    # one person: stratified by class instead (that person cannot be in train and val at once)
    alone = training.hold_out(people.assign(subject="p0"), 0.2, seed=1)
    assert (alone.groupby("label")["split"].apply(lambda s: (s == "val").mean()).between(0.1, 0.3)).all()
    # a class whose images all lie in test cannot be learnt: named, with the way out
    table = pd.read_parquet(tmp_path / "images.parquet")
    table.loc[table["label"] == "pensive", "split"] = "test"
    table.assign(subject=pd.NA).to_parquet(tmp_path / "images.parquet")
    with pytest.raises(PretrainDataError, match=r"class\(es\) \['pensive'\] have no train image with a face .* "
                                                r"pretrain.classes.map"):
        training.pretrain(tmp_path / "faces.parquet", tmp_path / "images.parquet", config, tmp_path / "model.pt",
                          tmp_path / "model.json", tmp_path / "metrics.csv", splits_path=demo.splits)


def test_the_class_map_and_the_image_set_are_checked_against_the_set_and_the_study(tmp_path):
    config = {"classes": CLASSES, "pretrain": {"classes": {"map": {"happiness": "happy", "contempt": "sad"}}}}
    with pytest.raises(ConfigError, match=r"pretrain.classes.map: \['contempt'\] are not classes of the image set"):
        training.class_map(config, ["happiness", "sadness"])
    config["pretrain"]["classes"]["map"] = {"happiness": "happy", "sadness": None, "fear": "sad"}
    assert training.class_map(config, ["happiness", "sadness", "fear"]) == (["happy", "sad"],
                                                                             {"happiness": "happy", "fear": "sad"})
    full = yaml.safe_load(write_config(tmp_path / "config.yaml").read_text())
    full["frame_model"] = {"init": "pretrain"}
    full["pretrain"] = {"classes": {"map": {"happiness": "joy"}}}
    with pytest.raises(ConfigError) as err:
        config_check.check(full)
    assert "pretrain.classes.map.happiness: 'joy' is not one of classes.names" in str(err.value)
    assert "frame_model.init: pretrain needs pretrain.images" in str(err.value)
    full["pretrain"] = {"images": {"format": "rafdb", "path": str(tmp_path / "basic")}}
    with pytest.raises(ConfigError, match=r"pretrain.images.path: '.*basic' does not exist \(the rafdb image set\)"):
        config_check.check(full)


def test_init_and_its_older_spelling_must_agree():
    assert initialisation.choice({"frame_model": {"pretrained": True}}) == "imagenet"
    assert initialisation.choice({"frame_model": {"pretrained": False}}) == "none"
    assert initialisation.choice({"frame_model": {"pretrained": None, "init": "pretrain"}}) == "pretrain"
    assert initialisation.choice({"frame_model": {"pretrained": "/a.pt", "init": "/a.pt"}}) == "/a.pt"
    assert initialisation.choice({"frame_model": {}}) == "imagenet"
    with pytest.raises(ConfigError, match="frame_model.init: 'imagenet' and frame_model.pretrained: False say "
                                          "different things"):
        initialisation.choice({"frame_model": {"pretrained": False, "init": "imagenet"}})
    problems = initialisation.problems({"frame_model": {"init": "/no/such/model.pt"}})
    assert problems == ["frame_model.init: checkpoint '/no/such/model.pt' does not exist (choices: imagenet, "
                        "pretrain, none or the path of a checkpoint file)"]
