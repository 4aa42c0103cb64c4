"""Speed of the feature stage against a bare forward pass of the same backbone, on CUDA if there is a GPU.

    python benchmarks/features.py [FACES_PARQUET] [--backbone legacy_xception] [--size 96] [--batch 32]
                                  [--frames 472] [--loop 1] [--workers 2] [--decode auto] [--repeat 3]

Without a faces file, the faces stage first makes one from the first
``--frames`` frames of a demo clip (224 px crops, as in the pipeline);
``--loop N`` repeats its rows N times (a GPU needs more frames than a clip
to reach its speed; e.g. ``--size 224 --batch 256 --loop 20`` there). Then,
on the same face frames, with the same backbone, input size and batch size:

- stage: :func:`ferseq.features.feature_extraction.extract_video` with the model already loaded
  (as the pipeline loads it: channels_last on CUDA): read the Parquet file,
  decode and resize the crops (OpenCV in DataLoader workers on the CPU; on
  CUDA nvJPEG in one batch per row group, ``--decode`` overrides), normalise,
  backbone + FC head + softmax, write the feature Parquet;
- bare: ``backbone(x)`` under ``torch.inference_mode()`` (bf16 autocast on
  CUDA) on crops decoded, resized and normalised beforehand and already on
  the device (pure model time, an upper bound), in both memory layouts:
  default and channels_last.

Weights are random (speed does not depend on them). Each figure is the median
of ``--repeat`` runs (stage and bare interleaved) after one warm-up batch;
the last line is the median of the per-run ratios stage / bare frames per
second, against the faster of the two bare layouts (channels_last on a GPU).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from ferseq.features.feature_extraction import extract_video  # noqa: E402
from ferseq.frame_model import crops  # noqa: E402
from ferseq.frame_model.network import FrameModel, autocast, default_device, to_device  # noqa: E402

DEFAULT_VIDEO = REPO / "data" / "demo" / "videos" / "woman_sad_to_happy.mp4"
CLASSES = ["neutral", "happy", "sad", "pensive"]


def make_faces(video: Path, frames: int, folder: Path) -> Path:
    """A faces file of the first ``frames`` frames of ``video`` (one segment)."""
    from ferseq.faces.face_extraction import (  # dlib: not needed (nor installed) where a faces file is given
        DEFAULTS,
        extract_faces,
    )

    segments = pd.DataFrame([(1, "neutral", 0, frames)], columns=["segment_id", "label", "start", "end"])
    out = folder / "faces.parquet"
    extract_faces(video, segments, dict(DEFAULTS), out, folder / "faces.qc.csv")
    return out


def loop_faces(faces: Path, times: int, folder: Path) -> Path:
    """A faces file with the rows of ``faces`` repeated ``times`` times (frames renumbered, 256-row groups)."""
    table = pq.read_table(faces)
    span = pc.max(table["frame"]).as_py() + 1
    parts = [table.set_column(table.schema.get_field_index("frame"), "frame",
                              pc.add(table["frame"], pa.scalar(i * span, table.schema.field("frame").type)))
             for i in range(times)]
    out = folder / "faces_looped.parquet"
    pq.write_table(pa.concat_tables(parts), out, row_group_size=256)
    return out


def stage_fps(model: FrameModel, faces: Path, labels: dict[int, str], out: Path, batch: int, workers: int,
              decode: str | None) -> float:
    stats = extract_video(model, faces, labels, out, video_id="bench", batch_size=batch, num_workers=workers,
                          decode=decode)
    return stats["frames"] / stats["seconds"]


def bare_fps(backbone: torch.nn.Module, batches: list[torch.Tensor], dev: torch.device) -> float:
    """Frames per second of ``backbone`` over input batches already on ``dev``."""
    if dev.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    with torch.inference_mode(), autocast(dev):
        for batch in batches:
            backbone(batch)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return sum(len(b) for b in batches) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("faces", nargs="?", type=Path, help="a faces Parquet file (default: made from a demo clip)")
    parser.add_argument("--video", type=Path, default=DEFAULT_VIDEO, help="clip to make the faces file from")
    parser.add_argument("--frames", type=int, default=472, help="frames of --video to use (472: all, 2 row groups)")
    parser.add_argument("--loop", type=int, default=1, help="repeat the face frames this many times")
    parser.add_argument("--backbone", default="legacy_xception")
    parser.add_argument("--size", type=int, default=96, help="input size (the demo config's; reference 224)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the stage")
    parser.add_argument("--decode", choices=["auto", "device", "workers"], default="auto",
                        help="where the stage decodes crops (auto: the device on CUDA, workers on the CPU)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    dev = default_device()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        faces = args.faces or make_faces(args.video, args.frames, folder)
        if args.loop > 1:
            faces = loop_faces(faces, args.loop, folder)
        rows = pd.read_parquet(faces, columns=["segment_id", "face_found", "crop"])
        rows = rows[rows["face_found"]]
        labels = {int(s): "neutral" for s in rows["segment_id"].unique()}
        model = to_device(FrameModel(args.backbone, CLASSES, input_size=args.size), dev).eval()
        # The bare pass gets its input ready-made: decoded, resized, normalised, on the device, in its layout.
        images = torch.stack([crops.to_tensor(crops.decode(c, args.size)) for c in rows["crop"]])
        images = ((images.float() / 255 - model.mean.cpu()) / model.std.cpu()).to(dev)
        backbones = {"default": copy.deepcopy(model.backbone).to(memory_format=torch.contiguous_format),
                     "channels_last": copy.deepcopy(model.backbone).to(memory_format=torch.channels_last)}
        inputs = {layout: [images[i:i + args.batch].contiguous(memory_format=fmt) for i in range(0, len(images), args.batch)]
                  for layout, fmt in (("default", torch.contiguous_format), ("channels_last", torch.channels_last))}
        for layout, backbone in backbones.items():  # warm-up
            bare_fps(backbone, inputs[layout][:1], dev)
        decode = None if args.decode == "auto" else args.decode
        stage, bare = [], {layout: [] for layout in backbones}
        for _ in range(args.repeat):  # interleaved, so that a change in machine load hits both alike
            stage.append(stage_fps(model, faces, labels, folder / "features.parquet", args.batch, args.workers, decode))
            for layout, backbone in backbones.items():
                bare[layout].append(bare_fps(backbone, inputs[layout], dev))
    fastest = max(bare, key=lambda layout: statistics.median(bare[layout]))
    ratio = statistics.median(s / b for s, b in zip(stage, bare[fastest]))
    print(f"device {dev.type} ({torch.cuda.get_device_name() if dev.type == 'cuda' else 'CPU'}), torch threads "
          f"{torch.get_num_threads()}, backbone {args.backbone}, size {args.size}, batch {args.batch}, {len(images)} face "
          f"frames, {args.workers} workers, stage layout {model.memory_format}, decode {args.decode}")
    for layout, runs in bare.items():
        print(f"bare forward, {layout + ':':14} {statistics.median(runs):.1f} frames/s "
              f"(runs: {', '.join(f'{x:.1f}' for x in runs)})")
    print(f"feature stage:                {statistics.median(stage):.1f} frames/s "
          f"(runs: {', '.join(f'{x:.1f}' for x in stage)})")
    print(f"ratio stage/bare ({fastest}): {ratio:.2f}")


if __name__ == "__main__":
    main()
