"""The faces stage on a corpus of many short clips, through Snakemake: how much of it is job start-up.

    python benchmarks/faces_corpus.py [--clips 330] [--cores 2] [--batch-frames N] [--keep DIR]

Builds a corpus of ``--clips`` clips of 2-16 frames cut from the demo videos'
annotated segments (every other clip a folder of PNG frames, the others MP4
files, in per-subject sub-folders, so video ids hold '/'), with its annotation
table and a config of the schema's defaults (``data.min_segment_frames: 2``,
``faces.batch_frames`` from ``--batch-frames`` if given; ``1`` gives one job
per clip, the layout before batching). Runs the data stage, then times
``snakemake --cores N results/faces/qc.csv`` (the faces stage: the batches'
segment tables, the faces jobs, the QC table) in a fresh process, as a user
would type it.

Prints the stage's wall time; the faces jobs' wall time (Snakemake's benchmark
files) and CPU time (each job's own count, from its process start: Python,
imports and models included); the clips' own processing (each job times every
clip it handles: decode, detection, landmarks, alignment, encoding, writing);
and last the share of start-up in the faces jobs' CPU time: the CPU time not
spent on a clip, over all of it. CPU time, not wall time, so that other work
on the machine does not count as start-up.
"""

from __future__ import annotations

import argparse
import csv
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from ferseq.data.videos import iter_frames  # noqa: E402

DEMO = REPO / "data" / "demo"
SNAKEMAKE = Path(sys.executable).with_name("snakemake")
CLASSES = ["neutral", "happy", "sad", "pensive"]


def plan_corpus(clips: int, seed: int = 0, subjects: int = 40) -> list[dict]:
    """``clips`` excerpts of 2-16 frames from the demo's annotated segments (so each shows a face)."""
    segments = pd.read_csv(DEMO / "annotations.csv")
    rng = random.Random(seed)
    weights = (segments["end_frame"] - segments["start_frame"]).tolist()
    plan = []
    for i in range(clips):
        segment = segments.iloc[rng.choices(range(len(segments)), weights)[0]]
        length = rng.randint(2, 16)
        start = rng.randint(int(segment.start_frame), int(segment.end_frame) - length)
        subject = f"s{i % subjects:03d}"
        folder = i % 2 == 0
        video = f"{'frames' if folder else 'clips'}/{subject}/clip{i:04d}" + ("" if folder else ".mp4")
        plan.append({"video": video, "subject": subject, "label": segment.label, "source": segment.video,
                     "start": start, "frames": length, "folder": folder})
    return plan


def write_corpus(plan: list[dict], root: Path) -> None:
    """Cut the clips out of the demo videos (each decoded once, front to back) and write the annotation table."""
    for source in sorted({clip["source"] for clip in plan}):
        mine = [clip for clip in plan if clip["source"] == source]
        writers: dict[int, cv2.VideoWriter] = {}
        for index, image in iter_frames(DEMO / "videos" / source, range(max(c["start"] + c["frames"] for c in mine))):
            for k, clip in enumerate(mine):
                offset = index - clip["start"]
                if not 0 <= offset < clip["frames"]:
                    continue
                target = root / "videos" / clip["video"]
                if clip["folder"]:
                    target.mkdir(parents=True, exist_ok=True)
                    cv2.imwrite(str(target / f"{offset:03d}.png"), image)
                    continue
                if k not in writers:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    size = (image.shape[1], image.shape[0])
                    writers[k] = cv2.VideoWriter(str(target), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, size)
                writers[k].write(image)
                if offset == clip["frames"] - 1:
                    writers.pop(k).release()
    with open(root / "annotations.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["video", "subject", "label", "start_frame", "end_frame"])
        writer.writerows((c["video"], c["subject"], c["label"], 0, c["frames"]) for c in plan)


def write_config(root: Path, batch_frames: int | None) -> Path:
    config = {
        "experiment": "ferseq-faces-corpus-benchmark",
        "data": {"videos": "videos", "annotations": "annotations.csv", "min_segment_frames": 2},
        "classes": {"names": CLASSES},
        "frame_model": {"pretrained": False},  # only the faces stage runs; nothing to fetch
    }
    if batch_frames is not None:
        config["faces"] = {"batch_frames": batch_frames}
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def snakemake(root: Path, config: Path, cores: int, target: str) -> float:
    """Wall seconds of one Snakemake run; a failure stops the benchmark with its output."""
    command = [str(SNAKEMAKE), "--snakefile", str(REPO / "Snakefile"), "--directory", str(root),
               "--configfile", str(config), "--cores", str(cores), target]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=root, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed (exit {done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clips", type=int, default=330)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--batch-frames", type=int, help="faces.batch_frames (default: the schema's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, help="build and run in this (new) folder and keep it")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="ferseq-faces-corpus-") as tmp:
        root = args.keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        plan = plan_corpus(args.clips, args.seed)
        write_corpus(plan, root)
        config = write_config(root, args.batch_frames)
        snakemake(root, config, args.cores, "results/data/segments.parquet")
        wall = snakemake(root, config, args.cores, "results/faces/qc.csv")

        jobs = [pd.read_csv(path, sep="\t").iloc[0] for path in (root / "results/benchmarks/faces").glob("b*.tsv")]
        job_seconds = sum(float(job["s"]) for job in jobs)
        timings = [job_timing(path) for path in (root / "results/logs/faces").glob("b*.log")]
        clip_seconds, clip_cpu, job_cpu = (sum(t[i] for t in timings) for i in range(3))
        qc = pd.read_csv(root / "results/faces/qc.csv", dtype={"video": str})
        clips = qc[qc["label"] == "all"]

    folders = sum(clip["folder"] for clip in plan)
    assert len(timings) == len(jobs), "every faces job's log reports its timing"
    print(f"corpus: {len(plan)} clips of 2-16 frames ({folders} PNG folders, {len(plan) - folders} MP4 files), "
          f"{sum(c['frames'] for c in plan)} frames; faces in {int(clips['faces_found'].sum())} of "
          f"{int(clips['frames'].sum())}")
    print(f"faces stage (snakemake --cores {args.cores} results/faces/qc.csv): {wall:.1f} s wall, "
          f"{len(jobs)} faces jobs")
    print(f"faces jobs: {job_seconds:.1f} s wall, {job_cpu:.1f} s CPU in all ({job_seconds / len(jobs):.2f} s wall "
          f"per job)")
    print(f"clips' own processing: {clip_seconds:.1f} s wall, {clip_cpu:.1f} s CPU "
          f"({1000 * clip_seconds / len(clips):.0f} ms wall per clip)")
    print(f"start-up: {job_cpu - clip_cpu:.1f} s of the faces jobs' {job_cpu:.1f} s CPU "
          f"({(job_seconds - clip_seconds) / job_seconds:.3f} of their wall time)")
    print(f"{(job_cpu - clip_cpu) / job_cpu:.3f}")


def job_timing(log: Path) -> tuple[float, float, float]:
    """(clips' wall s, clips' CPU s, the job's CPU s) from the last line of a faces job's log."""
    found = re.search(r"clips ([\d.]+) s wall, ([\d.]+) s CPU; job ([\d.]+) s CPU in all", log.read_text())
    if not found:
        sys.exit(f"{log}: no timing line (did the job finish?)")
    return tuple(float(x) for x in found.groups())


if __name__ == "__main__":
    main()
