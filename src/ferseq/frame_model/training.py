"""Training the per-frame CNN of one fold (:mod:`ferseq.frame_model.network`).

:func:`train_frame_model` trains one fold's model in one explicit loop (data,
model, optimiser, epoch loop, early stop on the validation loss, checkpoint of
the best epoch); one epoch's steps are :func:`train_epoch`, which
benchmarks/frame_model.py times against bare train steps.

Resume: with ``resume_dir`` the loop saves its whole state at the end of every
epoch, and at the next batch when SIGTERM or SIGUSR1 asks it to stop
(:mod:`ferseq.common.resume`); a new attempt with the same inputs and settings
continues from there and ends with the model an uninterrupted run gives. For
that, an epoch's batches follow from the data-order generator alone: the
order and each crop's augmentation seed are drawn from it when the epoch
starts (:class:`ferseq.frame_model.crops.StreamBatches`), whichever worker decodes the crop.

Memory: the crops are streamed from the faces files (row groups in a shuffled
order, shuffled within blocks of ``frame_model.shuffle_buffer`` crops); the job
holds an index of a few bytes per crop, never the fold's crops.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import torch
import torch.nn.functional as F
from sklearn.metrics import f1_score
from torch.utils.data import DataLoader

from ferseq.common import initialisation, mlflow_runs, model_files, resume
from ferseq.common.errors import FerseqError
from ferseq.common.outputs import atomic_path
from ferseq.frame_model.crops import CropSource, MemoryCrops, ParquetCrops, StreamBatches, index_face_rows, stream_loader
from ferseq.frame_model.device_crops import DeviceBatches, decode_on_device
from ferseq.frame_model.network import (
    FrameModel,
    autocast,
    build_model,
    default_device,
    save_checkpoint,
    settings,
    to_device,
)

log = logging.getLogger(__name__)


class FrameDataError(FerseqError, ValueError):
    """The fold's frames cannot train a model (no val frames, a class without train frames, ...)."""


def class_weights(counts: np.ndarray, classes: Sequence[str]) -> torch.Tensor:
    """Inverse-frequency weights, scaled so that sum(weight * count) = total count (mean loss stays comparable).

    A class without train frames cannot be learnt: it is an error naming the class.
    """
    counts = np.asarray(counts, dtype=np.float64)
    absent = [name for name, n in zip(classes, counts) if n == 0]
    if absent:
        per_class = ", ".join(f"{name}: {int(n)}" for name, n in zip(classes, counts))
        raise FrameDataError(f"class(es) {', '.join(absent)} have no train frames with a face ({per_class}); the model "
                             "cannot learn them: check the splits and faces QC, or drop the class from classes.names")
    return torch.tensor(counts.sum() / (len(counts) * counts), dtype=torch.float32)


def fold_frames(faces: Mapping[str, str | Path], segments_path: str | Path, splits_path: str | Path, fold: int,
                classes: Sequence[str], stride: int = 1) -> dict[str, tuple[ParquetCrops, np.ndarray]]:
    """Where the fold's train and val face crops are, and their class indices: split -> (crops, labels), the crops
    read from the faces files as they are needed (:class:`ferseq.frame_model.crops.ParquetCrops`), never held.

    Every ``stride``-th face frame of each segment (in frame order) is kept.
    ``faces``: video_id -> faces Parquet file.
    """
    segments = pd.read_parquet(segments_path, columns=["segment_id", "video_id", "label"])
    splits = pd.read_parquet(splits_path, columns=["fold", "segment_id", "split"])
    if not (splits["fold"] == fold).any():
        raise FrameDataError(f"{splits_path}: no fold {fold} (folds: {sorted(splits['fold'].unique())})")
    wanted = segments.merge(splits.loc[(splits["fold"] == fold) & splits["split"].isin(["train", "val"]),
                                       ["segment_id", "split"]], on="segment_id")
    unknown = sorted(set(wanted["label"]) - set(classes))
    if unknown:
        raise FrameDataError(f"{segments_path}: labels {unknown} are not in classes.names {list(classes)}")
    missing = sorted(set(wanted["video_id"]) - set(faces))
    if missing:
        raise FrameDataError(f"fold {fold}: no faces file given for videos {missing[:5]} ({len(missing)} in all)")
    rows = index_face_rows([faces[v] for v in sorted(set(wanted["video_id"]))], wanted["segment_id"])
    # every stride-th face frame of each segment: the rank of each row among its segment's rows, in frame order
    by_frame = np.lexsort((rows.frame, rows.segment_id))
    sorted_segments = rows.segment_id[by_frame]
    first = np.searchsorted(sorted_segments, sorted_segments, side="left")
    keep = np.empty(len(rows), bool)
    keep[by_frame] = (np.arange(len(rows)) - first) % stride == 0
    by_segment = wanted.set_index("segment_id")
    split = by_segment["split"].reindex(rows.segment_id).to_numpy()
    label = by_segment["label"].map({name: i for i, name in enumerate(classes)}).reindex(rows.segment_id).to_numpy()
    result = {}
    for name in ("train", "val"):
        mine = np.flatnonzero(keep & (split == name))
        result[name] = (ParquetCrops(rows.take(mine)), label[mine].astype(np.int64))
    return result


