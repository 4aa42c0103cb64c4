"""The sequence-model grid: a job's points trained together against one point alone, per epoch, and projected.

    python benchmarks/sequence_grid.py [WINDOWS_DIR] [--workers 2] [--compare]      # demo windows, CPU
    python benchmarks/sequence_grid.py --synthetic 50000 --device cuda                 # speed only
    python benchmarks/sequence_grid.py --architectures lstm,lstm2,bilstm               # the reference's heads only

WINDOWS_DIR is a fold's windows folder (default ``results/folds/0/windows`` of a
finished ``make demo``); ``--synthetic N`` uses N random train windows of
16 x 512 (and 0.4 N val windows, the reference split's ratio), 3 classes,
instead: for speed only. The grid, epochs, patience and batch size are the
schema's reference defaults (5 lr x 3 hidden x 5 dropout, up to 200 epochs,
patience 10: 9 jobs of 25 points for the reference's 3 architectures) with
``--architectures`` (default: all five heads, the reference's LSTMs and the GRU
and transformer); ``--config FILE`` takes the grid from a config's
``sequence_model`` instead (e.g. ``config.yaml``, the demo grid).

1. Grid (real windows only): the whole grid trained as the pipeline trains it,
   each job's 25 points together (:func:`ferseq.sequence_model.fused_training.train_points`, one
   torch thread a job), the jobs in ``--workers`` processes that each read the
   windows once; the figure is the wall time. ``--compare`` also trains every
   point alone, one after another (:func:`ferseq.sequence_model.classifier.train`, the
   code before the fused trainer), in the same workers: the before figure.
2. Start-up (real windows, with MLflow installed): what a grid job does
   besides training, in fresh processes (median of 3): its wall seconds and
   its CPU seconds (user + system of the process, its threads included), and
   its share of the grid's CPU time, start-up CPU s x jobs / (that + the jobs'
   training CPU s from 1.), beside its share of the jobs' summed wall time.
3. Per epoch, for each job (architecture, hidden size) on ``--device``: seconds
   per epoch (all train windows and a val pass) of one point alone (a
   SequenceClassifier with torch's Adam, batch 32: the reference path) and of
   the job's 25 points together (the fused trainer), each timed on ``--steps``
   batches after a warm-up and scaled to the whole split.
4. Last line: the projected wall time in seconds of the reference grid for one
   fold at 30 epochs per point, its 9 jobs one after another on the device
   (training only; start-up as in 2 comes on top).

The per-epoch section ends with each family's sum over its jobs (LSTMs, GRU,
transformer: seconds per epoch with each job's points together), and the new
heads' sum against the LSTMs'.
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing as mp
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from ferseq.sequence_model import classifier, fused_training, grid_plan, grid_search  # noqa: E402

CLASSES = ["neutral", "happy", "sad", "pensive"]
PROJECTED_EPOCHS = 30
STARTUP = """
import sys
sys.path.insert(0, {src!r})
import mlflow, snakemake.script, torch
from ferseq.sequence_model import fused_training, grid_search
from ferseq.common import mlflow_runs
grid_search.load_split({train!r}, {classes!r}); grid_search.load_split({val!r}, {classes!r})
config = {{"experiment": "startup", "mlflow": {{"tracking_uri": "sqlite:///{tmp}/mlflow.db"}}}}
with mlflow_runs.start_run(config, "sequence_search", fold=0) as parent:
    pass
with mlflow_runs.open_child_runs(config, "sequence_model", 0, ["lstm-a", "lstm-b"], parent.info.run_id):
    pass
"""


def reference_grid(config: Path | None = None) -> dict:
    """The ``sequence_model`` defaults of the config schema, with ``config``'s ``sequence_model`` over them."""
    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    grid = {key: spec["default"] for key, spec in schema["properties"]["sequence_model"]["properties"].items()}
    if config is not None:
        grid.update(yaml.safe_load(config.read_text()).get("sequence_model") or {})
    return grid


def synthetic(n: int, seed: int = 0) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """N random train windows of 16 x 512 and 0.4 N val windows, 3 classes: for speed only."""
    rng = np.random.default_rng(seed)

    def split(count: int) -> tuple[np.ndarray, np.ndarray]:
        return rng.standard_normal((count, 16, 512), dtype=np.float32), rng.integers(0, 3, count)

    return split(n), split(max(1, int(0.4 * n)))


