"""The faces jobs at corpus scale: one process walks a batch of videos, the models loaded once.

The batches are planned when the DAG is built (:mod:`ferseq.batches`). Two steps run here:

1. :func:`write_batch_segments` (checkpoint ``faces_segments``): the data
   stage's segment table cut into one small CSV per batch (the batch's videos,
   their paths and kept segments). Snakemake records each faces job's input
   checksum, so when the segment table is rewritten (a video added to the
   annotations), only the batches whose CSV changed run again.
2. :func:`run_batch` (one faces job): the faces stage of
   :func:`ferseq.faces.extract_faces` for each video of the batch, writing
   ``results/faces/{video}.parquet`` and one QC table for the batch. A video that fails (no face at all, unreadable) does
   not stop the others: after the last video the job fails naming every failed
   video and why. The work of the videos that succeeded stays in a partial
   folder of the batch (``results/faces/.partial/{batch}``) and is reused when
   the job runs again with the same video, segments and settings, e.g. after
   ``faces.skip_faceless_videos: true``. Outputs appear only when every video
   of the batch succeeded.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import shutil
import time
import traceback
from pathlib import Path
from typing import Any

import cv2
import pyarrow.parquet as pq

from ferseq import batches, faces
from ferseq.errors import FerseqError
from ferseq.outputs import atomic_path

log = logging.getLogger(__name__)

#: Columns of a batch's segments CSV: one row per kept segment, and one row with empty segment fields
#: for a planned video without any (all its rows dropped by the data stage).
SEGMENT_COLUMNS = ["video_id", "video", "segment_id", "label", "start", "end"]
#: faces settings that do not change a video's outputs: changing them reuses partial work.
NOT_IN_OUTPUT = batches.NOT_IN_OUTPUT
PARTIAL_VERSION = 1  # bump when the faces outputs of the same inputs change


class BatchError(FerseqError, RuntimeError):
    """Some videos of a faces batch failed; the message names each one and why."""


def write_batch_segments(segments_path: str | Path, annotations: str | Path, videos_dir: str | Path, classes: dict,
                         min_segment_frames: int, batch_frames: int, outputs: list[str | Path],
                         partial_root: str | Path) -> dict[str, list[str]]:
    """Write each batch's segments CSV (``outputs``, named ``{batch}.segments.csv``); return the plan.

    The batches are planned again from the annotation table exactly as when the
    DAG was built; if the table changed in between (a ``data.import`` that ran
    again), the names differ and this stops, asking for a new run. Partial work
    of batches that are no longer planned is removed.
    """
    from ferseq.annotations import planned_frames  # here only: the faces jobs start faster without it

    planned = planned_frames(annotations, videos_dir, classes, min_segment_frames)
    plan = batches.plan({v: p.frames for v, p in planned.items()}, batch_frames)
    paths = {Path(path).name.removesuffix(".segments.csv"): Path(path) for path in outputs}
    if set(paths) != {batch.name for batch in plan}:
        raise FerseqError(f"{annotations} changed after this run planned the faces batches "
                          f"({len(plan)} batches now, {len(paths)} planned): run the same command again")
    columns = ["video_id", "segment_id", "label", "start", "end"]
    segments = pq.read_table(segments_path, columns=columns).to_pydict()
    by_video: dict[str, list[tuple]] = {}
    for row in sorted(zip(*(segments[c] for c in columns)), key=lambda r: (r[0], r[3])):
        by_video.setdefault(row[0], []).append(row)
    for batch in plan:
        with atomic_path(paths[batch.name]) as tmp, open(tmp, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(SEGMENT_COLUMNS)
            for video in batch.videos:
                # A video without a kept segment (all its rows dropped by the data stage) gets one empty row.
                for video_id, segment_id, label, start, end in by_video.get(video, [(video, "", "", "", "")]):
                    writer.writerow([video_id, planned[video].video, segment_id, label, start, end])
    partial_root = Path(partial_root)
    if partial_root.is_dir():
        for folder in partial_root.iterdir():
            if folder.name not in paths:
                shutil.rmtree(folder, ignore_errors=True)
    log.info("%d videos in %d faces batches (%s frames each on average)", len(planned), len(plan),
             f"{sum(b.frames for b in plan) / max(len(plan), 1):.0f}")
    return {batch.name: list(batch.videos) for batch in plan}


def read_batch_segments(path: str | Path) -> dict[str, tuple[str, faces.Ranges]]:
    """``video_id -> (video path below the videos folder, kept segment ranges)`` of a batch's segments CSV."""
    videos: dict[str, tuple[str, faces.Ranges]] = {}
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            _, ranges = videos.setdefault(row["video_id"], (row["video"], []))
            if row["segment_id"]:
                ranges.append((int(row["start"]), int(row["end"]), int(row["segment_id"]), row["label"]))
    return videos


