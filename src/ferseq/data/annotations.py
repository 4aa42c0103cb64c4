"""Read, validate and normalise the annotation table (one row per segment).

Every row is checked against ``workflow/schemas/annotations.schema.yaml`` and
against the videos it names. Bad rows are all reported together (row number,
column, reason) and stop the run, unless ``strict`` is false, in which case they
are dropped into the dropped-segments table like every other discarded row.
Row numbers count data rows from 1, so row 1 is the line after a CSV header.

A benchmark protocol (``split.scheme: predefined``) rides on optional columns:
``folds`` (or ``fold``), the folds in which the row is a test row (``2``, or
``1;4``; empty: a training row of every fold), or ``split`` (``train``, ``val``
or ``test`` of one predefined fold), and ``identity_leak`` (true when the
release names no person, so the row's subject is only its clip). The data
stage keeps them in the segment table as ``test_folds``, ``protocol_split`` and
``identity_leak``, for :mod:`ferseq.data.splits`.
"""

from __future__ import annotations

import csv
import io
import logging
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Iterable

import jsonschema
import pandas as pd
import yaml

from ferseq.common.errors import FerseqError
from ferseq.common.outputs import atomic_path
from ferseq.data import videos

log = logging.getLogger(__name__)

REQUIRED = ("video", "subject", "label", "start_frame", "end_frame")
#: The optional protocol columns (see the module docstring); ``fold`` is ``folds`` with one fold.
PROTOCOL_COLUMNS = ("folds", "fold", "split", "identity_leak")
_INT = re.compile(r"^[+-]?\d+$")
_FOLD_SEPARATORS = re.compile(r"\s*[;, ]\s*")


class AnnotationError(FerseqError, ValueError):
    """The annotation table cannot be used; the message lists every problem."""


@dataclass(frozen=True)
class Problem:
    """One reason a row is not used."""

    row: int
    column: str
    reason: str

    def __str__(self) -> str:
        where = f"row {self.row}" + (f", column {self.column}" if self.column else "")
        return f"{where}: {self.reason}"


def read_table(path: str | Path) -> pd.DataFrame:
    """Read the annotation CSV or Parquet as it is, every CSV cell as text."""
    path = Path(path)
    if not path.is_file():
        raise AnnotationError(f"{path}: annotation table not found")
    if path.suffix.lower() == ".parquet":
        table = pd.read_parquet(path)
    elif path.suffix.lower() == ".csv":
        table = read_csv(path)
    else:
        raise AnnotationError(f"{path}: annotation table must be .csv or .parquet")
    missing = [c for c in REQUIRED if c not in table.columns]
    if missing:
        raise AnnotationError(
            f"{path}: missing column(s) {', '.join(missing)}; the table needs {', '.join(REQUIRED)} (and may have group, "
            f"{', '.join(PROTOCOL_COLUMNS)})"
        )
    return table.reset_index(drop=True)


def read_csv(path: Path) -> pd.DataFrame:
    """An annotation CSV as text cells, with every structural problem reported by file line.

    Text only: numbers are parsed later, so "12.5" or "" is reported, not
    coerced. An empty file, bytes that are not UTF-8, a row with more or fewer
    fields than the header and broken quoting are problems of the file, not of
    a segment: they are all named with their line (lines count from 1, the
    header included) in one :class:`AnnotationError`.
    """
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")  # a byte-order mark from spreadsheet exports is fine
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise AnnotationError(f"{path}, line {line}: not UTF-8 text (byte 0x{raw[err.start]:02x}); save the table "
                              "as UTF-8 CSV (e.g. 'CSV UTF-8' in a spreadsheet)") from None
    if not text.strip():
        raise AnnotationError(f"{path}: the file is empty; it needs a header line {','.join(REQUIRED)}[,group] "
                              "and one row per segment")
    reader = csv.reader(io.StringIO(text, newline=""), skipinitialspace=True, strict=True)
    problems: list[str] = []
    rows: list[list[str]] = []
    header: list[str] | None = None
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as err:  # strict quoting: a stray or unclosed quote
            problems.append(f"line {reader.line_num}: {err}; a field with a comma or a quote must be quoted, and a "
                            "quote inside it doubled (\"\")")
            break
        if not fields or all(not f.strip() for f in fields):
            continue  # blank lines are not rows
        if header is None:
            header = [name.strip() for name in fields]
            duplicated = sorted({name for name in header if header.count(name) > 1})
            if duplicated:
                problems.append(f"line {reader.line_num}: header names column(s) {', '.join(duplicated)} twice")
            continue
        if len(fields) != len(header):
            problems.append(f"line {reader.line_num}: {len(fields)} fields, the header has {len(header)} "
                            f"({','.join(header)}); a field with a comma must be quoted")
            continue
        rows.append(fields)
    if problems:
        raise AnnotationError(f"{path}: {len(problems)} malformed line(s):\n" + "\n".join(f"  {p}" for p in problems))
    return pd.DataFrame(rows, columns=header, dtype=str)


