"""Face crops as network input: read the encoded crops of the faces stage as they go, decode, resize, augment.

Training streams its crops (:class:`StreamBatches`): an index of where each
face crop lies (file, row group, row; a few bytes a crop, :func:`index_face_rows`)
is all a job holds for its whole fold; an epoch reads the row groups of the
faces files in a shuffled order, a block of them at a time (about
``shuffle_buffer`` crops), and shuffles the crops within each block; each row
group leaves memory once its last batch has been made. Crops stay encoded (JPEG/PNG bytes) until
a DataLoader worker (or the model's device) decodes them, so memory holds a
bounded buffer of compressed crops, never the fold's, and never decoded pixels.

Images leave here as uint8 RGB tensors (3, size, size); the model converts and
normalises them (on the GPU when there is one, so that 4x fewer bytes cross).
"""

from __future__ import annotations

import os
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, NamedTuple, Protocol, Sequence

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


class CropSource(Protocol):
    """Encoded crops in units (row groups) read one at a time: crop ``i`` is in unit ``unit_of[i]``; the crops of a
    unit are consecutive (``starts[u]`` to ``starts[u + 1]``)."""

    starts: np.ndarray  # (units + 1,) first crop of each unit, then the number of crops

    def read(self, unit: int) -> tuple[Any, np.ndarray, np.ndarray]:
        """The unit's crops: (what keeps the memory alive, bytes back to back, their n + 1 offsets)."""


def unit_of(source: CropSource, crops: np.ndarray) -> np.ndarray:
    """The unit of each crop index in ``crops`` (any shape)."""
    return np.searchsorted(source.starts, crops, side="right") - 1


class MemoryCrops:
    """Encoded crops already in memory (an Arrow binary array), in units of ``unit_size`` crops: the benchmarks' and
    the GPU checks' source, streamed like a faces file."""

    def __init__(self, crops: pa.Array | pa.ChunkedArray, unit_size: int = 256):
        if isinstance(crops, pa.ChunkedArray):
            crops = crops.cast(pa.large_binary()).combine_chunks() if crops.num_chunks else pa.array([], pa.large_binary())
        self.crops = crops.cast(pa.large_binary())
        self.starts = np.append(np.arange(0, len(self.crops), unit_size), len(self.crops)).astype(np.int64)

    def read(self, unit: int) -> tuple[Any, np.ndarray, np.ndarray]:
        part = self.crops.slice(self.starts[unit], self.starts[unit + 1] - self.starts[unit])
        return (part, *flat_bytes(part))


@dataclass
class FaceRows:
    """The face rows (face found, crop present) of faces Parquet files, in file, row group and row order, without
    their crops: ``groups`` (path, row group) per unit, and per face row its ``unit``, ``row`` (in its row group),
    ``segment_id`` and ``frame``: about 24 bytes a crop, all that a training job holds for its whole fold."""

    groups: list[tuple[str, int]]
    unit: np.ndarray
    row: np.ndarray
    segment_id: np.ndarray
    frame: np.ndarray

    def __len__(self) -> int:
        return len(self.unit)

    def take(self, rows: np.ndarray) -> FaceRows:
        """The rows ``rows`` (in increasing order), with the same units."""
        return FaceRows(self.groups, self.unit[rows], self.row[rows], self.segment_id[rows], self.frame[rows])


