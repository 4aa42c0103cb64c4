"""Crops decoded, resized and augmented in batches as tensor ops (the GPU path), run on the CPU device here,
against the OpenCV path of ferseq.frame_model.crops on the real face crops of the demo clips (test_frame_model's faces files)."""

from __future__ import annotations

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from demo_faces import demo_faces
from ferseq.frame_model import crops, device_crops


@pytest.fixture(scope="module")
def encoded(tmp_path_factory) -> list[torch.Tensor]:
    """The JPEG crops (64 px) of the demo's man2 faces file, as 1-D uint8 tensors."""
    demo = demo_faces(tmp_path_factory.getbasetemp() / "demo_faces")
    table = crops.face_rows(pq.read_table(demo.faces["man2"], columns=["face_found", "crop"]))
    data, offsets = crops.flat_bytes(table["crop"].combine_chunks())
    return device_crops.split(torch.from_numpy(data.copy()), offsets)


def opencv(encoded: list[torch.Tensor], size: int) -> torch.Tensor:
    return torch.stack([crops.to_tensor(crops.decode(crop.numpy(), size)) for crop in encoded])


@pytest.mark.parametrize("size", [64, 32, 48, 80])
def test_batch_decoding_gives_the_opencv_pixels(encoded, size):
    # 64: no resize; 32 and 48: INTER_AREA (integer and fractional); 80: INTER_LINEAR.
    images = device_crops.decode_batch(encoded, size, "cpu")
    expected = opencv(encoded, size)
    assert images.dtype == torch.uint8 and images.shape == expected.shape == (len(encoded), 3, size, size)
    if size <= 64:  # libjpeg-turbo in both, INTER_AREA as a matrix product with OpenCV's rounding: same pixels
        assert torch.equal(images, expected)
    else:  # OpenCV's INTER_LINEAR rounds in fixed point (and truncates in its SIMD code): a grey level at most
        diff = (images.int() - expected.int()).abs()
        assert diff.max() <= 1 and diff.float().mean() < 0.2


def test_png_crops_fall_back_to_opencv_and_bad_bytes_are_an_error(encoded):
    pngs = [torch.from_numpy(cv2.imencode(".png", cv2.imdecode(crop.numpy(), cv2.IMREAD_COLOR))[1].ravel().copy())
            for crop in encoded[:3]]
    mixed = [pngs[0], encoded[5], pngs[1], encoded[6], pngs[2]]
    images = device_crops.decode_batch(mixed, 48, "cpu")
    assert torch.equal(images[[0, 2, 4]], opencv(pngs, 48))
    assert torch.equal(images[[1, 3]], opencv([encoded[5], encoded[6]], 48))
    with pytest.raises(ValueError, match="face crop cannot be decoded"):
        device_crops.decode_batch([encoded[0], encoded[1][:200]], 48, "cpu")  # a truncated JPEG


