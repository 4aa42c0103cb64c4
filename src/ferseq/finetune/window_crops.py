"""The face crops of a fold's windows, as batches of uint8 windows (batch, length, 3, size, size) with their labels.

A windows file (:mod:`ferseq.sequences.windows`) names each position's frame (``frames``); its crop is the faces
file's crop of that frame, or, for a frame without a face (``faces.missing_face: repeat``), of the face frame the
windows stage took in its place (the last one before it in the segment, else the first after). The crops stay in
the faces files: a split holds where each face crop is (:class:`ferseq.frame_model.crops.FaceRows`, a few bytes a
crop) and each window as a row of crop indices; batches read the row groups as they go
(:class:`ferseq.frame_model.crops.StreamBatches`: train windows in a new order each epoch, row groups shuffled in
blocks, windows shuffled within a block) and are decoded by OpenCV in DataLoader workers, or in one batch on the
model's device (nvJPEG on CUDA). Both paths take an epoch's order from the same generator, so they train on the same
batches. No augmentation: a window's frames would need one shared transformation, which the frame model's per-crop
augmentation is not.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from ferseq.common.errors import FerseqError
from ferseq.frame_model import crops as cpu_crops
from ferseq.frame_model import device_crops
from ferseq.sequences import windows

BUFFER = 4096  # crops a shuffle block holds unless the caller says (frame_model.shuffle_buffer)


class WindowCropsError(FerseqError, ValueError):
    """A window whose crops are not in the faces files (they changed since the windows were cut)."""


@dataclass
class WindowCrops:
    """One split's windows: their crops' ``source`` (read as needed), ``rows`` (W, L) crop indices into it, class
    indices ``labels`` (W,) and the windows' ``window_id`` (W,)."""

    source: cpu_crops.CropSource
    rows: np.ndarray
    labels: np.ndarray
    window_ids: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


def read(windows_path: str | Path, faces: Mapping[str, str | Path], classes: Sequence[str]) -> WindowCrops:
    """The windows of one split file with where their crops are in ``faces`` (video_id -> faces Parquet file)."""
    table, matrices = windows.read(windows_path, [windows.FRAMES])
    frames = matrices[windows.FRAMES]
    index = {name: i for i, name in enumerate(classes)}
    unknown = sorted(set(table["label"]) - set(index))
    if unknown:
        raise WindowCropsError(f"{windows_path}: labels {unknown} are not in classes.names {list(classes)}")
    videos = sorted(set(table["video_id"]))
    for video_id in videos:
        if video_id not in faces:
            raise WindowCropsError(f"{windows_path}: no faces file given for video {video_id!r}")
    face_rows = cpu_crops.index_face_rows([faces[v] for v in videos], table["segment_id"].tolist())
    by_frame = np.lexsort((face_rows.frame, face_rows.segment_id))  # face rows in (segment, frame) order
    seg_ids, face_frames = face_rows.segment_id[by_frame], face_rows.frame[by_frame].astype(np.int64)
    rows = np.zeros(frames.shape, np.int64)
    for i, (video_id, segment_id) in enumerate(zip(table["video_id"], table["segment_id"].to_numpy())):
        lo, hi = np.searchsorted(seg_ids, [segment_id, segment_id + 1])
        if hi == lo:
            raise WindowCropsError(f"{windows_path}: window {int(table['window_id'].iloc[i])} (video {video_id!r}, "
                                   f"segment {segment_id}): its frames have no face crop in {faces[video_id]}; "
                                   "the faces files changed after the windows were cut: rerun the workflow")
        # the windows stage's choice of face frame for each position (windows.segment_frames)
        found = np.clip(np.searchsorted(face_frames[lo:hi], frames[i], side="right") - 1, 0, None)
        rows[i] = by_frame[lo + found]
    return WindowCrops(cpu_crops.ParquetCrops(face_rows), rows, table["label"].map(index).to_numpy(np.int64),
                       table["window_id"].to_numpy(np.int64))


def batches(windows_crops: WindowCrops, size: int, batch_size: int, device: torch.device, *, on_device: bool,
            num_workers: int = 0, generator: torch.Generator | None = None, buffer: int = BUFFER) -> Any:
    """An epoch's batches of ``windows_crops`` (``batch_size`` windows each): in a new order each epoch drawn from
    ``generator`` (train; blocks of about ``buffer`` crops) or in order (val, test); decoded on ``device``
    (``on_device``) or by OpenCV in ``num_workers`` loader workers."""
    stream = cpu_crops.StreamBatches(windows_crops.source, windows_crops.rows, windows_crops.labels, batch_size,
                                     generator, buffer)
    if on_device:
        return device_crops.DeviceBatches(stream, size, device)
    return cpu_crops.stream_loader(stream, size, False, num_workers, device.type == "cuda")
