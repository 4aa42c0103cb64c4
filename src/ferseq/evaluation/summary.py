"""The answer over all folds: scores with intervals, paired differences, per-person scores and a verdict.

The folds' ``predictions.parquet`` files are pooled (with K folds every test
person is in exactly one fold's test part), and everything is computed from
them:

- every method's UAR, WAR and macro F1 at its own level (frame or window) and
  at segment level, with a 95% interval from a paired bootstrap over the test
  units (people, unless ``split.unit`` says otherwise), and mean ± std over folds;
- the paired differences that answer "does temporal modelling help"
  (:func:`ferseq.evaluation.predictions.pairs`), each with its interval and a sign-flip
  permutation p-value of the mean per-unit difference;
- each test unit's scores (``per_person.csv``, a dot plot) and a forest plot
  of the differences;
- ``summary.md``, opening with a verdict computed from those numbers, and
  ``summary.csv``, every number of it in long form.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
from pandas.api.types import union_categoricals

from ferseq.common.outputs import atomic_path
from ferseq.evaluation import metrics, plots, predictions, uncertainty

log = logging.getLogger(__name__)

# split.unit -> what a resampled unit is called (singular, plural).
UNIT_NOUNS = {"subject": ("person", "people"), "video": ("video", "videos"), "segment": ("segment", "segments")}
# DESIGN.md: the original report's figures (macro F1, accuracy), on its private 3-class data; for orientation only.
REFERENCE = {"per_frame": (48.23, 81.49), "aggregation": (50.41, 84.04), "cnn_lstm": (62.43, 83.30)}
COLUMNS = ["kind", "method", "versus", "name", "level", "metric", "value", "ci_low", "ci_high", "p_value",
           "fold_mean", "fold_std", "units", "items"]
RESAMPLES = 2000
CONFIDENCE = 0.95


@dataclass
class Pooled:
    """All folds' predictions, with each item's resampling unit as an index into ``units``."""

    ids: pd.DataFrame
    probs: dict[str, np.ndarray]
    classes: list[str]
    names: dict[str, str]
    y: np.ndarray
    unit_index: np.ndarray
    units: np.ndarray
    folds: list[int]

    @property
    def features(self) -> str:
        """The sequence models' ``windows.features``, from their method keys."""
        return predictions.sequence_rows(self.names)[0][1]


def pool(files: Sequence[str | Path]) -> Pooled:
    """Read and concatenate the folds' predictions files; they must agree on classes and methods."""
    tables, probs, classes, names = [], {}, None, None
    for path in files:
        ids, p, c, n = predictions.read(path)
        if classes is not None and (c != classes or n != names):
            raise ValueError(f"{path}: classes {c} and methods {list(n)} differ from the other folds' "
                             f"({classes}, {list(names)}); rerun the evaluation of every fold")
        classes, names = c, n
        tables.append(ids)
        for method, values in p.items():
            probs.setdefault(method, []).append(values)
    if not tables:
        raise ValueError("no predictions files to summarise")
    text = {name: union_categoricals([t[name] for t in tables]) for name in predictions.CATEGORICAL}
    ids = pd.concat([t.drop(columns=list(text)) for t in tables], ignore_index=True)
    for name, values in text.items():
        ids[name] = values
    ids = ids[predictions.ID_COLUMNS]
    unit = ids["unit"].cat.remove_unused_categories()
    return Pooled(ids, {m: np.concatenate(v) for m, v in probs.items()}, classes, names,
                  predictions.labels(ids, classes), unit.cat.codes.to_numpy(np.int64),
                  unit.cat.categories.to_numpy(str), sorted(ids["fold"].unique().tolist()))


def _confusions(pooled: Pooled, method: str, level: str, groups: np.ndarray, n_groups: int) -> np.ndarray:
    rows = (pooled.ids["level"] == level).to_numpy()
    pred = pooled.probs[method][rows].argmax(axis=1)
    return metrics.grouped_confusion(groups[rows], n_groups, pooled.y[rows], pred, len(pooled.classes))


@dataclass
class Scored:
    """One method at one level: per-unit and per-fold confusion matrices, the pooled and resampled scores."""

    method: str
    level: str
    per_unit: np.ndarray
    per_fold: np.ndarray
    point: dict[str, float]
    resampled: dict[str, np.ndarray]
    unit_scores: dict[str, np.ndarray]
    fold_scores: dict[str, np.ndarray]


