"""Every method's class probabilities on a fold's test data, at frame, window and segment level, in one file.

The evaluation scores nothing that is not in ``predictions.parquet``: one row per
scored item with its fold, resampling unit (the split's unit: a person unless
``split.unit`` says otherwise), subject, video, segment, true label, and one
probability vector per method (NaN where the method does not score that level).

Methods (:func:`methods`): the frame CNN per frame (``per_frame``), frame
aggregation (mean of its softmax over a window, ``aggregation``), the selected
sequence model of each family the grid trained on the window (named by what it
reads and its family, e.g. ``cnn_lstm`` "CNN-LSTM", ``cnn_transformer``
"CNN-Transformer"), the CNN-LSTM fine-tuned end to end when the finetune stage
ran (``cnn_lstm_finetuned``), and the landmark baseline per frame and as its
window mean. Levels:

- ``window``: the test windows of ``windows.length`` frames (the reference's
  items). Frame methods do not score windows.
- ``frame``: each frame of those windows, once. Window methods do not score frames.
- ``segment`` (a clip, for clip datasets): every test segment of the fold's
  split, none left out. A window method gives it the mean of its windows'
  probabilities, a frame method the mean of its frames'. A segment shorter
  than one window is scored here only, through the one window the windows
  stage padded by repeating its last frame (``short_segment``). A segment
  without any usable face frame has no window and no frame: every method gives
  it the fold's training prior (the class frequencies of the training split's
  segments), so it counts as right when its label is the most frequent
  training class and as wrong otherwise, as a model that knows nothing about
  the clip would score; ``face_missing`` marks its row. Published benchmark
  numbers score every clip of the test list, so dropping such clips would
  score an easier test set.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ferseq.common.outputs import atomic_path
from ferseq.sequences import windows

log = logging.getLogger(__name__)

LEVELS = ("frame", "window", "segment")
FRAME_METHODS = ("per_frame", "landmarks")
#: What a sequence model's row is named by, by ``windows.features``: (key prefix, name pattern, what it reads).
INPUTS = {"embedding": ("cnn", "CNN-{}", "CNN embeddings"), "landmarks": ("landmark", "landmark-{}", "landmarks"),
          "both": ("cnn_landmark", "CNN+landmark {}", "CNN embeddings + landmarks")}
#: Each family of sequence models (:data:`ferseq.sequence_model.grid_plan.FAMILIES`) as a row name says it.
FAMILY_NAMES = {"lstm": "LSTM", "gru": "GRU", "transformer": "Transformer"}
#: The sequence model's row, by ``windows.features``, for the reference's LSTMs: key and name say what it reads.
SEQUENCE_METHODS = {features: (f"{prefix}_lstm", pattern.format("LSTM"))
                    for features, (prefix, pattern, _) in INPUTS.items()}
#: The CNN-LSTM fine-tuned end to end (the finetune stage), when it ran: a window method.
FINETUNED = ("cnn_lstm_finetuned", "CNN-LSTM fine-tuned")
FRAME_READS = {"per_frame": "frame CNN", "aggregation": "frame CNN", "landmarks": "landmarks",
               "landmarks_aggregation": "landmarks", FINETUNED[0]: "face crops"}
ID_COLUMNS = ["level", "fold", "unit", "subject", "video_id", "segment_id", "window_id", "frame", "label",
              "short_segment", "face_missing"]
#: The columns of a test segment without any face frame, given to :func:`build` (the splits table's).
NO_FACE_COLUMNS = ["segment_id", "video_id", "subject", "label"]


def sequence_method(features: str, family: str = "lstm") -> str:
    """The method key of a sequence-model family for ``windows.features``, e.g. ``cnn_lstm``, ``landmark_gru``."""
    return f"{INPUTS[features][0]}_{family}"


def sequence_name(features: str, family: str = "lstm") -> str:
    """The row name of a sequence-model family for ``windows.features``, e.g. ``CNN-LSTM``, ``CNN-Transformer``."""
    return INPUTS[features][1].format(FAMILY_NAMES[family])


def sequence_rows(names: Iterable[str]) -> list[tuple[str, str, str]]:
    """``(key, features, family)`` of each sequence-model row among method keys, in their order."""
    found = []
    for key in names:
        for features, (prefix, _, _) in sorted(INPUTS.items(), key=lambda item: -len(item[1][0])):
            family = key[len(prefix) + 1:] if key.startswith(prefix + "_") else None
            if family in FAMILY_NAMES:
                found.append((key, features, family))
                break
    return found


def reads(method: str) -> str:
    """What a method reads per frame (a sequence model: its windows.features)."""
    rows = sequence_rows([method])
    return INPUTS[rows[0][1]][2] if rows else FRAME_READS.get(method, "")


def methods(features: str = "embedding", families: Sequence[str] = ("lstm",), finetuned: bool = False) -> dict[str, str]:
    """``key -> name`` of every evaluated method, in table order: the frame methods, one sequence model per family
    of the grid (the reference's LSTMs first), the fine-tuned CNN-LSTM when it ran, the landmark baseline."""
    out = {"per_frame": "per-frame CNN", "aggregation": "frame aggregation"}
    out.update({sequence_method(features, f): sequence_name(features, f) for f in families})
    if finetuned:
        out[FINETUNED[0]] = FINETUNED[1]
    out.update({"landmarks": "landmark baseline, per frame", "landmarks_aggregation": "landmark baseline, window mean"})
    return out


def native_level(method: str) -> str:
    """The level a method scores by itself: frame for the per-frame methods, else window (the reference's)."""
    return "frame" if method in FRAME_METHODS else "window"


def method_levels(method: str) -> tuple[str, str]:
    """The levels a method is scored at: its own and the segment."""
    return native_level(method), "segment"


def pairs(names: Iterable[str]) -> list[tuple[str, str]]:
    """The paired comparisons ``(a, b)`` (a minus b) among the method keys ``names``, first the verdict's.

    The first sequence model (the reference's LSTMs when the grid has them) is
    compared with the frame methods of its own input (both inputs together with
    each); every other family and the fine-tuned CNN-LSTM with the first
    sequence model and with frame aggregation.
    """
    names = list(names)
    rows = sequence_rows(names)
    if not rows:
        raise ValueError(f"no sequence model among the methods {names}")
    (first, features, _), others = rows[0], [key for key, _, _ in rows[1:]]
    if features == "embedding":
        frame = ["aggregation", "per_frame"]
    elif features == "landmarks":
        frame = ["landmarks_aggregation", "landmarks"]
    else:
        frame = ["aggregation", "landmarks_aggregation", "per_frame"]
    out = [(first, b) for b in frame]
    for key in others + ([FINETUNED[0]] if FINETUNED[0] in names else []):
        out += [(key, first), (key, frame[0])]
    return out + [("aggregation", "per_frame"), ("per_frame", "landmarks"), ("landmarks_aggregation", "landmarks")]


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
          window_probs: dict[str, np.ndarray], fold: int, units: dict[int, str],
          no_face: pd.DataFrame | None = None,
          prior: np.ndarray | None = None) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """The predictions of one fold's test windows at every level.

    ``table``: the test windows (segment_id, video_id, subject, label, padded,
    window_id); ``frames``: (W, L) frame number of each position;
    ``frame_probs``: frame method -> (W, L, C) per position; ``window_probs``:
    window method -> (W, C); ``units``: segment_id -> resampling unit.
    ``no_face``: the fold's test segments without any face frame (so without a
    window; :data:`NO_FACE_COLUMNS`), scored at segment level by every method
    with ``prior`` ((C,) class probabilities: the training prior) and flagged
    ``face_missing``.
    Returns the id table (:data:`ID_COLUMNS`) and method -> (N, C) probabilities
    with NaN rows where the method does not score the item's level.
    """
    n_windows, length = frames.shape
    num_classes = next(iter({**frame_probs, **window_probs}.values())).shape[-1]
    no_face = pd.DataFrame(columns=NO_FACE_COLUMNS) if no_face is None else no_face[NO_FACE_COLUMNS]
    n_missing = len(no_face)
    if n_missing:
        if prior is None or np.shape(prior) != (num_classes,):
            raise ValueError(f"fold {fold}: {n_missing} test segment(s) without a face need the training prior "
                             f"({num_classes} class probabilities), got {None if prior is None else np.shape(prior)}")
        both = sorted(set(no_face["segment_id"]) & set(table["segment_id"]))[:5]
        if both:
            raise ValueError(f"fold {fold}: segment(s) {both} have test windows, so they are not without a face")
    padded = table["padded"].to_numpy(bool)
    # Every scored segment's id columns, the windows' rows first, then those of the segments without a face.
    source = pd.concat([table[NO_FACE_COLUMNS], no_face], ignore_index=True) if n_missing else table[NO_FACE_COLUMNS]
    segment_ids = source["segment_id"].to_numpy(np.int64)
    seg_keys, seg_of_window = np.unique(segment_ids[:n_windows], return_inverse=True)
    first_window = np.unique(seg_of_window, return_index=True)[1]

    # Each (segment, frame) once: a padded window repeats its last frame.
    pos_window = np.repeat(np.arange(n_windows), length)
    pos_frame = frames.reshape(-1)
    _, first_pos = np.unique(np.stack([seg_of_window[pos_window], pos_frame], axis=1), axis=0, return_index=True)
    first_pos = np.sort(first_pos)
    frame_pos = first_pos[~padded[pos_window[first_pos]]]  # frame level: the frames of full windows

    # Text columns as codes into their categories, so that picking 1.6 million frame rows stays cheap.
    text = {"subject": _categorical(source["subject"]), "video_id": _categorical(source["video_id"]),
            "label": _categorical(source["label"]), "unit": _categorical(source["segment_id"].map(units))}
    if (text["unit"].codes < 0).any() or source["segment_id"].map(units).isna().any():
        missing = sorted(set(source["segment_id"]) - set(units))[:5]
        raise ValueError(f"fold {fold}: test segment(s) {missing} have no unit in the splits table")

    def ids(level: str, rows: np.ndarray, frame: np.ndarray | None = None, window: np.ndarray | None = None,
            short: np.ndarray | None = None, face_missing: bool = False) -> pd.DataFrame:
        none = np.full(len(rows), -1, np.int64)
        columns = {name: pd.Categorical.from_codes(cat.codes[rows], cat.categories) for name, cat in text.items()}
        return pd.DataFrame({
            "level": pd.Categorical.from_codes(np.full(len(rows), LEVELS.index(level)), LEVELS),
            "fold": np.full(len(rows), fold, np.int32), **columns,
            "segment_id": segment_ids[rows],
            "window_id": none if window is None else window, "frame": none if frame is None else frame,
            "short_segment": np.zeros(len(rows), bool) if short is None else short,
            "face_missing": np.full(len(rows), face_missing, bool),
        })

    window_ids = table["window_id"].to_numpy(np.int64)
    full = np.flatnonzero(~padded)
    short = np.ones(len(seg_keys), bool)  # a segment all of whose windows are padded: it has exactly one
    np.logical_and.at(short, seg_of_window, padded)
    parts = [ids("frame", pos_window[frame_pos], pos_frame[frame_pos], window_ids[pos_window[frame_pos]]),
             ids("window", full, window=window_ids[full]),
             ids("segment", first_window, short=short),
             ids("segment", n_windows + np.arange(n_missing), face_missing=True)]
    counts = [len(frame_pos), len(full), len(seg_keys)]
    # Every method gives a segment without a face the same prior: none of them saw anything of it.
    guess = np.tile(np.asarray(prior if n_missing else np.zeros(num_classes), np.float32), (n_missing, 1))
    probs: dict[str, np.ndarray] = {}
    for name, values in frame_probs.items():
        flat = values.reshape(n_windows * length, num_classes)
        segment = _group_mean(flat[first_pos], seg_of_window[pos_window[first_pos]], len(seg_keys))
        probs[name] = np.concatenate([flat[frame_pos], np.full((counts[1], num_classes), np.nan, np.float32), segment,
                                      guess])
    for name, values in window_probs.items():
        segment = _group_mean(values, seg_of_window, len(seg_keys))
        probs[name] = np.concatenate([np.full((counts[0], num_classes), np.nan, np.float32), values[full], segment,
                                      guess])
    return pd.concat(parts, ignore_index=True)[ID_COLUMNS], probs