def evaluate(model: FrameModel, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], weights: torch.Tensor,
             dev: torch.device) -> tuple[float, np.ndarray, np.ndarray]:
    """Weighted mean cross entropy, predictions and labels of ``model`` on ``batches``."""
    model.eval()
    # summed on the device and copied once at the end: a copy per batch would make the host wait for
    # the GPU every batch, and the next batch's decoding could no longer overlap the model
    loss_sum = torch.zeros((), dtype=torch.float64, device=dev)
    weight_sum = torch.zeros((), dtype=torch.float64, device=dev)
    preds, labels = [], []
    with torch.inference_mode(), autocast(dev):
        for images, y in batches:
            images, y = images.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
            logits = model(images).float()
            loss_sum += F.cross_entropy(logits, y, weight=weights, reduction="sum").double()
            weight_sum += weights[y].sum().double()
            preds.append(logits.argmax(dim=1))
            labels.append(y)
    return (loss_sum / weight_sum).item(), torch.cat(preds).cpu().numpy(), torch.cat(labels).cpu().numpy()


def frame_batches(crops: CropSource | pa.Array | pa.ChunkedArray, labels: np.ndarray, cfg: Mapping[str, Any],
                  dev: torch.device, generator: torch.Generator | None = None, on_device: bool = False) -> Any:
    """The training loop's batches (uint8 images, labels) of encoded ``crops`` (a source that reads them as they go,
    e.g. :func:`fold_frames`' crops, or an Arrow array in memory): with ``generator``, train batches (``batch_size``,
    a new order every epoch, augmented if ``augment``, :class:`ferseq.frame_model.crops.StreamBatches`), else val
    batches (``inference_batch_size``, in order). ``on_device``: decoded in batches on ``dev``
    (:class:`ferseq.frame_model.device_crops.DeviceBatches`), else by OpenCV in ``num_workers`` DataLoader workers.
    ``cfg``: the ``frame_model`` settings.
    """
    size, train = int(cfg["input_size"]), generator is not None
    batch_size = int(cfg["batch_size"] if train else cfg["inference_batch_size"])
    augment = train and bool(cfg["augment"])
    # A last train batch of one image is dropped: BatchNorm cannot train on a single 1x1 feature map.
    drop_last = train and len(labels) % batch_size == 1
    source = crops if hasattr(crops, "read") else MemoryCrops(crops)
    stream = StreamBatches(source, np.arange(len(labels)), labels, batch_size, generator,
                           int(cfg["shuffle_buffer"]), drop_last=drop_last, seeds=augment)
    if on_device:
        return DeviceBatches(stream, size, dev, augment=augment)
    return stream_loader(stream, size, augment, int(cfg["num_workers"]), dev.type == "cuda")


