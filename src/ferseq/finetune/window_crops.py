"""The face crops of a fold's windows, as batches of uint8 windows (batch, length, 3, size, size) with their labels.

A windows file (:mod:`ferseq.sequences.windows`) names each position's frame (``frames``); its crop is the faces
file's crop of that frame, or, for a frame without a face (``faces.missing_face: repeat``), of the face frame the
windows stage took in its place (the last one before it in the segment, else the first after). The crops stay
encoded in memory, one Arrow buffer for the split (as :mod:`ferseq.frame_model.crops` keeps them), each window a
row of indices into it; they are decoded when a batch is made: by OpenCV in DataLoader workers
(:class:`WindowDataset`), or in one batch on the model's device (:class:`DeviceWindowBatches`, nvJPEG on CUDA).
Both paths take an epoch's order from the same generator, so they train on the same batches. No augmentation: a
window's frames would need one shared transformation, which the frame model's per-crop augmentation is not.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import Dataset

from ferseq.common.errors import FerseqError
from ferseq.frame_model import crops as cpu_crops
from ferseq.frame_model import device_crops
from ferseq.sequences import windows


class WindowCropsError(FerseqError, ValueError):
    """A window whose crops are not in the faces files (they changed since the windows were cut)."""


@dataclass
class WindowCrops:
    """One split's windows: encoded crops (one large_binary array), ``rows`` (W, L) indices into it, class indices
    ``labels`` (W,) and the windows' ``window_id`` (W,)."""

    crops: pa.Array
    rows: np.ndarray
    labels: np.ndarray
    window_ids: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


def read(windows_path: str | Path, faces: Mapping[str, str | Path], classes: Sequence[str]) -> WindowCrops:
    """The windows of one split file with their crops from ``faces`` (video_id -> faces Parquet file)."""
    table, matrices = windows.read(windows_path, [windows.FRAMES])
    frames = matrices[windows.FRAMES]
    index = {name: i for i, name in enumerate(classes)}
    unknown = sorted(set(table["label"]) - set(index))
    if unknown:
        raise WindowCropsError(f"{windows_path}: labels {unknown} are not in classes.names {list(classes)}")
    rows = np.zeros(frames.shape, np.int64)
    parts, start = [], 0
    for video_id, mine in table.groupby("video_id", sort=True):
        if video_id not in faces:
            raise WindowCropsError(f"{windows_path}: no faces file given for video {video_id!r}")
        faces_table = pq.read_table(faces[video_id], columns=["segment_id", "frame", "face_found", "crop"],
                                    filters=[("segment_id", "in", sorted(set(mine["segment_id"].tolist())))])
        faces_table = cpu_crops.face_rows(faces_table).sort_by([("segment_id", "ascending"), ("frame", "ascending")])
        seg_ids = faces_table["segment_id"].to_numpy()
        face_frames = faces_table["frame"].to_numpy().astype(np.int64)
        for i, segment_id in zip(mine.index, mine["segment_id"].to_numpy()):
            lo, hi = np.searchsorted(seg_ids, [segment_id, segment_id + 1])
            # the windows stage's choice of face frame for each position (windows.segment_frames)
            found = np.clip(np.searchsorted(face_frames[lo:hi], frames[i], side="right") - 1, 0, None)
            if hi == lo:
                raise WindowCropsError(f"{windows_path}: window {int(table.at[i, 'window_id'])} (video {video_id!r}, "
                                       f"segment {segment_id}): its frames have no face crop in {faces[video_id]}; "
                                       "the faces files changed after the windows were cut: rerun the workflow")
            rows[i] = start + lo + found
        parts.append(faces_table["crop"])
        start += len(faces_table)
    chunks = [c for part in parts for c in part.cast(pa.large_binary()).chunks]
    crops = pa.chunked_array(chunks, pa.large_binary()).combine_chunks() if chunks else pa.array([], pa.large_binary())
    return WindowCrops(crops, rows, table["label"].map(index).to_numpy(np.int64),
                       table["window_id"].to_numpy(np.int64))


class EpochBatches:
    """The window indices of each batch of an epoch: with ``generator``, a permutation drawn from it when the epoch's
    first batch is taken (a generator function: DataLoader calls iter() more than once), else in order."""

    def __init__(self, n: int, batch_size: int, generator: torch.Generator | None = None):
        self.n, self.batch_size, self.generator = n, batch_size, generator

    def __len__(self) -> int:
        return -(-self.n // self.batch_size)

    def __iter__(self) -> Iterator[np.ndarray]:
        order = torch.randperm(self.n, generator=self.generator) if self.generator is not None else torch.arange(self.n)
        for start in range(0, self.n, self.batch_size):
            yield order[start:start + self.batch_size].numpy()


class WindowDataset(Dataset):
    """Item = one batch of windows (indices): (uint8 images (batch, L, 3, size, size), labels), decoded by OpenCV."""

    def __init__(self, windows_crops: WindowCrops, size: int):
        self.windows, self.size = windows_crops, size

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, batch: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self.windows.rows[batch]
        images = np.empty((*rows.shape, 3, self.size, self.size), np.uint8)
        for index, row in np.ndenumerate(rows):
            images[index] = cpu_crops.decode(self.windows.crops[int(row)].as_buffer(), self.size).transpose(2, 0, 1)
        return torch.from_numpy(images), torch.from_numpy(self.windows.labels[batch])


class DeviceWindowBatches:
    """The same batches as a loader of :class:`WindowDataset`, decoded in the calling process on ``device``
    (:func:`ferseq.frame_model.device_crops.decode_batch`: one call per batch of batch x L crops)."""

    def __init__(self, windows_crops: WindowCrops, size: int, batches: EpochBatches, device: torch.device):
        self.windows, self.size, self.batches, self.device = windows_crops, size, batches, torch.device(device)
        self.data, self.offsets = cpu_crops.flat_bytes(windows_crops.crops)
        self.labels = torch.tensor(windows_crops.labels).to(self.device)  # a copy: the array may be read-only

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for batch in self.batches:
            rows = self.windows.rows[batch]
            images = device_crops.decode_batch(device_crops.gather(self.data, self.offsets, rows.reshape(-1)),
                                               self.size, self.device)
            yield images.view(*rows.shape, 3, self.size, self.size), self.labels[device_crops.upload(torch.from_numpy(batch), self.device)]


def batches(windows_crops: WindowCrops, size: int, batch_size: int, device: torch.device, *, on_device: bool,
            num_workers: int = 0, generator: torch.Generator | None = None) -> Any:
    """An epoch's batches of ``windows_crops`` (``batch_size`` windows each): shuffled by ``generator`` (train) or in
    order (val, test); decoded on ``device`` (``on_device``) or by OpenCV in ``num_workers`` loader workers."""
    order = EpochBatches(len(windows_crops), batch_size, generator)
    if on_device:
        return DeviceWindowBatches(windows_crops, size, order, device)
    return cpu_crops.loader(WindowDataset(windows_crops, size), num_workers, device.type == "cuda", batch_size=None,
                            sampler=order)
