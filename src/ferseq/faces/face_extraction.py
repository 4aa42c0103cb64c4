"""Faces stage: one video -> the aligned face crop of every frame inside its kept segments.

:func:`extract_faces` decodes the video once, front to back, and streams:
for each wanted frame it finds the face (:class:`~ferseq.faces.face_tracking.FaceTracker`:
detect, then follow by landmarks; with ``faces.detector: none`` the whole frame is the
face box of every frame, for pre-cropped corpora), warps it to the canonical crop
(:mod:`ferseq.faces.alignment`) and appends a row to the Parquet file, written in row
groups so that memory does not grow with the length of the video.

Output ``results/faces/{video}.parquet``, one row per frame inside a kept
segment, in frame order:

=========== ================================ =====================================
column      type                             meaning
=========== ================================ =====================================
segment_id  int64                            the kept segment the frame belongs to
frame       int32                            0-based frame number in the video
face_found  bool
tracked     bool                             face followed from the previous frame, not detected
det_score   float32                          detector score (of the detection a tracked face
                                             comes from); NaN without a face
bbox        list<float32> (4 long)           x0, y0, x1, y1, original-frame pixels; null without a face
landmarks   list<float32> (136 long)         68 points x0, y0, x1, y1, ... (reshape to 68x2),
                                             original-frame pixels; null without a face
crop        binary                           encoded JPEG/PNG, crop_size x crop_size; null without a face
=========== ================================ =====================================

The schema metadata (key ``ferseq.faces``, JSON) records crop size and format,
detector and the template positions of eyes and mouth. A QC CSV gives, per
segment and for the whole video, frames, faces found and detection rate.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ferseq.common.errors import FerseqError
from ferseq.common.outputs import atomic_path
from ferseq.data.videos import VideoError, iter_frames
from ferseq.faces import alignment
from ferseq.faces.detection import central_face, make_detector, model_path
from ferseq.faces.face_tracking import Face, FaceTracker, LandmarkModel, load_landmark_model

if TYPE_CHECKING:  # pandas is imported where a table is built: a faces job of short clips starts faster without it
    import pandas as pd

log = logging.getLogger(__name__)

ROWS_PER_GROUP = 256  # about 5 MB of 224 px JPEG crops per Parquet row group
LOG_EVERY = 1000  # frames between progress lines

METADATA_KEY = b"ferseq.faces"

# The ``faces`` defaults of workflow/schemas/config.schema.yaml (a test keeps them equal), so that
# a partial config works outside Snakemake too.
DEFAULTS: dict[str, Any] = {
    "detector": "hog", "dnn_model": None, "dnn_prototxt": None, "mmod_model": None, "landmarks_model": None,
    "confidence": 0.5, "dlib_threshold": 0.0, "detect_every": 10, "detect_scale": 0.5, "crop_size": 224,
    "crop_format": "jpg", "jpeg_quality": 95, "missing_face": "repeat", "skip_faceless_videos": False,
    "batch_frames": 10000,
}


class NoFaceError(FerseqError, RuntimeError):
    """A video in which no frame of any kept segment shows a face."""


def parquet_schema(cfg: dict[str, Any]) -> pa.Schema:
    """The schema of a faces Parquet file, with a note on its contents in the metadata."""
    size = int(cfg["crop_size"])
    note = {
        "crop_size": size,
        "crop_format": cfg["crop_format"],
        "jpeg_quality": int(cfg["jpeg_quality"]) if cfg["crop_format"] == "jpg" else None,
        "detector": cfg["detector"],
        "detect_every": int(cfg["detect_every"]),
        "detect_scale": float(cfg["detect_scale"]),
        "template_pixels": {name: [x * size, y * size] for name, (x, y) in alignment.TEMPLATE.items()},
        "template_note": "left/right as seen in the image; eye centres = mean of landmarks 36-41 and 42-47, "
                         "mouth = midpoint of corners 48 and 54",
        "bbox": "x0, y0, x1, y1 in original-frame pixels",
        "landmarks": "dlib 68 points, flattened x0, y0, x1, y1, ...; reshape(68, 2); original-frame pixels",
    }
    fields = [
        pa.field("segment_id", pa.int64(), nullable=False),
        pa.field("frame", pa.int32(), nullable=False),
        pa.field("face_found", pa.bool_(), nullable=False),
        pa.field("tracked", pa.bool_(), nullable=False),
        pa.field("det_score", pa.float32()),
        # Variable-size lists, though always 4 and 136 long: pyarrow (up to 25 at least) writes
        # null fixed-size lists to Parquet but cannot read them back (apache/arrow#35692).
        pa.field("bbox", pa.list_(pa.float32())),
        pa.field("landmarks", pa.list_(pa.float32())),
        pa.field("crop", pa.binary()),
    ]
    return pa.schema(fields, metadata={METADATA_KEY: json.dumps(note).encode()})


def landmark_model(cfg: dict[str, Any]) -> LandmarkModel:
    """The 68-point predictor of ``faces.landmarks_model`` (loaded once per process)."""
    return load_landmark_model(model_path(cfg, "landmarks_model", "shape_predictor_68_face_landmarks.dat"))


def make_tracker(cfg: dict[str, Any]) -> FaceTracker:
    """A :class:`FaceTracker` configured by the ``faces`` config."""
    cfg = {**DEFAULTS, **cfg}
    # detector none: the frame is the face box, so every frame gets its landmarks there (nothing to follow).
    every = 1 if cfg["detector"] == "none" else int(cfg["detect_every"])
    return FaceTracker(make_detector(cfg), landmark_model(cfg), every)


def find_face(image: np.ndarray, cfg: dict[str, Any]) -> Face | None:
    """The central face of one BGR image (full detection, then landmarks), or None."""
    cfg = {**DEFAULTS, **cfg}
    found = central_face(make_detector(cfg)(image), image.shape[1], image.shape[0])
    if found is None:
        return None
    gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    return Face(found.box, found.score, landmark_model(cfg)(gray, found.box), tracked=False)


Ranges = list[tuple[int, int, int, str]]  # (start, end, segment_id, label) of a video's kept segments


def segment_ranges(segments: pd.DataFrame) -> Ranges:
    """(start, end, segment_id, label) of each segment (:func:`process_video` sorts and checks them)."""
    return [(int(r.start), int(r.end), int(r.segment_id), str(r.label)) for r in segments.itertuples()]


def check_ranges(ranges: Ranges, video: str | Path) -> Ranges:
    """``ranges`` sorted by start, if they are not empty and do not overlap."""
    ranges = sorted(ranges)
    if not ranges:
        raise ValueError(f"{video}: no segments given, so no frame to process")
    for (s0, e0, id0, _), (s1, e1, id1, _) in zip(ranges, ranges[1:]):
        if s1 < e0:
            raise ValueError(f"{video}: segments {id0} (frames {s0}-{e0}) and {id1} (frames {s1}-{e1}) overlap")
    return ranges


class RowGroup:
    """Rows collected for one Parquet row group."""

    def __init__(self) -> None:
        self.segment_id: list[int] = []
        self.frame: list[int] = []
        self.faces: list[Face | None] = []
        self.crops: list[bytes | None] = []

    def add(self, segment_id: int, frame: int, face: Face | None, crop: bytes | None) -> None:
        self.segment_id.append(segment_id)
        self.frame.append(frame)
        self.faces.append(face)
        self.crops.append(crop)

    def __len__(self) -> int:
        return len(self.frame)

    def table(self, schema: pa.Schema) -> pa.Table:
        faces = [f for f in self.faces if f is not None]
        found = np.array([f is not None for f in self.faces], bool)
        columns = [
            pa.array(self.segment_id, pa.int64()),
            pa.array(self.frame, pa.int32()),
            pa.array(found),
            pa.array([f is not None and f.tracked for f in self.faces]),
            pa.array(np.array([f.score if f else math.nan for f in self.faces], np.float32)),
            _lists([np.asarray(f.box, np.float32) for f in faces], found),
            _lists([f.landmarks.reshape(-1) for f in faces], found),
            pa.array(self.crops, pa.binary()),
        ]
        return pa.Table.from_arrays(columns, schema=schema)


def _lists(values: list[np.ndarray], found: np.ndarray) -> pa.ListArray:
    """A list<float32> column, null where not ``found``; ``values`` holds the found rows' arrays in order."""
    lengths = np.zeros(len(found), np.int32)
    lengths[found] = [len(v) for v in values]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    flat = np.concatenate(values).astype(np.float32) if values else np.zeros(0, np.float32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat), mask=pa.array(~found))