def test_pixels_do_not_change_under_the_callers_autocast(encoded):
    # Evaluation decodes its batches inside the model's autocast (bf16 on a GPU; the CPU's autocast is the
    # same mechanism): resizing and augmentation must still compute in float32.
    plain = device_crops.decode_batch(encoded[:8], 48, "cpu")
    augmented = device_crops.augment_batch(plain, torch.Generator().manual_seed(1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(device_crops.decode_batch(encoded[:8], 48, "cpu"), plain)
        assert torch.equal(device_crops.augment_batch(plain, torch.Generator().manual_seed(1)), augmented)


def test_resize_weights_keep_the_mean_and_know_opencvs_edges():
    for src, dst, area in ((224, 96, True), (64, 32, True), (64, 80, False), (10, 7, False)):
        weights = device_crops.resize_weights(src, dst, area)
        assert weights.shape == (dst, src) and torch.allclose(weights.sum(dim=1), torch.ones(dst))
    # Enlarging 2 -> 4 with half-pixel centres: the outer pixels repeat the edge.
    assert device_crops.resize_weights(2, 4, False).tolist() == [[1, 0], [0.75, 0.25], [0.25, 0.75], [0, 1]]


def test_tensor_augmentation_does_what_crops_augment_does_and_follows_the_seed(encoded):
    images = device_crops.decode_batch(encoded[:24], 48, "cpu")
    out = device_crops.augment_batch(images, torch.Generator().manual_seed(5))
    assert out.dtype == torch.uint8 and out.shape == images.shape and not torch.equal(out, images)
    assert torch.equal(out, device_crops.augment_batch(images, torch.Generator().manual_seed(5)))
    assert not torch.equal(out, device_crops.augment_batch(images, torch.Generator().manual_seed(6)))
    # One image with generator seed s draws what crops.augment draws after torch.manual_seed(s): the same
    # flip, shift and brightness; OpenCV's warpAffine rounds sub-pixel positions to 1/32, hence a few levels.
    for seed in range(8):
        torch.manual_seed(seed)
        expected = crops.to_tensor(crops.augment(images[seed].permute(1, 2, 0).numpy()))
        got = device_crops.augment_batch(images[seed:seed + 1], torch.Generator().manual_seed(seed))[0]
        diff = (got.int() - expected.int()).abs()
        assert diff.max() <= 4 and diff.float().mean() < 0.5, seed


def stream(data: pa.Array, labels: np.ndarray, batch: int, generator=None, **kwargs) -> crops.StreamBatches:
    return crops.StreamBatches(crops.MemoryCrops(data, unit_size=7), np.arange(len(labels)), labels, batch, generator,
                               **kwargs)


def test_device_batches_cover_every_crop_once_with_its_label(encoded):
    data = pa.array([bytes(crop.numpy()) for crop in encoded], pa.binary())
    labels = np.arange(len(encoded)) % 4
    # Row i's label is i % 4, and its image is crop i: find each batch image among the decoded crops.
    all_images = device_crops.decode_batch(encoded, 32, "cpu").flatten(1)
    batches = device_crops.DeviceBatches(stream(pa.chunked_array([data[:10], data[10:]]), labels, 8,
                                                torch.Generator().manual_seed(1)), 32, "cpu")
    seen = []
    for images, y in batches:
        assert images.dtype == torch.uint8 and images.shape[1:] == (3, 32, 32) and y.dtype == torch.int64
        rows = [int(torch.nonzero((all_images == image.flatten()).all(dim=1))[0]) for image in images]
        assert y.tolist() == [row % 4 for row in rows]
        seen += rows
    assert sorted(seen) == list(range(len(encoded))) and seen != sorted(seen)  # all, once, shuffled
    assert len(batches) == -(-len(encoded) // 8)
    dropping = device_crops.DeviceBatches(stream(data, labels, 8, torch.Generator(), drop_last=True), 32, "cpu")
    assert len(dropping) == len(list(dropping)) == len(encoded) // 8
    in_order = device_crops.DeviceBatches(stream(data, labels, 8), 32, "cpu")
    assert torch.cat([y for _, y in in_order]).tolist() == labels.tolist()
    with pytest.raises(ValueError, match="seeds"):
        device_crops.DeviceBatches(stream(data, labels, 8, torch.Generator()), 32, "cpu", augment=True)
    with pytest.raises(ValueError, match="decode"):
        device_crops.decode_on_device("gpu", torch.device("cpu"))
    assert device_crops.decode_on_device(None, torch.device("cuda")) and not device_crops.decode_on_device(None, torch.device("cpu"))


def test_device_and_worker_paths_augment_each_crop_from_its_seed_alike(encoded):
    """The GPU path's batches (decoded and augmented as tensor ops, run on the CPU here) are the worker path's
    (OpenCV in a DataLoader worker): same crops in the same order, the same flip, shift and brightness per crop."""
    data = pa.array([bytes(crop.numpy()) for crop in encoded], pa.binary())
    labels = np.arange(len(encoded)) % 4
    on_device = device_crops.DeviceBatches(stream(data, labels, 8, torch.Generator().manual_seed(2), seeds=True),
                                           48, "cpu", augment=True)
    workers = crops.stream_loader(stream(data, labels, 8, torch.Generator().manual_seed(2), seeds=True), 48, True, 1)
    pairs = list(zip(on_device, workers))
    assert len(pairs) == len(on_device) == len(workers) == -(-len(encoded) // 8)
    plain = torch.cat([images for images, _ in crops.stream_loader(stream(data, labels, 8), 48, False, 0)])
    for (a, ya), (b, yb) in pairs:
        assert torch.equal(ya, yb) and a.shape == b.shape
        diff = (a.int() - b.int()).abs()  # warpAffine's 1/32 sub-pixel rounding: a few grey levels
        assert diff.max() <= 4 and diff.float().mean() < 0.5
    assert not torch.equal(torch.cat([a for (a, _), _ in pairs]).sort(dim=0).values, plain.sort(dim=0).values)
    # the draws of a crop's seed are those crops.augment makes after torch.manual_seed(seed)
    torch.manual_seed(11)
    assert torch.equal(device_crops.seed_draws([11])[0], torch.rand(4))
