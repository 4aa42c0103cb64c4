"""Two finished runs compared on the same test data, paired by person (``ferseq compare A B``).

Two runs of one study that differ in one setting (``frame_model.init:
pretrain`` against ``imagenet``, another backbone, other window features)
each give a summary, but whether the setting helped is a paired question: the
same test people, scored by both runs. For every method both runs scored (the
per-frame CNN, the CNN-LSTM, ...), at segment level and at the method's own
level, this gives each run's pooled score, the difference A − B, its
bootstrap interval over the resampling units (the same resamples for both
runs: a paired bootstrap) and the sign-flip p-value of that same pooled
difference, exchanging a unit's two confusion matrices: the arithmetic of the
summary's differences between two methods of one run
(:mod:`ferseq.evaluation.summary`).

The runs must have scored the same test segments (same annotations, split
and split seed): items are matched by fold and segment, with the same person
and label, whatever their order in the files. Window and frame levels are
compared where both runs have the same test windows or frames (the same
windows settings and faces); otherwise the table says they were not compared.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ferseq.common.errors import FerseqError
from ferseq.common.outputs import atomic_path
from ferseq.evaluation import metrics, predictions, summary, uncertainty

#: What identifies a test item of each level across runs (with its person and label, which must agree too).
KEYS = {"segment": ["fold", "segment_id"], "window": ["fold", "window_id"], "frame": ["fold", "video_id", "frame"]}
COLUMNS = ["method", "name", "level", "metric", "a", "b", "difference", "ci_low", "ci_high", "p_value", "smallest_p",
           "p_exact", "differing_units", "units", "items"]


@dataclass
class Run:
    """One finished run's pooled test predictions (:func:`read_run`)."""

    folder: Path
    pooled: summary.Pooled
    split_unit: str
    leak: bool
    init: str | None  # where its frame CNN started, as its summary.csv says (None when it does not)


def results_folder(path: str | Path) -> Path:
    """The results folder of a run: ``path`` itself, or ``path/results`` when given the run's working directory."""
    path = Path(path)
    for folder in (path, path / "results"):
        if (folder / "folds").is_dir():
            return folder
    raise FerseqError(f"{path}: not the results folder of a finished run (no folds/ in it or in {path / 'results'})")


def read_run(path: str | Path) -> Run:
    """A run's test predictions, those of every fold its split made (``data/split_summary.csv``), pooled as its
    summary pools them."""
    folder = results_folder(path)
    splits = folder / "data" / "split_summary.csv"
    if not splits.is_file():
        raise FerseqError(f"{path}: not a finished run: {splits} missing (run the workflow to the end first)")
    table = pd.read_csv(splits)
    unit, leak = str(table["split_unit"].iloc[0]), bool(table["identity_leak"].iloc[0])
    files = [folder / "folds" / str(fold) / "evaluation" / "predictions.parquet"
             for fold in sorted(table["fold"].unique())]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FerseqError(f"{path}: not a finished run: {', '.join(missing)} missing (run the workflow to the end "
                          "first)")
    try:
        pooled = summary.pool(files, unit, leak)
    except ValueError as err:
        raise FerseqError(f"{path}: {err}") from None
    init = None
    summary_csv = folder / "evaluation" / "summary.csv"
    if summary_csv.is_file():
        column = pd.read_csv(summary_csv, usecols=lambda c: c == "frame_cnn_init")
        if "frame_cnn_init" in column and column["frame_cnn_init"].notna().any():
            init = str(column["frame_cnn_init"].dropna().iloc[0])
    return Run(folder, pooled, unit, leak, init)