def score(pooled: Pooled, method: str, level: str, counts: np.ndarray) -> Scored:
    """Score ``method`` at ``level`` on all units, on each fold, and on each bootstrap resample (``counts``)."""
    fold_index = np.searchsorted(pooled.folds, pooled.ids["fold"].to_numpy())
    per_unit = _confusions(pooled, method, level, pooled.unit_index, len(pooled.units))
    per_fold = _confusions(pooled, method, level, fold_index, len(pooled.folds))
    return Scored(method, level, per_unit, per_fold, {k: float(v) for k, v in metrics.scores(per_unit.sum(0)).items()},
                  uncertainty.bootstrap_scores(per_unit, counts), metrics.scores(per_unit), metrics.scores(per_fold))


def _pct(x: Any) -> Any:
    return 100 * np.asarray(x, dtype=float)


def _fold_stats(values: np.ndarray) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    mean = float(finite.mean()) if len(finite) else np.nan
    return mean, float(finite.std()) if len(finite) > 1 else np.nan


def level_name(a: str, b: str) -> str:
    """How a difference's level is written: one level, or ``window vs frame`` when the methods score different ones."""
    return a if a == b else f"{a} vs {b}"


def analyse(pooled: Pooled, resamples: int = RESAMPLES, seed: int = 42,
            confidence: float = CONFIDENCE) -> tuple[pd.DataFrame, dict[tuple[str, str], Scored]]:
    """Every score and paired difference of the pooled predictions, as rows of :data:`COLUMNS`."""
    counts = uncertainty.resample_counts(len(pooled.units), resamples, seed)
    scored = {(m, level): score(pooled, m, level, counts) for m in pooled.names for level in predictions.method_levels(m)}
    rows = []
    for (method, level), s in scored.items():
        items = int(s.per_unit.sum())
        for metric in metrics.METRICS:
            low, high = uncertainty.interval(s.resampled[metric], confidence)
            mean, std = _fold_stats(s.fold_scores[metric])
            rows.append({"kind": "score", "method": method, "versus": "", "name": pooled.names[method], "level": level,
                         "metric": metric, "value": _pct(s.point[metric]), "ci_low": _pct(low), "ci_high": _pct(high),
                         "p_value": np.nan, "fold_mean": _pct(mean), "fold_std": _pct(std),
                         "units": int((s.per_unit.sum(axis=(1, 2)) > 0).sum()), "items": items})
    for a, b in predictions.pairs(pooled.names):
        for la, lb in (("segment", "segment"), (predictions.native_level(a), predictions.native_level(b))):
            sa, sb = scored[(a, la)], scored[(b, lb)]
            for metric in metrics.METRICS:
                low, high = uncertainty.interval(sa.resampled[metric] - sb.resampled[metric], confidence)
                per_unit = sa.unit_scores[metric] - sb.unit_scores[metric]
                mean, std = _fold_stats(sa.fold_scores[metric] - sb.fold_scores[metric])
                rows.append({"kind": "difference", "method": a, "versus": b,
                             "name": f"{pooled.names[a]} − {pooled.names[b]}", "level": level_name(la, lb),
                             "metric": metric, "value": _pct(sa.point[metric] - sb.point[metric]),
                             "ci_low": _pct(low), "ci_high": _pct(high),
                             "p_value": uncertainty.sign_flip_p(per_unit, seed),
                             "fold_mean": _pct(mean), "fold_std": _pct(std),
                             "units": int(np.isfinite(per_unit).sum()), "items": np.nan})
    return pd.DataFrame(rows, columns=COLUMNS), scored


def per_person(pooled: Pooled, scored: dict[tuple[str, str], Scored]) -> pd.DataFrame:
    """One row per test unit: its fold(s), items per level and each method's UAR (percent) at each of its levels."""
    ids = pooled.ids.assign(_unit=pooled.unit_index)
    table = pd.DataFrame({"unit": pooled.units})
    table["folds"] = ids.groupby("_unit")["fold"].agg(lambda f: " ".join(map(str, sorted(set(f))))).reindex(
        range(len(pooled.units))).to_numpy()
    for level in ("segment", "window", "frame"):
        counts = np.bincount(pooled.unit_index[(ids["level"] == level).to_numpy()], minlength=len(pooled.units))
        table[f"{level}s"] = counts
    for method in pooled.names:
        for level in ("segment", predictions.native_level(method)):
            table[f"{method}_{level}_uar"] = _pct(scored[(method, level)].unit_scores["uar"])
    return table


