"""Every method's class probabilities on a fold's test data, at frame, window and segment level, in one file.

The evaluation scores nothing that is not in ``predictions.parquet``: one row per
scored item with its fold, resampling unit (the split's unit: a person unless
``split.unit`` says otherwise), subject, video, segment, true label, and one
probability vector per method (NaN where the method does not score that level).

Methods (:func:`methods`): the frame CNN per frame (``per_frame``), frame
aggregation (mean of its softmax over a window, ``aggregation``), the selected
sequence model on the window (named by what it reads, :data:`SEQUENCE_METHODS`),
and the landmark baseline per frame and as its window mean. Levels:

- ``window``: the test windows of ``windows.length`` frames (the reference's
  items). Frame methods do not score windows.
- ``frame``: each frame of those windows, once. Window methods do not score frames.
- ``segment`` (a clip, for clip datasets): every test segment with a face. A
  window method gives it the mean of its windows' probabilities, a frame method
  the mean of its frames'. A segment shorter than one window is scored here
  only, through the one window the windows stage padded by repeating its last
  frame (``short_segment``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ferseq.common.outputs import atomic_path
from ferseq.sequences import windows

LEVELS = ("frame", "window", "segment")
FRAME_METHODS = ("per_frame", "landmarks")
#: The sequence model's row, by ``windows.features``: key and name say what it reads.
SEQUENCE_METHODS = {"embedding": ("cnn_lstm", "CNN-LSTM"), "landmarks": ("landmark_lstm", "landmark-LSTM"),
                    "both": ("cnn_landmark_lstm", "CNN+landmark LSTM")}
#: What each method reads per frame (the sequence models: their windows.features).
READS = {"per_frame": "frame CNN", "aggregation": "frame CNN", "landmarks": "landmarks",
         "landmarks_aggregation": "landmarks", "cnn_lstm": "CNN embeddings", "landmark_lstm": "landmarks",
         "cnn_landmark_lstm": "CNN embeddings + landmarks"}
ID_COLUMNS = ["level", "fold", "unit", "subject", "video_id", "segment_id", "window_id", "frame", "label",
              "short_segment"]


def sequence_method(features: str) -> str:
    """The sequence model's method key for ``windows.features``."""
    return SEQUENCE_METHODS[features][0]


def methods(features: str = "embedding") -> dict[str, str]:
    """``key -> name`` of every evaluated method, in table order, for the sequence model's ``windows.features``."""
    key, name = SEQUENCE_METHODS[features]
    return {"per_frame": "per-frame CNN", "aggregation": "frame aggregation", key: name,
            "landmarks": "landmark baseline, per frame", "landmarks_aggregation": "landmark baseline, window mean"}


def native_level(method: str) -> str:
    """The level a method scores by itself: frame for the per-frame methods, else window (the reference's)."""
    return "frame" if method in FRAME_METHODS else "window"


def method_levels(method: str) -> tuple[str, str]:
    """The levels a method is scored at: its own and the segment."""
    return native_level(method), "segment"


def pairs(features: str = "embedding") -> list[tuple[str, str]]:
    """The paired comparisons ``(a, b)`` (a minus b) that answer the question, first the verdict's.

    A sequence model is compared with the frame methods of its own input; both
    inputs together are compared with each.
    """
    seq = sequence_method(features)
    if features == "embedding":
        first = [(seq, "aggregation"), (seq, "per_frame")]
    elif features == "landmarks":
        first = [(seq, "landmarks_aggregation"), (seq, "landmarks")]
    else:
        first = [(seq, "aggregation"), (seq, "landmarks_aggregation"), (seq, "per_frame")]
    return first + [("aggregation", "per_frame"), ("per_frame", "landmarks"), ("landmarks_aggregation", "landmarks")]


# The id columns of repeated text: categorical in memory, dictionary-encoded in the file.
CATEGORICAL = ("level", "unit", "subject", "video_id", "label")


def _group_mean(values: np.ndarray, groups: np.ndarray, n_groups: int) -> np.ndarray:
    """Row mean of ``values`` (N, C) per group index (N,) in [0, n_groups)."""
    counts = np.maximum(np.bincount(groups, minlength=n_groups), 1)
    sums = [np.bincount(groups, weights=values[:, c], minlength=n_groups) for c in range(values.shape[1])]
    return (np.stack(sums, axis=1) / counts[:, None]).astype(np.float32)


