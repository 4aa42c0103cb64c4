"""Snakemake overhead of the workflow: a no-op run on the finished demo, and DAG construction at scale.

    python benchmarks/dag.py [--videos 16000] [--folds 10] [--repeat 3] [--skip-noop] [--skip-synthetic]
    python benchmarks/dag.py --protocol dfew --skip-noop     # DFEW-sized predefined 5-fold run

1. No-op on the finished demo DAG, from the repository root (``results/`` must
   hold a complete demo run, e.g. after ``make demo``): ``snakemake -n`` and,
   only if that says "Nothing to be done", a real ``snakemake --cores 2``
   (which then also does nothing). Median wall time of ``--repeat`` runs each.
   The benchmark stops with an error, and times nothing, when the dry run does
   not say "Nothing to be done" (the demo is not finished, or a change makes
   jobs rerun), and when a "no-op" run did run a job after all.
2. DAG construction at scale (the default is DFEW's size): a synthetic annotation
   table of ``--videos`` videos (one segment each, 10 videos per subject, classes of the demo) in a
   temporary folder, with an empty placeholder file per video (at DAG time
   ``plan_videos`` only checks that each exists; nothing is probed), and a
   config of the schema's defaults with ``split.scheme: kfold`` and ``split.k:
   --folds`` (so the reference 225-point LSTM grid per fold) and ``frame_model.pretrained:
   false`` (nothing to fetch). The faces batches are planned from the table
   (120 frames a video: about 77 videos a batch, some 200 batches for 16,000).
   ``snakemake -n --configfile ...`` is timed with the temporary folder as the
   working directory; the number of planned jobs is read from its summary.
3. ``--protocol dfew``: the same at DFEW's size and protocol instead: 16,372
   clips (``--videos`` to change it), each its own subject, 7 classes, a
   ``folds`` column with each clip's test fold (1-5, as ``ferseq import dfew``
   writes it), ``split.scheme: predefined`` (the folds read from the table when
   the DAG is built) and uniform 16-frame sampling.

Every command runs in a fresh process, as a user would type it. The last line
is the DAG-construction time of the synthetic table, in seconds.
"""

from __future__ import annotations

import argparse
import csv
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).with_name("snakemake")
CLASSES = ["neutral", "happy", "sad", "pensive"]
DFEW_CLASSES = ["happy", "sad", "neutral", "anger", "surprise", "disgust", "fear"]
DFEW_CLIPS = 16372


