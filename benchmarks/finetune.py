"""Images per second of the finetune stage's training loop against the frame model's, at the same batch of frames.

    python benchmarks/finetune.py [FACES_PARQUET] [--backbone legacy_xception] [--size 96] [--windows 2]
                                  [--length 16] [--batches 4] [--frames 472] [--workers 2] [--decode auto]
                                  [--repeat 3]

Without a faces file, the faces stage first makes one from the first ``--frames`` frames of a demo clip (224 px
crops, as in the pipeline; needs dlib). The same crops then feed, on CUDA when there is a GPU:

- frame model: one epoch of :func:`ferseq.frame_model.training.train_epoch` over ``--batches`` batches of
  ``--windows`` x ``--length`` frames (:func:`ferseq.frame_model.training.frame_batches`: shuffled, augmented,
  decoded by workers on the CPU or nvJPEG on CUDA);
- finetune: one epoch of :func:`ferseq.finetune.training.train_epoch` over ``--batches`` batches of ``--windows``
  windows of ``--length`` consecutive face frames (:func:`ferseq.finetune.window_crops.batches`, decoded the same
  way), the frame model under a one-layer LSTM (hidden 64), Adam with two learning rates.

Weights are random. Each figure is the median of ``--repeat`` runs (the two loops interleaved) after one warm-up
epoch each; the last line is the median ratio finetune / frame model (the target on an H100/H200: 0.8 or more).
"""

from __future__ import annotations

import argparse
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
from ferseq.finetune import cnn_lstm, window_crops  # noqa: E402
from ferseq.finetune import training as finetune_training  # noqa: E402
from ferseq.frame_model import crops as crops_module  # noqa: E402
from ferseq.frame_model import training as frame_training  # noqa: E402
from ferseq.frame_model.device_crops import decode_on_device  # noqa: E402
from ferseq.frame_model.network import FrameModel, default_device, settings, to_device  # noqa: E402
from ferseq.sequence_model.classifier import SequenceClassifier  # noqa: E402


def timed(dev: torch.device, epoch) -> float:
    """Seconds of ``epoch()`` (both loops end their epoch with a copy of the loss to the host: a sync)."""
    if dev.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    epoch()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("faces", nargs="?", type=Path, help="a faces Parquet file (default: made from a demo clip)")
    parser.add_argument("--video", type=Path, default=DEFAULT_VIDEO, help="clip to make the faces file from")
    parser.add_argument("--frames", type=int, default=472, help="frames of --video to use")
    parser.add_argument("--backbone", default="legacy_xception")
    parser.add_argument("--size", type=int, default=96, help="input size (the demo config's; reference 224)")
    parser.add_argument("--windows", type=int, default=2, help="windows per finetune batch")
    parser.add_argument("--length", type=int, default=16, help="frames per window")
    parser.add_argument("--batches", type=int, default=4, help="train steps per measured epoch")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers (CPU decoding)")
    parser.add_argument("--decode", choices=["auto", "device", "workers"], default="auto",
                        help="where both loops decode crops (auto: the device on CUDA, workers on the CPU)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    dev = default_device()
    on_device = decode_on_device(None if args.decode == "auto" else args.decode, dev)
    frames_per_batch = args.windows * args.length
    n_windows = args.batches * args.windows
    n = n_windows * args.length
    with tempfile.TemporaryDirectory() as tmp:
        faces = args.faces or make_faces(args.video, args.frames, Path(tmp))
        rows = pd.read_parquet(faces, columns=["face_found", "crop"])
        found = rows.loc[rows["face_found"], "crop"].tolist()
    encoded = pa.array([found[i % len(found)] for i in range(n)], pa.large_binary())
    source = crops_module.MemoryCrops(encoded)  # the stages stream row groups: 256-crop units here
    labels = np.arange(n_windows) % len(CLASSES)

    # the frame model's loop: batches of frames_per_batch single frames, each with its window's label
    cfg = settings({"frame_model": {"backbone": args.backbone, "input_size": args.size, "batch_size": frames_per_batch,
                                    "num_workers": args.workers, "augment": True}})
    frame_labels = np.repeat(labels, args.length)
    weights = torch.ones(len(CLASSES), device=dev)  # speed does not depend on them
    torch.manual_seed(0)
    frame_model = to_device(FrameModel(args.backbone, CLASSES, input_size=args.size), dev)
    frame_batches = frame_training.frame_batches(source, frame_labels, cfg, dev,
                                                 torch.Generator().manual_seed(0), on_device)
    frame_optimizer = frame_training.optimizer_for(frame_model, 1e-4, dev)

    # the finetune loop: the same crops as n_windows windows of consecutive frames
    crops = window_crops.WindowCrops(source, np.arange(n).reshape(n_windows, args.length), labels,
                                     np.arange(n_windows))
    torch.manual_seed(0)
    joint_frame = to_device(FrameModel(args.backbone, CLASSES, input_size=args.size), dev)
    joint = cnn_lstm.CnnLstm(joint_frame, SequenceClassifier("lstm", joint_frame.embedding_dim, 64, len(CLASSES),
                                                             0.5)).to(dev)
    fused = {"fused": True} if dev.type == "cuda" else {}
    joint_optimizer = torch.optim.Adam(joint.param_groups(1e-4, 1e-5), **fused)
    joint_batches = window_crops.batches(crops, args.size, args.windows, dev, on_device=on_device,
                                         num_workers=args.workers, generator=torch.Generator().manual_seed(0))

    def frame_epoch() -> None:
        frame_training.train_epoch(frame_model, frame_batches, frame_optimizer, weights, dev)

    def joint_epoch() -> None:
        finetune_training.train_epoch(joint, joint_batches, joint_optimizer, weights, dev)

    timed(dev, frame_epoch)  # warm-up: workers start, allocator and kernels settle
    timed(dev, joint_epoch)
    frame_runs, joint_runs = [], []
    for _ in range(args.repeat):  # interleaved, so that a change in machine load hits both alike
        frame_runs.append(n / timed(dev, frame_epoch))
        joint_runs.append(n / timed(dev, joint_epoch))
    ratio = statistics.median(j / f for j, f in zip(joint_runs, frame_runs))
    print(f"device {dev.type} ({torch.cuda.get_device_name() if dev.type == 'cuda' else 'CPU'}), torch threads "
          f"{torch.get_num_threads()}, backbone {args.backbone}, size {args.size}, {frames_per_batch} frames a batch "
          f"({args.windows} windows x {args.length}), {args.batches} steps a run, decode "
          f"{'device' if on_device else f'{args.workers} workers'}")
    print(f"frame model training loop: {statistics.median(frame_runs):.1f} images/s "
          f"(runs: {', '.join(f'{x:.1f}' for x in frame_runs)})")
    print(f"finetune training loop:    {statistics.median(joint_runs):.1f} images/s "
          f"(runs: {', '.join(f'{x:.1f}' for x in joint_runs)})")
    print(f"ratio finetune/frame model: {ratio:.2f}")


if __name__ == "__main__":
    main()
