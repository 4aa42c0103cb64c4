"""Wall time of the reference LSTM grid on the demo windows, and the share a job's start-up takes.

    python benchmarks/sequence_grid.py [WINDOWS_DIR] [--points 225] [--workers 2]

WINDOWS_DIR is a fold's windows folder (default ``results/folds/0/windows`` of
a finished ``make demo``). The grid, epochs, patience and batch size are the
schema's reference defaults (3 architectures x 5 lr x 3 hidden x 5 dropout =
225 points, up to 200 epochs, patience 10); ``--points`` takes an evenly spread
subset for a quicker look.

1. Training: every point trained as the grid job trains it
   (:func:`ferseq.sequence_model.train`, one torch thread), in ``--workers``
   processes that each load the windows once; the figure is the wall time.
2. Start-up: what a grid job does besides training, in fresh processes
   (median of 3): start Python, import torch, MLflow, Snakemake's script
   support and ferseq, read the windows, open and close a tagged MLflow run in
   a sqlite store. That cost is paid once per job; the pipeline runs one job
   per architecture and hidden size (9 for the reference grid, each training
   its 25 lr x dropout points), so the start-up share is
   ``9 x start-up / (9 x start-up + training)``; the share with one job per
   point (225 start-ups) is printed beside it.
3. Cross-check with real jobs: when the demo's Snakemake benchmark files are
   there (``results/benchmarks/folds/0/sequence_model``), each demo grid job's
   wall time next to the training time its checkpoints recorded.

The last line is the grid's training wall time in seconds.
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing as mp
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from ferseq import search, sequence_model  # noqa: E402

CLASSES = ["neutral", "happy", "sad", "pensive"]
STARTUP = """
import sys
sys.path.insert(0, {src!r})
import mlflow, snakemake.script, torch
from ferseq import search, tracking
search.load_split({train!r}, {classes!r}); search.load_split({val!r}, {classes!r})
config = {{"experiment": "startup", "mlflow": {{"tracking_uri": "sqlite:///{tmp}/mlflow.db"}}}}
with tracking.start_run(config, "sequence_model", fold=0):
    mlflow.log_params({{"arch": "lstm", "lr": 0.01}})
"""


def reference_grid() -> dict:
    """The ``sequence_model`` defaults of the config schema."""
    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    return {key: spec["default"] for key, spec in schema["properties"]["sequence_model"]["properties"].items()}


_DATA: dict = {}


def _load(windows: str) -> None:
    torch.set_num_threads(1)
    _DATA["train"] = search.load_split(Path(windows) / "train.parquet", CLASSES)
    _DATA["val"] = search.load_split(Path(windows) / "val.parquet", CLASSES)


def _train(point: tuple, cfg: dict) -> tuple[float, int]:
    """Train one point on the worker's loaded windows; its seconds and epochs."""
    arch, lr, hidden, dropout = point
    started = time.perf_counter()
    result = sequence_model.train(*_DATA["train"], *_DATA["val"], arch=arch, lr=lr, hidden=hidden, dropout=dropout,
                                  num_classes=len(CLASSES), epochs=cfg["epochs"], patience=cfg["patience"],
                                  batch_size=cfg["batch_size"], seed=42)
    return time.perf_counter() - started, len(result.history)


def startup_seconds(windows: Path, repeat: int = 3) -> float:
    """Median wall time of a fresh process doing a grid job's work minus the training."""
    times = []
    for _ in range(repeat):
        with tempfile.TemporaryDirectory() as tmp:
            code = STARTUP.format(src=str(REPO / "src"), train=str(windows / "train.parquet"),
                                  val=str(windows / "val.parquet"), classes=CLASSES, tmp=tmp)
            started = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def demo_jobs(results: Path) -> pd.DataFrame:
    """Wall time of each finished demo grid job (its Snakemake benchmark) and the training time of its points."""
    rows = []
    for tsv in sorted((results / "benchmarks/folds/0/sequence_model").glob("*/h*.tsv")):
        models = list((results / "folds/0/sequence_model" / tsv.parent.name).glob(f"*_{tsv.stem}_*.pt"))
        histories = [torch.load(m, map_location="cpu", weights_only=False)["history"] for m in models]
        rows.append({"job": f"{tsv.parent.name}/{tsv.stem}", "points": len(models),
                     "job_s": float(pd.read_csv(tsv, sep="\t")["s"].iloc[0]),
                     "train_s": sum(epoch["seconds"] for history in histories for epoch in history)})
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("windows", nargs="?", type=Path, default=REPO / "results/folds/0/windows")
    parser.add_argument("--points", type=int, help="train an evenly spread subset of this many points")
    parser.add_argument("--workers", type=int, default=2, help="training processes (one torch thread each)")
    args = parser.parse_args()
    if not (args.windows / "train.parquet").exists():
        sys.exit(f"{args.windows}/train.parquet not found: run `make demo` first, or give a fold's windows folder")

    cfg = reference_grid()
    points = list(itertools.product(cfg["architectures"], cfg["lr"], cfg["hidden"], cfg["dropout"]))
    if args.points and args.points < len(points):
        step = len(points) / args.points
        points = [points[int(i * step)] for i in range(args.points)]
    _load(str(args.windows))
    print(f"windows: {args.windows} (train {len(_DATA['train'][1])}, val {len(_DATA['val'][1])}); "
          f"{len(points)} points, up to {cfg['epochs']} epochs, patience {cfg['patience']}, {args.workers} workers")

    started = time.perf_counter()
    with mp.get_context("spawn").Pool(args.workers, initializer=_load, initargs=(str(args.windows),)) as pool:
        done = pool.starmap(_train, [(p, cfg) for p in points])
    wall = time.perf_counter() - started
    seconds = [s for s, _ in done]
    print(f"training: {wall:.1f} s wall for {len(points)} points ({sum(seconds):.1f} s of training, "
          f"median {statistics.median(seconds):.2f} s and {statistics.median(e for _, e in done):.0f} epochs a point)")

    startup = startup_seconds(args.windows)
    jobs = len({(arch, hidden) for arch, _, hidden, _ in points})
    share = jobs * startup / (jobs * startup + sum(seconds))
    per_point = len(points) * startup / (len(points) * startup + sum(seconds))
    print(f"job start-up (fresh Python, imports, windows read, MLflow run): {startup:.2f} s; "
          f"{jobs} jobs (one per architecture and hidden size): start-up {share:.0%} of the grid's CPU time "
          f"(one job per point would make it {per_point:.0%})")

    demo = demo_jobs(args.windows.parents[2])
    if len(demo):
        overhead = demo["job_s"] - demo["train_s"]
        print(f"demo grid jobs (Snakemake benchmarks): {len(demo)} jobs of {demo['points'].median():.0f} points, "
              f"median {demo['job_s'].median():.2f} s a job of which {demo['train_s'].median():.2f} s training; "
              f"overhead median {overhead.median():.2f} s a job")
    print(f"{wall:.1f}")


if __name__ == "__main__":
    main()
