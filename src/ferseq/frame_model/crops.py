"""Face crops as network input: decode the encoded crops of the faces stage, resize, augment.

Crops stay encoded (JPEG/PNG bytes) until a DataLoader worker needs them, so
memory holds the compressed crops, never decoded pixels. The bytes live in one
Arrow buffer rather than a list of Python ``bytes``: forked workers then share
its pages instead of copying them as reference counts are touched.

Images leave here as uint8 RGB tensors (3, size, size); the model converts and
normalises them (on the GPU when there is one, so that 4x fewer bytes cross).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader, Dataset

from ferseq.faces import landmark_features

SHIFT = 0.08  # largest augmentation shift, fraction of the side
BRIGHTNESS = 0.2  # augmentation scales intensities by a factor in [1 - B, 1 + B]


def decode(data: bytes | memoryview | np.ndarray, size: int) -> np.ndarray:
    """An encoded crop as an RGB uint8 array (size, size, 3)."""
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError("a face crop cannot be decoded (corrupt JPEG/PNG bytes)")
    if image.shape[:2] != (size, size):
        shrink = image.shape[0] > size
        image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def augment(image: np.ndarray) -> np.ndarray:
    """Light augmentation: horizontal flip, a small shift and a brightness change.

    Random numbers come from torch, which the DataLoader seeds per worker from
    its generator, so an epoch's augmentations follow from the config seed.
    """
    size = image.shape[0]
    flip, shift_x, shift_y, scale = torch.rand(4).tolist()
    if flip < 0.5:
        image = image[:, ::-1]
    max_shift = SHIFT * size
    move = np.float32([[1, 0, (2 * shift_x - 1) * max_shift], [0, 1, (2 * shift_y - 1) * max_shift]])
    image = cv2.warpAffine(np.ascontiguousarray(image), move, (size, size), borderMode=cv2.BORDER_REFLECT_101)
    factor = 1 + BRIGHTNESS * (2 * scale - 1)
    return np.clip(image.astype(np.float32) * factor, 0, 255).astype(np.uint8)


def loader(dataset: Dataset, num_workers: int, pin_memory: bool = False, **kwargs) -> DataLoader:
    """A DataLoader whose workers decode crops on one OpenCV thread each.

    The workers are the parallelism. OpenCV's thread pool is switched off here,
    in the parent, before the workers fork: a child that inherits a live pool
    deadlocks as soon as it touches it (seen with cv2.setNumThreads in a worker).
    """
    cv2.setNumThreads(1)
    # Persistent workers: an epoch loop does not fork new ones every epoch.
    return DataLoader(dataset, num_workers=num_workers, pin_memory=pin_memory, persistent_workers=num_workers > 0, **kwargs)


def flat_bytes(crops: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """The bytes of every crop of a binary Arrow array without nulls, back to back (read-only, no copy),
    and the n + 1 offsets of the crops in them."""
    crops = crops.cast(pa.large_binary())
    if len(crops) == 0:
        return np.zeros(0, np.uint8), np.zeros(1, np.int64)
    _, offsets, data = crops.buffers()
    offsets = np.frombuffer(offsets, np.int64)[crops.offset:crops.offset + len(crops) + 1]
    data = np.frombuffer(data, np.uint8) if data is not None else np.zeros(0, np.uint8)
    return data[offsets[0]:offsets[-1]], offsets - offsets[0]


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """HWC uint8 -> CHW uint8 tensor."""
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))


class CropDataset(Dataset):
    """Labelled encoded crops held in memory: item i is (uint8 image (3, size, size), label)."""

    def __init__(self, crops: pa.Array | pa.ChunkedArray, labels: np.ndarray, size: int, augment: bool = False):
        if isinstance(crops, pa.Array):
            crops = pa.chunked_array([crops])
        # One large_binary array: one buffer, 64-bit offsets (more than 2 GB of crops is fine).
        self.crops = crops.cast(pa.large_binary()).combine_chunks()
        self.labels = np.asarray(labels, dtype=np.int64)
        if len(self.crops) != len(self.labels):
            raise ValueError(f"{len(self.crops)} crops but {len(self.labels)} labels")
        self.size, self.augment = size, augment

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = decode(self.crops[index].as_buffer(), self.size)
        if self.augment:
            image = augment(image)
        return to_tensor(image), int(self.labels[index])


def face_rows(table: pa.Table) -> pa.Table:
    """The rows of a faces table that have a face (and so a crop)."""
    return table.filter(pc.and_(table["face_found"], pc.is_valid(table["crop"])))


class RowGroupCrops(Dataset):
    """One faces Parquet file, one item per row group: (frames, segment_ids, normalised landmarks (n, 136),
    uint8 images (n, 3, size, size)).

    Only face rows are returned. Each worker opens the file itself and reads
    just its row groups, so every frame is read and decoded once and memory
    holds a few row groups (256 rows from the faces stage) at a time. With
    ``encoded``, the crops are not decoded: the last item is (bytes, offsets),
    the row group's encoded crops back to back as a uint8 tensor and their n + 1
    offsets, for :func:`ferseq.frame_model.device_crops.decode_batch` on the model's device. With
    ``segments``, only the rows of those segments (the others' crops are not decoded).
    """

    def __init__(self, path: str | Path, size: int, encoded: bool = False, segments: Iterable[int] | None = None):
        self.path, self.size, self.encoded = Path(path), size, encoded
        self.segments = None if segments is None else pa.array(sorted(set(segments)), pa.int64())
        with pq.ParquetFile(self.path) as parquet:
            self.row_groups = parquet.metadata.num_row_groups
        self._file: tuple[int, pq.ParquetFile] | None = None

    def __len__(self) -> int:
        return self.row_groups

    def _parquet(self) -> pq.ParquetFile:
        # One handle per process: a handle opened before a fork must not be shared by workers.
        if self._file is None or self._file[0] != os.getpid():
            self._file = (os.getpid(), pq.ParquetFile(self.path))
        return self._file[1]

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, Any]:
        table = self._parquet().read_row_group(index, columns=["frame", "segment_id", "face_found", "landmarks", "crop"])
        table = face_rows(table)
        if self.segments is not None:
            table = table.filter(pc.is_in(table["segment_id"], value_set=self.segments))
        points = table["landmarks"].combine_chunks().flatten().to_numpy(zero_copy_only=False)
        crops = table["crop"].combine_chunks()
        if self.encoded:
            data, offsets = flat_bytes(crops)
            images: Any = (torch.from_numpy(data.copy()), torch.from_numpy(offsets))  # copied: Arrow's memory is read-only
        else:
            images = np.empty((len(table), 3, self.size, self.size), np.uint8)
            for i in range(len(table)):
                images[i] = decode(crops[i].as_buffer(), self.size).transpose(2, 0, 1)
            images = torch.from_numpy(images)
        return (table["frame"].to_numpy().astype(np.int32), table["segment_id"].to_numpy().astype(np.int64),
                landmark_features.normalise(points.reshape(len(table), landmark_features.WIDTH)), images)