def _cell(value: float, low: float, high: float) -> str:
    if not np.isfinite(value):
        return "–"
    return f"{value:.1f} [{low:.1f}, {high:.1f}]" if np.isfinite(low) else f"{value:.1f}"


def _signed(value: float) -> str:
    return f"{value:+.1f}".replace("-", "−")


def _signed_cell(value: float, low: float, high: float) -> str:
    if not np.isfinite(value):
        return "–"
    return f"{_signed(value)} [{_signed(low)}, {_signed(high)}]" if np.isfinite(low) else _signed(value)


def _p(p: float) -> str:
    if not np.isfinite(p):
        return "–"
    return "p < 0.001" if p < 0.001 else f"p = {p:.2g}"


def verdict_sentence(row: pd.Series, a: str, b: str, n_units: int, nouns: tuple[str, str], folds: int,
                     confidence: float = CONFIDENCE, lead: bool = True) -> str:
    """One sentence on one paired difference (a minus b) of segment-level UAR, decided by its interval and p-value.

    A gain is claimed only when the interval excludes 0 and p < 0.05; when one
    says so and the other not, it is called tentative; with so few units that
    no sign-flip p can fall below 0.05, the sentence says that instead.
    """
    value, low, high, p = (float(row[k]) for k in ("value", "ci_low", "ci_high", "p_value"))
    plural = nouns[1] if n_units != 1 else nouns[0]
    stats = f"{round(100 * confidence)}% CI {_signed(low)} to {_signed(high)}; {_p(p)}"
    difference = f"{a} − {b} is {_signed(value)} UAR points at segment level ({stats})"
    smallest = 2 / 2 ** n_units if n_units else 1.0
    excludes_zero = np.isfinite(low) and (low > 0 or high < 0)
    if smallest >= 0.05:
        claim = (f"{difference}; with {n_units} test {plural} no difference can be told from chance (the smallest "
                 f"p-value a sign-flip test can give is {smallest:.2g})")
    elif excludes_zero and p < 0.05:
        claim = f"{a} {'beats' if value > 0 else 'is worse than'} {b} by {_signed(value)} UAR points at segment level ({stats})"
    elif excludes_zero or p < 0.05:
        claim = f"{difference}: the interval and the permutation test disagree, so treat it as tentative"
    else:
        claim = (f"the difference between {a} and {b}, {_signed(value)} UAR points at segment level ({stats}), is "
                 f"within chance at this number of {nouns[1]}")
    if lead:
        return f"On {n_units} test {plural} ({folds} fold{'s' if folds != 1 else ''}), {claim}."
    return claim[0].upper() + claim[1:] + "."


def baseline_note(below: int, folds: int) -> str:
    """What a reader should conclude from the per-frame CNN against the landmark baseline (frame macro F1 per fold)."""
    if below == 0:
        return (f"The per-frame CNN is above the landmark baseline on {'every fold' if folds > 1 else 'the test data'} "
                "(macro F1): it learns more than the face shape alone gives.")
    where = "every fold" if below == folds else f"{below} of {folds} folds"
    if folds == 1:
        where = "the test data"
    return (f"**The frame CNN is below the landmark baseline on {where}** (macro F1): a sound frame model should clear "
            "this floor. Check frame_model.pretrained (the reference starts from ImageNet weights) and the frame "
            "model's training curve (results/folds/*/frame_model/metrics.csv) before reading the CNN and CNN-LSTM rows.")


