"""The whole DAG on a corpus of many short clips: each stage's time and peak memory, and whether it grows linearly.

    python benchmarks/corpus.py --clips 250 500 1000 [--cores 2] [--folds 2] [--keep DIR]
    python benchmarks/corpus.py --clips 4000          (one size: each stage's time and peak RSS)

For each ``--clips`` N, builds a corpus of N clips of 16-24 frames from the demo
videos' real frames (each cut from an annotated segment, flipped or not,
shifted by a few pixels, recoloured, and given to one of about N / 8 made-up
people, every person showing every class; MP4 files, in a temporary folder,
never committed), writes its annotation table and a config of small model
settings (a subject-level ``split.k``-fold split, so every clip is a test clip
of one fold), and runs the whole DAG as a user would type it:
``snakemake --cores N``.

Prints, per N, each stage's jobs, wall time (the sum over its jobs) and peak
memory (the largest max RSS of its jobs), both from Snakemake's benchmark
files (``results/benchmarks/``), and the run's wall time; then checks that
nothing was lost: every clip is in the evaluation's predictions
(``results/folds/*/evaluation/predictions.parquet``; the test windows where
there is none). With several N, it prints each stage's time ratio between
consecutive sizes: linear growth is a ratio of the sizes' ratio (2 for
250 -> 500), at most 1.1 times that is the target (2.2); and each stage's
peak RSS ratio with its growth per 1,000 frames of the corpus (a stage that
streams stays flat: the frame model and fine-tuning read their crops as they
go; the target for them is at most 1.2x between sizes). Peak RSS is
Snakemake's ``max_rss``: a job's processes summed (DataLoader workers
included). Exit status 1 when a clip is lost, a stage's time grows faster than
linear, or the frame model's (or fine-tuning's) peak RSS grows more than 1.2x.
"""

from __future__ import annotations

import argparse
import csv
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from ferseq.data.videos import iter_frames  # noqa: E402

DEMO = REPO / "data" / "demo"
SNAKEMAKE = Path(sys.executable).with_name("snakemake")
CLASSES = ["neutral", "happy", "sad", "pensive"]
# Growth allowed between two sizes: the sizes' ratio times this (2N within 2.2x of N).
LINEAR_SLACK = 1.1
# Peak RSS allowed between two sizes for the stages that stream their crops (the training jobs).
STREAMING = ("frame_model", "finetune")
RSS_SLACK = 1.2


