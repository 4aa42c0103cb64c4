"""Peak memory of the faces, features and frame-model jobs on a clip and on the same clip looped 10 times.

    python benchmarks/memory.py [VIDEO] [--loops 10] [--size 96] [--batch 32] [--workers 2]
                                [--stages faces features frame_model] [--frame-backbone resnet18] [--frame-size 48]

The looped clip is written once (OpenCV, mp4v) into a temporary folder. Each
job then runs in a fresh process, as Snakemake runs it, on every frame of the
clip as one annotated segment: the faces stage (default config: HOG, tracking,
224 px crops) and the feature stage (random-init ``legacy_xception`` at
``--size``, batched, DataLoader workers) on that faces file. Peak RSS is the
process's own ``ru_maxrss`` (DataLoader workers are reported apart, the
largest of them). The frame model (``frame_model``: one training epoch, random-init
``--frame-backbone`` at ``--frame-size``, augmentation, ``--workers`` loader workers,
then the val pass) trains on that faces file cut into segments of 32 frames, every
fifth one a val segment; its peak is also given as the job's process tree's
(the main process and its workers, sampled every 0.1 s, RSS summed, as
Snakemake's benchmark ``max_rss`` counts it; the ratio uses it). Streaming means
the 10x clip needs no more memory than the 1x clip; the last line is the largest
ratio of peak RSS 10x / 1x.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

DEFAULT_VIDEO = REPO / "data" / "demo" / "videos" / "woman_sad_to_happy.mp4"
CLASSES = ["neutral", "happy", "sad", "pensive"]
STAGES = ("faces", "features", "frame_model")


def loop_video(video: Path, loops: int, out: Path) -> int:
    """Write ``video`` ``loops`` times over into ``out``, reading it again for each loop; return its frame count."""
    writer, frames = None, 0
    for _ in range(loops):
        reader = cv2.VideoCapture(str(video))
        while True:
            ok, frame = reader.read()
            if not ok:
                break
            if writer is None:
                height, width = frame.shape[:2]
                fps = reader.get(cv2.CAP_PROP_FPS) or 25
                writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
            writer.write(frame)
            frames += 1
        reader.release()
    writer.release()
    return frames


SEGMENT = 32  # frames a segment of the frame model's training


def frame_model_inputs(faces: Path, folder: Path) -> tuple[Path, Path, Path]:
    """The faces file with segments of ``SEGMENT`` frames (row group by row group), and its segments and splits."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    out = folder / f"{faces.stem}.segmented.parquet"
    segments = set()
    with pq.ParquetFile(faces) as parquet, pq.ParquetWriter(out, parquet.schema_arrow) as writer:
        for group in range(parquet.metadata.num_row_groups):
            table = parquet.read_row_group(group)
            segment = pc.cast(pc.divide(table["frame"], SEGMENT), pa.int64())
            segments |= set(segment.to_pylist())
            index = table.schema.get_field_index("segment_id")
            writer.write_table(table.set_column(index, table.schema.field(index), segment))
    rows = [(s, "clip", CLASSES[s % len(CLASSES)], "val" if s % 5 == 4 else "train") for s in sorted(segments)]
    table = pd.DataFrame(rows, columns=["segment_id", "video_id", "label", "split"])
    table[["segment_id", "video_id", "label"]].to_parquet(folder / "segments.parquet")
    table.assign(fold=0)[["fold", "segment_id", "split"]].to_parquet(folder / "splits.parquet")
    return out, folder / "segments.parquet", folder / "splits.parquet"


def train_frame_model(video: Path, folder: Path, args: argparse.Namespace) -> dict:
    """One epoch of the frame model's training job on the clip's faces file (made by the faces stage first)."""
    import torch

    from ferseq.frame_model import training

    torch.set_num_threads(2)
    faces, segments, splits = frame_model_inputs(folder / f"{video.stem}.faces.parquet", folder)
    config = {"experiment": "memory-benchmark", "seed": 0, "classes": {"names": CLASSES},
              "mlflow": {"tracking_uri": f"sqlite:///{folder / 'mlflow.db'}"},
              "frame_model": {"backbone": args.frame_backbone, "pretrained": False, "input_size": args.frame_size,
                              "epochs": 1, "batch_size": args.batch, "num_workers": args.workers, "augment": True}}
    result = training.train_frame_model({"clip": faces}, segments, splits, 0, config, folder / "model.pt",
                                        folder / "metrics.csv")
    return {"train_frames": int(torch.load(folder / "model.pt", weights_only=True)["train_frames"]),
            "seconds": result["history"][0]["seconds"]}


