"""The pretraining: the frame network trained on a static expression image set's aligned faces, before the folds.

:func:`pretrain` reads the faces file and image table of :mod:`ferseq.pretrain.image_faces`, maps the set's
classes (``pretrain.classes.map``), holds out its own val images when the set names none (:func:`hold_out`),
checks that no image shows one of the study's people (:func:`check_people`), and trains with the frame model's
own loop (:func:`ferseq.frame_model.training.fit`: streamed crops, augmentation, class weights, early stopping
on the val loss, epoch- and batch-level resume, one MLflow run of stage ``pretrain``). It writes the best
epoch's network (``model.pt``, data only, as a fold's frame model) and a JSON of its classes, images and scores
(val, and test when the set names test images).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import accuracy_score, f1_score, recall_score

from ferseq.common import initialisation, model_files, resume
from ferseq.common.errors import ConfigError, FerseqError
from ferseq.common.outputs import atomic_path
from ferseq.frame_model.crops import ParquetCrops, index_face_rows
from ferseq.frame_model.device_crops import decode_on_device
from ferseq.frame_model.network import build_model, default_device, settings
from ferseq.frame_model.training import Examples, evaluate, fit, frame_batches
from ferseq.pretrain.image_sets import EMOTIONS

log = logging.getLogger(__name__)

OVERRIDES = ("epochs", "patience", "lr", "batch_size")  # pretrain keys that replace frame_model's when set


class PretrainDataError(FerseqError, ValueError):
    """The image set cannot pretrain the network (no image left, a class without train images, a study person)."""


def pretrain_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """The training settings of the pretraining: ``frame_model``'s, with ``pretrain``'s epochs, patience, lr and
    batch_size where they are set (the network itself is frame_model's: the folds load it)."""
    section = config.get("pretrain") or {}
    return {**settings(config), **{k: section[k] for k in OVERRIDES if section.get(k) is not None}}


def class_map(config: Mapping[str, Any], labels: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """The pretraining's classes and the set's label -> class: with ``pretrain.classes.map``, the study's classes
    that some label maps to (in classes.names order; unmapped labels dropped), else the set's own labels (in
    the public sets' order, then by name)."""
    mapping = ((config.get("pretrain") or {}).get("classes") or {}).get("map") or {}
    present = sorted(set(labels))
    if not mapping:
        order = {name: i for i, name in enumerate(EMOTIONS)}
        classes = sorted(present, key=lambda name: (order.get(name, len(order)), name))
        return classes, {name: name for name in classes}
    unknown = sorted(set(mapping) - set(present))
    if unknown:
        raise ConfigError(f"pretrain.classes.map: {unknown} are not classes of the image set (its classes: "
                          f"{present})")
    kept = {source: target for source, target in mapping.items() if target is not None}
    classes = [name for name in config["classes"]["names"] if name in kept.values()]
    if not classes:
        raise ConfigError("pretrain.classes.map maps no image-set class to a study class")
    return classes, kept


def hold_out(table: pd.DataFrame, fraction: float, seed: int) -> pd.DataFrame:
    """``table`` with a val split when the set names none: ``fraction`` of the train images, whole people when
    every image names its person and there are several, else stratified by class (at least one image of a class
    with two or more)."""
    table = table.copy()
    table["split"] = table["split"].fillna("train")
    if (table["split"] == "val").any():
        return table
    rng = np.random.default_rng(seed)
    train = table.index[table["split"] == "train"]
    people = table.loc[train, "subject"]
    if people.notna().all() and people.nunique() > 1:  # (one person cannot be both train and val)
        people = people.astype(str)
        sizes = people.value_counts().sort_index()
        order = rng.permutation(sizes.index.to_numpy())
        counts = sizes.loc[order].cumsum()
        # people in a random order until the fraction is reached: at least one, never all
        taken = order[: max(1, min(int(np.searchsorted(counts.to_numpy(), fraction * len(train))) + 1,
                                   len(order) - 1))]
        val = train[people.isin(set(taken)).to_numpy()]
    else:
        val = []
        for _, rows in table.loc[train].groupby("label"):
            n = int(round(fraction * len(rows))) if len(rows) > 1 else 0
            val += list(rng.choice(rows.index.to_numpy(), size=max(n, 1 if len(rows) > 1 else 0), replace=False))
    table.loc[val, "split"] = "val"
    return table


def check_people(table: pd.DataFrame, splits_path: str | Path | None) -> None:
    """Fail when an image shows a person the study tests on (the image's subject equals a test subject of some
    fold): the folds would then be scored on people the network has seen."""
    known = table["subject"].dropna().astype(str)
    if known.empty or not splits_path:
        return
    splits = pd.read_parquet(splits_path, columns=["fold", "subject", "split"])
    tested = splits.loc[splits["split"] == "test"]
    shared = sorted(set(known) & set(tested["subject"].astype(str)))
    if shared:
        folds = sorted(tested.loc[tested["subject"].astype(str).isin(shared), "fold"].unique().tolist())
        raise PretrainDataError(
            f"the pretraining image set has images of {len(shared)} of the study's test people "
            f"({', '.join(shared[:10])}{', ...' if len(shared) > 10 else ''}; test people of fold(s) {folds}): "
            "the folds would be scored on people the network has seen. Remove their images from the set (or, if "
            "the same name means another person there, rename the set's subjects)")


def examples(faces_path: str | Path, table: pd.DataFrame, classes: Sequence[str],
             mapping: Mapping[str, str]) -> tuple[dict[str, tuple[ParquetCrops, np.ndarray]], pd.DataFrame]:
    """Per split (train, val, test), the crops of the images with a face and a kept class, read as they go, and
    their class indices; and the table of those images."""
    index = {name: i for i, name in enumerate(classes)}
    kept = table.assign(cls=table["label"].map(mapping)).dropna(subset=["cls"])
    kept = kept.loc[kept["face_found"]]
    rows = index_face_rows([faces_path], kept["image_id"])
    by_image = kept.set_index("image_id")
    split = by_image["split"].reindex(rows.segment_id).to_numpy()
    label = by_image["cls"].map(index).reindex(rows.segment_id).to_numpy()
    result = {}
    for name in ("train", "val", "test"):
        mine = np.flatnonzero(split == name)
        result[name] = (ParquetCrops(rows.take(mine)), label[mine].astype(np.int64))
    return result, kept


def counts(kept: pd.DataFrame, classes: Sequence[str]) -> dict[str, dict[str, int]]:
    """Images per split and class."""
    return {split: {name: int(((kept["split"] == split) & (kept["cls"] == name)).sum()) for name in classes}
            for split in ("train", "val", "test")}


def scores(true: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Accuracy (WAR), UAR and macro F1 over the classes present."""
    labels = np.unique(true)
    return {"accuracy": float(accuracy_score(true, pred)),
            "uar": float(recall_score(true, pred, labels=labels, average="macro", zero_division=0)),
            "macro_f1": float(f1_score(true, pred, labels=labels, average="macro", zero_division=0)),
            "images": int(len(true))}


def pretrain(faces_path: str | Path, images_path: str | Path, config: Mapping[str, Any], out_model: str | Path,
             out_json: str | Path, out_metrics: str | Path, *, splits_path: str | Path | None = None,
             init_weights: str | Path | None = None, decode: str | None = None,
             resume_dir: str | Path | None = None) -> dict[str, Any]:
    """Pretrain the frame network on the image set's faces; write ``out_model``, ``out_json`` and ``out_metrics``.

    ``faces_path``, ``images_path``: the faces file and image table of :func:`ferseq.pretrain.image_faces.
    extract_image_faces`; ``splits_path``: the study's splits (its test people are checked against the set's);
    ``init_weights``: the file ``pretrain.init`` resolved to (ImageNet weights or a checkpoint); ``decode`` and
    ``resume_dir`` as :func:`ferseq.frame_model.training.train_frame_model`'s.
    """
    section = config.get("pretrain") or {}
    cfg = pretrain_settings(config)
    seed = int(config.get("seed", 42))
    table = pd.read_parquet(images_path)
    check_people(table, splits_path)
    classes, mapping = class_map(config, table["label"].astype(str).tolist())
    table = hold_out(table, float(section.get("val_fraction", 0.1)), seed)
    data, kept = examples(faces_path, table, classes, mapping)
    (train_crops, train_y), (val_crops, val_y), (test_crops, test_y) = data["train"], data["val"], data["test"]
    if len(val_y) == 0:
        raise PretrainDataError("pretraining: no val image with a face (early stopping needs some); raise "
                                "pretrain.val_fraction or check the faces found (results/pretrain/images.parquet)")
    per_split = counts(kept, classes)
    empty = [name for name, n in per_split["train"].items() if n == 0]
    if empty:
        raise PretrainDataError(f"pretraining: class(es) {empty} have no train image with a face (train images per "
                                f"class: {per_split['train']}); drop them with pretrain.classes.map (map them to "
                                "null, or leave them out of a map), or check the faces found "
                                "(results/pretrain/images.parquet)")
    log.info("pretraining on %d classes %s: images with a face per split and class %s", len(classes), classes,
             per_split)

    dev = default_device()
    on_device = decode_on_device(decode, dev)
    init = initialisation.choice(config, "pretrain")
    started = initialisation.describe(config, "pretrain", init_weights)
    key = resume.fingerprint("pretrain", cfg, classes, dict(mapping), seed, resume.stamp(faces_path),
                             model_files.sha256(images_path), resume.stamp(init_weights) if init_weights else None,
                             dev.type, on_device)
    torch.manual_seed(seed)  # the new layers' weights, then dropout, follow from the seed
    model = build_model(config, init_weights, section="pretrain", classes=classes)
    image_set = dict(section.get("images") or {})
    test: dict[str, float] | None = None

    def score_test(best: Any, run: Any) -> None:
        """The best epoch's network on the set's test images, logged to the run."""
        nonlocal test
        if len(test_y) == 0:
            return
        _, pred, true = evaluate(best, frame_batches(test_crops, test_y, cfg, dev, on_device=on_device),
                                 torch.ones(len(classes), device=dev), dev)
        test = scores(true, pred)
        run.log_metrics({f"test_{k}": v for k, v in test.items()})
        log.info("pretraining: the best epoch on %d test images: accuracy %.3f, UAR %.3f, macro F1 %.3f",
                 test["images"], test["accuracy"], test["uar"], test["macro_f1"])

    result = fit(model, Examples(train_crops, train_y, val_crops, val_y), config, cfg, name="pretraining",
                 stage="pretrain", fold=None, out_model=out_model, out_metrics=out_metrics, resume_dir=resume_dir,
                 key=key, on_device=on_device, finish=score_test,
                 params={"init": init, "images.format": image_set.get("format"), "images.path": image_set.get("path"),
                         "classes": ",".join(classes), "classes_map": json.dumps(dict(mapping), sort_keys=True)},
                 info={"stage": "pretrain", "init": init, "initialised_from": started, "image_set": image_set,
                       "classes_map": dict(mapping), "faces": {**dict(config.get("faces", {})),
                                                               **dict(section.get("faces") or {})}})
    summary = {
        "classes": classes, "classes_map": dict(mapping), "image_set": image_set, "initialised_from": started,
        "images": per_split,
        "faces_found": {"images": int(len(table)), "with_face": int(table["face_found"].sum())},
        "best_epoch": result["best_epoch"], "epochs_run": result["epochs_run"],
        "val": {"loss": result["val_loss"], "macro_f1": result["val_macro_f1"], "images": int(len(val_y))},
        "test": test, "mlflow_run_id": result["run_id"],
    }
    with atomic_path(out_json) as tmp:
        Path(tmp).write_text(json.dumps(summary, indent=2) + "\n")
    return summary