QC_COLUMNS = ["video", "segment_id", "label", "start", "end", "frames", "faces_found", "detection_rate",
              "full_detections", "seconds_per_frame", "frames_per_second"]


def _qc_rows(name: str, ranges: Ranges, counts: dict[int, list[int]], seconds: float,
             detections: int) -> list[dict[str, Any]]:
    """One row per segment and a last row (segment_id empty, label ``all``) for the whole video.

    Plain dicts, not a DataFrame: a faces job makes these for thousands of short clips.
    """
    def rate(found: int, frames: int) -> float:
        return round(found / frames, 4) if frames else math.nan

    rows = [{"video": name, "segment_id": sid, "label": label, "start": start, "end": end,
             "frames": counts[sid][0], "faces_found": counts[sid][1], "detection_rate": rate(counts[sid][1], counts[sid][0])}
            for start, end, sid, label in ranges]
    frames, found = sum(r["frames"] for r in rows), sum(r["faces_found"] for r in rows)
    rows.append({"video": name, "segment_id": None, "label": "all", "start": min((r[0] for r in ranges), default=0),
                 "end": max((r[1] for r in ranges), default=0), "frames": frames, "faces_found": found,
                 "detection_rate": rate(found, frames), "full_detections": detections,
                 "seconds_per_frame": round(seconds / max(frames, 1), 6),
                 "frames_per_second": round(frames / seconds, 1) if seconds > 0 else math.nan})
    return rows