def _partial_key(video_id: str, path: Path, ranges: faces.Ranges, cfg: dict[str, Any]) -> str:
    """Identifies one video's faces: the file as it is now, its segments and the settings that shape them."""
    try:
        stat = path.stat()
        stamp = [stat.st_size, stat.st_mtime_ns]
    except OSError:
        stamp = None
    settings = {k: v for k, v in sorted(cfg.items()) if k not in NOT_IN_OUTPUT}
    text = json.dumps([PARTIAL_VERSION, video_id, str(path), stamp, sorted(ranges), settings], default=str)
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:20]


def run_batch(ids: list[str], segments_csv: str | Path, videos_dir: str | Path, cfg: dict[str, Any],
              out_parquets: list[str | Path], out_qc: str | Path, partial_dir: str | Path) -> list[dict[str, Any]]:
    """The faces job of one batch; return the rows of its QC table (those of :func:`ferseq.faces.extract_faces`).

    ``ids``: the batch's videos, each looked up in ``segments_csv``
    (:func:`write_batch_segments`); ``out_parquets``: their faces files, in the
    same order. One core: OpenCV's thread pool is off; batches run in parallel
    instead. Raises :class:`BatchError` naming the failed videos after trying
    every video.
    """
    cv2.setNumThreads(1)
    cfg = {**faces.DEFAULTS, **cfg}
    started = time.perf_counter()
    table = read_batch_segments(segments_csv)
    unknown = [video for video in ids if video not in table]
    if unknown:
        raise FerseqError(f"{segments_csv} does not list {', '.join(unknown)}: the batch plan changed; run again")
    partial_dir = Path(partial_dir)
    partial_dir.mkdir(parents=True, exist_ok=True)
    faces.make_tracker(cfg)  # the models, loaded once for all videos
    log.info("batch of %d videos; models loaded in %.1f s", len(ids), time.perf_counter() - started)

    done: dict[str, tuple[Path, list[dict[str, Any]]]] = {}
    failed: dict[str, str] = {}
    reused, clips_wall, clips_cpu = 0, 0.0, 0.0
    for video in ids:
        clip_started, clip_cpu = time.perf_counter(), time.process_time()
        relative, ranges = table[video]
        path = Path(videos_dir) / relative
        key = _partial_key(video, path, ranges, cfg)
        parquet, qc_json = partial_dir / f"{key}.parquet", partial_dir / f"{key}.qc.json"
        try:
            if parquet.is_file() and qc_json.is_file():
                rows = json.loads(qc_json.read_text())
                reused += 1
                log.info("%s: reused from an earlier run of this batch", video)
            else:
                with atomic_path(parquet) as tmp_parquet, atomic_path(qc_json) as tmp_qc:
                    if ranges:
                        rows = faces.process_video(path, ranges, cfg, tmp_parquet, video)
                    else:
                        rows = faces.write_empty(cfg, video, tmp_parquet)
                    tmp_qc.write_text(json.dumps(rows))
            if rows:
                faces.check_found(rows[-1], cfg)
        except FerseqError as err:
            failed[video] = str(err)
            log.error("%s", err)
            continue
        except Exception as err:  # noqa: BLE001 - a bug or a broken file must not lose the other videos' work
            failed[video] = f"{type(err).__name__}: {err}"
            log.error("%s: %s", video, traceback.format_exc())
            continue
        finally:
            clips_wall += time.perf_counter() - clip_started
            clips_cpu += time.process_time() - clip_cpu
        done[video] = (parquet, rows)

    if failed:
        listing = "\n".join(f"  {reason if reason.startswith(video) else f'{video}: {reason}'}"
                            for video, reason in failed.items())
        raise BatchError(f"{len(failed)} of {len(ids)} videos of this faces batch failed:\n{listing}\n"
                         f"The faces of the other {len(done)} are kept in {partial_dir} and reused when the job "
                         "runs again.")
    qc = [row for video in ids for row in done[video][1]]
    faces.write_qc(qc, out_qc)
    for video, out in zip(ids, out_parquets):
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        os.replace(done[video][0], out)
    shutil.rmtree(partial_dir, ignore_errors=True)
    videos = [row for row in qc if row["label"] == "all"]
    # The job's CPU time since its process started (Python, imports and models included), against the
    # clips' own: what one job costs on top of its clips (benchmarks/faces_corpus.py reads this line).
    log.info("batch done: %d videos (%d reused), %d frames, faces in %d; clips %.2f s wall, %.2f s CPU; "
             "job %.2f s CPU in all", len(ids), reused, sum(r["frames"] for r in videos),
             sum(r["faces_found"] for r in videos),
             clips_wall, clips_cpu, time.process_time())
    return qc


def video_ids(out_parquets: list[str | Path], folder: str = "results/faces/") -> list[str]:
    """The video ids of faces files ``{folder}{video_id}.parquet`` (ids may hold '/')."""
    ids = []
    for path in out_parquets:
        text = Path(path).as_posix()
        if not text.startswith(folder) or not text.endswith(".parquet"):
            raise ValueError(f"{path}: not a {folder}{{video}}.parquet path")
        ids.append(text[len(folder):-len(".parquet")])
    return ids
