"""Face crops decoded, resized and augmented in batches on the model's device (nvJPEG on a GPU).

The CPU path (:mod:`ferseq.frame_model.crops`) decodes each crop with OpenCV in DataLoader
workers; on a GPU that caps the CNN stages at a fraction of the model's speed.
Here the crops reach the device still encoded: JPEGs are decoded in batches
with ``torchvision.io.decode_jpeg(list, device=...)`` (nvJPEG on CUDA,
libjpeg-turbo on the CPU, where it gives OpenCV's pixels), resized with
OpenCV's semantics as two matrix products, and augmented as tensor ops. Other
formats (PNG crops) fall back to OpenCV for those crops only. The same code
runs on the CPU device, which is how the tests check it.

Images leave as uint8 RGB tensors (n, 3, size, size) on the device, as the
CPU path's do, so the model's input is the same either way.
"""

from __future__ import annotations

import functools
import warnings
from typing import Iterator, Sequence

import numpy as np
import torch

from ferseq.frame_model import crops as cpu_crops

JPEG_MAGIC = b"\xff\xd8\xff"
DECODE = ("device", "workers")


def decode_on_device(decode: str | None, dev: torch.device) -> bool:
    """Whether the CNN stages decode crops on the model's device: ``decode`` "device" or "workers"
    (OpenCV in DataLoader workers, :mod:`ferseq.frame_model.crops`); None picks the device on CUDA, workers on the CPU
    (where OpenCV in worker processes is the faster of the two)."""
    if decode is None:
        return torch.device(dev).type == "cuda"
    if decode not in DECODE:
        raise ValueError(f"decode: {decode!r} is not one of {DECODE}")
    return decode == "device"


def split(data: torch.Tensor, offsets: torch.Tensor | np.ndarray) -> list[torch.Tensor]:
    """The crops of :func:`ferseq.frame_model.crops.flat_bytes` output (as tensors) as a list of 1-D uint8 tensors (views)."""
    return list(torch.split(data, np.diff(np.asarray(offsets)).tolist()))