_DATA: dict = {}


def _load(windows: str) -> None:
    torch.set_num_threads(1)
    _DATA["train"] = grid_search.load_split(Path(windows) / "train.parquet", CLASSES)
    _DATA["val"] = grid_search.load_split(Path(windows) / "val.parquet", CLASSES)


def _train_job(job: tuple, cfg: dict) -> tuple[float, float, list[int]]:
    """Train one job's points together on the worker's loaded windows; its seconds, CPU seconds and epochs per point."""
    arch, hidden = job
    points = [fused_training.Point(lr, dropout, 42) for lr, dropout in itertools.product(cfg["lr"], cfg["dropout"])]
    started, cpu = time.perf_counter(), time.process_time()
    results = fused_training.train_points(*_DATA["train"], *_DATA["val"], arch=arch, hidden=hidden, points=points,
                                          num_classes=len(CLASSES), epochs=cfg["epochs"], patience=cfg["patience"],
                                          batch_size=cfg["batch_size"], order_seed=42)
    return time.perf_counter() - started, time.process_time() - cpu, [len(r.history) for r in results]


def _train_alone(point: tuple, cfg: dict) -> tuple[float, float, int]:
    """Train one point alone, as before the fused trainer; its seconds, CPU seconds and epochs."""
    arch, lr, hidden, dropout = point
    started, cpu = time.perf_counter(), time.process_time()
    result = classifier.train(*_DATA["train"], *_DATA["val"], arch=arch, lr=lr, hidden=hidden, dropout=dropout,
                                  num_classes=len(CLASSES), epochs=cfg["epochs"], patience=cfg["patience"],
                                  batch_size=cfg["batch_size"], seed=42)
    return time.perf_counter() - started, time.process_time() - cpu, len(result.history)


def _children_cpu() -> float:
    """CPU seconds (user + system) of this process's finished, waited-for children so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def startup_cost(windows: Path, repeat: int = 3) -> tuple[float, float]:
    """Median wall seconds and median CPU seconds of a fresh process doing a grid job's work minus the training."""
    walls, cpus = [], []
    for _ in range(repeat):
        with tempfile.TemporaryDirectory() as tmp:
            code = STARTUP.format(src=str(REPO / "src"), train=str(windows / "train.parquet"),
                                  val=str(windows / "val.parquet"), classes=CLASSES, tmp=tmp)
            started, cpu = time.perf_counter(), _children_cpu()
            subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
            walls.append(time.perf_counter() - started)
            cpus.append(_children_cpu() - cpu)  # the one child this run waited for
    return statistics.median(walls), statistics.median(cpus)


def demo_jobs(results: Path) -> pd.DataFrame:
    """Wall time of each finished demo grid job (its Snakemake benchmark) and the training time of its points.

    A job's epochs are shared by its points; every epoch includes its longest-training point, whose
    history therefore sums to the job's training time.
    """
    rows = []
    for tsv in sorted((results / "benchmarks/folds/0/sequence_model").glob("*/h*.tsv")):
        models = list((results / "folds/0/sequence_model" / tsv.parent.name).glob(f"*_{tsv.stem}_*.pt"))
        histories = [torch.load(m, map_location="cpu", weights_only=True)["history"] for m in models]
        rows.append({"job": f"{tsv.parent.name}/{tsv.stem}", "points": len(models),
                     "job_s": float(pd.read_csv(tsv, sep="\t")["s"].iloc[0]),
                     "train_s": max(sum(epoch["seconds"] for epoch in history) for history in histories)})
    return pd.DataFrame(rows)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _sample(data: tuple, count: int) -> tuple[np.ndarray, np.ndarray]:
    x, y = data
    return x[:count], y[:count]


