"""Each person's median features, and windows normalised by them (``windows.normalise: subject``).

A person's median is taken per feature (each of the 512 embedding dimensions
and each of the 136 landmark coordinates) over all of their face frames in the
fold's feature store: every split and every segment, labels unused. Test people
are therefore normalised from their own frames too (transductive: the test
frames are seen, their labels never), as expressions are measured against each
person's own resting face in face analysis (OpenFace's person-specific
normalisation). With ``normalise: subject`` the sequence models read each
frame's features minus its person's median; the frame CNN's probabilities and
the frame methods are left as they are.

The windows stage writes ``subject_medians.parquet`` beside the windows of every
fold, whatever the setting, so that switching it retrains the grid only. Videos
are read one at a time; a person's frames are held only until their last video
has been read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ferseq.common.outputs import atomic_path

MODES = ("none", "subject")
#: The per-frame features that are normalised (the inputs of windows.features); probs are not.
COLUMNS = ("embedding", "landmarks")
FILE = "subject_medians.parquet"


def mode(config: dict) -> str:
    """``windows.normalise`` of a config (``none`` when absent), checked."""
    value = config.get("windows", {}).get("normalise", "none")
    if value not in MODES:
        raise ValueError(f"windows.normalise: {value!r} is not one of {list(MODES)}")
    return value


class MedianCollector:
    """Collects each person's face-frame features, video by video, and takes a person's median once all of their
    videos are in (``videos``: subject -> the video ids whose frames are theirs)."""

    def __init__(self, videos: dict[str, set[str]]):
        self.pending = {subject: set(ids) for subject, ids in videos.items()}
        self.subjects_of: dict[str, set[str]] = {}
        for subject, ids in videos.items():
            for video in ids:
                self.subjects_of.setdefault(video, set()).add(subject)
        self.frames: dict[str, dict[str, list[np.ndarray]]] = {}
        self.medians: dict[str, dict[str, np.ndarray]] = {}
        self.counts: dict[str, int] = {}

    def add(self, video_id: str, subjects: np.ndarray, per_frame: dict[str, np.ndarray]) -> None:
        """One video's face frames: ``subjects`` (N,) the person of each row of the ``per_frame`` matrices."""
        for subject in np.unique(subjects):
            rows = subjects == subject
            held = self.frames.setdefault(str(subject), {name: [] for name in COLUMNS if name in per_frame})
            for name in held:
                held[name].append(per_frame[name][rows])
        for subject in self.subjects_of.get(video_id, ()):
            pending = self.pending[subject]
            pending.discard(video_id)
            if not pending and subject in self.frames:
                self._finish(subject)

    def _finish(self, subject: str) -> None:
        held = self.frames.pop(subject)
        self.medians[subject] = {name: np.median(np.concatenate(parts), axis=0).astype(np.float32)
                                 for name, parts in held.items()}
        self.counts[subject] = sum(len(part) for part in next(iter(held.values())))

    def table(self) -> pd.DataFrame:
        """Every person's medians (those whose videos were not all read too): subject, frames, one column per feature."""
        for subject in list(self.frames):
            self._finish(subject)
        subjects = sorted(self.medians)
        return pd.DataFrame({"subject": subjects, "frames": [self.counts[s] for s in subjects],
                             **{name: [self.medians[s][name] for s in subjects]
                                for name in COLUMNS if subjects and name in self.medians[subjects[0]]}})


def write(path: str | Path, table: pd.DataFrame, widths: dict[str, int]) -> None:
    """Write the medians table (subject, frames, a fixed-size list column per feature of ``widths``)."""
    columns = {"subject": pa.array(table["subject"].astype(str).tolist(), pa.string()),
               "frames": pa.array(table["frames"].to_numpy(np.int64), pa.int64())}
    for name, width in widths.items():
        values = np.stack(table[name].to_list()).reshape(-1) if len(table) else np.empty(0, np.float32)
        columns[name] = pa.FixedSizeListArray.from_arrays(pa.array(values.astype(np.float32), pa.float32()), width)
    with atomic_path(path) as tmp:
        pq.write_table(pa.table(columns), tmp)


def read(path: str | Path) -> tuple[list[str], dict[str, np.ndarray]]:
    """A medians file as (subjects, feature -> (S, D) medians in the subjects' order)."""
    arrow = pq.read_table(path)
    subjects = arrow.column("subject").to_pylist()
    medians = {}
    for name in COLUMNS:
        if name in arrow.column_names:
            width = arrow.schema.field(name).type.list_size
            flat = arrow.column(name).combine_chunks().flatten().to_numpy(zero_copy_only=False)
            medians[name] = flat.reshape(len(subjects), width).astype(np.float32, copy=False)
    return subjects, medians


def normalise(matrices: dict[str, np.ndarray], subjects: Iterable[str],
              medians: tuple[list[str], dict[str, np.ndarray]], where: str = "") -> dict[str, np.ndarray]:
    """Windows' matrices (name -> (W, L, D)) with each window's person's median subtracted from its
    embedding and landmarks (other matrices as they are); ``subjects``: the person of each window."""
    names, values = medians
    index = {name: i for i, name in enumerate(names)}
    subjects = list(map(str, subjects))
    missing = sorted(set(subjects) - set(index))
    if missing:
        raise ValueError(f"{where or 'windows'}: no median features for subject(s) {missing[:5]}: the medians file "
                         f"was written from another feature store; rerun the windows stage")
    rows = np.array([index[s] for s in subjects], np.int64)
    out = dict(matrices)
    for name in COLUMNS:
        if name in matrices:
            out[name] = matrices[name] - values[name][rows][:, None, :]
    return out


def frame_medians(per_frame: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One person's medians from their frames' features (name -> (N, D)): what ``ferseq predict`` uses, taking
    the frames of the video it is given as that person's."""
    return {name: np.median(per_frame[name], axis=0).astype(np.float32) for name in COLUMNS if name in per_frame}