def child(stage: str, video: Path, folder: Path, size: int, batch: int, workers: int,
          args: argparse.Namespace | None = None) -> None:
    """Run one stage on the whole clip in this process; print its frame count and peak RSS as JSON."""
    import pandas as pd

    from ferseq.data.videos import probe
    from ferseq.faces.face_extraction import DEFAULTS, extract_faces

    frames = probe(video).frames
    faces = folder / f"{video.stem}.faces.parquet"
    extra: dict = {}
    if stage == "frame_model":
        extra = train_frame_model(video, folder, args)
    elif stage == "faces":
        segments = pd.DataFrame([(1, "neutral", 0, frames)], columns=["segment_id", "label", "start", "end"])
        extract_faces(video, segments, dict(DEFAULTS), faces, folder / f"{video.stem}.qc.csv")
    else:
        import torch

        from ferseq.features.feature_extraction import extract_video
        from ferseq.frame_model.network import FrameModel, to_device

        torch.set_num_threads(2)
        model = to_device(FrameModel("legacy_xception", CLASSES, input_size=size), "cpu").eval()  # as the stage loads it
        extract_video(model, faces, {1: "neutral"}, folder / f"{video.stem}.features.parquet", video_id=video.stem,
                      batch_size=batch, num_workers=workers)
    print(json.dumps({"frames": frames, **extra,
                      "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "workers_peak_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))


def tree_peak(process: subprocess.Popen) -> list[float]:
    """Sample the RSS summed over ``process`` and its children every 0.1 s until it ends, as Snakemake's
    benchmark does (shared pages count once per process); the peak in MB, in a list filled by a thread."""
    import psutil

    peak = [0.0]

    def sample() -> None:
        root = psutil.Process(process.pid)
        while process.poll() is None:
            try:
                rss = sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])
                peak[0] = max(peak[0], rss / 2**20)
            except psutil.Error:
                pass
            time.sleep(0.1)

    threading.Thread(target=sample, daemon=True).start()
    return peak


def measure(stage: str, video: Path, folder: Path, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--child", stage, str(video), "--folder", str(folder), "--size", str(args.size),
               "--batch", str(args.batch), "--workers", str(args.workers), "--frame-backbone", args.frame_backbone,
               "--frame-size", str(args.frame_size)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = tree_peak(process)
    stdout, stderr = process.communicate()
    if process.returncode != 0:
        sys.exit(f"{stage} on {video.name} failed:\n{stderr[-3000:]}")
    return {**json.loads(stdout.strip().splitlines()[-1]), "tree_peak_mb": peak[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("video", nargs="?", type=Path, default=DEFAULT_VIDEO)
    parser.add_argument("--loops", type=int, default=10)
    parser.add_argument("--size", type=int, default=96, help="frame-model input size (the demo config's)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    parser.add_argument("--frame-backbone", default="resnet18", help="the frame model's backbone (random init)")
    parser.add_argument("--frame-size", type=int, default=48, help="the frame model's input size")
    parser.add_argument("--child", choices=STAGES, help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.video, args.folder, args.size, args.batch, args.workers, args)
        return

    ratios = []
    with tempfile.TemporaryDirectory(prefix="ferseq-memory-") as tmp:
        folder = Path(tmp)
        looped = folder / f"{args.video.stem}_x{args.loops}.mp4"
        loop_video(args.video, args.loops, looped)
        stages = ["faces", *(s for s in args.stages if s != "faces")]  # the others read the faces files
        for stage in stages:
            one, many = (measure(stage, clip, folder, args) for clip in (args.video, looped))
            if stage not in args.stages:
                continue
            key = "tree_peak_mb" if stage == "frame_model" else "peak_mb"
            ratios.append(many[key] / one[key])
            extra = (f"; largest DataLoader worker {one['workers_peak_mb']:.0f} MB -> {many['workers_peak_mb']:.0f} MB"
                     if stage != "faces" else "")
            if stage == "frame_model":
                print(f"frame_model: {one['train_frames']} -> {many['train_frames']} train frames, an epoch "
                      f"{one['seconds']:.0f} s -> {many['seconds']:.0f} s; main process peak RSS {one['peak_mb']:.0f} MB "
                      f"-> {many['peak_mb']:.0f} MB{extra}")
                print(f"frame_model: job peak RSS (main + workers, summed) {one['tree_peak_mb']:.0f} MB on "
                      f"{one['frames']} frames, {many['tree_peak_mb']:.0f} MB on {many['frames']} frames "
                      f"(x{args.loops}): ratio {ratios[-1]:.2f}")
                continue
            print(f"{stage}: peak RSS {one['peak_mb']:.0f} MB on {one['frames']} frames, {many['peak_mb']:.0f} MB on "
                  f"{many['frames']} frames (x{args.loops}): ratio {ratios[-1]:.2f}{extra}")
    print(f"{max(ratios):.2f}")


if __name__ == "__main__":
    main()