def plan_corpus(clips: int, seed: int = 0) -> list[dict]:
    """``clips`` clips: clip i shows class i mod 4, cut from a demo segment of that class, for one of about
    clips / 8 people (each with every class, so every fold trains on every class)."""
    segments = pd.read_csv(DEMO / "annotations.csv")
    rng = random.Random(seed)
    people = max(4, clips // 8)
    plan = []
    for i in range(clips):
        label = CLASSES[i % len(CLASSES)]
        mine = segments[segments["label"] == label]
        segment = mine.iloc[rng.randrange(len(mine))]
        length = rng.randint(16, min(24, int(segment.end_frame - segment.start_frame)))
        start = rng.randint(int(segment.start_frame), int(segment.end_frame) - length)
        subject = f"p{(i // len(CLASSES)) % people:04d}"
        plan.append({"video": f"{subject}/clip{i:05d}.mp4", "subject": subject, "label": label,
                     "source": segment.video, "start": start, "frames": length, "flip": rng.random() < 0.5,
                     "shift": (rng.uniform(-0.04, 0.04), rng.uniform(-0.04, 0.04)),
                     "gain": [rng.uniform(0.85, 1.15) for _ in range(3)], "offset": rng.uniform(-15, 15)})
    return plan


def transform(image: np.ndarray, clip: dict) -> np.ndarray:
    """The clip's look: flipped, shifted (a fraction of the side), each colour channel scaled, brightness moved."""
    if clip["flip"]:
        image = cv2.flip(image, 1)
    height, width = image.shape[:2]
    move = np.float32([[1, 0, clip["shift"][0] * width], [0, 1, clip["shift"][1] * height]])
    image = cv2.warpAffine(image, move, (width, height), borderMode=cv2.BORDER_REFLECT_101)
    colour = image.astype(np.float32) * np.float32(clip["gain"]) + clip["offset"]
    return np.clip(colour, 0, 255).astype(np.uint8)


def write_corpus(plan: list[dict], root: Path) -> None:
    """Cut the clips out of the demo videos (each decoded once, front to back) and write the annotation table."""
    for source in sorted({clip["source"] for clip in plan}):
        mine = sorted((c for c in plan if c["source"] == source), key=lambda c: c["start"])
        writers: dict[str, cv2.VideoWriter] = {}
        last = max(c["start"] + c["frames"] for c in mine)
        for index, image in iter_frames(DEMO / "videos" / source, range(last)):
            for clip in mine:
                offset = index - clip["start"]
                if not 0 <= offset < clip["frames"]:
                    continue
                if clip["video"] not in writers:
                    target = root / "videos" / clip["video"]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    writers[clip["video"]] = cv2.VideoWriter(str(target), cv2.VideoWriter_fourcc(*"mp4v"), 25.0,
                                                             (image.shape[1], image.shape[0]))
                writers[clip["video"]].write(transform(image, clip))
                if offset == clip["frames"] - 1:
                    writers.pop(clip["video"]).release()
    with open(root / "annotations.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["video", "subject", "label", "start_frame", "end_frame"])
        writer.writerows((c["video"], c["subject"], c["label"], 0, c["frames"]) for c in plan)


def write_config(root: Path, folds: int, backbone: str, input_size: int) -> Path:
    """Small model settings: the pipeline's scaling, not its accuracy, is measured."""
    config = {
        "experiment": "ferseq-corpus-benchmark", "seed": 42,
        "data": {"videos": "videos", "annotations": "annotations.csv", "min_segment_frames": 8},
        "classes": {"names": CLASSES},
        "split": {"unit": "subject", "scheme": "kfold", "k": folds},
        "frame_model": {"backbone": backbone, "pretrained": False, "input_size": input_size, "epochs": 2,
                        "patience": 2, "frame_stride": 4, "batch_size": 32, "num_workers": 1},
        "windows": {"length": 16},
        "sequence_model": {"architectures": ["lstm", "bilstm"], "lr": [0.01], "hidden": [16], "dropout": [0.5],
                           "epochs": 20, "patience": 5},
        "mlflow": {"tracking_uri": "sqlite:///results/mlflow.db"},
    }
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def stage_of(benchmark: Path) -> str:
    """The stage a benchmark file of results/benchmarks/ belongs to (folds, batches and grid jobs together)."""
    parts = list(benchmark.with_suffix("").parts)
    if parts[0] == "folds":
        parts = parts[2:]
    if parts[0] == "faces":
        return "faces_qc" if parts[1] == "qc" else "faces"
    if parts[0] == "sequence_model":
        return {"open_search": "open_search", "select": "select_sequence_model"}.get(parts[1], "sequence_model")
    return parts[-1] if parts[0] in ("data", "evaluation") else parts[0]


def stage_table(results: Path) -> pd.DataFrame:
    """Per stage: jobs, wall seconds summed over them, the largest max RSS (MB)."""
    rows = []
    for path in sorted((results / "benchmarks").rglob("*.tsv")):
        job = pd.read_csv(path, sep="\t").iloc[-1]  # the last attempt
        rows.append({"stage": stage_of(path.relative_to(results / "benchmarks")), "s": float(job["s"]),
                     "max_rss": float(job["max_rss"])})
    table = pd.DataFrame(rows).groupby("stage", sort=False).agg(jobs=("s", "size"), seconds=("s", "sum"),
                                                                peak_mb=("max_rss", "max"))
    return table


def lost_clips(results: Path, plan: list[dict]) -> list[str]:
    """The clips that are in no fold's evaluation predictions (or, without them, in no fold's test windows)."""
    found: set[str] = set()
    for fold in sorted((results / "folds").iterdir()):
        predictions = fold / "evaluation" / "predictions.parquet"
        if predictions.is_file():
            table = pd.read_parquet(predictions, columns=["level", "video_id"])
            found |= set(table.loc[table["level"] == "segment", "video_id"])
        else:
            found |= set(pd.read_parquet(fold / "windows" / "test.parquet", columns=["video_id"])["video_id"])
    return sorted({clip["video"][:-len(".mp4")] for clip in plan} - found)


def run(clips: int, args: argparse.Namespace, root: Path) -> pd.DataFrame:
    plan = plan_corpus(clips, args.seed)
    started = time.perf_counter()
    write_corpus(plan, root)
    built = time.perf_counter() - started
    config = write_config(root, args.folds, args.backbone, args.input_size)
    command = [str(SNAKEMAKE), "--snakefile", str(REPO / "Snakefile"), "--directory", str(root),
               "--configfile", str(config), "--cores", str(args.cores)]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=root, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed (exit {done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    table = stage_table(root / "results")
    lost = lost_clips(root / "results", plan)
    frames = sum(c["frames"] for c in plan)
    print(f"\n{clips} clips ({frames} frames, {len({c['subject'] for c in plan})} people, built in {built:.0f} s): "
          f"snakemake --cores {args.cores} {wall:.1f} s wall")
    print(table.to_string(float_format=lambda v: f"{v:.1f}"))
    print("peak RSS per stage (MB, Snakemake max_rss, a job's processes summed): "
          + ", ".join(f"{stage} {mb:.0f}" for stage, mb in table["peak_mb"].items()))
    print(f"lost clips: {len(lost)}" + (f" ({', '.join(lost[:5])} ...)" if lost else " (every clip is in the "
                                                                                       "evaluation's predictions)"))
    table.attrs.update(lost=len(lost), wall=wall, frames=frames)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clips", type=int, nargs="+", default=[250, 500, 1000])
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--folds", type=int, default=2, help="split.k (default 2)")
    parser.add_argument("--backbone", default="resnet18", help="frame_model.backbone (default resnet18)")
    parser.add_argument("--input-size", type=int, default=48, help="frame_model.input_size (default 48)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, help="build and run in this (new) folder, one sub-folder per N, and keep it")
    args = parser.parse_args()

    tables = {}
    for clips in args.clips:
        with tempfile.TemporaryDirectory(prefix=f"ferseq-corpus-{clips}-") as tmp:
            root = args.keep / str(clips) if args.keep else Path(tmp)
            root.mkdir(parents=True, exist_ok=True)
            tables[clips] = run(clips, args, root)

    failed = any(table.attrs["lost"] for table in tables.values())
    sizes = sorted(tables)
    for small, large in zip(sizes, sizes[1:]):
        limit = LINEAR_SLACK * large / small
        ratios = (tables[large]["seconds"] / tables[small]["seconds"]).dropna()
        faster = ratios[ratios > limit]
        print(f"\n{small} -> {large} clips: time ratio per stage (linear: {large / small:.2f}, target <= {limit:.2f})")
        print(ratios.to_string(float_format=lambda v: f"{v:.2f}"))
        print(f"run: {tables[large].attrs['wall'] / tables[small].attrs['wall']:.2f}; "
              + (f"faster than linear: {', '.join(faster.index)}" if len(faster) else "every stage within the target"))
        failed |= bool(len(faster))
        a, b = tables[small], tables[large]
        growth = (b["peak_mb"] - a["peak_mb"]) / (b.attrs["frames"] - a.attrs["frames"]) * 1000
        memory = pd.DataFrame({"peak_mb": a["peak_mb"], "to_peak_mb": b["peak_mb"], "ratio": b["peak_mb"] / a["peak_mb"],
                               "mb_per_1000_frames": growth}).dropna()
        print(f"{small} -> {large} clips: peak RSS per stage ({a.attrs['frames']} -> {b.attrs['frames']} frames; "
              f"target for {', '.join(STREAMING)}: ratio <= {RSS_SLACK})")
        print(memory.to_string(float_format=lambda v: f"{v:.2f}"))
        grown = [stage for stage in STREAMING if stage in memory.index and memory.at[stage, "ratio"] > RSS_SLACK]
        print("streaming stages: " + (f"peak RSS grows in {', '.join(grown)}" if grown else "flat within the target"))
        failed |= bool(grown)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
