"""Peak memory of the faces and features jobs on a clip and on the same clip looped 10 times.

    python benchmarks/memory.py [VIDEO] [--loops 10] [--size 96] [--batch 32] [--workers 2]

The looped clip is written once (OpenCV, mp4v) into a temporary folder. Each
job then runs in a fresh process, as Snakemake runs it, on every frame of the
clip as one annotated segment: the faces stage (default config: HOG, tracking,
224 px crops) and the feature stage (random-init ``legacy_xception`` at
``--size``, batched, DataLoader workers) on that faces file. Peak RSS is the
process's own ``ru_maxrss`` (DataLoader workers are reported apart, the
largest of them). Streaming means the 10x clip needs no more memory than the
1x clip; the last line is the largest ratio of peak RSS 10x / 1x.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

DEFAULT_VIDEO = REPO / "data" / "demo" / "videos" / "woman_sad_to_happy.mp4"
CLASSES = ["neutral", "happy", "sad", "pensive"]


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


def child(stage: str, video: Path, folder: Path, size: int, batch: int, workers: int) -> None:
    """Run one stage on the whole clip in this process; print its frame count and peak RSS as JSON."""
    import pandas as pd

    from ferseq.data.videos import probe
    from ferseq.faces.face_extraction import DEFAULTS, extract_faces

    frames = probe(video).frames
    faces = folder / f"{video.stem}.faces.parquet"
    if stage == "faces":
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
    print(json.dumps({"frames": frames,
                      "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "workers_peak_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))


def measure(stage: str, video: Path, folder: Path, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--child", stage, str(video), "--folder", str(folder), "--size", str(args.size),
               "--batch", str(args.batch), "--workers", str(args.workers)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{stage} on {video.name} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("video", nargs="?", type=Path, default=DEFAULT_VIDEO)
    parser.add_argument("--loops", type=int, default=10)
    parser.add_argument("--size", type=int, default=96, help="frame-model input size (the demo config's)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--child", choices=["faces", "features"], help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.video, args.folder, args.size, args.batch, args.workers)
        return

    ratios = []
    with tempfile.TemporaryDirectory(prefix="ferseq-memory-") as tmp:
        folder = Path(tmp)
        looped = folder / f"{args.video.stem}_x{args.loops}.mp4"
        loop_video(args.video, args.loops, looped)
        for stage in ("faces", "features"):
            one, many = (measure(stage, clip, folder, args) for clip in (args.video, looped))
            ratios.append(many["peak_mb"] / one["peak_mb"])
            extra = (f"; largest DataLoader worker {one['workers_peak_mb']:.0f} MB -> {many['workers_peak_mb']:.0f} MB"
                     if stage == "features" else "")
            print(f"{stage}: peak RSS {one['peak_mb']:.0f} MB on {one['frames']} frames, {many['peak_mb']:.0f} MB on "
                  f"{many['frames']} frames (x{args.loops}): ratio {ratios[-1]:.2f}{extra}")
    print(f"{max(ratios):.2f}")


if __name__ == "__main__":
    main()
