"""Speed of the frame model's training loop against a bare train step, on CUDA if there is a GPU.

    python benchmarks/frame_model.py [FACES_PARQUET] [--backbone legacy_xception] [--size 96] [--batch 32]
                                     [--batches 6] [--frames 472] [--workers 2] [--decode auto] [--repeat 3]

Without a faces file, the faces stage first makes one from the first
``--frames`` frames of a demo clip (224 px crops, as in the pipeline). Then,
with the same model, batch size and input size:

- loop: one epoch of the pipeline's training loop
  (:func:`ferseq.frame_model.training.train_epoch`) over ``--batches`` batches of
  :func:`ferseq.frame_model.training.frame_batches` (the face crops cycled as needed,
  written to a Parquet file of 256-row groups and streamed from it as the pipeline streams
  the faces files, shuffled and augmented; decoded by OpenCV in DataLoader workers on the CPU,
  on CUDA in batches by nvJPEG with augmentation as tensor ops, ``--decode``
  overrides), the model placed as the pipeline places it (channels_last on
  CUDA), weighted cross entropy, Adam;
- bare: as many of the pipeline's train steps (:func:`ferseq.frame_model.training.train_step`: autocast, weighted
  cross entropy, backward, Adam step) of the same model on the same crops,
  decoded beforehand and already on the device as uint8 batches (pure model
  time, an upper bound), in both memory layouts: default and channels_last.

Weights are random (speed does not depend on them). Each figure is the median
of ``--repeat`` runs (loop and bare interleaved) after one warm-up epoch; the
last line is the median of the per-run ratios loop / bare frames per second,
against the faster of the two bare layouts (channels_last on a GPU).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))

from features import CLASSES, DEFAULT_VIDEO, make_faces  # noqa: E402  (benchmarks/features.py)
from ferseq.frame_model import crops  # noqa: E402
from ferseq.frame_model.device_crops import decode_on_device  # noqa: E402
from ferseq.frame_model.network import FrameModel, default_device, settings, to_device  # noqa: E402
from ferseq.frame_model.training import class_weights, frame_batches, optimizer_for, train_epoch, train_step  # noqa: E402


def streamed_crops(crops_list: list[bytes], folder: Path) -> crops.ParquetCrops:
    """``crops_list`` as the face crops of a faces-like Parquet file (256-row groups), read as training reads them."""
    import pyarrow.parquet as pq

    n = len(crops_list)
    table = pa.table({"segment_id": pa.array(np.zeros(n, np.int64)), "frame": pa.array(np.arange(n, dtype=np.int32)),
                      "face_found": pa.array(np.ones(n, bool)), "crop": pa.array(crops_list, pa.binary())})
    pq.write_table(table, folder / "crops.parquet", row_group_size=256)
    return crops.ParquetCrops(crops.index_face_rows([folder / "crops.parquet"]))


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def loop_fps(model: FrameModel, batches, batch_size: int, optimizer: torch.optim.Optimizer, weights: torch.Tensor,
             dev: torch.device) -> float:
    """Frames per second of one epoch of the pipeline's training loop (train_epoch ends with a sync)."""
    sync(dev)
    started = time.perf_counter()
    train_epoch(model, batches, optimizer, weights, dev)
    return len(batches) * batch_size / (time.perf_counter() - started)


def bare_fps(model: FrameModel, optimizer: torch.optim.Optimizer, batches: list[tuple[torch.Tensor, torch.Tensor]],
             weights: torch.Tensor, dev: torch.device) -> float:
    """Frames per second of bare train steps over (images, labels) batches already on the device."""
    model.train()
    sync(dev)
    started = time.perf_counter()
    for images, y in batches:
        train_step(model, images, y, optimizer, weights, dev)
    sync(dev)
    return sum(len(images) for images, _ in batches) / (time.perf_counter() - started)


