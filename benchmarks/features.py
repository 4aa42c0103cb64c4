"""Speed of the feature stage against a bare timm forward pass of the same backbone.

    python benchmarks/features.py [FACES_PARQUET] [--backbone legacy_xception] [--size 96] [--batch 32]
                                  [--frames 472] [--workers 2] [--repeat 3]

Without a faces file, the faces stage first makes one from the first
``--frames`` frames of a demo clip (224 px crops, as in the pipeline). Then,
on the same face frames, with the same backbone, input size and batch size:

- stage: :func:`ferseq.features.extract_video` with the model already loaded:
  read the Parquet file, decode and resize the crops in DataLoader workers,
  normalise, backbone + FC head + softmax, write the feature Parquet;
- bare: ``backbone(x)`` under ``torch.inference_mode()`` on crops decoded,
  resized and normalised beforehand (pure model time, an upper bound).

Weights are random (speed does not depend on them). Each figure is the median
of ``--repeat`` runs (stage and bare interleaved) after one warm-up batch;
the last line is the median of the per-run ratios stage / bare frames per second.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from ferseq import crops  # noqa: E402
from ferseq.faces import DEFAULTS, extract_faces  # noqa: E402
from ferseq.features import extract_video  # noqa: E402
from ferseq.frame_model import FrameModel, autocast, default_device  # noqa: E402

DEFAULT_VIDEO = REPO / "data" / "demo" / "videos" / "woman_sad_to_happy.mp4"
CLASSES = ["neutral", "happy", "sad", "pensive"]


def make_faces(video: Path, frames: int, folder: Path) -> Path:
    """A faces file of the first ``frames`` frames of ``video`` (one segment)."""
    segments = pd.DataFrame([(1, "neutral", 0, frames)], columns=["segment_id", "label", "start", "end"])
    out = folder / "faces.parquet"
    extract_faces(video, segments, dict(DEFAULTS), out, folder / "faces.qc.csv")
    return out


def stage_fps(model: FrameModel, faces: Path, labels: dict[int, str], out: Path, batch: int, workers: int) -> float:
    stats = extract_video(model, faces, labels, out, video_id="bench", batch_size=batch, num_workers=workers)
    return stats["frames"] / stats["seconds"]


def bare_fps(backbone: torch.nn.Module, images: torch.Tensor, batch: int, dev: torch.device) -> float:
    started = time.perf_counter()
    with torch.inference_mode(), autocast(dev):
        for start in range(0, len(images), batch):
            backbone(images[start:start + batch].to(dev))
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return len(images) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("faces", nargs="?", type=Path, help="a faces Parquet file (default: made from a demo clip)")
    parser.add_argument("--video", type=Path, default=DEFAULT_VIDEO, help="clip to make the faces file from")
    parser.add_argument("--frames", type=int, default=472, help="frames of --video to use (472: all, 2 row groups)")
    parser.add_argument("--backbone", default="legacy_xception")
    parser.add_argument("--size", type=int, default=96, help="input size (the demo config's; reference 224)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the stage")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    dev = default_device()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        faces = args.faces or make_faces(args.video, args.frames, folder)
        rows = pd.read_parquet(faces, columns=["segment_id", "face_found", "crop"])
        rows = rows[rows["face_found"]]
        labels = {int(s): "neutral" for s in rows["segment_id"].unique()}
        model = FrameModel(args.backbone, CLASSES, input_size=args.size).to(dev).eval()
        # The bare pass gets its input ready-made: decoded, resized, normalised, float32.
        images = torch.stack([crops.to_tensor(crops.decode(c, args.size)) for c in rows["crop"]])
        images = (images.float() / 255 - model.mean.cpu()) / model.std.cpu()
        bare_fps(model.backbone, images[:args.batch], args.batch, dev)  # warm-up
        stage, bare = [], []
        for _ in range(args.repeat):  # interleaved, so that a change in machine load hits both alike
            stage.append(stage_fps(model, faces, labels, folder / "features.parquet", args.batch, args.workers))
            bare.append(bare_fps(model.backbone, images, args.batch, dev))
    stage_median, bare_median = statistics.median(stage), statistics.median(bare)
    ratio = statistics.median(s / b for s, b in zip(stage, bare))
    print(f"device {dev.type}, torch threads {torch.get_num_threads()}, backbone {args.backbone}, size {args.size}, "
          f"batch {args.batch}, {len(images)} face frames, {args.workers} workers")
    print(f"bare timm forward: {bare_median:.1f} frames/s (runs: {', '.join(f'{x:.1f}' for x in bare)})")
    print(f"feature stage:     {stage_median:.1f} frames/s (runs: {', '.join(f'{x:.1f}' for x in stage)})")
    print(f"ratio stage/bare: {ratio:.2f}")


if __name__ == "__main__":
    main()