def upload(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small CPU tensor on ``device`` without waiting for the GPU: a copy from pageable memory may wait
    for the stream's queued work (the previous training step), one from pinned memory does not."""
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


@functools.lru_cache(maxsize=32)  # one pair per crop size and input size: built and copied to the GPU once
def resize_weights(src: int, dst: int, area: bool, device: torch.device | str = "cpu") -> torch.Tensor:
    """The (dst, src) matrix that resizes one axis as OpenCV does: INTER_AREA (``area``: each output
    pixel the mean of the source interval it covers, partial pixels weighted by overlap) or INTER_LINEAR
    (half-pixel centres, edge pixels repeated)."""
    weights = torch.zeros(dst, src, dtype=torch.float64)
    scale = src / dst
    out = torch.arange(dst, dtype=torch.float64)
    if area:
        left, right = out * scale, torch.minimum((out + 1) * scale, torch.tensor(float(src)))
        pixel = torch.arange(src, dtype=torch.float64)
        overlap = (torch.minimum(right[:, None], pixel + 1) - torch.maximum(left[:, None], pixel)).clamp_(min=0)
        weights = overlap / overlap.sum(dim=1, keepdim=True)
    else:
        position = ((out + 0.5) * scale - 0.5).clamp_(min=0)
        first = position.floor().long().clamp_(max=src - 1)
        frac = (position - first).masked_fill_(first >= src - 1, 0.0)
        weights.scatter_add_(1, first[:, None], (1 - frac)[:, None])
        weights.scatter_add_(1, (first + 1).clamp(max=src - 1)[:, None], frac[:, None])
    return weights.to(device=device, dtype=torch.float32)


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 images (n, c, h, w) -> (n, c, size, size), as :func:`ferseq.frame_model.crops.decode` resizes (INTER_AREA
    when shrinking, judged by the height, else INTER_LINEAR); within one grey level of OpenCV."""
    height, width = images.shape[-2:]
    if (height, width) == (size, size):
        return images
    area = height > size
    rows = resize_weights(height, size, area, images.device)
    cols = resize_weights(width, size, area, images.device)  # cached: never changed in place
    # float32 matrix products, with autocast off even when the caller runs under it (evaluation
    # loops do): bf16 steps are 1.0 above 128 and would shift grey levels. Ties round as OpenCV
    # rounds them: half up in its integer paths (INTER_AREA by a whole factor, fixed-point INTER_LINEAR),
    # half to even (cvRound) in its float path (INTER_AREA by a fractional factor).
    with torch.autocast(images.device.type, enabled=False):
        resized = torch.matmul(torch.matmul(rows, images.float()), cols.T)
    if area and not (height % size == 0 and width % size == 0):
        resized = resized.round_()
    else:
        resized = resized.add_(0.5).floor_()
    return resized.clamp_(0, 255).to(torch.uint8)


def is_jpeg(crop: torch.Tensor) -> bool:
    """Whether encoded bytes (a 1-D uint8 CPU tensor) start like a JPEG."""
    return len(crop) >= 3 and bytes(crop[:3].tolist()) == JPEG_MAGIC


def decode_batch(encoded: Sequence[torch.Tensor], size: int, device: torch.device | str) -> torch.Tensor:
    """Encoded crops (1-D uint8 CPU tensors) -> uint8 RGB images (n, 3, size, size) on ``device``.

    JPEGs are decoded together on ``device`` (nvJPEG on CUDA: one call per batch is what makes it
    fast); any other format goes through OpenCV on the CPU, crop by crop.
    """
    from torchvision.io import ImageReadMode, decode_jpeg

    device = torch.device(device)
    jpeg = [i for i, crop in enumerate(encoded) if is_jpeg(crop)]
    if len(jpeg) < len(encoded):  # PNG or another format: OpenCV, as on the CPU path
        out = torch.empty((len(encoded), 3, size, size), dtype=torch.uint8, device=device)
        others = sorted(set(range(len(encoded))) - set(jpeg))
        decoded = np.stack([cpu_crops.decode(encoded[i].numpy(), size).transpose(2, 0, 1) for i in others])
        out[others] = torch.from_numpy(decoded).to(device)
        if jpeg:
            out[jpeg] = decode_batch([encoded[i] for i in jpeg], size, device)
        return out
    if not jpeg:
        return torch.empty((0, 3, size, size), dtype=torch.uint8, device=device)
    try:
        with warnings.catch_warnings():
            # torchvision 0.29 deprecates its image codecs for TorchCodec; decode_jpeg still works, and
            # older torchvision (the GPU machine's) has nothing else: its per-call warning is not repeated.
            warnings.simplefilter("ignore", DeprecationWarning)
            images = _decode_jpegs(decode_jpeg, list(encoded), ImageReadMode.RGB, device)
    except RuntimeError as err:
        raise ValueError(f"a face crop cannot be decoded (corrupt JPEG bytes): {err}") from None
    shapes = {tuple(image.shape) for image in images}
    if len(shapes) == 1:
        return resize(torch.stack(images), size)
    out = torch.empty((len(images), 3, size, size), dtype=torch.uint8, device=device)
    for shape in shapes:  # crops of several sizes (faces files from several runs): resized per size
        members = [i for i, image in enumerate(images) if tuple(image.shape) == shape]
        out[members] = resize(torch.stack([images[i] for i in members]), size)
    return out


@functools.cache
def _decode_stream(device: torch.device) -> torch.cuda.Stream:
    """The CUDA stream that nvJPEG's output tensors are allocated on (one per device)."""
    return torch.cuda.Stream(device)


def _decode_jpegs(decode_jpeg, encoded: list[torch.Tensor], mode, device: torch.device) -> list[torch.Tensor]:
    """``decode_jpeg(encoded, mode=mode, device=device)``, safe to call while earlier GPU work still runs.

    torchvision allocates nvJPEG's outputs on the current stream but writes them from nvJPEG's own
    stream without waiting for the current one (pytorch/vision PR 9606, not merged), so memory that
    the still-running training step has just freed could be overwritten under it. Decoding under a
    stream of its own gives the outputs memory from that stream's pool, which the training step never
    frees into (so the decode still overlaps it); the current stream then waits for the decode, and the
    outputs are marked as used by it, so their memory is not reused before its work is done.
    """
    if device.type != "cuda":
        return decode_jpeg(encoded, mode=mode, device=device)
    main = torch.cuda.current_stream(device)
    side = _decode_stream(torch.device("cuda", device.index if device.index is not None else torch.cuda.current_device()))
    with torch.cuda.stream(side):
        images = decode_jpeg(encoded, mode=mode, device=device)
    main.wait_stream(side)
    for image in images:
        image.record_stream(main)
    return images


def _shift_weights(size: int, shift: torch.Tensor, flip: torch.Tensor | None) -> torch.Tensor:
    """(n, size, size) matrices: each row of the output samples the (flipped) input ``shift`` pixels
    back, bilinear, with OpenCV's BORDER_REFLECT_101 outside the image."""
    n, device = len(shift), shift.device
    position = torch.arange(size, device=device, dtype=torch.float32)[None, :] - shift[:, None]
    first = position.floor()
    frac = position - first
    first = first.long()

    def reflect(index: torch.Tensor) -> torch.Tensor:  # ... 2 1 | 0 1 2 ... s-1 | s-2 ...
        index = index.abs()
        return torch.where(index > size - 1, 2 * (size - 1) - index, index)

    left, right = reflect(first), reflect(first + 1)
    if flip is not None:  # the shift applies to the flipped image: flip the source index
        left = torch.where(flip[:, None], size - 1 - left, left)
        right = torch.where(flip[:, None], size - 1 - right, right)
    weights = torch.zeros(n, size, size, device=device)
    weights.scatter_add_(2, left[..., None], (1 - frac)[..., None])
    weights.scatter_add_(2, right[..., None], frac[..., None])
    return weights


def seed_draws(seeds: Sequence[int] | np.ndarray) -> torch.Tensor:
    """The four uniform draws of :func:`ferseq.frame_model.crops.augment` for each crop's own seed, (n, 4): what
    it draws after ``torch.manual_seed(seed)``, so both paths augment a crop alike (and a resumed epoch, whose
    earlier batches are never made, draws the same)."""
    return torch.stack([torch.rand(4, generator=torch.Generator().manual_seed(int(seed))) for seed in seeds]) \
        if len(seeds) else torch.zeros(0, 4)


def augment_batch(images: torch.Tensor, generator: torch.Generator | None = None,
                  draws: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`ferseq.frame_model.crops.augment` for a batch of uint8 images (n, 3, s, s) on any device: per image a
    horizontal flip (p = 0.5), a shift of up to ``SHIFT`` of the side in x and y, and a brightness factor
    in [1 - ``BRIGHTNESS``, 1 + ``BRIGHTNESS``].

    The random numbers are ``draws`` (n, 4), e.g. :func:`seed_draws`, or come from ``generator`` (a CPU generator:
    the same draws on every device), four per image in crops.augment's order, so a seeded generator gives the
    same augmentations every run.
    """
    n, _, size, _ = images.shape
    if draws is None:
        if generator is None:
            raise ValueError("augment_batch needs a generator or the draws")
        draws = torch.rand(n, 4, generator=generator)
    draws = upload(draws, images.device)
    flip, shift_x, shift_y, scale = draws.unbind(1)
    max_shift = cpu_crops.SHIFT * size
    cols = _shift_weights(size, (2 * shift_x - 1) * max_shift, flip < 0.5)
    rows = _shift_weights(size, (2 * shift_y - 1) * max_shift, None)
    with torch.autocast(images.device.type, enabled=False):  # float32 pixels, as in resize
        moved = torch.matmul(torch.matmul(rows[:, None], images.float()), cols.transpose(1, 2)[:, None])
    factor = 1 + cpu_crops.BRIGHTNESS * (2 * scale - 1)
    # crops.augment rounds after the shift, then truncates after the brightness change
    return (moved.add_(0.5).floor_() * factor[:, None, None, None]).clamp_(0, 255).to(torch.uint8)


class DeviceBatches:
    """The batches of a :class:`ferseq.frame_model.crops.StreamBatches` (items: crops or windows of crops) as (uint8
    images (*items, 3, size, size), labels) on ``device``, decoded there in the calling process.

    What a DataLoader over the stream gives on the CPU path (:func:`ferseq.frame_model.crops.stream_loader`),
    decoded on the device instead: the stream reads the row groups and gathers each batch's encoded crops; here
    they are decoded in one call (nvJPEG on CUDA) and, with ``augment``, augmented from each item's seed
    (:func:`seed_draws`: the same flip, shift and brightness as the worker path). On CUDA that overlaps the
    previous step, which is still running on the GPU, so no worker processes are needed.
    """

    def __init__(self, stream: cpu_crops.StreamBatches, size: int, device: torch.device | str, augment: bool = False):
        if augment and not stream.seeds:
            raise ValueError("augmentation needs a stream with seeds (drawn from its generator)")
        self.stream, self.size, self.device, self.augment = stream, size, torch.device(device), augment

    def __len__(self) -> int:
        return len(self.stream)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for batch in self.stream:
            images = decode_batch(split(torch.from_numpy(batch.data), batch.offsets), self.size, self.device)
            if self.augment:
                images = augment_batch(images, draws=seed_draws(np.repeat(batch.seeds, len(images) // len(batch.seeds))))
            yield (images.view(*batch.shape, 3, self.size, self.size),
                   upload(torch.from_numpy(batch.labels), self.device))