def _record(row: dict[str, Any]) -> dict[str, Any]:
    """Turn one table row into the JSON record the schema describes."""
    record: dict[str, Any] = {}
    for key, value in row.items():
        if value is None or (isinstance(value, float) and pd.isna(value)):
            continue
        if isinstance(value, str):
            value = value.strip()
            if value == "":
                continue
            if key in ("start_frame", "end_frame") and _INT.match(value):
                value = int(value)
        elif hasattr(value, "item"):  # numpy scalar -> Python scalar
            value = value.item()
        if key in ("start_frame", "end_frame") and isinstance(value, float) and value.is_integer():
            value = int(value)
        if key in ("video", "subject", "label", "group") and isinstance(value, (int, float)):
            value = str(value)
        if key == "identity_leak" and isinstance(value, str) and value.lower() in ("true", "false"):
            value = value.lower() == "true"
        record[key] = value
    return record


def parse_folds(value: Any) -> tuple[int, ...]:
    """The folds of a ``folds``/``fold`` cell ("2", "1;4", "1, 4", 3, empty), sorted; ValueError when it is not that."""
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return ()
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a fold number")
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{value} is not a fold number (0 or more)")
        return (value,)
    text = str(value).strip()
    if not text:
        return ()
    parts = _FOLD_SEPARATORS.split(text)
    if not all(part.isdigit() for part in parts):
        raise ValueError(f"{text!r} is not a fold number or a list of them (e.g. 2 or 1;4)")
    return tuple(sorted({int(part) for part in parts}))


def protocol_columns(table: pd.DataFrame, path: str | Path) -> tuple[str | None, bool]:
    """The table's fold column (``folds``, ``fold`` or ``split``, or None) and whether it has ``identity_leak``."""
    given = [c for c in ("folds", "fold", "split") if c in table.columns]
    if len(given) > 1:
        raise AnnotationError(f"{path}: columns {' and '.join(given)} both say where a row is tested; keep one "
                              "(folds or fold: the folds in which the row is a test row; split: its part of one fold)")
    return (given[0] if given else None), "identity_leak" in table.columns


def _schema_problems(record: dict[str, Any], row: int, validator: jsonschema.Validator) -> list[Problem]:
    problems = []
    for error in validator.iter_errors(record):
        if error.validator == "required":
            column = re.findall(r"'([^']+)'", error.message)[0]
            problems.append(Problem(row, column, "missing value"))
        else:
            column = str(error.path[0]) if error.path else ""
            problems.append(Problem(row, column, error.message))
    return problems


def video_id(video: str, videos_dir: str | Path) -> str:
    """Name of a video in output paths: its path below ``videos_dir``, without the file suffix."""
    path = PurePosixPath(video)
    if path.suffix and not (Path(videos_dir) / video).is_dir():
        path = path.with_suffix("")
    return path.as_posix()


def kept_label(label: str, classes: dict) -> str | None:
    """The kept class a raw label maps to, or None when it is not kept."""
    mapped = classes.get("map", {}).get(label, label)
    return mapped if mapped in classes["names"] else None


@dataclass
class TablePlan:
    """What the annotation table says by itself, without opening a video (:func:`plan_table`).

    ``records``: row number -> record of every row whose cells are valid (its
    video is still to be probed); ``bad``: the problems found in the table
    (schema, frame range, fold cells, and overlaps between valid rows);
    ``segments``: the kept segments with their ids (valid rows that overlap no
    other, of a kept class and long enough, cut into pieces of at most
    ``max_segment_frames``);
    ``dropped``: the rows dropped for their class or length.
    """

    table: pd.DataFrame
    records: dict[int, dict[str, Any]]
    bad: list[Problem]
    segments: list[dict[str, Any]]
    dropped: list[dict[str, Any]]