def loop_against_bare(model: FrameModel, batches, images: list[torch.Tensor], labels: np.ndarray, batch: int,
                      lr: float, weights: torch.Tensor, dev: torch.device, repeat: int
                      ) -> tuple[list[float], dict[str, list[float]], str, float]:
    """Frames per second of the loop over ``batches`` and of bare train steps on the same ``images`` (decoded
    uint8 crops) and ``labels``, already on the device, with copies of ``model`` in both memory layouts; after one
    warm-up, ``repeat`` runs interleaved so that a change in machine load hits both alike. Returns the loop's runs,
    each layout's runs, the faster layout and the median of the per-run ratios loop / that layout."""
    optimizer = optimizer_for(model, lr, dev)
    bare_models = {}
    for layout, fmt in (("default", torch.contiguous_format), ("channels_last", torch.channels_last)):
        bare = copy.deepcopy(model).to(memory_format=fmt)
        bare.memory_format = fmt
        bare_models[layout] = (bare, optimizer_for(bare, lr, dev))
    stacked, y = torch.stack(images).to(dev), torch.as_tensor(labels).to(dev)
    ready = [(stacked[i:i + batch], y[i:i + batch]) for i in range(0, len(images), batch)]

    loop_fps(model, batches, batch, optimizer, weights, dev)  # warm-up: workers start, allocator and kernels settle
    for bare, opt in bare_models.values():
        bare_fps(bare, opt, ready[:2], weights, dev)
    loop, bare_runs = [], {layout: [] for layout in bare_models}
    for _ in range(repeat):
        loop.append(loop_fps(model, batches, batch, optimizer, weights, dev))
        for layout, (bare, opt) in bare_models.items():
            bare_runs[layout].append(bare_fps(bare, opt, ready, weights, dev))
    fastest = max(bare_runs, key=lambda layout: statistics.median(bare_runs[layout]))
    return loop, bare_runs, fastest, statistics.median(s / b for s, b in zip(loop, bare_runs[fastest]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("faces", nargs="?", type=Path, help="a faces Parquet file (default: made from a demo clip)")
    parser.add_argument("--video", type=Path, default=DEFAULT_VIDEO, help="clip to make the faces file from")
    parser.add_argument("--frames", type=int, default=472, help="frames of --video to use")
    parser.add_argument("--backbone", default="legacy_xception")
    parser.add_argument("--size", type=int, default=96, help="input size (the demo config's; reference 224)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--batches", type=int, default=6, help="train steps per measured epoch")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the loop (CPU decoding)")
    parser.add_argument("--decode", choices=["auto", "device", "workers"], default="auto",
                        help="where the loop decodes crops (auto: the device on CUDA, workers on the CPU)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    dev = default_device()
    decode = None if args.decode == "auto" else args.decode
    cfg = settings({"frame_model": {"backbone": args.backbone, "input_size": args.size, "batch_size": args.batch,
                                    "num_workers": args.workers, "augment": True}})
    torch.manual_seed(0)
    tmp = tempfile.TemporaryDirectory()
    faces = args.faces or make_faces(args.video, args.frames, Path(tmp.name))
    rows = pd.read_parquet(faces, columns=["face_found", "crop"])
    found = rows.loc[rows["face_found"], "crop"].tolist()
    n = args.batches * args.batch
    cycled = [found[i % len(found)] for i in range(n)]
    encoded = pa.chunked_array([pa.array(cycled, pa.binary())])
    labels = np.arange(n) % len(CLASSES)
    weights = class_weights(np.bincount(labels, minlength=len(CLASSES)), CLASSES).to(dev)
    batches = frame_batches(streamed_crops(cycled, Path(tmp.name)), labels, cfg, dev, torch.Generator().manual_seed(0),
                            decode_on_device(decode, dev))

    model = to_device(FrameModel(args.backbone, CLASSES, input_size=args.size), dev)
    # Different images every step, as the loop sees them (one batch over and over trained slower on the CPU).
    images = [crops.to_tensor(crops.decode(c.as_py(), args.size)) for c in encoded.chunk(0)]
    loop, bare_runs, fastest, ratio = loop_against_bare(model, batches, images, labels, args.batch, 1e-4, weights, dev,
                                                        args.repeat)
    print(f"device {dev.type} ({torch.cuda.get_device_name() if dev.type == 'cuda' else 'CPU'}), torch threads "
          f"{torch.get_num_threads()}, backbone {args.backbone}, size {args.size}, batch {args.batch}, {args.batches} "
          f"steps a run, {args.workers} workers, loop layout {model.memory_format}, decode {args.decode}")
    for layout, runs in bare_runs.items():
        print(f"bare train step, {layout + ':':14} {statistics.median(runs):.1f} frames/s "
              f"(runs: {', '.join(f'{x:.1f}' for x in runs)})")
    print(f"training loop:                   {statistics.median(loop):.1f} frames/s "
          f"(runs: {', '.join(f'{x:.1f}' for x in loop)})")
    print(f"ratio loop/bare ({fastest}): {ratio:.2f}")
    tmp.cleanup()


if __name__ == "__main__":
    main()