def timed(command: list[str], cwd: Path) -> tuple[float, str]:
    """Wall time and combined output of one command; a failure stops the benchmark with its output."""
    started = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed (exit {done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return seconds, done.stdout + done.stderr


def planned_jobs(output: str) -> int | None:
    """The total of the job-count table that ``snakemake -n`` prints."""
    found = re.search(r"^total\s+(\d+)", output, re.MULTILINE)
    return int(found.group(1)) if found else None


NOTHING_TO_DO = "Nothing to be done"
RAN_JOBS = re.compile(r"^\d+ of \d+ steps \(\d+%\) done|^Finished jobid", re.MULTILINE)


def is_noop(output: str) -> bool:
    """Whether a Snakemake run's output says that it had nothing to do and shows no job that ran."""
    return NOTHING_TO_DO in output and not RAN_JOBS.search(output)


def noop(repeat: int) -> tuple[float, float]:
    """Median seconds of ``snakemake -n`` and of a real no-op run on the finished demo; stops the benchmark
    when the demo is not finished (jobs would run) or when a "no-op" run ran jobs."""
    base = [str(SNAKEMAKE), "--snakefile", str(REPO / "Snakefile")]
    dry = []
    for _ in range(repeat):
        seconds, output = timed([*base, "-n", "--quiet", "rules"], REPO)
        if not is_noop(output):
            jobs = planned_jobs(output)
            sys.exit(f"no-op benchmark refused: `snakemake -n` on the demo does not say {NOTHING_TO_DO!r} ("
                     + (f"{jobs} jobs would run" if jobs else "its output: " + output.strip()[-500:])
                     + "): run `make demo` first, or leave the no-op out with --skip-noop")
        dry.append(seconds)
    real = []
    for _ in range(repeat):
        seconds, output = timed([*base, "--cores", "2"], REPO)
        if not is_noop(output):
            sys.exit(f"no-op benchmark refused: `snakemake --cores 2` ran jobs after a dry run that said "
                     f"{NOTHING_TO_DO!r}, so its {seconds:.1f} s are not a no-op's; its output ends:\n{output[-2000:]}")
        real.append(seconds)
    return statistics.median(dry), statistics.median(real)


def synthetic(folder: Path, videos: int, folds: int, per_subject: int = 10) -> Path:
    """Write the synthetic data set and its config into ``folder``; return the config path."""
    (folder / "videos").mkdir()
    rows = []
    for i in range(videos):
        name = f"clip{i:05d}.mp4"
        (folder / "videos" / name).touch()
        rows.append((name, f"s{i // per_subject:04d}", CLASSES[i % len(CLASSES)], 0, 120))
    with open(folder / "annotations.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["video", "subject", "label", "start_frame", "end_frame"])
        writer.writerows(rows)
    config = {
        "experiment": "ferseq-dag-benchmark",
        "data": {"videos": "videos", "annotations": "annotations.csv"},
        "classes": {"names": CLASSES},
        "split": {"scheme": "kfold", "k": folds},
        "frame_model": {"pretrained": False},
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def synthetic_dfew(folder: Path, clips: int) -> Path:
    """A DFEW-shaped table (one clip per subject, its test fold 1-5 in the folds column) and its predefined config."""
    (folder / "videos").mkdir()
    with open(folder / "annotations.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["video", "subject", "label", "start_frame", "end_frame", "group", "folds", "identity_leak"])
        for i in range(clips):
            name = f"{i + 1:05d}"
            (folder / "videos" / name).touch()  # a frame folder in the release; planning only checks it exists
            writer.writerow([name, name, DFEW_CLASSES[i % len(DFEW_CLASSES)], 0, 120, "", i % 5 + 1, "True"])
    config = {
        "experiment": "ferseq-dag-benchmark-dfew",
        "data": {"videos": "videos", "annotations": "annotations.csv", "min_segment_frames": 1},
        "classes": {"names": DFEW_CLASSES},
        "split": {"scheme": "predefined", "unit": "subject", "val_fraction": 0.1},
        "windows": {"length": 16, "sampling": "uniform"},
        "frame_model": {"pretrained": False},
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--videos", type=int, help="videos of the synthetic table (default 16000; dfew: 16372)")
    parser.add_argument("--folds", type=int, default=10)
    parser.add_argument("--protocol", choices=["kfold", "dfew"], default="kfold",
                        help="kfold (the default): split.scheme kfold with --folds; dfew: DFEW's predefined 5 folds")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip-noop", action="store_true", help="leave out the no-op runs on the demo")
    parser.add_argument("--skip-synthetic", action="store_true", help="leave out the synthetic DAG")
    args = parser.parse_args()

    if not args.skip_noop:
        dry, real = noop(args.repeat)
        print(f"no-op on the finished demo: snakemake -n {dry:.2f} s, snakemake --cores 2 {real:.2f} s "
              f"(median of {args.repeat})")
    if args.skip_synthetic:
        return
    dfew = args.protocol == "dfew"
    videos = args.videos or (DFEW_CLIPS if dfew else 16000)
    with tempfile.TemporaryDirectory(prefix="ferseq-dag-") as tmp:
        folder = Path(tmp)
        config = synthetic_dfew(folder, videos) if dfew else synthetic(folder, videos, args.folds)
        command = [str(SNAKEMAKE), "--snakefile", str(REPO / "Snakefile"), "--directory", str(folder),
                   "--configfile", str(config), "-n", "--quiet", "rules"]
        seconds, output = timed(command, folder)
    jobs = planned_jobs(output)
    what = "DFEW-sized predefined protocol, 5 folds from the table" if dfew else f"{args.folds} folds"
    print(f"synthetic table: {videos} videos, {what}, reference grid: {jobs} jobs planned; "
          f"snakemake -n {seconds:.1f} s ({1000 * seconds / jobs:.2f} ms per job)" if jobs else
          f"synthetic table: snakemake -n {seconds:.1f} s (job count not found in its output)")
    print(f"{seconds:.1f}")


if __name__ == "__main__":
    main()