def markdown(table: pd.DataFrame, pooled: Pooled, split_summary: pd.DataFrame, unit: str, leak: bool, below: int,
             resamples: int, confidence: float, normalise: str = "none") -> str:
    """``summary.md``: the verdict, the scores and differences with their intervals, what was scored, the caveats."""
    nouns = UNIT_NOUNS.get(unit, (unit, unit + "s"))
    folds, names = len(pooled.folds), pooled.names
    scores, diffs = table[table["kind"] == "score"], table[table["kind"] == "difference"]

    def find(frame: pd.DataFrame, **keys: str) -> pd.Series:
        mask = np.ones(len(frame), bool)
        for k, v in keys.items():
            mask &= (frame[k] == v).to_numpy()
        return frame[mask].iloc[0]

    verdict = []
    for k, (a, b) in enumerate(predictions.pairs(pooled.names)[:2]):
        row = find(diffs, method=a, versus=b, level="segment", metric="uar")
        verdict.append(verdict_sentence(row, names[a], names[b], int(row["units"]), nouns, folds, confidence, k == 0))
    pct = round(100 * confidence)
    lines = ["# ferseq evaluation summary", "", "**Verdict.** " + " ".join(verdict), "", baseline_note(below, folds), ""]
    scheme = str(split_summary["scheme"].iloc[0]) if "scheme" in split_summary else ""
    how = f" ({scheme})" if scheme else ""
    if leak and unit == "subject":  # a predefined protocol whose release names no person
        lines += [f"**Identity can leak across splits**{how}: the data names no person (each clip counts as its own "
                  "subject), so one person can be in train and test, every score below may be optimistic, and the "
                  "intervals resample clips, not people.", ""]
    elif leak:
        lines += [f"**Identity leaks across splits**: this run splits by {unit}{how}, not by subject, so the same "
                  "person appears in train and test, every score below is optimistic, and the intervals resample "
                  f"{nouns[1]}, not people.", ""]
    else:
        lines += [f"Splits are by subject{how}: no person is in two splits of a fold.", ""]
    if normalise == "subject":
        lines += ["**Per-person normalisation** (windows.normalise: subject): the sequence models read each frame's "
                  "features minus its person's median over all of their face frames, test people's included "
                  "(transductive: their frames are seen, never their labels). The frame methods are not normalised.",
                  ""]
    several = folds > 1
    lines += [f"## Scores ({pct}% intervals over test {nouns[1]})", "",
              "Segment level: each test segment (a clip) scored once, by the mean of its windows' (or frames') "
              "probabilities; UAR is the mean of the per-class recalls, WAR the accuracy. Macro F1 at each method's "
              "own level (frames for the per-frame methods, windows otherwise) is the reference's comparison. "
              "Percent.", "",
              "| method | reads | segment UAR | segment WAR | macro F1 (own level) |"
              + (" segment UAR / WAR, mean ± std over folds |" if several else "") + " reference macro F1* | reference accuracy* |",
              "|---|---|---|---|---|" + ("---|" if several else "") + "---|---|"]
    for method, name in names.items():
        own = predictions.native_level(method)
        uar, war = find(scores, method=method, level="segment", metric="uar"), find(scores, method=method, level="segment", metric="war")
        f1 = find(scores, method=method, level=own, metric="macro_f1")
        ref = REFERENCE.get(method, (np.nan, np.nan))
        folds_cell = (f" {uar['fold_mean']:.1f} ± {uar['fold_std']:.1f} / {war['fold_mean']:.1f} ± {war['fold_std']:.1f} |"
                      if several else "")
        lines.append(f"| {name} | {predictions.reads(method)} | {_cell(uar['value'], uar['ci_low'], uar['ci_high'])} | "
                     f"{_cell(war['value'], war['ci_low'], war['ci_high'])} | "
                     f"{_cell(f1['value'], f1['ci_low'], f1['ci_high'])} ({own}s) |{folds_cell} "
                     f"{'' if np.isnan(ref[0]) else f'{ref[0]:.2f}'} | {'' if np.isnan(ref[1]) else f'{ref[1]:.2f}'} |")
    lines += ["", f"## Paired differences (a − b, percentage points, {pct}% intervals)", "",
              "| comparison | level | Δ UAR | Δ WAR | Δ macro F1 | p (UAR) |", "|---|---|---|---|---|---|"]
    for (a, b), group in diffs.groupby(["method", "versus"], sort=False):
        for level, rows in group.groupby("level", sort=False):
            cells = {r["metric"]: r for _, r in rows.iterrows()}
            lines.append(f"| {rows['name'].iloc[0]} | {level} | "
                         + " | ".join(_signed_cell(cells[m]["value"], cells[m]["ci_low"], cells[m]["ci_high"])
                                      for m in metrics.METRICS)
                         + f" | {_p(cells['uar']['p_value']).replace('p = ', '').replace('p ', '')} |")
    ids = pooled.ids
    segments = ids[ids["level"] == "segment"]
    test_segments = int(split_summary.loc[split_summary["split"] == "test", "segments"].sum())
    short = int(segments["short_segment"].sum())
    lines += ["", "At segment level the per-frame CNN and frame aggregation both average the same frames' softmax, so "
              "they nearly coincide there; their comparison is at their own levels (windows against frames).", "",
              "## What was scored", "",
              "| level | items | test " + nouns[1] + " |", "|---|---|---|"]
    for level in ("segment", "window", "frame"):
        mine = ids[ids["level"] == level]
        lines.append(f"| {level} | {len(mine)} | {mine['unit'].nunique()} |")
    lines += ["", f"{len(segments)} of {test_segments} test segments are scored"
              + (f" (the other {test_segments - len(segments)} have no face frame)" if test_segments > len(segments) else "")
              + f"; {short} of them {'is' if short == 1 else 'are'} shorter than one window and scored at segment level "
              "only, through one window padded at its end by repeating its last frame. Windows and frames: the test "
              "windows of full length; each test frame once.", "",
              f"Intervals: percentile intervals of {resamples} bootstrap resamples of the test {nouns[1]} (drawn with "
              "replacement, seeded), every method scored on the same resampled "
              f"{nouns[1]}, folds pooled. p: two-sided sign-flip permutation test of the mean per-{nouns[0]} "
              f"difference (exact up to {uncertainty.EXACT_UNITS} {nouns[1]}, else {uncertainty.PERMUTATIONS} random "
              "sign patterns). Per-person scores: per_person.csv and per_person.png; differences: differences.png.", "",
              "\\* Reference figures are from the original report on a different, private 3-class dataset; they are "
              "not comparable to this run's numbers, only a guide to what the protocol achieved there.", "",
              "The landmark baseline is a logistic regression on the 68 pose-normalised face landmarks of each frame "
              "(no CNN, no download): the floor that the frame CNN should clear.", ""]
    return "\n".join(lines)