def optimizer_for(model: FrameModel, lr: float, dev: torch.device) -> torch.optim.Adam:
    """Adam over the model's weights; on a GPU one fused kernel for the whole update instead of a few per tensor."""
    return torch.optim.Adam(model.parameters(), lr=lr, **({"fused": True} if dev.type == "cuda" else {}))


def train_step(model: FrameModel, images: torch.Tensor, y: torch.Tensor, optimizer: torch.optim.Optimizer,
               weights: torch.Tensor, dev: torch.device) -> torch.Tensor:
    """One optimiser step on a batch already on the device; its weighted mean loss (on the device, detached)."""
    with autocast(dev):
        logits = model(images)
    loss = F.cross_entropy(logits.float(), y, weight=weights)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


@dataclass
class EpochProgress:
    """How far an epoch got: batches trained and the sums of the epoch's train loss so far."""

    batches: int = 0
    loss_sum: float = 0.0
    weight_sum: float = 0.0


def _from_batch(batches: Any, skip: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """An epoch's batches from batch ``skip`` on: the earlier ones left out of the epoch's order unread
    (:class:`ferseq.frame_model.crops.StreamBatches`, whose order and seeds are drawn whole when the epoch
    starts), or, for other iterables, made and dropped."""
    stream = batches.sampler if isinstance(batches, DataLoader) else getattr(batches, "stream", None)
    if skip and isinstance(stream, StreamBatches):
        stream.skip = skip
        return iter(batches)
    it = iter(batches)
    for _ in range(skip):
        next(it)
    return it


def train_epoch(model: FrameModel, batches: Any, optimizer: torch.optim.Optimizer, weights: torch.Tensor,
                dev: torch.device, name: str = "training", progress: EpochProgress | None = None,
                stop: Callable[[], bool] | None = None) -> float:
    """One pass of the training loop over ``batches``; returns the epoch's weighted mean train loss.

    ``name`` (e.g. "fold 0 epoch 3") starts the progress lines, a few per epoch. ``progress``: where the
    epoch is (batches already trained are skipped), kept up to date. ``stop``: asked after each batch;
    when it says so, the epoch ends there with :class:`ferseq.common.resume.Stopped` (``progress`` says where).
    """
    model.train()
    progress = progress if progress is not None else EpochProgress()
    total = len(batches)
    # summed on the device: no sync per step
    loss_sum = torch.tensor(progress.loss_sum, device=dev)
    weight_sum = torch.tensor(progress.weight_sum, device=dev)
    log_every = max(1, total // 10)  # epochs of real data take long on a CPU
    for step, (images, y) in enumerate(_from_batch(batches, progress.batches), start=progress.batches + 1):
        images, y = images.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
        loss = train_step(model, images, y, optimizer, weights, dev)
        # the weighted mean over the batch, times its weight sum = the batch's share of the epoch loss
        loss_sum += loss * weights[y].sum()
        weight_sum += weights[y].sum()
        if step % log_every == 0 and step < total:
            log.info("%s: batch %d/%d, train loss so far %.4f", name, step, total, (loss_sum / weight_sum).item())
        if stop is not None and stop() and step < total:
            progress.batches, progress.loss_sum, progress.weight_sum = step, loss_sum.item(), weight_sum.item()
            raise resume.Stopped(f"{name}: stopped after batch {step}/{total}")
    progress.batches, progress.loss_sum, progress.weight_sum = total, loss_sum.item(), weight_sum.item()
    return progress.loss_sum / progress.weight_sum


def resume_key(faces: Mapping[str, str | Path], segments_path: str | Path, splits_path: str | Path, fold: int,
               config: Mapping[str, Any], init_weights: str | Path | None, dev: torch.device, on_device: bool) -> str:
    """What a saved training state must match to be continued: the inputs (faces files as they are now, the
    segment and split tables, the initial weights), the settings that shape training, the device kind."""
    cfg = {k: v for k, v in settings(config).items() if k != "num_workers"}  # workers change nothing (EpochOrder)
    return resume.fingerprint(
        "frame_model", fold, cfg, list(config["classes"]["names"]), int(config.get("seed", 42)),
        sorted((video, resume.stamp(path)) for video, path in faces.items()),
        model_files.sha256(segments_path), model_files.sha256(splits_path),
        resume.stamp(init_weights) if init_weights else None, dev.type, on_device)


@dataclass
class Examples:
    """What a training loop learns from: train and val crops (sources read as they go) and their class indices."""

    train: CropSource
    train_y: np.ndarray
    val: CropSource
    val_y: np.ndarray


def train_frame_model(faces: Mapping[str, str | Path], segments_path: str | Path, splits_path: str | Path, fold: int,
                      config: Mapping[str, Any], out_model: str | Path, out_metrics: str | Path,
                      init_weights: str | Path | None = None, decode: str | None = None,
                      resume_dir: str | Path | None = None) -> dict[str, Any]:
    """Train the frame model of one fold; write ``out_model`` (model.pt) and ``out_metrics`` (per-epoch CSV).

    ``faces``: video_id -> faces Parquet file; ``config``: the full validated
    config; ``init_weights``: the file the network starts from (ImageNet backbone
    weights, the pretraining's model or a checkpoint of ``frame_model.init``, see
    :func:`ferseq.frame_model.network.build_model`); ``decode``: where crops are decoded and augmented,
    ``"device"`` (in batches on the model's device, :mod:`ferseq.frame_model.device_crops`)
    or ``"workers"`` (OpenCV in DataLoader workers); default: the device on
    CUDA, workers on the CPU. ``resume_dir``: where the training state is kept
    between attempts (see the module docstring; removed on success). Logs one
    MLflow run (stage ``frame_model``, tag fold; a resumed attempt goes on
    logging into it). Returns the best epoch, its val loss and macro F1, and
    the epochs run.
    """
    cfg = settings(config)
    classes = list(config["classes"]["names"])
    # data: where the crops are (read as they go), decoded by the DataLoader workers or on the device
    frames = fold_frames(faces, segments_path, splits_path, fold, classes, int(cfg["frame_stride"]))
    (train_crops, train_y), (val_crops, val_y) = frames["train"], frames["val"]
    if len(val_y) == 0:
        raise FrameDataError(f"fold {fold}: no val frames with a face; early stopping needs a val split with faces")
    dev = default_device()
    on_device = decode_on_device(decode, dev)
    key = resume_key(faces, segments_path, splits_path, fold, config, init_weights, dev, on_device)
    torch.manual_seed(int(config.get("seed", 42)))  # the new layers' weights, then dropout, follow from the seed
    model = build_model(config, init_weights)
    init = initialisation.choice(config)
    started = initialisation.describe(config, "frame_model", init_weights)
    log.info("fold %s: one face frame in %d of each segment (frame_stride); the frame CNN starts from %s", fold,
             int(cfg["frame_stride"]), started)
    return fit(model, Examples(train_crops, train_y, val_crops, val_y), config, cfg, name=f"fold {fold}",
               stage="frame_model", fold=fold, out_model=out_model, out_metrics=out_metrics, resume_dir=resume_dir,
               key=key, on_device=on_device, params={"init": init, "initial_weights": str(init_weights or init)},
               info={"fold": fold, "init": init, "initialised_from": started,
                     # the crops this model expects: `ferseq predict` makes new videos' faces the same way
                     "faces": dict(config.get("faces", {}))})


def fit(model: FrameModel, data: Examples, config: Mapping[str, Any], cfg: Mapping[str, Any], *, name: str,
        stage: str, fold: int | None, out_model: str | Path, out_metrics: str | Path, resume_dir: str | Path | None,
        key: str, on_device: bool, params: Mapping[str, Any] | None = None,
        info: Mapping[str, Any] | None = None, finish: Callable[[FrameModel, Any], None] | None = None
        ) -> dict[str, Any]:
    """The training loop of a frame network (a fold's frame model, or the pretraining's): ``model`` trained on
    ``data`` with the ``cfg`` settings (a ``frame_model``-shaped section), early-stopped on the val loss; the best
    epoch's weights written to ``out_model`` with ``info``, the per-epoch history to ``out_metrics``.

    ``name`` starts the log lines ("fold 0", "pretraining"); ``stage`` and ``fold`` name the MLflow run, which
    also gets ``params``; ``key``: what a saved state in ``resume_dir`` must match to be continued
    (:func:`resume_key`); ``on_device``: crops decoded on the model's device. The caller seeds torch's global
    generator before building ``model`` (its new layers and then dropout draw from it). ``finish``: called with the best
    epoch's network and the MLflow run before the run ends (e.g. to score a test set).
    """
    classes = list(model.classes)
    seed = int(config.get("seed", 42))
    dev = default_device()
    epochs, patience = int(cfg["epochs"]), int(cfg["patience"])
    train_crops, train_y, val_crops, val_y = data.train, data.train_y, data.val, data.val_y
    try:
        weights = class_weights(np.bincount(train_y, minlength=len(classes)), classes)
    except FrameDataError as err:
        raise FrameDataError(f"{name}: {err}") from None
    log.info("%s: %d train and %d val face crops, device %s; train crops per class: %s", name, len(train_y),
             len(val_y), dev.type, dict(zip(classes, np.bincount(train_y, minlength=len(classes)).tolist())))
    generator = torch.Generator().manual_seed(seed)  # data order and augmentation
    train_loader = frame_batches(train_crops, train_y, cfg, dev, generator, on_device)
    val_loader = frame_batches(val_crops, val_y, cfg, dev, on_device=on_device)

    # model, loss weights, optimiser
    model = to_device(model, dev)
    weights = weights.to(dev)
    optimizer = optimizer_for(model, float(cfg["lr"]), dev)

    # the state of an interrupted attempt with the same inputs and settings, if any
    store = resume.Store(resume_dir, key, f"{name} {stage}") if resume_dir is not None else None
    saved = store.load() if store else None
    history: list[dict[str, float]] = []
    best = {"epoch": 0, "val_loss": math.inf, "val_macro_f1": 0.0, "state_dict": None}
    stale, first, progress, finished = 0, 1, EpochProgress(), False
    if saved:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        generator.set_state(saved["data_rng"])
        resume.set_rng_state(saved["rng"])
        history, stale, finished = saved["history"], saved["stale"], saved["finished"]
        best = {**saved["best"], "state_dict": store.load_file(f"best-{saved['best']['epoch']}")
                if saved["best"]["epoch"] else None}
        first, progress = saved["epoch"] + 1, EpochProgress(**saved["progress"])
        log.info("%s: resuming at epoch %d%s from the state saved in %s (best epoch so far %d)", name, first,
                 f", batch {progress.batches + 1}" if progress.batches else "", resume_dir, best["epoch"])

    def save_state(epoch: int, epoch_start_rng: torch.Tensor, run: Any) -> None:
        """The whole training state after ``epoch`` epochs (and ``progress`` into the next one)."""
        if store is None:
            return
        files = {f"best-{best['epoch']}": best["state_dict"]} if best["epoch"] else {}
        store.save({"epoch": epoch, "progress": vars(progress).copy(), "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(), "data_rng": epoch_start_rng, "rng": resume.rng_state(),
                    "history": history, "stale": stale, "finished": finished,
                    "best": {k: best[k] for k in ("epoch", "val_loss", "val_macro_f1")},
                    "journal": str(run.journal.path)}, files)

    def log_epochs(run: Any) -> None:
        """The epochs of the history not yet in the run (all of them after the state is saved: a kill between
        the two never loses an epoch's metrics, nor logs one twice)."""
        done = run.last_step("val_loss")
        for row in history[done:]:
            run.log_metrics({k: row[k] for k in ("train_loss", "val_loss", "val_macro_f1")} |
                            {"epoch_seconds": row["seconds"]}, step=row["epoch"])

    with mlflow_runs.open_run(config, stage=stage, fold=fold, resume=saved and saved["journal"]) as run, \
            resume.StopSignal() as stop:
        if not saved:
            run.log_params({f"{stage}.{k}": v for k, v in cfg.items()})
            run.log_params({f"class_weight.{c}": round(float(w), 6) for c, w in zip(classes, weights.tolist())})
            run.log_params({"train_frames": len(train_y), "val_frames": len(val_y), "device": dev.type,
                            "decode": "device" if on_device else "workers", **(params or {})})
        log_epochs(run)

        # epoch loop with early stopping on the validation loss
        for epoch in range(first, 1 if finished else epochs + 1):
            started = time.perf_counter()
            epoch_start_rng = generator.get_state()  # a mid-epoch state replays the epoch's order from here
            try:
                train_loss = train_epoch(model, train_loader, optimizer, weights, dev, f"{name} epoch {epoch}",
                                         progress, stop)
            except resume.Stopped as err:
                save_state(epoch - 1, epoch_start_rng, run)
                raise resume.Stopped(f"{name}: {stop.received} at epoch {epoch}, batch {progress.batches}: "
                                     f"state saved in {resume_dir}; a new attempt resumes there") from err
            val_loss, val_pred, val_true = evaluate(model, val_loader, weights, dev)
            if not math.isfinite(val_loss):
                raise FerseqError(f"{name} epoch {epoch}: val loss is {val_loss}, training diverged; "
                                  f"lower {stage}.lr (now {cfg['lr']})")
            val_f1 = f1_score(val_true, val_pred, labels=np.unique(val_true), average="macro", zero_division=0)
            row = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
                   "val_macro_f1": float(val_f1), "seconds": time.perf_counter() - started}
            history.append(row)
            improved = val_loss < best["val_loss"]
            if improved:
                best = {"epoch": epoch, "val_loss": val_loss, "val_macro_f1": float(val_f1),
                        "state_dict": resume.cpu_copy(model.state_dict())}
                stale = 0
            else:
                stale += 1
            finished = stale >= patience
            progress = EpochProgress()
            save_state(epoch, generator.get_state(), run)
            log_epochs(run)
            log.info("%s epoch %d/%d: train loss %.4f, val loss %.4f, val macro F1 %.3f, %.1f s%s", name, epoch,
                     epochs, row["train_loss"], val_loss, val_f1, row["seconds"], " (best)" if improved else "")
            if finished:
                log.info("%s: early stop at epoch %d, val loss has not improved for %d epochs (best epoch %d)",
                         name, epoch, stale, best["epoch"])
                break
            if stop():
                raise resume.Stopped(f"{name}: {stop.received} after epoch {epoch}: state saved in "
                                     f"{resume_dir}; a new attempt resumes at epoch {epoch + 1}")

        # checkpoint of the best epoch, and the history
        save_checkpoint(out_model, model, best["state_dict"], seed=seed,
                        class_weights=[float(w) for w in weights.cpu()], best_epoch=best["epoch"],
                        val_loss=best["val_loss"], val_macro_f1=best["val_macro_f1"], epochs_run=len(history),
                        train_frames=len(train_y), val_frames=len(val_y), config_hash=mlflow_runs.config_hash(dict(config)),
                        **(info or {}))
        with atomic_path(out_metrics) as tmp:
            pd.DataFrame(history, columns=list(history[0])).to_csv(tmp, index=False)
        if finish is not None:
            model.load_state_dict(best["state_dict"])
            finish(model, run)
        run.log_metrics({"best_epoch": best["epoch"], "best_val_loss": best["val_loss"],
                         "best_val_macro_f1": best["val_macro_f1"], "epochs_run": len(history)})
        run.log_artifact(out_model)
        run.log_artifact(out_metrics)
    if store is not None:
        store.clear()
    log.info("%s: best epoch %d of %d, val loss %.4f, val macro F1 %.3f -> %s", name, best["epoch"], len(history),
             best["val_loss"], best["val_macro_f1"], out_model)
    return {"best_epoch": best["epoch"], "val_loss": best["val_loss"], "val_macro_f1": best["val_macro_f1"],
            "epochs_run": len(history), "history": history, "run_id": run.run_id}