def write_qc(rows: list[dict[str, Any]], path: str | Path) -> None:
    """QC rows as the CSV that :func:`extract_faces` writes (empty cells for missing values), without pandas."""
    def cell(value: Any) -> Any:
        return "" if value is None or (isinstance(value, float) and math.isnan(value)) else value

    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(QC_COLUMNS)
        writer.writerows([cell(row.get(column)) for column in QC_COLUMNS] for row in rows)


def qc_table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """QC rows (of one or many videos) as the QC table."""
    import pandas as pd

    return pd.DataFrame(rows, columns=QC_COLUMNS).astype({"segment_id": "Int64", "full_detections": "Int64"})


def _wanted(ranges: list[tuple[int, int, int, str]]) -> Iterator[tuple[int, int]]:
    """(frame, segment_id) of every frame inside the segments, in frame order."""
    for start, end, segment_id, _ in ranges:
        for frame in range(start, end):
            yield frame, segment_id


def extract_faces(video_path: str | Path, segments: pd.DataFrame, cfg: dict[str, Any],
                  out_parquet: str | Path, out_qc: str | Path, *, name: str | None = None,
                  to_end: bool = False) -> pd.DataFrame:
    """Write the aligned faces of every frame inside ``segments`` of one video; return the QC table.

    ``segments``: this video's kept segments (segment_id, label, start, end,
    end exclusive). ``cfg``: the ``faces`` config with defaults filled in.
    ``name``: the video in the QC table and messages (default: the file name).
    ``to_end``: the last segment runs to the end of the video, wherever that is (its ``end`` is
    ignored), so the video is decoded once without counting its frames first.
    The QC table (also written to ``out_qc`` as CSV) has one row per segment
    (video, segment_id, label, start, end, frames, faces_found,
    detection_rate) and a last row for the whole video (segment_id empty,
    label ``all``) that adds full_detections, seconds_per_frame and
    frames_per_second. A segment without any face is logged as a warning.
    Raises :class:`NoFaceError` when no frame has a face, unless
    ``cfg["skip_faceless_videos"]``; no output is left behind on any error.
    """
    cfg = {**DEFAULTS, **cfg}
    name = name or Path(video_path).name
    with atomic_path(out_parquet) as tmp_parquet, atomic_path(out_qc) as tmp_qc:
        rows = process_video(Path(video_path), segment_ranges(segments), cfg, tmp_parquet, name,
                             to_end=to_end)
        check_found(rows[-1], cfg)
        write_qc(rows, tmp_qc)
    return qc_table(rows)