def summarize(prediction_files: Sequence[str | Path], split_summary: str | Path, outputs: dict[str, str | Path],
              resamples: int = RESAMPLES, seed: int = 42, confidence: float = CONFIDENCE,
              normalise: str = "none") -> pd.DataFrame:
    """The summary stage: ``outputs`` names csv, md, per_person (CSV), per_person_png and differences_png;
    ``normalise``: windows.normalise of the sequence models (said in ``summary.md``)."""
    pooled = pool(prediction_files)
    table, scored = analyse(pooled, resamples, seed, confidence)
    splits = pd.read_csv(split_summary)
    unit, leak = str(splits["split_unit"].iloc[0]), bool(splits["identity_leak"].iloc[0])
    fold_f1 = {m: scored[(m, "frame")].fold_scores["macro_f1"] for m in ("per_frame", "landmarks")}
    below = int(np.sum(fold_f1["per_frame"] < fold_f1["landmarks"]))
    full = table.assign(split_unit=unit, identity_leak=leak, cnn_below_landmarks_folds=below, folds=len(pooled.folds),
                        resamples=resamples)
    people = per_person(pooled, scored)
    nouns = UNIT_NOUNS.get(unit, (unit, unit + "s"))
    with atomic_path(outputs["csv"]) as tmp:
        full.to_csv(tmp, index=False, float_format="%.4g")
    with atomic_path(outputs["per_person"]) as tmp:
        people.to_csv(tmp, index=False, float_format="%.2f")
    plots.plot_per_person(people, table[table["kind"] == "score"], pooled.names, nouns[0],
                                     outputs["per_person_png"])
    plots.plot_differences(table[table["kind"] == "difference"], outputs["differences_png"])
    with atomic_path(outputs["md"]) as tmp:
        tmp.write_text(markdown(table, pooled, splits, unit, leak, below, resamples, confidence, normalise))
    log.info("summary of %d fold(s), %d test %s:\n%s", len(pooled.folds), len(pooled.units), nouns[1],
             Path(outputs["md"]).read_text())
    return full


def log_summary(config: dict[str, Any], table: pd.DataFrame, artifacts: Sequence[str | Path]) -> None:
    """Log the summary's scores, intervals and p-values (and its files) to one MLflow run."""
    from ferseq.common import mlflow_runs

    values = {}
    for r in table.itertuples():
        key = f"{r.method}.{r.level}.{r.metric}" if r.kind == "score" else \
            f"{r.method}-{r.versus}.{r.level.replace(' ', '_')}.{r.metric}"
        for suffix, value in (("", r.value), (".ci_low", r.ci_low), (".ci_high", r.ci_high), (".p", r.p_value)):
            if np.isfinite(value):
                values[key + suffix] = float(value)
    with mlflow_runs.open_run(config, "summary") as run:  # journalled: a tracking outage does not fail the step
        run.log_params({"folds": int(table["folds"].iloc[0]), "resamples": int(table["resamples"].iloc[0]),
                        "split_unit": table["split_unit"].iloc[0]})
        run.log_metrics(values)
        for path in artifacts:
            run.log_artifact(path)