def match(a: pd.DataFrame, b: pd.DataFrame, level: str) -> tuple[np.ndarray, np.ndarray, str]:
    """Row indices of ``a`` and of ``b`` holding the same test items of ``level``, in the same order, and why not
    when the two runs' items of that level differ (then the indices are empty)."""
    keys = KEYS[level] + ["subject", "label"]
    rows_a, rows_b = np.flatnonzero((a["level"] == level).to_numpy()), np.flatnonzero((b["level"] == level).to_numpy())
    left = a.iloc[rows_a][keys].astype(str).reset_index(drop=True).assign(_a=np.arange(len(rows_a)))
    right = b.iloc[rows_b][keys].astype(str).reset_index(drop=True).assign(_b=np.arange(len(rows_b)))
    both = left.merge(right, on=keys, how="inner", validate="one_to_one")
    if len(both) == len(rows_a) == len(rows_b):
        return rows_a[both["_a"].to_numpy()], rows_b[both["_b"].to_numpy()], ""
    only_a = left.loc[~left["_a"].isin(both["_a"]), keys]
    only_b = right.loc[~right["_b"].isin(both["_b"]), keys]
    first = only_a if len(only_a) else only_b
    example = ", ".join(f"{k} {v}" for k, v in first.iloc[0].items()) if len(first) else ""
    why = (f"{len(rows_a)} test {level}s in A, {len(rows_b)} in B, {len(both)} the same (fold, {level}, person and "
           f"label); {len(only_a)} only in A, {len(only_b)} only in B (e.g. {example})")
    return np.zeros(0, np.int64), np.zeros(0, np.int64), why


def compare(a: Run, b: Run, resamples: int = summary.RESAMPLES, seed: int = 42,
            confidence: float = summary.CONFIDENCE) -> tuple[pd.DataFrame, dict[str, str]]:
    """Every method both runs scored, A − B at segment level and at its own level, as rows of :data:`COLUMNS`
    (scores and differences in percent); and the levels not compared, with why."""
    pa, pb = a.pooled, b.pooled
    if pa.classes != pb.classes:
        raise FerseqError(f"the runs have other classes: A {pa.classes}, B {pb.classes}")
    if (a.split_unit, a.leak) != (b.split_unit, b.leak):
        raise FerseqError(f"the runs were split differently: split.unit {a.split_unit} / {b.split_unit}, identity "
                          f"leak {a.leak} / {b.leak}")
    matched, skipped = {}, {}
    for level in ("segment", "window", "frame"):
        rows_a, rows_b, why = match(pa.ids, pb.ids, level)
        if why:
            skipped[level] = why
        elif len(rows_a):
            matched[level] = rows_a, rows_b
        elif level != "segment":
            skipped[level] = f"neither run has test {level}s (every test segment is shorter than a window)"
    if "segment" in skipped:
        raise FerseqError(f"the runs did not score the same test segments: {skipped['segment']}. Compare runs of the "
                          "same annotations and split (split.scheme, split.seed, split.folds)")
    n_units, n_classes = len(pa.units), len(pa.classes)
    counts = uncertainty.resample_counts(n_units, resamples, seed).astype(np.float64)
    rows = []
    for method in [m for m in pa.names if m in pb.names]:
        for level in ("segment", predictions.native_level(method)):
            if level not in matched:
                continue
            rows_a, rows_b = matched[level]
            units, y = pa.unit_index[rows_a], pa.y[rows_a]
            ca = metrics.grouped_confusion(units, n_units, y, pa.probs[method][rows_a].argmax(axis=1), n_classes)
            cb = metrics.grouped_confusion(units, n_units, y, pb.probs[method][rows_b].argmax(axis=1), n_classes)
            point_a, point_b = metrics.scores(ca.sum(axis=0)), metrics.scores(cb.sum(axis=0))
            boot_a, boot_b = uncertainty.bootstrap_scores(ca, counts), uncertainty.bootstrap_scores(cb, counts)
            tests = uncertainty.sign_flip(ca, cb, seed)
            either = int(((ca.sum(axis=(1, 2)) + cb.sum(axis=(1, 2))) > 0).sum())
            for metric in metrics.METRICS:
                low, high = uncertainty.interval(boot_a[metric] - boot_b[metric], confidence)
                test = tests[metric]
                rows.append({"method": method, "name": pa.names[method], "level": level, "metric": metric,
                             "a": 100 * float(point_a[metric]), "b": 100 * float(point_b[metric]),
                             "difference": 100 * float(point_a[metric] - point_b[metric]),
                             "ci_low": 100 * low, "ci_high": 100 * high, "p_value": test.p,
                             "smallest_p": test.smallest_p, "p_exact": test.exact, "differing_units": test.units,
                             "units": either, "items": len(rows_a)})
    if not rows:
        raise FerseqError(f"the runs have no method in common: A {list(pa.names)}, B {list(pb.names)}")
    return pd.DataFrame(rows, columns=COLUMNS), skipped


