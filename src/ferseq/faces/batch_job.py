"""The faces jobs at corpus scale: one process walks a batch of videos, the models loaded once.

The batches are planned once, when the DAG is built
(:func:`ferseq.faces.batch_plan.plan_from_config`), and each batch's plan file
(:func:`ferseq.faces.batch_plan.write_plans`) names its videos, their files and
their segments. :func:`run_batch` (one faces job) runs the faces stage of
:func:`ferseq.faces.face_extraction.extract_faces` for each video of the batch,
writing ``results/faces/{video}.parquet`` and one QC table for the batch. A
video that fails (no face at all, unreadable) does not stop the others: after
the last video the job fails naming every failed video and why. The work of
the videos that succeeded stays in a partial folder of the batch
(``results/faces/.partial/{batch}``) and is reused when the job runs again with
the same video, segments and settings, e.g. after
``faces.skip_faceless_videos: true``. Outputs appear only when every video of
the batch succeeded.

The faces stage does not wait for the data stage: its segments are the ones the
table plans. With ``data.strict: false`` the data stage drops the rows whose
video cannot be read or ends before them; here such a video gets an empty faces
file, or the frames it has, and the later stages, which read the data stage's
segments, leave them out.
"""

from __future__ import annotations

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

from ferseq.common.errors import FerseqError
from ferseq.common.outputs import atomic_path
from ferseq.data.videos import VideoError
from ferseq.faces import batch_plan, face_extraction

log = logging.getLogger(__name__)

#: faces settings that do not change a video's outputs: changing them reuses partial work.
NOT_IN_OUTPUT = batch_plan.NOT_IN_OUTPUT
PARTIAL_VERSION = 1  # bump when the faces outputs of the same inputs change


class BatchError(FerseqError, RuntimeError):
    """Some videos of a faces batch failed; the message names each one and why."""


def read_plan(path: str | Path, digest: str | None = None) -> tuple[str, dict[str, tuple[str, face_extraction.Ranges]]]:
    """A batch plan file: the batch's name and ``video_id -> (video path below the videos folder, segment ranges
    (start, end, segment_id, label))``, in the plan's order; ``digest``: the plan the DAG made
    (:meth:`ferseq.faces.batch_plan.FacesPlan.digest`), which the file must be."""
    path = Path(path)
    if not path.is_file():
        raise FerseqError(f"{path}: this faces batch's plan is missing (rule faces_plan writes it before the batch "
                          "runs): run the same command again")
    text = path.read_text()
    if digest is not None and batch_plan.plan_digest(text) != digest:
        raise FerseqError(f"{path}: this faces batch's plan changed after this run planned it (another snakemake "
                          "started meanwhile, or the file was edited): run the same command again")
    record = json.loads(text)
    return record["batch"], {video["video_id"]: (video["video"], [(int(start), int(end), int(sid), label)
                                                                   for sid, start, end, label in video["segments"]])
                             for video in record["videos"]}


def prune(batches: list[str], plans_dir: str | Path, partial_root: str | Path) -> None:
    """Remove the plan files and partial work of batches no longer planned (``batches``: the planned names)."""
    for path in Path(plans_dir).glob("*.plan.json"):
        if path.name.removesuffix(".plan.json") not in batches:
            path.unlink(missing_ok=True)
    if Path(partial_root).is_dir():
        for folder in Path(partial_root).iterdir():
            if folder.name not in batches:
                shutil.rmtree(folder, ignore_errors=True)


def _partial_key(video_id: str, path: Path, ranges: face_extraction.Ranges, cfg: dict[str, Any]) -> str:
    """Identifies one video's faces: the file as it is now, its segments and the settings that shape them."""
    try:
        stat = path.stat()
        stamp = [stat.st_size, stat.st_mtime_ns]
    except OSError:
        stamp = None
    settings = {k: v for k, v in sorted(cfg.items()) if k not in NOT_IN_OUTPUT}
    text = json.dumps([PARTIAL_VERSION, video_id, str(path), stamp, sorted(ranges), settings], default=str)
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:20]


def _faces_of(path: Path, ranges: face_extraction.Ranges, cfg: dict[str, Any], out_parquet: Path, video: str,
              strict: bool) -> list[dict[str, Any]]:
    """One video's faces and QC rows; not ``strict``: a video that cannot be read gets an empty faces file, and a
    segment past its end the frames the video has."""
    try:
        return face_extraction.process_video(path, ranges, cfg, out_parquet, video, lenient_end=not strict)
    except VideoError as err:
        if strict:
            raise
        log.warning("%s (data.strict: false: the data stage drops its rows)", err)
        return face_extraction.write_empty(cfg, video, out_parquet)


def run_batch(plan_json: str | Path, videos_dir: str | Path, cfg: dict[str, Any], out_parquets: list[str | Path],
              out_qc: str | Path, partial_dir: str | Path, strict: bool = True,
              digest: str | None = None) -> list[dict[str, Any]]:
    """The faces job of one batch; return the rows of its QC table (those of :func:`ferseq.faces.face_extraction.extract_faces`).

    ``plan_json``: the batch's plan file (:func:`read_plan`), which must be the plan of
    ``digest`` when given; ``out_parquets``:
    its videos' faces files, in the plan's order. ``strict`` (``data.strict``):
    false keeps going past a video that cannot be read (an empty faces file)
    and a segment past the end of its video (the frames there are), as the data
    stage then drops their rows. One core: OpenCV's thread pool is off; batches
    run in parallel instead. Raises :class:`BatchError` naming the failed
    videos after trying every video.
    """
    cv2.setNumThreads(1)
    cfg = {**face_extraction.DEFAULTS, **cfg}
    started = time.perf_counter()
    batch, table = read_plan(plan_json, digest)
    ids = list(table)
    if len(ids) != len(out_parquets):
        raise FerseqError(f"faces batch {batch}: {len(out_parquets)} outputs for the {len(ids)} videos of {plan_json}; "
                          "the plan changed: run again")
    partial_dir = Path(partial_dir)
    partial_dir.mkdir(parents=True, exist_ok=True)
    face_extraction.make_tracker(cfg)  # the models, loaded once for all videos
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
                    rows = _faces_of(path, ranges, cfg, tmp_parquet, video, strict)
                    tmp_qc.write_text(json.dumps(rows))
            if rows:
                face_extraction.check_found(rows[-1], cfg)
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
    face_extraction.write_qc(qc, out_qc)
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