def index_face_rows(paths: Sequence[str | Path], segments: Iterable[int] | None = None) -> FaceRows:
    """Where the face rows of ``paths`` (of ``segments`` only, if given) are, read one row group at a time.

    The crop column is read only where the row group's statistics do not rule out a missing crop (the faces stage
    writes a crop for every face row, so a row group whose crops have no nulls needs just ``face_found``).
    """
    wanted = None if segments is None else pa.array(sorted(set(int(s) for s in segments)), pa.int64())
    groups: list[tuple[str, int]] = []
    parts: list[tuple[np.ndarray, ...]] = []
    for path in paths:
        with pq.ParquetFile(path) as parquet:
            crop_column = parquet.schema_arrow.get_field_index("crop")
            for group in range(parquet.metadata.num_row_groups):
                stats = parquet.metadata.row_group(group).column(crop_column).statistics
                nulls = stats is None or not stats.has_null_count or stats.null_count > 0
                table = parquet.read_row_group(group, columns=["segment_id", "frame", "face_found"]
                                               + (["crop"] if nulls else []))
                keep = table["face_found"]
                if nulls:
                    keep = pc.and_(keep, pc.is_valid(table["crop"]))
                if wanted is not None:
                    keep = pc.and_(keep, pc.is_in(table["segment_id"], value_set=wanted))
                rows = np.flatnonzero(keep.to_numpy(zero_copy_only=False))
                if len(rows):  # only the light columns of the kept rows stay
                    parts.append((np.full(len(rows), len(groups), np.int32), rows.astype(np.int32),
                                  table["segment_id"].to_numpy()[rows].astype(np.int64),
                                  table["frame"].to_numpy()[rows].astype(np.int32)))
                    groups.append((str(path), group))
                del table
    if not parts:
        return FaceRows(groups, np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0, np.int64), np.zeros(0, np.int32))
    return FaceRows(groups, *(np.concatenate(columns) for columns in zip(*parts)))


class ParquetCrops:
    """The crops of :class:`FaceRows` (a selection of them), read from the faces files one row group at a time."""

    def __init__(self, rows: FaceRows):
        if len(rows) and np.any(np.diff(rows.unit) < 0):
            raise ValueError("face rows must be in unit order")
        used = np.unique(rows.unit)  # only the row groups with a selected crop are units here
        self.groups = [rows.groups[u] for u in used]
        unit = np.searchsorted(used, rows.unit)
        self.starts = np.searchsorted(unit, np.arange(len(used) + 1)).astype(np.int64)
        self.rows = rows.row
        self._file: tuple[int, str, pq.ParquetFile] | None = None

    def _parquet(self, path: str) -> pq.ParquetFile:
        # one handle at a time, per process (a handle opened before a fork is not the worker's)
        if self._file is None or self._file[:2] != (os.getpid(), path):
            if self._file is not None and self._file[0] == os.getpid():
                self._file[2].close()
            self._file = (os.getpid(), path, pq.ParquetFile(path))
        return self._file[2]

    def read(self, unit: int) -> tuple[Any, np.ndarray, np.ndarray]:
        path, group = self.groups[unit]
        rows = self.rows[self.starts[unit]:self.starts[unit + 1]]
        crops = self._parquet(path).read_row_group(group, columns=["crop"])["crop"].take(pa.array(rows))
        crops = crops.combine_chunks() if isinstance(crops, pa.ChunkedArray) else crops
        crops = crops.cast(pa.large_binary())
        if crops.null_count:
            raise ValueError(f"{path}: a face row of row group {group} has lost its crop; the file changed since it "
                             "was indexed (rerun the job)")
        return (crops, *flat_bytes(crops))


class Batch(NamedTuple):
    """One batch as it goes to the decoding worker: the encoded crops back to back (``data``, ``offsets``: n + 1),
    ``labels`` (items,), ``seeds`` (items,: each item's augmentation seed) or None, ``shape``: (items,) or
    (items, window length), the crops' layout."""

    data: np.ndarray
    offsets: np.ndarray
    labels: np.ndarray
    seeds: np.ndarray | None
    shape: tuple[int, ...]


def spread_units(strata: np.ndarray, generator: torch.Generator) -> np.ndarray:
    """The units in a random order in which each stratum (e.g. a unit's most frequent class) is spread evenly: the
    ``n`` units of a stratum, in a random order, take the positions ``(k + u) / n`` (``k`` their rank, ``u`` one
    uniform offset per stratum) of the epoch. So any run of consecutive units, a block, holds each stratum about in
    its share of all units (within one unit), as a shuffle of single crops would, where a plain random order of
    units gives some blocks several units of one class and none of another."""
    strata = np.asarray(strata, np.int64)
    perm = torch.randperm(len(strata), generator=generator).numpy()
    offsets = torch.rand(int(strata.max(initial=-1)) + 1, generator=generator, dtype=torch.float64).numpy()
    shuffled = strata[perm]
    rank = np.empty(len(perm), np.int64)
    position = np.empty(len(perm), np.float64)
    for stratum in np.unique(shuffled).tolist():
        at = np.flatnonzero(shuffled == stratum)
        rank[at] = np.arange(len(at))
        position[at] = (rank[at] + offsets[stratum]) / len(at)
    return perm[np.argsort(position, kind="stable")]