def markdown(table: pd.DataFrame, skipped: dict[str, str], a: Run, b: Run, resamples: int,
             confidence: float, seed: int) -> str:
    """The comparison as a page: what was compared, one sentence per method (segment-level UAR), the table."""
    pooled = a.pooled
    nouns = pooled.unit_nouns
    folds = len(pooled.folds)
    lines = ["# A − B: two runs on the same test data", "",
             f"- **A**: `{a.folder}`" + (f" (frame CNN initialised from {a.init})" if a.init else ""),
             f"- **B**: `{b.folder}`" + (f" (frame CNN initialised from {b.init})" if b.init else ""), "",
             f"Paired by {nouns[0]}: {len(pooled.units)} test {nouns[1]} in {folds} fold{'s' if folds != 1 else ''}, "
             f"the same test segments in both runs. Intervals: {100 * confidence:g}% percentile bootstrap over the "
             f"{nouns[1]}, {resamples} resamples drawn once for both runs (seed {seed}). p: two-sided sign-flip test "
             f"of the same pooled difference, exchanging a {nouns[0]}'s A and B predictions. Both cover the sampling "
             f"of test {nouns[1]}, not the training's own randomness: one run trained again with another seed differs "
             "too, so a small difference needs runs of several seeds.", ""]
    uar = table[(table["level"] == "segment") & (table["metric"] == "uar")]
    for _, row in uar.iterrows():
        if row["differing_units"] == 0:  # e.g. the landmark baseline, which the setting did not touch
            lines.append(f"- {row['name'][0].upper()}{row['name'][1:]}: the same predictions in both runs.")
            continue
        sentence = summary.verdict_sentence(row.rename({"difference": "value"}), f"{row['name']} (A)",
                                            f"{row['name']} (B)", len(pooled.units), nouns, folds, confidence,
                                            lead=False)
        lines.append(f"- {sentence}")
    pct = f"{100 * confidence:g}%"
    lines += ["", f"| method | level | metric | A | B | A − B [{pct} CI] | p |", "|---|---|---|---|---|---|---|"]
    for _, row in table.iterrows():
        lines.append(f"| {row['name']} | {row['level']} | {metrics.METRIC_NAMES[row['metric']]} | {row['a']:.1f} | "
                     f"{row['b']:.1f} | {summary.signed_cell(row['difference'], row['ci_low'], row['ci_high'])} | "
                     f"{summary.p_text(row['p_value'])} |")
    for level, why in skipped.items():
        lines += ["", f"Not compared at {level} level: {why}."]
    return "\n".join(lines) + "\n"


def run(path_a: str | Path, path_b: str | Path, out_dir: str | Path | None = None,
        resamples: int = summary.RESAMPLES, seed: int = 42, confidence: float = summary.CONFIDENCE) -> str:
    """``ferseq compare``: the comparison page; with ``out_dir``, also ``comparison.md`` and ``comparison.csv``
    (every row of :func:`compare`) written there."""
    if resamples < 1 or not 0 < confidence < 1:
        raise FerseqError(f"--resamples must be at least 1 and --confidence between 0 and 1 (got {resamples}, "
                          f"{confidence})")
    a, b = read_run(path_a), read_run(path_b)
    table, skipped = compare(a, b, resamples, seed, confidence)
    page = markdown(table, skipped, a, b, resamples, confidence, seed)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        with atomic_path(out / "comparison.csv") as tmp:
            table.assign(run_a=str(a.folder), run_b=str(b.folder), resamples=resamples, confidence=confidence,
                         seed=seed).to_csv(tmp, index=False, float_format="%.6g")
        with atomic_path(out / "comparison.md") as tmp:
            tmp.write_text(page)
    return page

