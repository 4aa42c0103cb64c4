"""Fine-tuning one fold's CNN-LSTM end to end, and its probabilities on the test windows.

:func:`finetune` starts from the fold's frame model and the selected LSTM of its grid (``best.json``: the best
point of the LSTM family, lstm/lstm2/bilstm) and trains both together in one explicit loop: data (the grid's
train and val windows, their face crops, :mod:`ferseq.finetune.window_crops`), model
(:class:`ferseq.finetune.cnn_lstm.CnnLstm`), Adam with the backbone at ``finetune.backbone_lr`` and the FC
layers and LSTM at ``finetune.lr``, weighted cross entropy with the grid's class weights (of the train windows),
the epoch loop with early stopping on the val loss (``finetune.patience``, ``finetune.epochs``), and the best
epoch kept. Seeds as the frame model's: ``seed`` seeds torch (dropout) and the generator of the data order. Then
the best epoch's model scores every test window (``test_windows.parquet``).

Resume: with ``resume_dir`` the loop saves its whole state at the end of every epoch
(:mod:`ferseq.common.resume`); SIGTERM or SIGUSR1 stops it at the next batch, and a new attempt with the same
inputs and settings continues from the last finished epoch (the stopped epoch's batches are trained again,
from the same order) and ends with the model an uninterrupted run gives.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from sklearn.metrics import f1_score

from ferseq.common import mlflow_runs, resume
from ferseq.common.errors import ConfigError, FerseqError
from ferseq.common.outputs import atomic_path
from ferseq.finetune import cnn_lstm, window_crops
from ferseq.frame_model.device_crops import decode_on_device
from ferseq.frame_model.network import FrameModel, default_device, read_checkpoint, to_device
from ferseq.frame_model.network import settings as frame_settings
from ferseq.sequence_model import classifier, grid_search

log = logging.getLogger(__name__)

# The ``finetune`` defaults of workflow/schemas/config.schema.yaml (a test keeps them equal).
DEFAULTS: dict[str, Any] = {"enabled": False, "lr": 0.0001, "backbone_lr": 0.00001, "epochs": 20, "patience": 5,
                            "batch_size": 2}
LSTM_FAMILY = ("lstm", "lstm2", "bilstm")


def settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """The ``finetune`` section of a full config, defaults filled in."""
    return {**DEFAULTS, **config.get("finetune", {})}


def start_model(best_json: str | Path) -> Path:
    """The grid point fine-tuning starts from: the LSTM family's best (``best["families"]["lstm"]``), else the
    selected point when it is an LSTM. The path is taken below the fold's ``sequence_model/`` (best.json names it as
    the run saw it), so a moved results folder still works."""
    best_json = Path(best_json)
    best = json.loads(best_json.read_text())
    chosen = (best.get("families") or {}).get("lstm") or best
    if chosen.get("arch") not in LSTM_FAMILY:
        raise ConfigError(f"{best_json}: no LSTM among the grid's points (best: {chosen.get('arch')}); fine-tuning "
                          f"starts from one: add lstm, lstm2 or bilstm to sequence_model.architectures")
    named = Path(chosen["model"])
    return best_json.parent / named.parent.name / named.name


def evaluate(model: cnn_lstm.CnnLstm, batches: Any, weights: torch.Tensor,
             dev: torch.device) -> tuple[float, np.ndarray, np.ndarray]:
    """Weighted mean cross entropy, class probabilities (W, C) and labels of ``model`` on ``batches``."""
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=dev)
    weight_sum = torch.zeros((), dtype=torch.float64, device=dev)
    probs, labels = [], []
    with torch.inference_mode():
        for images, y in batches:
            images, y = images.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
            logits = model(images).float()
            loss_sum += F.cross_entropy(logits, y, weight=weights, reduction="sum").double()
            weight_sum += weights[y].sum().double()
            probs.append(logits.softmax(dim=1))
            labels.append(y)
    loss = (loss_sum / weight_sum).item() if weight_sum.item() > 0 else math.nan
    return loss, torch.cat(probs).cpu().numpy(), torch.cat(labels).cpu().numpy()


def train_step(model: cnn_lstm.CnnLstm, images: torch.Tensor, y: torch.Tensor, optimizer: torch.optim.Optimizer,
               weights: torch.Tensor) -> torch.Tensor:
    """One optimiser step on a batch of windows already on the device; its weighted mean loss (detached)."""
    loss = F.cross_entropy(model(images).float(), y, weight=weights)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


def train_epoch(model: cnn_lstm.CnnLstm, batches: Any, optimizer: torch.optim.Optimizer, weights: torch.Tensor,
                dev: torch.device, stop: Callable[[], bool] | None = None) -> float:
    """One pass of the loop over ``batches`` (windows, labels); the epoch's weighted mean train loss. ``stop`` is
    asked after each batch: when it says so, the epoch ends there with :class:`ferseq.common.resume.Stopped`."""
    model.train()
    loss_sum = torch.zeros((), device=dev)  # summed on the device: no sync per step
    weight_sum = torch.zeros((), device=dev)
    for step, (images, y) in enumerate(batches, start=1):
        images, y = images.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
        loss = train_step(model, images, y, optimizer, weights)
        loss_sum += loss * weights[y].sum()
        weight_sum += weights[y].sum()
        if stop is not None and stop():
            raise resume.Stopped(f"stopped after batch {step}/{len(batches)}")
    return (loss_sum / weight_sum).item()


def build(frame_model: str | Path, sequence_model: str | Path, dev: torch.device
          ) -> tuple[cnn_lstm.CnnLstm, dict[str, Any], dict[str, Any]]:
    """The CNN-LSTM of a fold's frame model and grid point on ``dev`` (channels_last backbone), with the two
    checkpoints' contents."""
    frame_ckpt = read_checkpoint(frame_model)
    frame = FrameModel(**frame_ckpt["arch"], pretrained=False)
    frame.load_state_dict(frame_ckpt["state_dict"])
    sequence, seq_ckpt = grid_search.load_model(sequence_model)
    reads = (seq_ckpt.get("features", "embedding"), seq_ckpt.get("normalise", "none"), seq_ckpt["input_dim"])
    if reads != ("embedding", "none", frame.embedding_dim):
        raise ConfigError(f"{sequence_model}: reads {reads[0]} (normalise {reads[1]}, {reads[2]} per frame), not the "
                          f"frame model's {frame.embedding_dim}-wide embedding as it is; fine-tuning needs "
                          "windows.features: embedding and windows.normalise: none (rerun the grid with them)")
    model = cnn_lstm.CnnLstm(to_device(frame, dev), sequence)
    return model.to(dev), frame_ckpt, seq_ckpt


