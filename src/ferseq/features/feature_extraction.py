"""Feature store: the fold's frame model run over every face frame of a video.

Output ``results/folds/{fold}/features/{video}.parquet``, one row per face
frame (``face_found``) of the faces file, in the faces file's order:

============ ================================== ==========================================
column       type                               meaning
============ ================================== ==========================================
video_id     string
frame        int32                              0-based frame number in the video
segment_id   int64
label        string                             the segment's class
embedding    fixed_size_list<float32>[512]      FC-512 output (``fc[embedding_layer]``)
probs        fixed_size_list<float32>[C]        softmax, in the order of ``classes.names``
landmarks    fixed_size_list<float32>[136]      the faces file's 68 landmarks, pose-normalised
                                                (:func:`ferseq.faces.landmark_features.normalise`)
============ ================================== ==========================================

The file's key-value metadata (key ``ferseq.features``, JSON; ``pq.read_metadata(path).metadata``) names the classes, the
backbone and the fold, and records frames, seconds and frames per second of
the extraction. :func:`log_features_run` reads those from a fold's files and
logs one MLflow run per fold. The workflow runs :func:`extract_fold`: one job
per fold, the model loaded once for all videos. The job keeps each video it
has finished in a partial folder beside its output
(``results/folds/{fold}/.features.partial/``, which Snakemake does not delete
when the job fails), so a job that is killed or fails on one video does only
the rest when it runs again with the same model, faces files and settings;
the files move into the output folder when every video is done.

The faces file is read one row group at a time by DataLoader workers, which
decode the crops while the model runs: every frame is read and decoded once,
and memory holds a few row groups, not the video. On CUDA the workers only
read: the crops reach the GPU still encoded and are decoded there, one batch
per row group (:mod:`ferseq.frame_model.device_crops`), and a row group's features are
copied back and written while the GPU runs the next.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from ferseq.common import mlflow_runs
from ferseq.common.errors import FerseqError
from ferseq.common.outputs import atomic_path
from ferseq.faces import landmark_features
from ferseq.frame_model.crops import RowGroupCrops, loader
from ferseq.frame_model.device_crops import decode_batch, decode_on_device, split
from ferseq.frame_model.network import FrameModel, autocast, load_frame_model, settings

log = logging.getLogger(__name__)

METADATA_KEY = b"ferseq.features"
LOG_EVERY = 5000  # face frames between progress lines
PARTIAL_VERSION = 1  # bump when the features of the same inputs change


def parquet_schema(embedding_dim: int, classes: int) -> pa.Schema:
    """The schema of a feature store file."""
    return pa.schema([
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("frame", pa.int32(), nullable=False),
        pa.field("segment_id", pa.int64(), nullable=False),
        pa.field("label", pa.string(), nullable=False),
        pa.field("embedding", pa.list_(pa.float32(), embedding_dim), nullable=False),
        pa.field("probs", pa.list_(pa.float32(), classes), nullable=False),
        pa.field("landmarks", pa.list_(pa.float32(), landmark_features.WIDTH), nullable=False),
    ])


def _fixed_lists(values: np.ndarray) -> pa.FixedSizeListArray:
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1), pa.float32()), values.shape[1])


def _run(model: FrameModel, images: torch.Tensor, batch_size: int,
         dev: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.cuda.Event | None]:
    """Embeddings and class probabilities of one row group's images, on the host.

    On CUDA the copies to the host are queued without waiting (into pinned memory): the returned
    event says when they are done, so the caller can queue the next row group before it waits.
    """
    with torch.inference_mode(), autocast(dev):
        outputs = [model.embed(images[start:start + batch_size].to(dev, non_blocking=True))
                   for start in range(0, len(images), batch_size)]
        embedding = torch.cat([e.float() for e, _ in outputs])
        probs = torch.cat([logits.float().softmax(dim=1) for _, logits in outputs])
    if dev.type != "cuda":
        return embedding, probs, None
    embedding, probs = embedding.to("cpu", non_blocking=True), probs.to("cpu", non_blocking=True)
    done = torch.cuda.Event()
    done.record()
    return embedding, probs, done


def extract_video(model: FrameModel, faces_parquet: str | Path, labels: Mapping[int, str], out_parquet: str | Path, *,
                  video_id: str, batch_size: int = 64, num_workers: int = 2, fold: int | None = None,
                  decode: str | None = None) -> dict[str, Any]:
    """Write the features of one video with an already loaded ``model`` (eval mode); return its stats.

    ``labels``: segment_id -> class name of the kept segments (the data stage's); face rows of other
    segments are left out.
    Workers read one row group of the faces file each (256 rows from the
    faces stage), so a batch never spans row groups: a ``batch_size`` above
    the row-group size has no effect. ``decode``: where the crops are decoded,
    ``"workers"`` (OpenCV, in the DataLoader workers) or ``"device"`` (in one
    batch per row group on the model's device, :mod:`ferseq.frame_model.device_crops`);
    default: the device on CUDA, workers on the CPU. Stats: video_id, fold,
    frames (face frames written), seconds, frames_per_second, device.
    """
    dev = next(model.parameters()).device
    model.eval()
    on_device = decode_on_device(decode, dev)
    # Only the segments the data stage kept: with data.strict: false the faces stage also ran the rows it dropped.
    crops = RowGroupCrops(faces_parquet, model.input_size, encoded=on_device, segments=labels)
    # Pinned batches of decoded images make their copies to the GPU asynchronous; nvJPEG reads encoded
    # crops from any host memory.
    row_groups = loader(crops, min(num_workers, len(crops)), dev.type == "cuda" and not on_device, batch_size=None)
    schema = parquet_schema(model.embedding_dim, len(model.classes))
    frames_done, started = 0, time.perf_counter()

    def write(writer: pq.ParquetWriter, frames: np.ndarray, segment_ids: np.ndarray, landmarks: Any,
              outputs: tuple[torch.Tensor, torch.Tensor, torch.cuda.Event | None]) -> None:
        nonlocal frames_done
        embeddings, probs, done = outputs
        if done is not None:
            done.synchronize()
        writer.write_table(pa.table([
            pa.array([video_id] * len(frames), pa.string()),
            pa.array(frames, pa.int32()),
            pa.array(segment_ids, pa.int64()),
            pa.array([labels[s] for s in segment_ids.tolist()], pa.string()),
            _fixed_lists(embeddings.numpy()),
            _fixed_lists(probs.numpy()),
            _fixed_lists(np.asarray(landmarks, np.float32)),  # the DataLoader hands over tensors
        ], schema=schema))
        frames_done += len(frames)
        if frames_done // LOG_EVERY > (frames_done - len(frames)) // LOG_EVERY:
            log.info("%s: %d face frames, %.1f frames/s", video_id, frames_done,
                     frames_done / (time.perf_counter() - started))

    with atomic_path(out_parquet) as tmp:
        with pq.ParquetWriter(tmp, schema) as writer:
            pending = None  # the previous row group: written while the GPU runs the current one
            for frames, segment_ids, landmarks, images in row_groups:  # one row group of the faces file at a time
                if len(frames) == 0:
                    continue
                if on_device:  # (bytes, offsets) of the encoded crops
                    images = decode_batch(split(*images), model.input_size, dev)
                outputs = _run(model, images, batch_size, dev)
                if pending is not None:
                    write(writer, *pending)
                pending = (frames, segment_ids, landmarks, outputs)
            if pending is not None:
                write(writer, *pending)
            seconds = time.perf_counter() - started
            stats = {"video_id": video_id, "fold": fold, "frames": frames_done, "seconds": round(seconds, 3),
                     "frames_per_second": round(frames_done / seconds, 2) if seconds > 0 else None, "device": dev.type}
            note = {"classes": model.classes, "backbone": model.arch["backbone"], "input_size": model.input_size,
                    "embedding_dim": model.embedding_dim, "batch_size": batch_size, **stats}
            writer.add_key_value_metadata({METADATA_KEY: json.dumps(note).encode()})
    log.info("%s: %d face frames, %.1f s, %.1f frames/s (%s)", video_id, frames_done, seconds,
             frames_done / seconds if seconds > 0 else float("nan"), dev.type)
    return stats


def _labels(segments_path: str | Path) -> dict[int, str]:
    segments = pd.read_parquet(segments_path, columns=["segment_id", "label"])
    return dict(zip(segments["segment_id"].astype(int), segments["label"].astype(str)))


def extract_features(model_path: str | Path, faces_parquet: str | Path, segments_path: str | Path,
                     out_parquet: str | Path, config: Mapping[str, Any], fold: int,
                     video_id: str | None = None, decode: str | None = None) -> dict[str, Any]:
    """Features of one video (video_id defaults to the faces file's stem; ``decode``: see
    :func:`extract_video`); returns its stats."""
    cfg = settings(config)
    return extract_video(load_frame_model(model_path), faces_parquet, _labels(segments_path), out_parquet,
                         video_id=video_id or Path(faces_parquet).stem, fold=fold,
                         batch_size=int(cfg["inference_batch_size"]), num_workers=int(cfg["num_workers"]),
                         decode=decode)


def _partial_name(video_id: str, faces_parquet: str | Path, model_path: str | Path, segments: list,
                  batch_size: int, decode: str | None) -> str:
    """A finished video's file name in the partial folder: its id and what its features follow from (the
    faces file and the model as they are now, its segments and labels, the batch size and decoding)."""
    parts = [PARTIAL_VERSION, video_id, _stamp(faces_parquet), _stamp(model_path), segments, batch_size, decode]
    return f"{hashlib.sha1(json.dumps(parts, default=str).encode()).hexdigest()[:20]}.parquet"


def _stamp(path: str | Path) -> list:
    stat = os.stat(path)
    return [str(path), stat.st_size, stat.st_mtime_ns]


def extract_fold(model_path: str | Path, faces: Mapping[str, str | Path], segments_path: str | Path,
                 out_dir: str | Path, config: Mapping[str, Any], fold: int, decode: str | None = None,
                 partial_dir: str | Path | None = None) -> pd.DataFrame:
    """The feature store of one fold, with one model load: ``out_dir/{video}.parquet`` for every video
    of ``faces`` (video_id -> faces file), then ``out_dir/stats.csv`` and the fold's MLflow run
    (``decode``: see :func:`extract_video`). Finished videos wait in ``partial_dir`` (default
    ``.{out_dir name}.partial`` beside ``out_dir``) until all are done, and a rerun reuses them."""
    cfg = settings(config)
    labels = _labels(segments_path)
    segments = pd.read_parquet(segments_path, columns=["video_id", "segment_id", "label"]).sort_values("segment_id")
    by_video = {v: list(zip(g["segment_id"].tolist(), g["label"].tolist())) for v, g in segments.groupby("video_id")}
    out_dir = Path(out_dir)
    partial = Path(partial_dir) if partial_dir is not None else out_dir.with_name(f".{out_dir.name}.partial")
    partial.mkdir(parents=True, exist_ok=True)
    batch_size = int(cfg["inference_batch_size"])
    kept = {video_id: partial / _partial_name(video_id, path, model_path, by_video.get(video_id, []), batch_size,
                                              decode)
            for video_id, path in faces.items()}
    for stale in set(partial.glob("*.parquet")) - set(kept.values()):  # of another model or faces file
        stale.unlink()
    todo = [video_id for video_id, path in kept.items() if not path.is_file()]
    if len(todo) < len(kept):
        log.info("fold %s features: %d of %d videos kept from an earlier attempt in %s", fold, len(kept) - len(todo),
                 len(kept), partial)
    model = load_frame_model(model_path) if todo else None
    for done, video_id in enumerate(todo, start=1):
        extract_video(model, faces[video_id], labels, kept[video_id], video_id=video_id, fold=fold,
                      batch_size=batch_size, num_workers=int(cfg["num_workers"]), decode=decode)
        log.info("fold %s features: %d/%d videos done", fold, done + len(kept) - len(todo), len(kept))
    out_dir.mkdir(parents=True, exist_ok=True)
    outputs = {video_id: out_dir / f"{video_id}.parquet" for video_id in faces}
    for video_id, path in kept.items():
        outputs[video_id].parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, outputs[video_id])
    shutil.rmtree(partial, ignore_errors=True)
    return log_features_run(outputs.values(), config, fold, out_dir / "stats.csv")


def read_stats(path: str | Path) -> dict[str, Any]:
    """The extraction stats and model note of a feature store file (its footer only, no data read)."""
    metadata = pq.read_metadata(path).metadata or {}
    if METADATA_KEY not in metadata:
        raise FerseqError(f"{path}: not a ferseq feature store file (no {METADATA_KEY.decode()} metadata)")
    return json.loads(metadata[METADATA_KEY])


def log_features_run(feature_files: Iterable[str | Path], config: Mapping[str, Any], fold: int,
                     out_csv: str | Path | None = None) -> pd.DataFrame:
    """One MLflow run (stage ``features``) for a fold's feature files, and their stats table.

    Videos get no run of their own (thousands of videos would make thousands
    of runs); this reads each file's stats from its metadata and logs the
    totals once: videos, frames, seconds, frames per second, with the
    per-video table (also written to ``out_csv``) as an artifact.
    """
    table = pd.DataFrame([read_stats(path) for path in feature_files])
    columns = ["video_id", "frames", "seconds", "frames_per_second", "device", "backbone", "input_size", "batch_size"]
    table = table.reindex(columns=columns)
    frames, seconds = int(table["frames"].sum()), float(table["seconds"].sum())
    totals = {"videos": len(table), "frames": frames, "seconds": seconds,
              "frames_per_second": frames / seconds if seconds > 0 else 0.0}
    with mlflow_runs.open_run(dict(config), stage="features", fold=fold) as run:
        run.log_params({"device": ",".join(sorted(set(table["device"].dropna()))),
                        "inference_batch_size": settings(config)["inference_batch_size"]})
        run.log_metrics(totals)
        run.log_text(table.to_csv(index=False), "features_stats.csv")
    if out_csv is not None:
        with atomic_path(out_csv) as tmp:
            table.to_csv(tmp, index=False)
    log.info("fold %s features: %d videos, %d face frames, %.1f s, %.1f frames/s", fold, totals["videos"], frames,
             seconds, totals["frames_per_second"])
    return table
