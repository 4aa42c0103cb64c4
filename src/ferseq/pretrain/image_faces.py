"""Pretraining faces: the aligned face crop of every image of a static image set, made as the videos' are.

:func:`extract_image_faces` runs the faces stage's own steps on each image (full detection with
``pretrain.faces.detector``, the central face, dlib's 68 landmarks, :func:`ferseq.faces.alignment.align`,
:func:`ferseq.faces.alignment.encode`: :func:`ferseq.faces.face_extraction.find_face`), so a crop of an image is
the crop the faces stage makes of a video frame where it detects. It writes two files:

- the faces file: the faces stage's Parquet schema (:func:`ferseq.faces.face_extraction.parquet_schema`), one row
  per image with ``segment_id`` = ``image_id`` and ``frame`` = 0, in row groups of 256 rows, the images in a
  seeded random order (:func:`file_order`); an image without a face has ``face_found`` false and null box,
  landmarks and crop. Training reads it as it reads the videos' faces
  (:func:`ferseq.frame_model.crops.index_face_rows`).
- the label table, in ``image_id`` order: the image set's table (image_id, name, label, subject, split) plus
  ``face_found`` and ``det_score`` (NaN without a face): the pretraining's labels and its detection QC.

Why the random order: training streams whole row groups, a block of them at a time
(:class:`ferseq.frame_model.crops.StreamBatches`), and the public sets list their images by class. Row groups of
one class each would make every block, and so every stretch of batches, lean to a few classes, and the network
would follow the last block's classes (on FER2013, class-sorted groups in blocks of 16 left the network predicting
mostly one class after 9,600 images, where a full shuffle did not). A random order makes each group a sample of
the whole set.

The images go in chunks of ``chunk`` images, each written to a part file of a partial folder (by one process, or
by a pool of forked processes) named by the chunk's index and a digest of its rows and the settings, so a job that
was stopped or failed keeps its finished chunks and reuses them when it runs again with the same inputs. The parts
are then merged one row group at a time: memory holds a few row groups of crops, whatever the set's size.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import cv2
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ferseq.common.errors import FerseqError
from ferseq.common.outputs import atomic_path
from ferseq.faces import alignment, batch_plan, face_extraction
from ferseq.faces.face_extraction import ROWS_PER_GROUP, RowGroup
from ferseq.pretrain.image_sets import ImageSet, ImageSetError

log = logging.getLogger(__name__)

LOG_EVERY = 1000  # images between progress lines
LOW_RATE = 0.5  # a detection rate below this is warned about
PARTIAL_VERSION = 2  # bump when the faces of the same images and settings change (2: the file's random order)
ORDER_SEED = 0  # the file's order depends on the images only: a new config seed does not redo the faces
# Settings that do not change an image's row: those the video faces stage ignores in its files, and detect_every
# (every image gets a full detection).
NOT_IN_OUTPUT = (*batch_plan.NOT_IN_OUTPUT, "detect_every")


@dataclass
class _Job:
    """What a chunk's process needs: the images (table in the file's order), the settings and the part files."""

    images: ImageSet
    table: pd.DataFrame
    cfg: dict[str, Any]
    schema: pa.Schema
    chunk: int
    parts: list[Path]

    def rows(self, index: int) -> pd.DataFrame:
        return self.table.iloc[index * self.chunk:(index + 1) * self.chunk]


_WORKER_JOB: _Job | None = None  # a pool worker's job, set when it starts


def extract_image_faces(images: ImageSet, cfg: dict[str, Any], out_faces: str | Path, out_table: str | Path, *,
                        workers: int = 1, partial_dir: str | Path | None = None, chunk: int = 1000) -> pd.DataFrame:
    """Write the faces file and the label table of ``images`` (module docstring); return the label table.

    ``cfg``: the ``pretrain.faces`` config (the ``faces`` settings; missing ones take the faces stage's defaults).
    ``workers`` > 1: chunks of ``chunk`` images go to that many forked processes. ``partial_dir``: the folder, the job's
    own, where the chunks' part files wait (default: ``.{out_faces name}.partial`` beside it); removed on success.
    An image that cannot be read fails the job (:class:`ImageSetError` naming it) after every other chunk is done,
    so a rerun after the fix computes only the failed chunks; no face in any image raises :class:`FerseqError`.
    No output is left behind on any error.
    """
    if workers < 1 or chunk < 1:
        raise ValueError(f"workers ({workers}) and chunk ({chunk}) must be at least 1")
    cfg = {**face_extraction.DEFAULTS, **cfg}
    out_faces = Path(out_faces)
    folder = Path(partial_dir) if partial_dir is not None else out_faces.with_name(f".{out_faces.name}.partial")
    table = file_order(images.table)
    if table.empty:
        raise ImageSetError(f"the {images.format} set in {images.root} has no images")
    # Every image gets a full detection: the file says so, as the faces stage's files say how often they detect.
    schema = face_extraction.parquet_schema({**cfg, "detect_every": 1})
    parts = [folder / f"{start // chunk:06d}-{_digest(images, table.iloc[start:start + chunk], cfg)}.parquet"
             for start in range(0, len(table), chunk)]
    job = _Job(images, table, cfg, schema, chunk, parts)
    todo = _prepare(folder, parts)
    face_extraction.make_tracker(cfg)  # the models, loaded once (and shared by forked workers); bad paths fail here
    log.info("%d images in %d chunks of %d, detector %s, %d worker(s); %d chunks reused from an earlier run",
             len(table), len(job.parts), chunk, cfg["detector"], workers, len(job.parts) - len(todo))

    failed = _run_chunks(job, todo, workers)
    if failed:
        listing = "\n".join(f"  {message}" for message in failed)
        raise ImageSetError(f"{len(failed)} chunk(s) of {chunk} images stopped at an image that cannot be read:\n"
                            f"{listing}\nFix or remove these images and run again: the other chunks' faces are "
                            f"kept in {folder} and reused.")
    with atomic_path(out_faces) as tmp_faces, atomic_path(out_table) as tmp_table:
        found, scores = _merge(job.parts, schema, tmp_faces)
        table = table.assign(face_found=found, det_score=scores).sort_values("image_id").reset_index(drop=True)
        _check_detection(table, images, cfg)
        table.to_parquet(tmp_table, index=False)
    shutil.rmtree(folder, ignore_errors=True)
    return table


def file_order(table: pd.DataFrame) -> pd.DataFrame:
    """The image table in the faces file's order: a random permutation of the images seeded by ``ORDER_SEED``
    (the same for the same images on every run, whatever order the set listed them in)."""
    table = table.sort_values("image_id", kind="stable").reset_index(drop=True)
    order = np.random.default_rng(ORDER_SEED).permutation(len(table))
    return table.iloc[order].reset_index(drop=True)


def _digest(images: ImageSet, rows: pd.DataFrame, cfg: dict[str, Any]) -> str:
    """Identifies a chunk's faces: its ``rows`` of the image table, the set they come from and the settings."""
    settings = {k: v for k, v in sorted(cfg.items()) if k not in NOT_IN_OUTPUT}
    head = json.dumps([PARTIAL_VERSION, images.format, str(images.root), settings], default=str)
    text = rows.to_json(orient="split", index=False)
    return hashlib.sha1(f"{head}\n{text}".encode()).hexdigest()[:16]


def _prepare(folder: Path, parts: list[Path]) -> list[int]:
    """Create ``folder``, remove what is not one of ``parts`` (another run's parts, a killed run's temporary
    files); return the indices of the chunks still to compute."""
    folder.mkdir(parents=True, exist_ok=True)
    for path in folder.iterdir():
        if path not in parts:
            log.info("removing %s: not a part of this run (other images or settings, or unfinished)", path.name)
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
    return [index for index, path in enumerate(parts) if not path.is_file()]


def _run_chunks(job: _Job, todo: list[int], workers: int) -> list[str]:
    """Compute the chunks ``todo`` with progress lines; return why chunks failed (empty if none did)."""
    total, done = len(job.table), len(job.table) - sum(len(job.rows(index)) for index in todo)
    computed, failed, started = 0, [], time.perf_counter()
    for index, error in _results(job, todo, workers):
        size = len(job.rows(index))
        done, computed = done + size, computed + size
        if error is not None:
            log.error("chunk %d: %s", index, error)
            failed.append(error)
        if done // LOG_EVERY > (done - size) // LOG_EVERY or done == total:
            rate = computed / max(time.perf_counter() - started, 1e-9)
            log.info("%d/%d images, %.1f images/s", done, total, rate)
    return failed


def _results(job: _Job, todo: list[int], workers: int) -> Iterator[tuple[int, str | None]]:
    """(chunk index, error or None) of each chunk of ``todo`` as it finishes: in this process, or in a pool."""
    if workers == 1 or len(todo) < 2:
        for index in todo:
            yield index, _process(job, index)
        return
    # One OpenCV thread per process, set before forking: a child that inherits a live thread pool deadlocks
    # when it uses it (frame_model.crops.loader); the processes are the parallelism.
    cv2.setNumThreads(1)
    context = multiprocessing.get_context("fork")  # fork: the children share the loaded models and the loader
    with context.Pool(min(workers, len(todo)), initializer=_start_worker, initargs=(job,)) as pool:
        yield from pool.imap_unordered(_worker_process, todo)


def _start_worker(job: _Job) -> None:
    global _WORKER_JOB
    _WORKER_JOB = job


def _worker_process(index: int) -> tuple[int, str | None]:
    return index, _process(_WORKER_JOB, index)


def _process(job: _Job, index: int) -> str | None:
    """Write chunk ``index``'s part file; None, or why an image of the chunk cannot be read (no part then)."""
    try:
        _write_part(job, index)
    except ImageSetError as err:
        return str(err)
    return None


def _write_part(job: _Job, index: int) -> None:
    """The faces of chunk ``index``, in row groups of 256 rows, into its part file (atomically)."""
    size, fmt, quality = int(job.cfg["crop_size"]), job.cfg["crop_format"], int(job.cfg["jpeg_quality"])
    rows = job.rows(index)
    with atomic_path(job.parts[index]) as tmp, pq.ParquetWriter(tmp, job.schema) as writer:
        group = RowGroup()
        for image_id, name in zip(rows["image_id"].tolist(), rows["name"].tolist()):
            image = _load(job.images, image_id, name)
            face = face_extraction.find_face(image, job.cfg)
            crop = None
            if face is not None:
                crop = alignment.encode(alignment.align(image, face.landmarks, size), fmt, quality)
            group.add(image_id, 0, face, crop)
            if len(group) == ROWS_PER_GROUP:
                writer.write_table(group.table(job.schema))
                group = RowGroup()
        if len(group):
            writer.write_table(group.table(job.schema))


def _load(images: ImageSet, image_id: int, name: str) -> np.ndarray:
    """Image ``image_id`` (BGR uint8); a failure raises :class:`ImageSetError` naming the image."""
    try:
        image = images.load(image_id)
    except ImageSetError as err:
        raise ImageSetError(str(err) if name in str(err) else f"{name}: {err}") from err
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ImageSetError(f"{name}: loaded as {image.dtype} {image.shape}, not a BGR uint8 image")
    return image


def _merge(parts: list[Path], schema: pa.Schema, out: Path) -> tuple[np.ndarray, np.ndarray]:
    """The part files, in order, into one file of 256-row groups, a row group at a time; return every row's
    ``face_found`` and ``det_score``."""
    found, scores, pending = [], [], []
    with pq.ParquetWriter(out, schema) as writer:
        for part in parts:
            with pq.ParquetFile(part) as parquet:
                for group in range(parquet.num_row_groups):
                    table = parquet.read_row_group(group)
                    found.append(table["face_found"].to_numpy())
                    scores.append(table["det_score"].to_numpy())
                    pending = _write_full_groups(writer, [*pending, table])
        if pending:
            writer.write_table(pa.concat_tables(pending))
    return np.concatenate(found).astype(bool), np.concatenate(scores).astype(np.float32)


def _write_full_groups(writer: pq.ParquetWriter, pending: list[pa.Table]) -> list[pa.Table]:
    """Write the whole row groups ``pending`` holds; return the rest (fewer than 256 rows)."""
    rows = sum(table.num_rows for table in pending)
    if rows < ROWS_PER_GROUP:
        return pending
    merged = pa.concat_tables(pending)
    whole = rows - rows % ROWS_PER_GROUP
    writer.write_table(merged.slice(0, whole), row_group_size=ROWS_PER_GROUP)
    return [merged.slice(whole)] if whole < rows else []


def _check_detection(table: pd.DataFrame, images: ImageSet, cfg: dict[str, Any]) -> None:
    """Log the detection rate per label and overall, warn where it is low; fail when no image has a face."""
    advice = (f"pretrain.faces.detector is {cfg['detector']}; for images that are already face crops, "
              "pretrain.faces.detector: none takes each whole image as the face box")
    rates = table.groupby("label", dropna=False, sort=True)["face_found"].agg(["size", "sum"])
    for label, (count, faces) in rates.iterrows():
        _log_rate(f"label {label}", int(faces), int(count), advice)
    faces = int(table["face_found"].sum())
    _log_rate("all images", faces, len(table), advice)
    if faces == 0:
        raise FerseqError(f"no face found in any of the {len(table)} images of the {images.format} set in "
                          f"{images.root}: {advice}")


def _log_rate(what: str, faces: int, count: int, advice: str) -> None:
    rate = faces / count if count else float("nan")
    log.info("%s: faces in %d of %d images (%.1f%%)", what, faces, count, 100 * rate)
    if rate < LOW_RATE:
        log.warning("%s: faces found in only %.1f%% of the images (%s)", what, 100 * rate, advice)