def finetune(faces: Mapping[str, str | Path], frame_model: str | Path, best_json: str | Path, windows_dir: str | Path,
             fold: int, config: Mapping[str, Any], out_model: str | Path, out_metrics: str | Path,
             out_test: str | Path, decode: str | None = None, resume_dir: str | Path | None = None) -> dict[str, Any]:
    """Fine-tune one fold's CNN-LSTM; write ``out_model`` (model.pt), ``out_metrics`` (JSON: metrics and history)
    and ``out_test`` (test_windows.parquet: window_id, probs per class).

    ``faces``: video_id -> faces Parquet file; ``windows_dir``: the fold's windows (train, val, test .parquet);
    ``decode``: where crops are decoded, ``"device"`` or ``"workers"`` (default: the device on CUDA, workers on
    the CPU); ``resume_dir``: the training state between attempts (removed on success). Logs one MLflow run
    (stage ``finetune``). Returns the best epoch, its val loss and macro F1, the epochs run and the history.
    """
    cfg, classes = settings(config), list(config["classes"]["names"])
    seed, dev = int(config.get("seed", 42)), default_device()
    epochs, patience, batch_size = int(cfg["epochs"]), int(cfg["patience"]), int(cfg["batch_size"])
    num_workers = int(frame_settings(config)["num_workers"])
    windows_dir = Path(windows_dir)
    sequence_path = start_model(best_json)

    # data: where the windows' crops are (read as they go), decoded by loader workers or on the device
    train, val, test = (window_crops.read(windows_dir / f"{split}.parquet", faces, classes)
                        for split in ("train", "val", "test"))
    if len(train) == 0 or len(val) == 0:
        raise FerseqError(f"fold {fold}: {len(train)} train and {len(val)} val windows in {windows_dir}; "
                          "fine-tuning needs both (see windows/counts.csv)")
    weights = classifier.class_weights(train.labels, len(classes)).to(dev)  # the grid's
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)  # data order
    on_device = decode_on_device(decode, dev)

    # model and optimiser
    model, frame_ckpt, seq_ckpt = build(frame_model, sequence_path, dev)
    size = model.frame.input_size
    fused = {"fused": True} if dev.type == "cuda" else {}
    optimizer = torch.optim.Adam(model.param_groups(float(cfg["lr"]), float(cfg["backbone_lr"])), **fused)
    # the windows' crops are read from the faces files as batches need them, in blocks of about this many crops
    buffer = int(frame_settings(config)["shuffle_buffer"])
    train_batches = window_crops.batches(train, size, batch_size, dev, on_device=on_device, num_workers=num_workers,
                                         generator=generator, buffer=buffer)
    val_batches = window_crops.batches(val, size, batch_size, dev, on_device=on_device, num_workers=num_workers)
    log.info("fold %s: fine-tuning %s and %s on %d train and %d val windows of %d frames, batches of %d windows, "
             "device %s (%s decoding)", fold, frame_model, sequence_path, len(train), len(val), train.rows.shape[1],
             batch_size, dev.type, "device" if on_device else "worker")

    # the state of an interrupted attempt with the same inputs and settings, if any
    store = None
    if resume_dir is not None:
        key = resume.fingerprint("finetune", fold, cfg, classes, seed, {"shuffle_buffer": buffer}, sorted((v, resume.stamp(p)) for v, p in faces.items()),
                                 resume.stamps([frame_model, sequence_path, *(windows_dir / f"{s}.parquet"
                                                                               for s in ("train", "val", "test"))]),
                                 dev.type, on_device)
        store = resume.Store(resume_dir, key, f"fold {fold} fine-tuning")
    saved = store.load() if store else None
    history: list[dict[str, float]] = []
    best: dict[str, Any] = {"epoch": 0, "val_loss": math.inf, "val_macro_f1": 0.0, "state_dict": None}
    stale, first = 0, 1
    if saved:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        generator.set_state(saved["data_rng"])
        resume.set_rng_state(saved["rng"])
        history, stale, first = saved["history"], saved["stale"], saved["epoch"] + 1
        best = {**saved["best"], "state_dict": store.load_file(f"best-{saved['best']['epoch']}")}
        log.info("fold %s: resuming fine-tuning at epoch %d from %s (best epoch so far %d)", fold, first, resume_dir,
                 best["epoch"])

    with mlflow_runs.open_run(config, stage="finetune", fold=fold, resume=saved and saved["journal"]) as run, \
            resume.StopSignal() as stop:
        if not saved:
            run.log_params({f"finetune.{k}": v for k, v in cfg.items()})
            run.log_params({"train_windows": len(train), "val_windows": len(val), "device": dev.type,
                            "decode": "device" if on_device else "workers", "sequence_model": str(sequence_path),
                            "frames_per_batch": batch_size * train.rows.shape[1]})
        for row in history[run.last_step("val_loss"):]:
            run.log_metrics({k: row[k] for k in ("train_loss", "val_loss", "val_macro_f1")}, step=row["epoch"])

        # epoch loop with early stopping on the validation loss
        for epoch in range(first, epochs + 1):
            if stale >= patience:
                break
            started = time.perf_counter()
            try:
                train_loss = train_epoch(model, train_batches, optimizer, weights, dev, stop)
            except resume.Stopped as err:  # the state saved at the last epoch's end is where a new attempt starts
                raise resume.Stopped(f"fold {fold}: {stop.received} at epoch {epoch} ({err}); "
                                     + (f"a new attempt resumes at this epoch from {resume_dir}" if store else
                                        "no resume folder: a new attempt starts afresh")) from err
            val_loss, val_probs, val_true = evaluate(model, val_batches, weights, dev)
            if not math.isfinite(val_loss):
                raise FerseqError(f"fold {fold} epoch {epoch}: val loss is {val_loss}, fine-tuning diverged; "
                                  f"lower finetune.lr (now {cfg['lr']}) and finetune.backbone_lr (now {cfg['backbone_lr']})")
            val_f1 = f1_score(val_true, val_probs.argmax(axis=1), labels=np.unique(val_true), average="macro",
                              zero_division=0)
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
            if store is not None:
                store.save({"epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                            "data_rng": generator.get_state(), "rng": resume.rng_state(), "history": history,
                            "stale": stale, "best": {k: best[k] for k in ("epoch", "val_loss", "val_macro_f1")},
                            "journal": str(run.journal.path)}, {f"best-{best['epoch']}": best["state_dict"]})
            run.log_metrics({k: row[k] for k in ("train_loss", "val_loss", "val_macro_f1")} |
                            {"epoch_seconds": row["seconds"]}, step=epoch)
            log.info("fold %s fine-tuning epoch %d/%d: train loss %.4f, val loss %.4f, val macro F1 %.3f, %.1f s%s",
                     fold, epoch, epochs, row["train_loss"], val_loss, val_f1, row["seconds"],
                     " (best)" if improved else "")
            if stale >= patience:
                log.info("fold %s: early stop at epoch %d, val loss has not improved for %d epochs (best epoch %d)",
                         fold, epoch, stale, best["epoch"])

        # the best epoch's model: its test probabilities and its file
        model.load_state_dict(best["state_dict"])
        test_batches = window_crops.batches(test, size, batch_size, dev, on_device=on_device, num_workers=num_workers)
        _, test_probs, _ = evaluate(model, test_batches, weights, dev)
        write_test_windows(out_test, test.window_ids, test_probs)
        metrics = {"fold": fold, "best_epoch": best["epoch"], "val_loss": best["val_loss"],
                   "val_macro_f1": best["val_macro_f1"], "epochs_run": len(history), "train_windows": len(train),
                   "val_windows": len(val), "test_windows": len(test), "device": dev.type,
                   "started_from": {"frame_model": str(frame_model), "sequence_model": str(sequence_path)}}
        frame_info = {k: v for k, v in frame_ckpt.items() if k != "state_dict"}
        cnn_lstm.save(out_model, model, best["state_dict"], frame_info, cnn_lstm.sequence_info(seq_ckpt),
                      metrics=metrics, history=history, settings=cfg, classes=classes,
                      class_weights=[float(w) for w in weights.cpu()], seed=seed,
                      config_hash=mlflow_runs.config_hash(dict(config)))
        with atomic_path(out_metrics) as tmp:
            tmp.write_text(json.dumps({**metrics, "history": history}, indent=2) + "\n")
        run.log_metrics({"best_epoch": best["epoch"], "best_val_loss": best["val_loss"],
                         "best_val_macro_f1": best["val_macro_f1"], "epochs_run": len(history)})
        run.log_artifact(out_metrics)
    if store is not None:
        store.clear()
    log.info("fold %s: fine-tuned, best epoch %d of %d, val loss %.4f, val macro F1 %.3f -> %s", fold, best["epoch"],
             len(history), best["val_loss"], best["val_macro_f1"], out_model)
    return {**metrics, "history": history, "run_id": run.run_id}


def write_test_windows(path: str | Path, window_ids: np.ndarray, probs: np.ndarray) -> None:
    """``test_windows.parquet``: ``window_id`` (int64) and ``probs`` (list<float32>, classes in config order)."""
    probs = np.asarray(probs, np.float32)
    offsets = pa.array(np.arange(len(probs) + 1, dtype=np.int32) * probs.shape[1])
    table = pa.table({"window_id": pa.array(np.asarray(window_ids, np.int64)),
                      "probs": pa.ListArray.from_arrays(offsets, pa.array(probs.reshape(-1), pa.float32()))})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)