def plan_table(annotations: str | Path, videos_dir: str | Path, classes: dict, schema: str | Path | dict,
               min_segment_frames: int = 8, max_segment_frames: int | None = None) -> TablePlan:
    """Validate the table by itself and plan its segments, ids included, without opening a video.

    The same plan serves the data stage (:func:`load_segments`, which then
    probes the videos) and the DAG (the faces batches, planned when Snakemake
    starts): a segment's id depends on the table alone, so a row that turns out
    bad once its video is probed (``data.strict: false``) leaves a gap rather
    than renumbering the segments after it.
    """
    annotations, videos_dir = Path(annotations), Path(videos_dir)
    table = read_table(annotations)
    fold_column, has_leak = protocol_columns(table, annotations)
    # the schema's file, or its content (the workflow passes the content: a rule parameter)
    loaded = schema if isinstance(schema, dict) else yaml.safe_load(Path(schema).read_text())
    validator = jsonschema.Draft202012Validator(loaded)
    records: dict[int, dict[str, Any]] = {}
    bad: list[Problem] = []
    for index, row in enumerate(table.to_dict("records")):
        number = index + 1
        record = _record(row)
        problems = _schema_problems(record, number, validator)
        if not problems and record["end_frame"] <= record["start_frame"]:
            problems.append(Problem(number, "end_frame", f"end_frame {record['end_frame']} is not after start_frame {record['start_frame']} (frames are half-open)"))
        if fold_column in ("folds", "fold") and not any(p.column == fold_column for p in problems):
            try:
                record[fold_column] = ";".join(map(str, parse_folds(record.get(fold_column))))
            except ValueError as err:
                problems.append(Problem(number, fold_column, str(err)))
        if fold_column == "split" and "split" not in record:
            problems.append(Problem(number, "split", "missing value: with a split column every row is train, val or test"))
        if problems:
            bad.extend(problems)
        else:
            records[number] = record
    overlaps = _overlaps(records)
    bad.extend(overlaps)
    bad_rows = {p.row for p in overlaps}
    segments, dropped = [], []
    for number, record in records.items():
        if number in bad_rows:
            continue
        label = kept_label(record["label"], classes)
        length = record["end_frame"] - record["start_frame"]
        reason = None
        if label is None:
            reason = f"label {record['label']!r} is not a kept class"
        elif length < min_segment_frames:
            reason = f"shorter than min_segment_frames ({length} < {min_segment_frames})"
        if reason:
            dropped.append({"row": number, "video": record["video"], "label": record["label"], "reason": reason})
            continue
        for start, end in pieces(record["start_frame"], record["end_frame"], max_segment_frames):
            segments.append({
                "segment_id": len(segments) + 1,
                "row": number,
                "video": record["video"],
                "video_id": video_id(record["video"], videos_dir),
                "subject": record["subject"],
                "group": record.get("group"),
                "raw_label": record["label"],
                "label": label,
                "start": start,
                "end": end,
                "frames": end - start,
                **_protocol_fields(record, fold_column, has_leak),
            })
    return TablePlan(table, records, bad, segments, dropped)