def alone_epoch_seconds(arch: str, hidden: int, train: tuple, val: tuple, cfg: dict, device: torch.device,
                        steps: int, num_classes: int) -> float:
    """Seconds per epoch of one point trained alone on ``device`` (the reference model and Adam), from ``steps`` batches."""
    batch = cfg["batch_size"]
    x = torch.tensor(train[0][:steps * batch], device=device)
    y = torch.tensor(train[1][:steps * batch], device=device)
    vx = torch.tensor(val[0][:max(1, steps * batch * len(val[0]) // len(train[0]))], device=device)
    torch.manual_seed(0)
    model = classifier.SequenceClassifier(arch, x.shape[2], hidden, num_classes, 0.5, x.shape[1]).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.001)
    criterion = torch.nn.CrossEntropyLoss()

    def epoch() -> float:
        _sync(device)
        started = time.perf_counter()
        model.train()
        for i in range(0, len(x), batch):
            loss = criterion(model(x[i:i + batch]), y[i:i + batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.inference_mode():
            for i in range(0, len(vx), 256):
                model(vx[i:i + 256]).argmax(dim=1).cpu()
        _sync(device)
        return time.perf_counter() - started

    epoch()  # warm-up
    return epoch() * len(train[0]) / len(x)


def together_epoch_seconds(arch: str, hidden: int, train: tuple, val: tuple, cfg: dict, device: torch.device,
                           steps: int, num_classes: int) -> float:
    """Seconds per epoch of a job's points trained together on ``device`` (the fused trainer), from ``steps`` batches."""
    count = steps * cfg["batch_size"]
    sample_train = _sample(train, count)
    sample_val = _sample(val, max(1, count * len(val[0]) // len(train[0])))
    points = [fused_training.Point(lr, dropout, 0) for lr, dropout in itertools.product(cfg["lr"], cfg["dropout"])]
    # Two epochs, no early stop: the first warms up, the second is timed (its seconds include the val pass).
    results = fused_training.train_points(*sample_train, *sample_val, arch=arch, hidden=hidden, points=points,
                                          num_classes=num_classes, epochs=2, patience=3,
                                          batch_size=cfg["batch_size"], order_seed=0, device=device)
    return results[0].history[1]["seconds"] * len(train[0]) / len(sample_train[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("windows", nargs="?", type=Path, default=REPO / "results/folds/0/windows")
    parser.add_argument("--synthetic", type=int, metavar="N", help="N random windows of 16 x 512 instead (speed only)")
    parser.add_argument("--device", default="cpu", choices=fused_training.DEVICES, help="for the per-epoch figures")
    parser.add_argument("--workers", type=int, default=2, help="grid training processes (one torch thread each)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for the per-epoch figures")
    parser.add_argument("--steps", type=int, default=10, help="batches timed per epoch figure")
    parser.add_argument("--compare", action="store_true", help="also train every point alone (before the fused trainer)")
    parser.add_argument("--architectures", default=",".join(classifier.ARCHITECTURES),
                        help="comma-separated heads of the grid (default: all)")
    parser.add_argument("--config", type=Path, help="take the grid from this config's sequence_model (e.g. config.yaml)")
    args = parser.parse_args()
    cfg = reference_grid(args.config)
    cfg["architectures"] = args.architectures.split(",")
    jobs = list(itertools.product(cfg["architectures"], cfg["hidden"]))
    points = len(jobs) * len(cfg["lr"]) * len(cfg["dropout"])

    if args.synthetic:
        train, val = synthetic(args.synthetic)
        print(f"synthetic windows: train {len(train[1])}, val {len(val[1])} of 16 x 512, 3 classes (speed only)")
    else:
        if not (args.windows / "train.parquet").exists():
            sys.exit(f"{args.windows}/train.parquet not found: run `make demo` first, or give a fold's windows folder")
        _load(str(args.windows))
        train, val = _DATA["train"], _DATA["val"]
        print(f"windows: {args.windows} (train {len(train[1])}, val {len(val[1])}); {points} points in {len(jobs)} "
              f"jobs, up to {cfg['epochs']} epochs, patience {cfg['patience']}, {args.workers} workers")
        with mp.get_context("spawn").Pool(args.workers, initializer=_load, initargs=(str(args.windows),)) as pool:
            started = time.perf_counter()
            # longest jobs first, so the last one to start is a short one
            order = sorted(jobs, key=lambda job: -job[1] * (2 if job[0] != "lstm" else 1))
            done = pool.starmap(_train_job, [(job, cfg) for job in order], chunksize=1)
            wall = time.perf_counter() - started
            epochs = [e for _, _, per_point in done for e in per_point]
            cpu = sum(c for _, c, _ in done)
            print(f"grid, each job's points together: {wall:.1f} s wall for {points} points ({sum(s for s, _, _ in done):.1f} s "
                  f"of training, {cpu:.1f} CPU s, in {len(jobs)} jobs, median {statistics.median(epochs):.0f} epochs a point)")
            if args.compare:
                started = time.perf_counter()
                alone = pool.starmap(_train_alone, [(p, cfg) for p in itertools.product(
                    cfg["architectures"], cfg["lr"], cfg["hidden"], cfg["dropout"])])
                before = time.perf_counter() - started
                cpu_before = sum(c for _, c, _ in alone)
                print(f"grid, every point alone (before): {before:.1f} s wall ({sum(s for s, _, _ in alone):.1f} s of "
                      f"training, {cpu_before:.1f} CPU s, median {statistics.median(s for s, _, _ in alone):.2f} s and "
                      f"{statistics.median(e for _, _, e in alone):.0f} epochs a point): together/alone {wall / before:.2f} "
                      f"wall, {cpu / cpu_before:.2f} CPU (CPU time is the fairer figure on a shared machine)")
        try:
            startup, startup_cpu = startup_cost(args.windows)
            training, training_cpu = sum(s for s, _, _ in done), sum(c for _, c, _ in done)
            n = len(jobs)
            print(f"job start-up (fresh Python, imports, windows read, MLflow runs): {startup:.2f} s wall, "
                  f"{startup_cpu:.2f} CPU s; {n} jobs: start-up {n * startup_cpu / (n * startup_cpu + training_cpu):.0%} "
                  f"of the grid's CPU time (start-up CPU s / start-up + training CPU s), "
                  f"{n * startup / (n * startup + training):.0%} of the jobs' summed wall time")
        except subprocess.CalledProcessError as err:  # e.g. a GPU machine without mlflow or snakemake
            print(f"job start-up not measured: {err.stderr.decode().strip().splitlines()[-1]}")
        demo = demo_jobs(args.windows.parents[2])
        if len(demo):
            print(f"demo grid jobs (Snakemake benchmarks): {len(demo)} jobs of {demo['points'].median():.0f} points, "
                  f"median {demo['job_s'].median():.2f} s a job of which {demo['train_s'].median():.2f} s training")

    device = fused_training.choose_device(args.device)
    torch.set_num_threads(args.threads)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {args.threads} thread(s)"
    print(f"per epoch ({len(train[1])} train, {len(val[1])} val windows, batch {cfg['batch_size']}) on {name}, "
          f"timed on {args.steps} batches:")
    projected, classes = 0.0, int(max(train[1].max(), val[1].max())) + 1
    families: dict[str, list[float]] = {}  # family -> [alone, together], each summed over its jobs
    for arch, hidden in jobs:
        alone = alone_epoch_seconds(arch, hidden, train, val, cfg, device, args.steps, classes)
        together = together_epoch_seconds(arch, hidden, train, val, cfg, device, args.steps, classes)
        job_points = len(cfg["lr"]) * len(cfg["dropout"])
        print(f"  {arch} h{hidden}: one point alone {alone:.2f} s, {job_points} points together {together:.2f} s "
              f"({job_points * alone / together:.1f}x the throughput)", flush=True)
        projected += PROJECTED_EPOCHS * together
        sums = families.setdefault(grid_plan.family(arch), [0.0, 0.0])
        sums[0], sums[1] = sums[0] + alone, sums[1] + together
    for family, (alone, together) in families.items():
        print(f"  {family} family, its jobs one after another: one point alone {alone:.2f} s, points together "
              f"{together:.2f} s per epoch")
    new = [sums[1] for family, sums in families.items() if family != "lstm"]
    if new and "lstm" in families:
        print(f"  new heads ({', '.join(n for n in families if n != 'lstm')}) together {sum(new):.2f} s per epoch: "
              f"the grid with them {1 + sum(new) / families['lstm'][1]:.2f}x the LSTMs' grid per epoch")
    print(f"projected: the grid ({','.join(cfg['architectures'])}: {points} points, {len(jobs)} jobs one after another), one fold, "
          f"{PROJECTED_EPOCHS} epochs a point, on {name}: {projected:.0f} s ({projected / 60:.1f} min; target on one "
          f"H100/H200 <= 15 min)")
    print(f"{projected:.1f}")


if __name__ == "__main__":
    main()
