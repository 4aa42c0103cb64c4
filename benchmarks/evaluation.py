"""Benchmark: the evaluation's own work on a corpus-sized test set, on one core.

Builds 100,000 test windows of 16 frames (500 people, 7 classes) with random
per-frame and per-window probabilities, then times what the evaluate and
summary stages do besides running the models: the predictions at frame, window
and segment level (``predictions.build``), writing and reading
``predictions.parquet``, the per-fold tables, and the summary (pooling, 2,000
paired bootstrap resamples of the people for every score and difference,
sign-flip tests, per-person table, Markdown and both plots). MLflow logging and
the sequence model's forward pass are not included (the grid benchmark times
the models). Target: under 30 s in all.

    OMP_NUM_THREADS=1 taskset -c 0 python benchmarks/evaluation.py
"""

from __future__ import annotations

import argparse
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--windows", type=int, default=100_000)
    parser.add_argument("--people", type=int, default=500)
    parser.add_argument("--classes", type=int, default=7)
    parser.add_argument("--resamples", type=int, default=2000)
    args = parser.parse_args()
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
    print(f"{args.windows} windows requested: {counts.get('window', 0)} full windows, {counts.get('frame', 0)} frames, "
          f"{counts.get('segment', 0)} segments of {args.people} people, {args.classes} classes")
    for step, seconds in timings.items():
        print(f"  {step}: {seconds:.1f} s")
    print(f"evaluation total: {sum(timings.values()):.1f} s (target < 30 s on one core)")


if __name__ == "__main__":
    main()