def _categorical(values: pd.Series) -> pd.Categorical:
    return pd.Categorical(values.astype(str))


def build(table: pd.DataFrame, frames: np.ndarray, frame_probs: dict[str, np.ndarray],
          window_probs: dict[str, np.ndarray], fold: int, units: dict[int, str]) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """The predictions of one fold's test windows at every level.

    ``table``: the test windows (segment_id, video_id, subject, label, padded,
    window_id); ``frames``: (W, L) frame number of each position;
    ``frame_probs``: frame method -> (W, L, C) per position; ``window_probs``:
    window method -> (W, C); ``units``: segment_id -> resampling unit.
    Returns the id table (:data:`ID_COLUMNS`) and method -> (N, C) probabilities
    with NaN rows where the method does not score the item's level.
    """
    n_windows, length = frames.shape
    num_classes = next(iter({**frame_probs, **window_probs}.values())).shape[-1]
    padded = table["padded"].to_numpy(bool)
    segment_ids = table["segment_id"].to_numpy(np.int64)
    seg_keys, seg_of_window = np.unique(segment_ids, return_inverse=True)
    first_window = np.unique(seg_of_window, return_index=True)[1]

    # Each (segment, frame) once: a padded window repeats its last frame.
    pos_window = np.repeat(np.arange(n_windows), length)
    pos_frame = frames.reshape(-1)
    _, first_pos = np.unique(np.stack([seg_of_window[pos_window], pos_frame], axis=1), axis=0, return_index=True)
    first_pos = np.sort(first_pos)
    frame_pos = first_pos[~padded[pos_window[first_pos]]]  # frame level: the frames of full windows

    # Text columns as codes into their categories, so that picking 1.6 million frame rows stays cheap.
    text = {"subject": _categorical(table["subject"]), "video_id": _categorical(table["video_id"]),
            "label": _categorical(table["label"]), "unit": _categorical(table["segment_id"].map(units))}
    if (text["unit"].codes < 0).any() or table["segment_id"].map(units).isna().any():
        missing = sorted(set(table["segment_id"]) - set(units))[:5]
        raise ValueError(f"fold {fold}: test segment(s) {missing} have no unit in the splits table")

    def ids(level: str, rows: np.ndarray, frame: np.ndarray | None = None, window: np.ndarray | None = None,
            short: np.ndarray | None = None) -> pd.DataFrame:
        none = np.full(len(rows), -1, np.int64)
        columns = {name: pd.Categorical.from_codes(cat.codes[rows], cat.categories) for name, cat in text.items()}
        return pd.DataFrame({
            "level": pd.Categorical.from_codes(np.full(len(rows), LEVELS.index(level)), LEVELS),
            "fold": np.full(len(rows), fold, np.int32), **columns,
            "segment_id": segment_ids[rows],
            "window_id": none if window is None else window, "frame": none if frame is None else frame,
            "short_segment": np.zeros(len(rows), bool) if short is None else short,
        })

    window_ids = table["window_id"].to_numpy(np.int64)
    full = np.flatnonzero(~padded)
    short = np.ones(len(seg_keys), bool)  # a segment all of whose windows are padded: it has exactly one
    np.logical_and.at(short, seg_of_window, padded)
    parts = [ids("frame", pos_window[frame_pos], pos_frame[frame_pos], window_ids[pos_window[frame_pos]]),
             ids("window", full, window=window_ids[full]),
             ids("segment", first_window, short=short)]
    counts = [len(frame_pos), len(full), len(seg_keys)]
    probs: dict[str, np.ndarray] = {}
    for name, values in frame_probs.items():
        flat = values.reshape(n_windows * length, num_classes)
        segment = _group_mean(flat[first_pos], seg_of_window[pos_window[first_pos]], len(seg_keys))
        probs[name] = np.concatenate([flat[frame_pos], np.full((counts[1], num_classes), np.nan, np.float32), segment])
    for name, values in window_probs.items():
        segment = _group_mean(values, seg_of_window, len(seg_keys))
        probs[name] = np.concatenate([np.full((counts[0], num_classes), np.nan, np.float32), values[full], segment])
    return pd.concat(parts, ignore_index=True)[ID_COLUMNS], probs