def process_video(video_path: Path, ranges: Ranges, cfg: dict[str, Any], out_parquet: Path,
                  name: str, to_end: bool = False, lenient_end: bool = False) -> list[dict[str, Any]]:
    """The faces of one video's ``ranges`` (:func:`segment_ranges`) into ``out_parquet``; return its QC rows.

    :func:`extract_faces` without the QC file and the no-face check (:func:`check_found`). A video that ends
    before a range does is an error, unless ``lenient_end``: then, with a warning, the ranges it holds whole give
    its QC rows (the frames decoded stay in the file; the data stage drops the other ranges' rows).
    """
    ranges = check_ranges(ranges, video_path)
    if to_end:  # the last range ends where the decoder stops
        start, _, segment_id, label = ranges[-1]
        ranges[-1] = (start, sys.maxsize, segment_id, label)
    total = "?" if to_end else sum(end - start for start, end, _, _ in ranges)  # (for the progress lines)
    size, fmt, quality = int(cfg["crop_size"]), cfg["crop_format"], int(cfg["jpeg_quality"])
    tracker = make_tracker(cfg)
    schema = parquet_schema(cfg)
    counts = {sid: [0, 0] for _, _, sid, _ in ranges}  # segment_id -> [frames, faces found]
    log.info("%s: %s frames in %d segments, detector %s", name, total, len(ranges), cfg["detector"])

    started = time.perf_counter()
    with pq.ParquetWriter(out_parquet, schema) as writer:
        group, wanted, done = RowGroup(), _wanted(ranges), 0
        frames = (frame for frame, _ in _wanted(ranges))
        for index, image in iter_frames(video_path, frames):
            frame, segment_id = next(wanted)  # iter_frames yields the wanted frames in order ...
            assert frame == index, (frame, index)  # ... and stops early only at the end of the video
            face = tracker.update(image, index)
            crop = None
            if face is not None:
                crop = alignment.encode(alignment.align(image, face.landmarks, size), fmt, quality)
            group.add(segment_id, index, face, crop)
            counts[segment_id][0] += 1
            counts[segment_id][1] += face is not None
            done += 1
            if len(group) == ROWS_PER_GROUP:
                writer.write_table(group.table(schema))
                group = RowGroup()
            if done % LOG_EVERY == 0:
                fps = done / (time.perf_counter() - started)
                log.info("%s: %d/%s frames, %.0f frames/s", name, done, total, fps)
        if len(group):
            writer.write_table(group.table(schema))
    missing = next(wanted, None)
    if to_end and missing is not None and missing[1] == ranges[-1][2]:
        ranges[-1] = (ranges[-1][0], missing[0], ranges[-1][2], ranges[-1][3])  # where the video ended
        missing = None
    if missing is not None:
        message = (f"{video_path}: decoding stopped before frame {missing[0]} of segment {missing[1]} "
                   f"({'some' if to_end else total - done} wanted frames missing); does the annotation end past "
                   "the video's end?")
        if not lenient_end:
            raise VideoError(message)
        log.warning("%s (data.strict: false: the data stage drops its rows)", message)
        # The segments the video does not hold whole are the rows the data stage drops: out of the QC and the
        # no-face check (features and training skip their frames); none left is a video without kept segments.
        ranges = [r for r in ranges if counts[r[2]][0] == r[1] - r[0]]
        if not ranges:
            return write_empty(cfg, name, out_parquet)
    seconds = time.perf_counter() - started
    rows = _qc_rows(name, ranges, counts, seconds, tracker.detections)
    video = rows[-1]
    log.info("%s: %d frames, faces in %d (%.1f%%), %d full detections, %.2f s, %.0f frames/s", name, video["frames"],
             video["faces_found"], 100 * video["detection_rate"], video["full_detections"], seconds,
             video["frames_per_second"])
    for row in rows[:-1]:
        if row["faces_found"] == 0:
            log.warning("%s: segment %s (%s, frames %d-%d) has no face in any frame", name, row["segment_id"],
                        row["label"], row["start"], row["end"])
    return rows


def check_found(video: dict[str, Any], cfg: dict[str, Any]) -> None:
    """Fail on a video (its QC row ``all``) without any face in its kept segments, unless configured to skip it."""
    if video["faces_found"] > 0:
        return
    message = (f"{video['video']}: no face found in any of its {video['frames']} frames inside kept segments "
               f"(detector {cfg['detector']})")
    if not cfg.get("skip_faceless_videos", False):
        raise NoFaceError(message + "; set faces.skip_faceless_videos: true to keep it with face_found=false rows")
    log.warning("%s; kept with face_found=false rows (faces.skip_faceless_videos)", message)


def write_empty(cfg: dict[str, Any], name: str, out_parquet: str | Path) -> list[dict[str, Any]]:
    """The faces file of a video without any kept segment (no rows, the same columns); its QC rows (none)."""
    # Possible with data.strict: false, when every row of the video was dropped: later stages skip it.
    log.warning("%s: no kept segment (all its annotation rows were dropped); writing an empty faces file", name)
    pq.write_table(parquet_schema({**DEFAULTS, **cfg}).empty_table(), out_parquet)
    return []


def merge_qc(qc_files: list[str | Path], out_csv: str | Path) -> pd.DataFrame:
    """The per-video QC tables of :func:`extract_faces` in one CSV, video after video."""
    import pandas as pd

    tables = [pd.read_csv(path, dtype={"video": str, "label": str}) for path in qc_files]
    merged = pd.concat(tables, ignore_index=True).astype({"segment_id": "Int64", "full_detections": "Int64"})
    with atomic_path(out_csv) as tmp:
        merged.to_csv(tmp, index=False)
    return merged