def load_segments(
    annotations: str | Path,
    videos_dir: str | Path,
    classes: dict,
    schema: str | Path | dict,
    min_segment_frames: int = 8,
    strict: bool = True,
    count_frames: str = "decode",
    max_segment_frames: int | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Validate the annotation table and return ``(segments, dropped, videos)``.

    ``segments``: the kept segments (segment_id, row of the annotation table,
    video, video_id, subject, group, raw_label, label, start, end, frames);
    segments longer than ``max_segment_frames`` are cut into pieces of at most
    that length, each its own segment (:func:`plan_table`). ``dropped``: every
    row not kept, with its reason. ``videos``: one probe row per used video.
    Raises :class:`AnnotationError` listing every bad row when ``strict``.
    """
    annotations, videos_dir = Path(annotations), Path(videos_dir)
    if not videos_dir.is_dir():
        raise AnnotationError(f"data.videos: {videos_dir} is not a folder")
    plan = plan_table(annotations, videos_dir, classes, schema, min_segment_frames, max_segment_frames)
    table, bad = plan.table, list(plan.bad)
    probes = _probe_videos({r["video"] for r in plan.records.values()}, videos_dir, count_frames)
    for number, record in plan.records.items():
        probe = probes[record["video"]]
        if isinstance(probe, str):
            bad.append(Problem(number, "video", probe))
        elif record["end_frame"] > probe.frames:
            bad.append(Problem(number, "end_frame", f"end_frame {record['end_frame']} is past the end of {record['video']} ({probe.frames_text()})"))
    bad_rows = {p.row for p in bad}

    ids: dict[str, str] = {}
    for video in {r["video"] for n, r in plan.records.items() if n not in bad_rows}:
        vid = video_id(video, videos_dir)
        if vid in ids:
            raise AnnotationError(f"{annotations}: videos {ids[vid]!r} and {video!r} would share the output name {vid!r}; rename one")
        ids[vid] = video

    if bad and strict:
        bad.sort(key=lambda p: p.row)
        lines = "\n".join(f"  {p}" for p in bad)
        raise AnnotationError(
            f"{annotations}: {len(bad_rows)} bad row(s) (rows count from 1 after the header):\n{lines}\n"
            "Fix them, or set data.strict: false to drop them into results/data/dropped_segments.csv."
        )
    dropped = [
        {"row": p.row, "video": table.at[p.row - 1, "video"], "label": table.at[p.row - 1, "label"], "reason": f"bad row: {p.column}: {p.reason}"}
        for p in bad
    ] + plan.dropped
    kept = [segment for segment in plan.segments if segment["row"] not in bad_rows]
    if not kept:
        raise AnnotationError(f"{annotations}: no segment is left to use (classes.names: {classes['names']}); see the dropped reasons:\n"
                              + "\n".join(f"  row {d['row']}: {d['reason']}" for d in dropped[:20]))
    segments = pd.DataFrame(kept).astype({"segment_id": "int64", "row": "int64", "start": "int64", "end": "int64", "frames": "int64"})
    used = segments["video"].unique()
    video_table = pd.DataFrame([
        {"video": v, "video_id": video_id(v, videos_dir), "path": probes[v].path, "frames": probes[v].frames,
         "fps": probes[v].fps, "width": probes[v].width, "height": probes[v].height}
        for v in sorted(used)
    ])
    dropped_table = pd.DataFrame(dropped, columns=["row", "video", "label", "reason"]).sort_values("row", kind="stable")
    return segments, dropped_table, video_table


def _protocol_fields(record: dict[str, Any], fold_column: str | None, has_leak: bool) -> dict[str, Any]:
    """A kept segment's protocol columns, present only when the table has them."""
    fields: dict[str, Any] = {}
    if fold_column == "split":
        fields["protocol_split"] = record.get("split")
    elif fold_column:
        fields["test_folds"] = record.get(fold_column, "")
    if has_leak:
        fields["identity_leak"] = bool(record.get("identity_leak", False))
    return fields


def pieces(start: int, end: int, max_frames: int | None) -> list[tuple[int, int]]:
    """Cut ``[start, end)`` into near-equal consecutive pieces of at most ``max_frames`` frames."""
    if not max_frames or end - start <= max_frames:
        return [(start, end)]
    n = -(-(end - start) // max_frames)
    bounds = [start + round(i * (end - start) / n) for i in range(n + 1)]
    return list(zip(bounds, bounds[1:]))


def _probe_videos(names: Iterable[str], videos_dir: Path, count: str) -> dict[str, videos.VideoInfo | str]:
    """Probe each video once; a video that fails maps to the reason."""

    def probe(name: str) -> videos.VideoInfo | str:
        try:
            return videos.probe(videos_dir / name, count=count)
        except videos.VideoError as err:
            return str(err)

    names = sorted(names)
    # OpenCV decoding releases the GIL, so threads probe videos in parallel.
    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(zip(names, pool.map(probe, names)))


def _overlaps(records: dict[int, dict[str, Any]]) -> list[Problem]:
    """Segments of one video that share frames: each such row is a problem."""
    problems = []
    by_video: dict[str, list[tuple[int, int, int]]] = {}
    for number, r in records.items():
        by_video.setdefault(r["video"], []).append((r["start_frame"], r["end_frame"], number))
    for spans in by_video.values():
        spans.sort()
        for (s0, e0, n0), (s1, e1, n1) in zip(spans, spans[1:]):
            if s1 < e0:
                problems.append(Problem(n1, "start_frame", f"frames {s1}-{e1} overlap row {n0} (frames {s0}-{e0}) of the same video"))
    return problems


def class_counts(segments: pd.DataFrame, dropped: pd.DataFrame, classes: dict) -> pd.DataFrame:
    """Per kept class: segments and frames kept, and segments dropped as too short."""
    short = dropped[dropped["reason"].str.startswith("shorter than")].copy()
    short["class"] = [kept_label(str(label), classes) for label in short["label"]]
    rows = []
    for name in classes["names"]:
        mine = segments[segments["label"] == name]
        rows.append({
            "class": name,
            "segments": len(mine),
            "frames": int(mine["frames"].sum()),
            "subjects": mine["subject"].nunique(),
            "dropped_short": int((short["class"] == name).sum()),
        })
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class PlannedVideo:
    """A video as the DAG plans it: its path below the videos folder, annotated frames, a stamp of its file,
    and its planned segments ``(segment_id, start, end, label)``."""

    video: str
    frames: int
    stamp: str  # size and modification time: changes when the file (or the folder's list of images) does
    segments: tuple[tuple[int, int, int, str], ...]


def plan_videos(plan: TablePlan, videos_dir: str | Path) -> dict[str, PlannedVideo]:
    """``video_id -> PlannedVideo`` of every video with a planned segment of ``plan`` (:func:`plan_table`),
    without probing.

    Used when the DAG is built: it must be cheap (one stat per video). Videos
    that do not exist are left out here, so the data stage reports their rows
    instead of Snakemake stopping on a missing input; rows that turn out bad
    are caught by the data stage, which every later job depends on.
    """
    by_video: dict[str, list[dict[str, Any]]] = {}
    for segment in plan.segments:
        by_video.setdefault(segment["video_id"], []).append(segment)
    planned: dict[str, PlannedVideo] = {}
    for vid, segments in sorted(by_video.items()):
        video = segments[0]["video"]
        try:
            stat = (Path(videos_dir) / video).stat()
        except OSError:
            continue
        planned[vid] = PlannedVideo(video, sum(s["frames"] for s in segments), f"{stat.st_size}:{stat.st_mtime_ns}",
                                    tuple((s["segment_id"], s["start"], s["end"], s["label"]) for s in segments))
    return planned


def write_segments(
    annotations: str | Path,
    videos_dir: str | Path,
    classes: dict,
    schema: str | Path | dict,
    out_segments: str | Path,
    out_videos: str | Path,
    out_dropped: str | Path,
    out_counts: str | Path,
    min_segment_frames: int = 8,
    strict: bool = True,
    count_frames: str = "decode",
    max_segment_frames: int | None = None,
) -> pd.DataFrame:
    """The data stage: validate the annotations and write the four tables (all or none)."""
    segments, dropped, video_table = load_segments(
        annotations, videos_dir, classes, schema, min_segment_frames, strict, count_frames, max_segment_frames
    )
    counts = class_counts(segments, dropped, classes)
    log.info("%d segments kept from %d videos, %d rows dropped", len(segments), len(video_table), len(dropped))
    for reason, n in dropped["reason"].str.replace(r"\(.*\)|'.*'", "", regex=True).value_counts().items():
        log.info("dropped %d: %s", n, reason.strip())
    log.info("per class:\n%s", counts.to_string(index=False))
    with atomic_path(out_segments) as seg_tmp, atomic_path(out_videos) as vid_tmp, \
            atomic_path(out_dropped) as drop_tmp, atomic_path(out_counts) as count_tmp:
        segments.to_parquet(seg_tmp, index=False)
        video_table.to_parquet(vid_tmp, index=False)
        dropped.to_csv(drop_tmp, index=False)
        counts.to_csv(count_tmp, index=False)
    return segments
