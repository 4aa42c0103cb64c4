"""Speed of the faces stage against plain decoding, on one core.

    python benchmarks/faces.py [VIDEO] [--repeat 3] [--detect-every 10] [--detector hog]
    python benchmarks/faces.py --detector opencv_dnn --dnn-model M.caffemodel --dnn-prototxt deploy.prototxt

Prints frames per second for decoding only and for the whole stage (decode,
detect/track, landmarks, align, encode, write Parquet) on every frame of the
video, then their ratio; the last line is the whole-stage figure alone.
Models are loaded before timing; each figure is the median of ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from ferseq.data.videos import iter_frames, probe  # noqa: E402
from ferseq.faces.face_extraction import extract_faces, make_tracker  # noqa: E402

DEFAULT_VIDEO = REPO / "data" / "demo" / "videos" / "woman_sad_to_happy.mp4"


def faces_config(**overrides) -> dict:
    """The ``faces`` defaults of the config schema, with ``overrides``."""
    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    cfg = {key: spec["default"] for key, spec in schema["properties"]["faces"]["properties"].items()}
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    return cfg


def decode_fps(video: Path) -> float:
    started, frames = time.perf_counter(), 0
    for _ in iter_frames(video):
        frames += 1
    return frames / (time.perf_counter() - started)


def stage_fps(video: Path, frames: int, cfg: dict) -> tuple[float, pd.Series]:
    segments = pd.DataFrame([(1, "all", 0, frames)], columns=["segment_id", "label", "start", "end"])
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        qc = extract_faces(video, segments, cfg, Path(tmp) / "faces.parquet", Path(tmp) / "qc.csv")
        return frames / (time.perf_counter() - started), qc.iloc[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("video", nargs="?", type=Path, default=DEFAULT_VIDEO)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--detector", choices=["hog", "mmod", "opencv_dnn"])
    parser.add_argument("--detect-every", type=int)
    parser.add_argument("--detect-scale", type=float)
    parser.add_argument("--dnn-model", help="res10_300x300_ssd_iter_140000.caffemodel, for --detector opencv_dnn")
    parser.add_argument("--dnn-prototxt", help="deploy.prototxt, for --detector opencv_dnn")
    args = parser.parse_args()

    # One core: OpenCV's own threads off, and the process (FFmpeg's decoder threads included) pinned to one CPU.
    cv2.setNumThreads(1)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    cfg = faces_config(detector=args.detector, detect_every=args.detect_every, detect_scale=args.detect_scale,
                       dnn_model=args.dnn_model, dnn_prototxt=args.dnn_prototxt)
    info = probe(args.video)
    make_tracker(cfg)  # load the models outside the timing
    decode = statistics.median(decode_fps(args.video) for _ in range(args.repeat))
    runs = [stage_fps(args.video, info.frames, cfg) for _ in range(args.repeat)]
    stage = statistics.median(fps for fps, _ in runs)
    qc = runs[-1][1]

    print(f"video: {args.video} ({info.frames} frames, {info.width}x{info.height}), detector {cfg['detector']}, "
          f"detect_every {cfg['detect_every']}, detect_scale {cfg['detect_scale']}, one core")
    print(f"decode only: {decode:.1f} frames/s")
    print(f"whole stage: {stage:.1f} frames/s (faces in {qc['faces_found']}/{qc['frames']} frames, "
          f"{qc['full_detections']} full detections)")
    print(f"stage/decode: {stage / decode:.2f}")
    print(f"{stage:.1f}")


if __name__ == "__main__":
    main()
