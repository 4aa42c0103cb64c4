"""Cut each segment into fixed-length windows of per-frame features.

A window never crosses a segment boundary. ``windows.sampling`` says how:

- ``consecutive`` (the reference): windows of ``length`` consecutive frames.
  They do not overlap (stride = length), except for the classes given an
  overlap in config, and only in the train and val splits: minority classes get
  more training windows, while test windows stay disjoint so every test frame
  is scored once. A test segment shorter than one window still gets one
  window, padded at its end by repeating its last frame (``padded``), so that
  it is scored at segment level; train and val skip such segments.
- ``uniform`` (DFER-CLIP's sampling, with ``length`` 16): ``length`` frames
  spread evenly over the whole segment, the middle frame of each of ``length``
  equal parts (DFER-CLIP's test clip); one such window per test segment, and
  in train and val ``windows.draws`` windows per segment with a random frame
  of each part (seeded by ``seed`` and the segment), as DFER-CLIP draws its
  training clips. A segment shorter than ``length`` repeats frames
  (``padded``). Other published samplers differ: Former-DFER takes 8 parts
  and 2 consecutive frames in each, MAE-DFER 16 frames at a stride of 4 and
  averages 2 temporal x 2 spatial views at test; neither is implemented here.

Frames without a face follow ``faces.missing_face``: ``drop`` skips them (the
window is made of the face frames that remain, in order), ``repeat`` fills each
with the last face frame before it (the first face frame for leading gaps).

A window file keeps every per-frame column of the feature store, frame by
frame: ``embedding`` (L x 512), ``probs`` (L x C) and ``landmarks`` (L x 136,
normalised), so the evaluation scores every method on the same frames and
``windows.features`` (:func:`inputs`) chooses what the sequence models read;
``frames`` (L frame numbers) says which frame each position is.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ferseq.common.outputs import atomic_path

log = logging.getLogger(__name__)


# The reference's class-specific overlaps (minority classes of its data), for windows.overlap: null.
REFERENCE_OVERLAP = {"happy": 0.5, "pensive": 0.3}


def overlaps(windows_cfg: dict, classes: list[str]) -> dict[str, float]:
    """The train/val overlap per class: ``windows.overlap`` as given, or the reference's for the classes kept."""
    given = windows_cfg.get("overlap")
    if given is None:
        return {name: value for name, value in REFERENCE_OVERLAP.items() if name in classes}
    return dict(given)


def stride(length: int, overlap: float) -> int:
    """Step between window starts for an overlap fraction (0 = no overlap)."""
    return max(1, int(round(length * (1 - overlap))))


def starts(n_frames: int, length: int, step: int) -> list[int]:
    """Start positions of the windows that fit in ``n_frames``."""
    return list(range(0, n_frames - length + 1, step)) if n_frames >= length else []


def padded_positions(n_frames: int, length: int) -> np.ndarray:
    """The one window of a segment shorter than ``length``: its positions, the last one repeated to fill it."""
    return np.minimum(np.arange(length), n_frames - 1)