def write(path: str | Path, ids: pd.DataFrame, probs: dict[str, np.ndarray], classes: list[str],
          names: dict[str, str]) -> None:
    """Write predictions: the id columns, then one fixed-size list column per method (NaN where it does not score).

    (NaN vectors rather than null lists: pyarrow 25 cannot read back null entries of a fixed-size list column.)
    """
    arrow = pa.Table.from_pandas(ids[ID_COLUMNS], preserve_index=False)
    for method in names:
        values = np.asarray(probs[method], np.float32).reshape(-1)
        arrow = arrow.append_column(method, pa.FixedSizeListArray.from_arrays(pa.array(values, pa.float32()),
                                                                              len(classes)))
    arrow = arrow.replace_schema_metadata({b"ferseq.classes": json.dumps(classes).encode(),
                                           b"ferseq.methods": json.dumps(names).encode()})
    with atomic_path(path) as tmp:
        pq.write_table(arrow, tmp)


def read(path: str | Path) -> tuple[pd.DataFrame, dict[str, np.ndarray], list[str], dict[str, str]]:
    """A predictions file as (id table, method -> (N, C) probabilities, NaN where not scored, classes, names)."""
    arrow = pq.read_table(path)
    meta = arrow.schema.metadata or {}
    if b"ferseq.methods" not in meta:
        raise ValueError(f"{path}: not a ferseq predictions file (no ferseq.methods in its metadata)")
    classes, names = json.loads(meta[b"ferseq.classes"]), json.loads(meta[b"ferseq.methods"])
    probs = {method: np.array(arrow.column(method).combine_chunks().flatten().to_numpy(zero_copy_only=False),
                              np.float32).reshape(arrow.num_rows, len(classes)) for method in names}
    ids = arrow.select(ID_COLUMNS).to_pandas()
    for name in CATEGORICAL:
        ids[name] = ids[name].astype("category")
    return ids, probs, classes, names


def predict_fold(test_windows: str | Path, model_path: str | Path, baseline_path: str | Path, splits_path: str | Path,
                 classes: list[str], fold: int, out_path: str | Path) -> tuple[pd.DataFrame, dict[str, np.ndarray], dict[str, str]]:
    """Run every method on a fold's test windows and write ``predictions.parquet``; return what was written."""
    import torch

    from ferseq.evaluation import landmark_baseline
    from ferseq.sequence_model import grid_search

    model, checkpoint = grid_search.load_model(model_path)
    if checkpoint["classes"] != classes:
        raise ValueError(f"{model_path}: trained for classes {checkpoint['classes']}, config has {classes}")
    baseline, baseline_classes = landmark_baseline.load(baseline_path)
    if baseline_classes != classes:
        raise ValueError(f"{baseline_path}: trained for classes {baseline_classes}, config has {classes}")
    features = checkpoint.get("features", "embedding")
    table, matrices = windows.read(test_windows)
    if windows.FRAMES not in matrices or "padded" not in table:
        raise ValueError(f"{test_windows}: written by an older ferseq (no frames/padded columns); rerun the windows "
                         "stage (snakemake --forcerun windows)")
    splits = pd.read_parquet(splits_path, columns=["fold", "segment_id", "unit"])
    units = dict(splits.loc[splits["fold"] == fold, ["segment_id", "unit"]].itertuples(index=False))
    with torch.inference_mode():
        x = torch.tensor(windows.inputs(matrices, features))
        # In chunks: a corpus's test windows need not fit the model's activations at once.
        sequence = torch.cat([model(chunk).softmax(dim=1) for chunk in x.split(4096)]).numpy() if len(x) else \
            np.zeros((0, len(classes)), np.float32)
    cnn = matrices["probs"]
    landmarks = landmark_baseline.predict_proba(baseline, matrices["landmarks"], len(classes))
    names = methods(features)
    ids, probs = build(table, matrices[windows.FRAMES], {"per_frame": cnn, "landmarks": landmarks},
                       {"aggregation": cnn.mean(axis=1), sequence_method(features): sequence,
                        "landmarks_aggregation": landmarks.mean(axis=1)}, fold, units)
    write(out_path, ids, probs, classes, names)
    return ids, probs, names


def labels(ids: pd.DataFrame, classes: list[str]) -> np.ndarray:
    """Class indices of the items' true labels (one of ``classes`` each)."""
    codes = pd.Categorical(ids["label"], categories=classes).codes
    if (codes < 0).any():
        raise ValueError(f"labels {sorted(set(ids['label'][codes < 0]))} are not among the classes {classes}")
    return codes.astype(np.int64)