def block_order(home: np.ndarray, costs: np.ndarray, buffer: int, generator: torch.Generator,
                strata: np.ndarray | None = None) -> np.ndarray:
    """An epoch's order of items whose data lie in units ``home`` (item -> unit): the units in a random order,
    taken in blocks of about ``buffer`` crops (``costs``: crops per unit), the items of each block in a random order.
    With ``strata`` (one per unit, e.g. its most frequent class), the units' order spreads each stratum evenly
    (:func:`spread_units`), so each block holds the classes about as the whole epoch does.

    Every item once. Within a block the order is a uniform permutation; with one block (a fold of at most
    ``buffer`` crops) it is a uniform permutation of all items, as a shuffle in memory gives.
    """
    units = len(costs)
    counts = np.bincount(home, minlength=units)
    by_home = np.argsort(home, kind="stable")
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    perm = torch.randperm(units, generator=generator).numpy() if strata is None else spread_units(strata, generator)
    sizes = counts[perm]
    # the items of the units in the permuted order, back to back
    order = by_home[np.repeat(first[perm] - np.concatenate([[0], np.cumsum(sizes)[:-1]]), sizes) + np.arange(sizes.sum())]
    # block of each unit: where its crops start, in whole buffers
    filled = np.cumsum(costs[perm]) - costs[perm]
    block = filled // max(int(buffer), 1)
    ends = np.cumsum(sizes)
    bounds = np.concatenate([[0], ends[np.flatnonzero(np.diff(block))], [ends[-1]]]) if units else np.zeros(1, np.int64)
    for start, end in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
        order[start:end] = order[start:end][torch.randperm(end - start, generator=generator).numpy()]
    return order


def main_class(home: np.ndarray, labels: np.ndarray, units: int) -> np.ndarray:
    """Each unit's most frequent label among the items whose data start in it (``home``: item -> unit); 0 for a
    unit without items."""
    classes = int(labels.max(initial=0)) + 1
    counts = np.bincount(np.asarray(home, np.int64) * classes + labels, minlength=units * classes)
    return counts.reshape(units, classes).argmax(axis=1)


