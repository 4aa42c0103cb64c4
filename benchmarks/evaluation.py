"""Benchmark: the evaluation's own work on a corpus-sized test set, on one core, with its time and peak memory.

``--protocol people`` (the default) builds 100,000 test windows of 16 frames
(500 people, 7 classes) in one fold; ``--protocol dfew`` builds DFEW's
single-labelled protocol: 11,697 test clips over its 5 folds, 7 classes, one
window of 16 frames per clip (DFER-CLIP's test sampling), each clip its own
subject (DFEW names no actors), and every method ferseq evaluates (the LSTM,
GRU and Transformer families, the fine-tuned CNN-LSTM, the frame and landmark
methods) with every paired comparison. Both use random per-frame and
per-window probabilities, then time what the evaluate and summary stages do
besides running the models: the predictions at frame, window and segment
level (``predictions.build``), writing and reading ``predictions.parquet``,
the per-fold tables, and the summary (pooling, 2,000 paired bootstrap
resamples of the units for every score and difference, the sign-flip tests of
every pooled difference, fold tables, per-person table, Markdown and both
plots). MLflow logging and the models' forward passes are not included (the
grid benchmark times the models). Targets: people under 30 s; dfew under 60 s
and under 2 GB peak resident memory, on one core.

    python benchmarks/evaluation.py --protocol dfew

The script pins itself to one core (BLAS threads 1, CPU affinity to one CPU)
unless ``--cores`` says otherwise, and prints each step's seconds and the
process's peak resident memory (``ru_maxrss``).
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":  # before numpy loads its BLAS: one thread unless --cores says otherwise
    _cores = sys.argv[sys.argv.index("--cores") + 1] if "--cores" in sys.argv[:-1] else "1"
    for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_name, _cores)

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ferseq.evaluation import fold_scores, predictions, summary


def synthetic(windows: int, people: int, classes: int, length: int, seed: int = 0):
    """Test windows (4 per segment, a few short segments) with probabilities that are right more often than not."""
    rng = np.random.default_rng(seed)
    per_segment = 4
    segments = windows // per_segment
    segment_person = rng.integers(0, people, segments)
    segment_label = rng.integers(0, classes, segments)
    segment_ids = np.repeat(np.arange(segments), per_segment)
    padded = np.zeros(len(segment_ids), bool)
    short = rng.random(segments) < 0.02  # 2% of the segments shorter than one window: one padded window each
    keep = ~np.repeat(short, per_segment) | (np.arange(len(segment_ids)) % per_segment == 0)
    segment_ids, padded = segment_ids[keep], np.repeat(short, per_segment)[keep]
    n = len(segment_ids)
    label = segment_label[segment_ids]
    table = pd.DataFrame({"window_id": np.arange(n), "segment_id": segment_ids,
                          "video_id": [f"v{s}" for s in segment_ids], "subject": [f"p{p}" for p in segment_person[segment_ids]],
                          "label": [f"c{k}" for k in label], "padded": padded})
    starts = (np.arange(n) % per_segment) * length
    frames = starts[:, None] + np.arange(length)[None, :]
    frames[padded] = np.minimum(np.arange(length), 9)  # 10 real frames, the last repeated

    def probs(shape):
        logits = rng.normal(size=(*shape, classes)).astype(np.float32)
        logits[..., :] += 1.5 * (np.arange(classes) == label.reshape(-1, *([1] * (len(shape) - 1)), 1))
        e = np.exp(logits)
        return e / e.sum(axis=-1, keepdims=True)

    frame_probs = {"per_frame": probs((n, length)), "landmarks": probs((n, length))}
    window_probs = {"aggregation": frame_probs["per_frame"].mean(axis=1), "cnn_lstm": probs((n,)),
                    "landmarks_aggregation": frame_probs["landmarks"].mean(axis=1)}
    units = {int(s): f"p{segment_person[s]}" for s in range(segments)}
    return table, frames, frame_probs, window_probs, units, [f"c{k}" for k in range(classes)]


def dfew(clips: int = 11_697, folds: int = 5, classes: int = 7, length: int = 16, seed: int = 0):
    """Per fold: DFEW-sized test clips, one window of ``length`` frames each, every method's probabilities."""
    rng = np.random.default_rng(seed)
    share = np.array([0.23, 0.17, 0.20, 0.16, 0.13, 0.02, 0.09])[:classes]  # imbalanced, as DFEW's classes are
    share = share / share.sum()
    label = rng.choice(classes, size=clips, p=share)
    fold_of = np.arange(clips) % folds
    names = predictions.methods("embedding", ("lstm", "gru", "transformer"), finetuned=True)
    out = []
    for fold in range(folds):
        ids = np.flatnonzero(fold_of == fold)
        n = len(ids)
        table = pd.DataFrame({"window_id": ids, "segment_id": ids, "video_id": [f"c{c}" for c in ids],
                              "subject": [f"c{c}" for c in ids], "label": [f"c{k}" for k in label[ids]],
                              "padded": np.zeros(n, bool)})
        frames = np.tile(np.arange(length), (n, 1))

        def probs(shape, strength):
            logits = rng.normal(size=(*shape, classes)).astype(np.float32)
            truth = label[ids].reshape(-1, *([1] * (len(shape) - 1)), 1)
            logits += strength * (np.arange(classes) == truth)
            e = np.exp(logits)
            return e / e.sum(axis=-1, keepdims=True)

        frame_probs = {"per_frame": probs((n, length), 1.0), "landmarks": probs((n, length), 0.5)}
        window_probs = {"aggregation": frame_probs["per_frame"].mean(axis=1),
                        "landmarks_aggregation": frame_probs["landmarks"].mean(axis=1)}
        for key in names:
            if key not in window_probs and key not in frame_probs:
                window_probs[key] = probs((n,), 1.5)
        out.append((table, frames, frame_probs, window_probs, {int(c): f"c{c}" for c in ids}))
    return out, [f"c{k}" for k in range(classes)], names