def training_prior(splits: pd.DataFrame, fold: int, classes: list[str]) -> np.ndarray:
    """The class frequencies of ``fold``'s training segments (the splits table's rows with split ``train``),
    in the order of ``classes``: what a model that sees nothing of a clip can best say about it."""
    train = splits.loc[(splits["fold"] == fold) & (splits["split"] == "train"), "label"].astype(str)
    codes = pd.Categorical(train, categories=classes).codes
    if not len(codes) or (codes < 0).all():
        raise ValueError(f"fold {fold}: no training segment of the classes {classes} in the splits table, so no "
                         "training prior for its test segments without a face")
    counts = np.bincount(codes[codes >= 0], minlength=len(classes)).astype(np.float64)
    return (counts / counts.sum()).astype(np.float32)


def no_face_segments(splits: pd.DataFrame, fold: int, scored: Iterable[int]) -> pd.DataFrame:
    """``fold``'s test segments (splits table) that have no test window (``scored``: the windows' segment ids):
    those without any usable face frame, with :data:`NO_FACE_COLUMNS`, by segment id."""
    test = splits.loc[(splits["fold"] == fold) & (splits["split"] == "test")]
    return test.loc[~test["segment_id"].isin(set(scored)), NO_FACE_COLUMNS].sort_values("segment_id")


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
    absent = [name for name in ID_COLUMNS if name not in arrow.column_names]
    if absent:
        raise ValueError(f"{path}: written by an older ferseq (no column(s) {', '.join(absent)}); rerun the evaluate "
                         "stage (snakemake --forcerun evaluate)")
    probs = {method: np.array(arrow.column(method).combine_chunks().flatten().to_numpy(zero_copy_only=False),
                              np.float32).reshape(arrow.num_rows, len(classes)) for method in names}
    ids = arrow.select(ID_COLUMNS).to_pandas()
    for name in CATEGORICAL:
        ids[name] = ids[name].astype("category")
    return ids, probs, classes, names