def uniform_positions(n_frames: int, length: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """``length`` positions spread over ``n_frames``: one in each of ``length`` equal parts.

    Without ``rng``, the middle of each part (DFER-CLIP's test clip, with
    ``length`` 16); with it, a uniformly random position within each part (a
    jittered training draw, as DFER-CLIP trains). Fewer frames than ``length``
    repeat positions.
    """
    offsets = np.full(length, 0.5) if rng is None else rng.random(length)
    positions = np.floor((np.arange(length) + offsets) * n_frames / length).astype(np.int64)
    return np.clip(positions, 0, n_frames - 1)


def segment_frames(start: int, end: int, face_frames: np.ndarray, policy: str) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``face_frames`` (sorted frame numbers that have a face) for the segment ``[start, end)``.

    Returns ``(rows, frames)``: the feature row for each position of the
    sequence, and that position's frame number. Empty when the segment has no face.
    """
    lo, hi = np.searchsorted(face_frames, [start, end])
    if hi == lo:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    if policy == "drop":
        return np.arange(lo, hi), face_frames[lo:hi]
    if policy != "repeat":
        raise ValueError(f"faces.missing_face must be drop or repeat, not {policy!r}")
    # For every frame of the segment, the last face frame at or before it (or the first one after).
    frames = np.arange(start, end)
    positions = np.searchsorted(face_frames[lo:hi], frames, side="right") - 1
    return lo + np.clip(positions, 0, None), frames


# What the sequence models read, by ``windows.features``: the columns, side by side.
FEATURE_COLUMNS = {"embedding": ("embedding",), "landmarks": ("landmarks",), "both": ("embedding", "landmarks")}
# The per-frame columns of a window file besides its table, all (W, L, width) float32.
MATRICES = ("embedding", "probs", "landmarks")
# Frame number of each position of a window, (W, L) int64 (not a model input).
FRAMES = "frames"
SAMPLINGS = ("consecutive", "uniform")
TABLE_COLUMNS = ["window_id", "segment_id", "video_id", "subject", "label", "first_frame", "last_frame", "padded"]


def window_positions(n_frames: int, length: int, label: str, *, sampling: str = "consecutive",
                     overlap: dict[str, float] | None = None, pad_short: bool = False, draws: int = 0,
                     rng: np.random.Generator | None = None) -> list[np.ndarray]:
    """The positions (into a segment's ``n_frames`` sequence positions) of each of its windows.

    ``consecutive``: every ``length`` positions (stride from ``overlap`` of
    ``label``), and, with ``pad_short``, one padded window when the segment is
    shorter than one. ``uniform``: the centred window without ``rng``, else
    ``draws`` jittered ones.
    """
    if n_frames == 0:
        return []
    if sampling == "consecutive":
        step = stride(length, (overlap or {}).get(label, 0.0))
        found = [np.arange(s, s + length) for s in starts(n_frames, length, step)]
        if not found and pad_short:
            found = [padded_positions(n_frames, length)]
        return found
    if sampling == "uniform":
        if rng is None:
            return [uniform_positions(n_frames, length)]
        return [uniform_positions(n_frames, length, rng) for _ in range(draws)]
    raise ValueError(f"windows.sampling must be one of {SAMPLINGS}, not {sampling!r}")


def cut(features: pd.DataFrame, per_frame: dict[str, np.ndarray], segments: pd.DataFrame, length: int,
        overlap: dict[str, float], policy: str = "repeat", *, sampling: str = "consecutive", pad_short: bool = False,
        draws: int = 1, seed: int | None = None) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Windows of the given segments.

    ``features``: one row per face frame (segment_id, frame), aligned with the
    rows of each ``per_frame`` matrix (name -> (N, D), e.g. embedding, probs,
    landmarks); only the rows of ``segments`` (segment_id, video_id, subject,
    label, start, end) are used. ``overlap``: class -> overlap fraction ({} for
    test); ``pad_short``: a segment shorter than one window gets one padded
    window (consecutive sampling; the test split). With ``sampling: uniform``,
    ``seed`` None gives each segment its centred window (test), else ``draws``
    jittered ones drawn from a generator seeded by ``seed`` and the segment id.
    Returns the window table (window_id, segment_id, video_id, subject, label,
    first_frame, last_frame, padded: the segment was shorter than one window) and name -> (W, length, D) for every
    matrix, with ``frames`` (W, length), the frame number of each position.
    """
    rows, picks, frame_picks = [], [], []
    order = np.lexsort((features["frame"].to_numpy(), features["segment_id"].to_numpy()))
    seg_ids = features["segment_id"].to_numpy()[order]
    frame_numbers = features["frame"].to_numpy()[order]
    for seg in segments.sort_values("segment_id").itertuples(index=False):
        lo, hi = np.searchsorted(seg_ids, [seg.segment_id, seg.segment_id + 1])
        index, frames = segment_frames(seg.start, seg.end, frame_numbers[lo:hi], policy)
        # One generator per segment: its draws do not depend on which other segments a job holds.
        rng = None if seed is None or sampling != "uniform" else np.random.default_rng([seed, int(seg.segment_id)])
        for positions in window_positions(len(index), length, seg.label, sampling=sampling, overlap=overlap,
                                          pad_short=pad_short, draws=draws, rng=rng):
            chosen = frames[positions]
            rows.append((seg.segment_id, seg.video_id, seg.subject, seg.label, int(chosen[0]), int(chosen[-1]),
                         len(index) < length))
            picks.append(order[lo + index[positions]])
            frame_picks.append(chosen)
    table = pd.DataFrame(rows, columns=TABLE_COLUMNS[1:])
    table.insert(0, "window_id", np.arange(len(table), dtype=np.int64))
    table["padded"] = table["padded"].astype(bool)
    picks = np.array(picks, dtype=np.int64).reshape(len(rows), length)
    matrices = {name: matrix[picks].astype(np.float32) for name, matrix in per_frame.items()}
    matrices[FRAMES] = np.array(frame_picks, dtype=np.int64).reshape(len(rows), length)
    return table, matrices


def inputs(matrices: dict[str, np.ndarray], features: str) -> np.ndarray:
    """The sequence-model input (W, L, D) of a window set for ``windows.features`` (embedding, landmarks, both)."""
    if features not in FEATURE_COLUMNS:
        raise ValueError(f"windows.features: {features!r} is not one of {sorted(FEATURE_COLUMNS)}")
    missing = [name for name in FEATURE_COLUMNS[features] if name not in matrices]
    if missing:
        raise ValueError(f"windows.features {features!r} needs the window column(s) {missing}, which these windows "
                         "lack: they were cut from an older feature store; rerun the features stage")
    parts = [matrices[name] for name in FEATURE_COLUMNS[features]]
    return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=-1)  # windows (W, L, D) or frames (N, D)


def _matrix(arrow: pa.Table, name: str, rows: int, shape: tuple[int, ...]) -> np.ndarray:
    flat = arrow.column(name).combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return flat.reshape(rows, *shape).astype(np.float32, copy=False)


def read_features(path: str | Path) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """A feature store file as (frame table, name -> (N, D) for embedding, probs and landmarks when present),
    without per-row Python objects."""
    arrow = pq.read_table(path)
    names = [name for name in MATRICES if name in arrow.column_names]
    # fixed-size lists (the features stage's): the width is known even for an empty file
    per_frame = {name: _matrix(arrow, name, arrow.num_rows, (getattr(arrow.schema.field(name).type, "list_size", -1),))
                 for name in names}
    return arrow.drop_columns(names).to_pandas(), per_frame


class WindowWriter:
    """Appends windows to one Parquet file, one row group per call, so memory stays per video.

    ``widths``: per-frame width of each matrix column (e.g. embedding 512, probs C, landmarks 136); every
    window also has its ``frames`` (the frame number of each position) and the ``padded`` flag.
    """

    def __init__(self, path: str | Path, length: int, widths: dict[str, int]):
        self.path, self.length = Path(path), length
        self.widths = {name: width for name, width in widths.items() if name != FRAMES}
        self.schema = pa.schema([
            ("window_id", pa.int64()), ("segment_id", pa.int64()), ("video_id", pa.string()), ("subject", pa.string()),
            ("label", pa.string()), ("first_frame", pa.int64()), ("last_frame", pa.int64()), ("padded", pa.bool_()),
            (FRAMES, pa.list_(pa.int64(), length)),
            *((name, pa.list_(pa.float32(), length * width)) for name, width in self.widths.items()),
        ], metadata={b"ferseq.window_length": str(length).encode()})
        self.count = 0
        # Written under a temporary name, renamed on close: a failed job leaves no file that looks complete.
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.with_name(f".{self.path.name}.tmp{os.getpid()}")
        self._writer = pq.ParquetWriter(self._tmp, self.schema)

    def append(self, table: pd.DataFrame, matrices: dict[str, np.ndarray]) -> None:
        """Add windows; their window_id is renumbered to follow the ones already written."""
        n = len(table)
        columns = {name: table[name].to_numpy() for name in TABLE_COLUMNS[1:]}
        columns["window_id"] = np.arange(self.count, self.count + n, dtype=np.int64)
        columns[FRAMES] = pa.FixedSizeListArray.from_arrays(
            pa.array(matrices[FRAMES].reshape(-1).astype(np.int64), pa.int64()), self.length)
        for name, width in self.widths.items():
            columns[name] = pa.FixedSizeListArray.from_arrays(pa.array(matrices[name].reshape(-1), pa.float32()),
                                                              self.length * width)
        self._writer.write_table(pa.table({f.name: columns[f.name] for f in self.schema}, schema=self.schema))
        self.count += n

    def close(self, discard: bool = False) -> None:
        """Finish the file (it appears only now), or discard it."""
        self._writer.close()
        if discard:
            self._tmp.unlink(missing_ok=True)
        else:
            os.replace(self._tmp, self.path)


def write(path: str | Path, table: pd.DataFrame, matrices: dict[str, np.ndarray]) -> None:
    """Write one window table at once (see :class:`WindowWriter` for the format).

    ``table`` may leave out ``padded`` (False) and ``matrices`` ``frames`` (``first_frame`` onwards).
    """
    features = {name: m for name, m in matrices.items() if name != FRAMES}
    length = next(iter(features.values())).shape[1]
    if "padded" not in table:
        table = table.assign(padded=False)
    if FRAMES not in matrices:
        matrices = {**matrices, FRAMES: table["first_frame"].to_numpy(np.int64)[:, None] + np.arange(length)}
    writer = WindowWriter(path, length, {name: m.shape[2] for name, m in features.items()})
    writer.append(table, matrices)
    writer.close()


def read(path: str | Path, columns: Iterable[str] | None = None) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """A windows file as (window table, name -> (W, L, width) for its matrix columns, or only ``columns``).

    ``frames`` ((W, L) int64) is among the matrices when ``columns`` is None or names it.
    """
    schema = pq.read_schema(path)
    length = int(schema.metadata[b"ferseq.window_length"])
    present = [name for name in (*MATRICES, FRAMES) if name in schema.names]
    wanted = present if columns is None else [name for name in columns if name in present]
    table_columns = [name for name in schema.names if name not in present]
    arrow = pq.read_table(path, columns=table_columns + wanted)
    matrices = {}
    for name in wanted:
        if name == FRAMES:
            flat = arrow.column(name).combine_chunks().flatten().to_numpy(zero_copy_only=False)
            matrices[name] = flat.reshape(arrow.num_rows, length).astype(np.int64, copy=False)
        else:
            matrices[name] = _matrix(arrow, name, arrow.num_rows, (length, schema.field(name).type.list_size // length))
    return arrow.select(table_columns).to_pandas(), matrices


def feature_files(folder: str | Path) -> list[Path]:
    """The feature store files of a fold's features folder, sorted; video ids with sub-folders included."""
    return sorted(Path(folder).rglob("*.parquet"))


def write_windows(feature_files: Iterable[str | Path], segments_path: str | Path, splits_path: str | Path, fold: int,
                  length: int, overlap: dict[str, float], policy: str, outputs: dict[str, str | Path],
                  out_counts: str | Path, classes: list[str], sampling: str = "consecutive", draws: int = 1,
                  seed: int = 42, out_medians: str | Path | None = None) -> pd.DataFrame:
    """The sequences stage for one fold: the windows of each split (``outputs``: split -> path)
    and the window counts per class and split (also logged). Videos are read one at a time.

    ``sampling``, ``draws`` and ``seed``: see the module docstring; the test split
    never overlaps and scores a short segment through one padded window.
    ``out_medians``: where each person's median features go
    (:mod:`ferseq.sequences.subject_medians`, for ``windows.normalise: subject``).
    """
    from ferseq.sequences import subject_medians

    if sampling not in SAMPLINGS:
        raise ValueError(f"windows.sampling must be one of {SAMPLINGS}, not {sampling!r}")
    segments = pd.read_parquet(segments_path)
    splits = pd.read_parquet(splits_path)
    subject_of = dict(zip(segments["segment_id"], segments["subject"].astype(str)))
    medians = subject_medians.MedianCollector(
        {s: set(v) for s, v in segments.groupby(segments["subject"].astype(str))["video_id"]})
    segments = segments.merge(splits.loc[splits["fold"] == fold, ["segment_id", "split"]], on="segment_id")
    writers: dict[str, WindowWriter] = {}
    labels: dict[str, list[str]] = {split: [] for split in outputs}
    padded: dict[str, list[str]] = {split: [] for split in outputs}
    try:
        for path in feature_files:
            features, per_frame = read_features(path)
            if features.empty:
                continue
            medians.add(str(features["video_id"].iloc[0]), features["segment_id"].map(subject_of).to_numpy(),
                        per_frame)
            for split in outputs:
                mine = segments[(segments["split"] == split) & segments["segment_id"].isin(features["segment_id"].unique())]
                test = split == "test"
                table, matrices = cut(features, per_frame, mine, length, {} if test else overlap, policy,
                                      sampling=sampling, pad_short=test, draws=draws, seed=None if test else seed)
                if split not in writers:
                    writers[split] = WindowWriter(outputs[split], length, {k: m.shape[1] for k, m in per_frame.items()})
                writers[split].append(table, matrices)
                labels[split] += table["label"].tolist()
                padded[split] += table.loc[table["padded"], "label"].tolist()
        if len(writers) < len(outputs):
            raise ValueError(f"fold {fold}: no face features in any video; nothing to cut into windows")
    except BaseException:
        for writer in writers.values():
            writer.close(discard=True)
        raise
    for writer in writers.values():
        writer.close()
    if out_medians is not None:
        written = next(iter(writers.values())).widths
        widths = {name: written[name] for name in subject_medians.COLUMNS if name in written}
        subject_medians.write(out_medians, medians.table(), widths)
    counts = pd.DataFrame([
        {"split": split, "label": name, "windows": labels[split].count(name),
         "segments": int(((segments["split"] == split) & (segments["label"] == name)).sum()),
         "padded_windows": padded[split].count(name)}
        for split in outputs for name in classes
    ])
    log.info("fold %s windows per class and split (%s sampling):\n%s", fold, sampling,
             counts.pivot(index="label", columns="split", values="windows").to_string())
    if sum(map(len, padded.values())):
        log.info("fold %s: %d window(s) of segments shorter than %d frames, padded (%s)", fold,
                 sum(map(len, padded.values())), length,
                 "their last frame repeated" if sampling == "consecutive" else "frames repeated")
    with atomic_path(out_counts) as tmp:
        counts.to_csv(tmp, index=False)
    return counts