def run_dfew(resamples: int) -> tuple[dict[str, float], str]:
    """Time the evaluation of DFEW's protocol; returns step -> seconds and a line on what was evaluated."""
    timings: dict[str, float] = {}
    started = time.perf_counter()
    folds, classes, names = dfew()
    timings["synthetic data (not the evaluation's)"] = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        files = []
        started = time.perf_counter()
        for fold, (table, frames, frame_probs, window_probs, units) in enumerate(folds):
            ids, probs = predictions.build(table, frames, frame_probs, window_probs, fold, units)
            files.append(tmp / f"predictions{fold}.parquet")
            predictions.write(files[-1], ids, probs, classes, names)
        timings["predictions of 5 folds (build, write)"] = time.perf_counter() - started
        del folds
        started = time.perf_counter()
        for path in files:
            ids, probs, _, _ = predictions.read(path)
            for method in names:
                fold_scores.level_tables(ids, probs, classes, method)
        timings["fold tables (read, score)"] = time.perf_counter() - started
        split_summary = tmp / "split_summary.csv"
        pd.DataFrame({"fold": [0], "split": ["test"], "label": ["c0"], "segments": [11_697], "split_unit": ["subject"],
                      "identity_leak": [True], "scheme": ["predefined (from column folds)"]}).to_csv(split_summary,
                                                                                                   index=False)
        outputs = {"csv": tmp / "summary.csv", "md": tmp / "summary.md", "per_person": tmp / "per_person.csv",
                   "per_person_png": tmp / "per_person.png", "differences_png": tmp / "differences.png"}
        started = time.perf_counter()
        table = summary.summarize(files, split_summary, outputs, resamples=resamples)
        timings[f"summary ({resamples} resamples, sign-flip tests, plots)"] = time.perf_counter() - started
        diffs = table[table["kind"] == "difference"]
        line = (f"DFEW protocol: 11697 test clips in 5 folds, 7 classes, {len(names)} methods, "
                f"{len(diffs) // 3} paired differences x 3 metrics, {int(table['resampled_units'].iloc[0])} resampled "
                f"{table['resampled_unit'].iloc[0]}s, p-values from {int(diffs['differing_units'].min())}-"
                f"{int(diffs['differing_units'].max())} differing units")
    return timings, line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--protocol", choices=("people", "dfew"), default="people")
    parser.add_argument("--windows", type=int, default=100_000)
    parser.add_argument("--people", type=int, default=500)
    parser.add_argument("--classes", type=int, default=7)
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument("--cores", type=int, default=1, help="BLAS threads and CPUs to use (default 1)")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        allowed = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, allowed[:args.cores])
    if args.protocol == "dfew":
        timings, line = run_dfew(args.resamples)
        target = "target < 60 s and < 2 GB on one core"
    else:
        timings, line = run_people(args)
        target = "target < 30 s on one core"
    print(line)
    for step, seconds in timings.items():
        print(f"  {step}: {seconds:.1f} s")
    evaluation = sum(v for k, v in timings.items() if "not the evaluation" not in k)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(f"evaluation total: {evaluation:.1f} s wall ({time.process_time():.1f} s CPU for the whole script); peak "
          f"resident memory {peak:.0f} MiB ({target}; {args.cores} core(s), load {os.getloadavg()[0]:.2f})")


def run_people(args) -> tuple[dict[str, float], str]:
    """Time the evaluation of one fold of ``args.windows`` windows of ``args.people`` people."""
    table, frames, frame_probs, window_probs, units, classes = synthetic(args.windows, args.people, args.classes, 16)
    names = predictions.methods("embedding")
    timings = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        started = time.perf_counter()
        ids, probs = predictions.build(table, frames, frame_probs, window_probs, 0, units)
        predictions.write(tmp / "predictions.parquet", ids, probs, classes, names)
        timings["predictions (build, write)"] = time.perf_counter() - started

        started = time.perf_counter()
        ids, probs, classes, names = predictions.read(tmp / "predictions.parquet")
        for method in names:
            fold_scores.level_tables(ids, probs, classes, method)
        timings["fold tables (read, score)"] = time.perf_counter() - started

        split_summary = tmp / "split_summary.csv"
        pd.DataFrame({"fold": [0], "split": ["test"], "label": ["c0"], "segments": [ids["level"].eq("segment").sum()],
                      "split_unit": ["subject"], "identity_leak": [False]}).to_csv(split_summary, index=False)
        outputs = {"csv": tmp / "summary.csv", "md": tmp / "summary.md", "per_person": tmp / "per_person.csv",
                   "per_person_png": tmp / "per_person.png", "differences_png": tmp / "differences.png"}
        started = time.perf_counter()
        summary.summarize([tmp / "predictions.parquet"], split_summary, outputs, resamples=args.resamples)
        timings[f"summary ({args.resamples} resamples, plots)"] = time.perf_counter() - started
        counts = ids["level"].value_counts().to_dict()
    line = (f"{args.windows} windows requested: {counts.get('window', 0)} full windows, {counts.get('frame', 0)} frames, "
            f"{counts.get('segment', 0)} segments of {args.people} people, {args.classes} classes")
    return timings, line


if __name__ == "__main__":
    main()