def read_window_probs(path: str | Path, window_ids: np.ndarray, classes: list[str]) -> np.ndarray:
    """A window method's probabilities computed by another stage (e.g. ``finetune/test_windows.parquet``: columns
    ``window_id`` and ``probs``), in the order of ``window_ids``; every test window must be there once."""
    table = pq.read_table(path, columns=["window_id", "probs"])
    ids = table.column("window_id").to_numpy()
    probs = np.array(table.column("probs").combine_chunks().flatten().to_numpy(zero_copy_only=False), np.float32)
    if len(ids) and probs.size != len(ids) * len(classes):
        raise ValueError(f"{path}: probabilities of {probs.size // max(len(ids), 1)} classes, config has {len(classes)}")
    probs = probs.reshape(len(ids), len(classes))
    position = pd.Series(np.arange(len(ids)), index=ids)
    if position.index.has_duplicates or set(window_ids) != set(ids):
        raise ValueError(f"{path}: does not hold every test window once ({len(ids)} rows for {len(window_ids)} test "
                         "windows); rerun the stage that wrote it")
    return probs[position.loc[window_ids].to_numpy()]


def predict_fold(test_windows: str | Path, models: dict[str, str | Path], baseline_path: str | Path,
                 splits_path: str | Path, classes: list[str], fold: int, out_path: str | Path,
                 finetuned: str | Path | None = None) -> tuple[pd.DataFrame, dict[str, np.ndarray], dict[str, str]]:
    """Run every method on a fold's test windows and write ``predictions.parquet``; return what was written.

    ``models``: family -> the selected sequence model of that family (the reference's LSTMs first);
    ``finetuned``: the fine-tuned CNN-LSTM's test window probabilities, when the finetune stage ran.
    """
    import torch

    from ferseq.evaluation import landmark_baseline
    from ferseq.sequence_model import grid_search
    from ferseq.sequences import subject_medians

    if not models:
        raise ValueError(f"fold {fold}: no sequence model to evaluate")
    loaded = {family: grid_search.load_model(path) for family, path in models.items()}
    for family, (_, checkpoint) in loaded.items():
        if checkpoint["classes"] != classes:
            raise ValueError(f"{models[family]}: trained for classes {checkpoint['classes']}, config has {classes}")
    baseline, baseline_classes = landmark_baseline.load(baseline_path)
    if baseline_classes != classes:
        raise ValueError(f"{baseline_path}: trained for classes {baseline_classes}, config has {classes}")
    table, matrices = windows.read(test_windows)
    if windows.FRAMES not in matrices or "padded" not in table:
        raise ValueError(f"{test_windows}: written by an older ferseq (no frames/padded columns); rerun the windows "
                         "stage (snakemake --forcerun windows)")
    splits = pd.read_parquet(splits_path)
    absent = [name for name in ("fold", "split", "unit", *NO_FACE_COLUMNS) if name not in splits]
    if absent:
        raise ValueError(f"{splits_path}: no column(s) {', '.join(absent)}; rerun the splits stage")
    units = dict(splits.loc[splits["fold"] == fold, ["segment_id", "unit"]].itertuples(index=False))
    # The test segments without a window (no usable face frame) are scored too, by the training prior.
    no_face = no_face_segments(splits, fold, table["segment_id"].unique())
    prior = training_prior(splits, fold, classes) if len(no_face) else None
    if len(no_face):
        log.warning("fold %d: %d of %d test segment(s) have no face frame; every method scores them by the "
                    "training prior (%s), flagged face_missing", fold, len(no_face),
                    len(no_face) + table["segment_id"].nunique(),
                    ", ".join(f"{c} {p:.3f}" for c, p in zip(classes, prior)))
    sequence_probs = {}
    for family, (model, checkpoint) in loaded.items():
        features = checkpoint.get("features", "embedding")
        inputs = matrices
        if checkpoint.get("normalise", "none") == "subject":
            medians = subject_medians.read(Path(test_windows).parent / subject_medians.FILE)
            inputs = subject_medians.normalise(matrices, table["subject"], medians, str(test_windows))
        with torch.inference_mode():
            x = torch.tensor(windows.inputs(inputs, features))
            # In chunks: a corpus's test windows need not fit the model's activations at once.
            sequence_probs[sequence_method(features, family)] = (
                torch.cat([model(chunk).softmax(dim=1) for chunk in x.split(4096)]).numpy() if len(x)
                else np.zeros((0, len(classes)), np.float32))
    cnn = matrices["probs"]
    landmarks = landmark_baseline.predict_proba(baseline, matrices["landmarks"], len(classes))
    window_probs = {"aggregation": cnn.mean(axis=1), **sequence_probs}
    if finetuned is not None:
        window_probs[FINETUNED[0]] = read_window_probs(finetuned, table["window_id"].to_numpy(np.int64), classes)
    names = methods(features, list(models), finetuned is not None)
    window_probs["landmarks_aggregation"] = landmarks.mean(axis=1)
    ids, probs = build(table, matrices[windows.FRAMES], {"per_frame": cnn, "landmarks": landmarks},
                       window_probs, fold, units, no_face, prior)
    write(out_path, ids, probs, classes, names)
    return ids, probs, names


def labels(ids: pd.DataFrame, classes: list[str]) -> np.ndarray:
    """Class indices of the items' true labels (one of ``classes`` each)."""
    codes = pd.Categorical(ids["label"], categories=classes).codes
    if (codes < 0).any():
        raise ValueError(f"labels {sorted(set(ids['label'][codes < 0]))} are not among the classes {classes}")
    return codes.astype(np.int64)