class StreamBatches:
    """An epoch's batches of items read from ``source`` as they go: item ``i`` is the crops ``crops[i]`` (a crop
    index, or a row of ``length`` crop indices: a window) with label ``labels[i]``.

    With ``generator``: a new order every epoch (:func:`block_order`, ``buffer`` crops a block, each unit's main class
    spread evenly over the blocks), and with ``seeds``
    one augmentation seed per item, both drawn from it when the epoch's first batch is taken; else in order.
    A unit is read when a batch first needs it and dropped after the last batch that needs it, so memory holds
    about two blocks of encoded crops. Iterating yields :class:`Batch` es (the items of a DataLoader whose
    dataset is :class:`DecodeBatches`); ``skip`` batches are left out once, unread (a resumed epoch).
    """

    def __init__(self, source: CropSource, crops: np.ndarray, labels: np.ndarray, batch_size: int,
                 generator: torch.Generator | None = None, buffer: int = 4096, drop_last: bool = False,
                 seeds: bool = False):
        self.source, self.windows = source, np.ndim(crops) == 2
        self.crops = np.asarray(crops, np.int64).reshape(len(crops), -1)
        self.labels = np.asarray(labels, np.int64)
        if len(self.crops) != len(self.labels):
            raise ValueError(f"{len(self.crops)} items but {len(self.labels)} labels")
        if seeds and generator is None:
            raise ValueError("augmentation seeds need a generator (they are drawn from it)")
        self.units = unit_of(source, self.crops)
        self.batch_size, self.generator, self.buffer = int(batch_size), generator, int(buffer)
        self.drop_last, self.seeds, self.skip = drop_last, seeds, 0

    @property
    def batches(self) -> int:
        """Batches in a whole epoch."""
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __len__(self) -> int:
        return self.batches - self.skip

    def order(self) -> tuple[np.ndarray, np.ndarray | None]:
        """A new epoch's item order and seeds (drawn from the generator now), or the items in order."""
        n = len(self.labels)
        if self.generator is None:
            return np.arange(n), None
        costs = np.bincount(self.units.ravel(), minlength=len(self.source.starts) - 1)
        # A unit is a stretch of consecutive frames, often of one label: spread the classes over the blocks.
        strata = main_class(self.units[:, 0], self.labels, len(costs))
        order = block_order(self.units[:, 0], costs, self.buffer, self.generator, strata)
        seeds = torch.randint(0, 2**62, (n,), generator=self.generator).numpy() if self.seeds else None
        return order, seeds

    def __iter__(self) -> Iterator[Batch]:
        # a generator function: DataLoader calls iter() on its sampler more than once per epoch, drawing nothing
        order, seeds = self.order()
        skip, self.skip = self.skip, 0
        size, total = self.batch_size, self.batches
        used = self.units[order[:total * size]]  # (items, length): the units each position needs
        last = np.full(len(self.source.starts) - 1, -1, np.int64)
        np.maximum.at(last, used.ravel(), np.repeat(np.arange(len(used)) // size, used.shape[1]))
        done_after = np.argsort(last, kind="stable")  # units by the batch after which they are no longer needed
        bounds = np.searchsorted(last[done_after], np.arange(total + 1), side="left")
        cache: dict[int, tuple[Any, np.ndarray, np.ndarray]] = {}
        for b in range(skip, total):
            items = order[b * size:(b + 1) * size]
            crops, units = self.crops[items].ravel(), self.units[items].ravel()
            for unit in np.unique(units).tolist():
                if unit not in cache:
                    cache[unit] = self.source.read(unit)
            pieces = []
            for crop, unit in zip(crops.tolist(), units.tolist()):
                _, data, offsets = cache[unit]
                local = crop - int(self.source.starts[unit])
                pieces.append(data[offsets[local]:offsets[local + 1]])
            lengths = np.fromiter((len(p) for p in pieces), np.int64, len(pieces))
            yield Batch(np.concatenate(pieces) if pieces else np.zeros(0, np.uint8),
                        np.concatenate([[0], np.cumsum(lengths)]), self.labels[items],
                        None if seeds is None else seeds[items],
                        (len(items), self.crops.shape[1]) if self.windows else (len(items),))
            for unit in done_after[bounds[b]:bounds[b + 1]].tolist():
                cache.pop(unit, None)


def decode_seeded(data: np.ndarray, size: int, augment_it: bool, seed: int | None) -> np.ndarray:
    """One crop decoded (and augmented from its own ``seed``: whichever process decodes it, the same result)."""
    image = decode(data, size)
    if not augment_it:
        return image
    with torch.random.fork_rng(devices=[]):  # the CPU stream only: a main-process loader keeps dropout's
        torch.random.default_generator.manual_seed(int(seed))
        return augment(image)


class DecodeBatches(Dataset):
    """Item = a :class:`Batch` (what :class:`StreamBatches` yields) -> (uint8 images (*shape, 3, size, size), labels),
    decoded by OpenCV (in a DataLoader worker), each crop augmented from its item's seed when ``augment``."""

    def __init__(self, size: int, augment: bool = False):
        self.size, self.augment = size, augment

    def __getitem__(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(batch.offsets) - 1
        per_item = n // max(len(batch.labels), 1)
        images = np.empty((n, 3, self.size, self.size), np.uint8)
        for i in range(n):
            seed = None if batch.seeds is None else batch.seeds[i // per_item]
            crop = batch.data[batch.offsets[i]:batch.offsets[i + 1]]
            images[i] = decode_seeded(crop, self.size, self.augment, seed).transpose(2, 0, 1)
        return torch.from_numpy(images).view(*batch.shape, 3, self.size, self.size), torch.from_numpy(batch.labels)


def stream_loader(batches: StreamBatches, size: int, augment: bool, num_workers: int, pin_memory: bool = False
                  ) -> DataLoader:
    """A DataLoader over ``batches`` (its sampler): the main process reads the row groups, the workers decode.

    Its workers' base seed comes from a fixed generator of its own (else from torch's global one, which dropout
    uses): the items carry their own seeds.
    """
    return loader(DecodeBatches(size, augment), num_workers, pin_memory, batch_size=None, sampler=batches,
                  generator=torch.Generator().manual_seed(0))


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
