"""The answer over all folds: scores with intervals, paired differences, per-person scores and a verdict.

The folds' ``predictions.parquet`` files are pooled (with K folds every test
item is in exactly one fold's test part), and everything is computed from
them:

- every method's UAR, WAR and macro F1 at its own level (frame or window) and
  at segment level, pooled over all test items, with an interval from a paired
  bootstrap over the test units (:func:`resampling_units`: the person whenever
  the data names people, whatever ``split.unit`` is);
- each fold's scores, their mean and sample standard deviation (the figures
  papers report for fold protocols, ``split.scheme`` kfold or predefined);
- the paired differences that answer "does temporal modelling help"
  (:func:`ferseq.evaluation.predictions.pairs`): the difference of the pooled
  scores, its bootstrap interval and the sign-flip p-value of the same pooled
  difference (:func:`ferseq.evaluation.uncertainty.sign_flip`);
- each test unit's scores (``per_person.csv``, a dot plot) and a forest plot
  of the differences;
- ``summary.md``, opening with a verdict computed from those numbers, and
  ``summary.csv``, every number of it in long form.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from pandas.api.types import union_categoricals
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from ferseq.common.outputs import atomic_path
from ferseq.evaluation import metrics, plots, predictions, uncertainty

log = logging.getLogger(__name__)

# split.unit -> what a resampled unit is called (singular, plural) when the data names no person.
UNIT_NOUNS = {"subject": ("clip", "clips"), "video": ("video", "videos"), "segment": ("segment", "segments")}
PEOPLE = ("person", "people")
# The original report's figures (macro F1, accuracy), on its private 3-class data; for orientation only.
REFERENCE = {"per_frame": (48.23, 81.49), "aggregation": (50.41, 84.04), "cnn_lstm": (62.43, 83.30)}
COLUMNS = ["kind", "method", "versus", "name", "level", "metric", "fold", "value", "ci_low", "ci_high", "p_value",
           "smallest_p", "p_exact", "differing_units", "fold_mean", "fold_std", "units", "items", "face_missing"]
RESAMPLES = 2000
CONFIDENCE = 0.95
#: split.scheme values whose folds are the protocol's (papers report each fold and their mean).
FOLD_SCHEMES = ("kfold", "predefined")


@dataclass
class Pooled:
    """All folds' predictions, with each item's resampling unit as an index into ``units``.

    ``unit_nouns``: what a unit is called (``person``/``people`` when the data
    names people); ``merged``: units that hold several people (a split unit,
    e.g. a video, with more than one person in it keeps them together);
    ``face_missing``: items of test clips without a usable face frame, scored
    from the training class prior (False where the predictions files do not say).
    """

    ids: pd.DataFrame
    probs: dict[str, np.ndarray]
    classes: list[str]
    names: dict[str, str]
    y: np.ndarray
    unit_index: np.ndarray
    units: np.ndarray
    folds: list[int]
    unit_nouns: tuple[str, str] = PEOPLE
    merged: int = 0
    face_missing: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))

    @property
    def features(self) -> str:
        """The sequence models' ``windows.features``, from their method keys."""
        return predictions.sequence_rows(self.names)[0][1]


def names_people(ids: pd.DataFrame, split_unit: str, leak: bool) -> bool:
    """Whether the ``subject`` column names people: False for a release that names none, whose importer made
    each clip its own subject (identity can leak, the split is by "subject", and subjects and videos pair
    one to one)."""
    if not (leak and split_unit == "subject"):
        return True
    pairs = ids[["subject", "video_id"]].drop_duplicates()
    return not (pairs["subject"].is_unique and pairs["video_id"].is_unique)


def resampling_units(ids: pd.DataFrame, split_unit: str = "subject",
                     leak: bool = False) -> tuple[np.ndarray, np.ndarray, tuple[str, str], int]:
    """Each item's resampling unit: ``(unit index per row, unit names, nouns, units holding several people)``.

    The person whenever the data names people (:func:`names_people`), whatever
    the split's unit: one person's videos or segments are not independent
    draws. Items are kept together when they share a person or a split unit
    (the connected parts of the person-unit graph), so a video that shows two
    people keeps both in one unit. Where the data names no person, the split's
    unit (a clip, for the benchmark releases).
    """
    split = ids["unit"].astype(str).to_numpy()
    if not names_people(ids, split_unit, leak):
        codes, names = pd.factorize(split, sort=True)
        return codes.astype(np.int64), np.asarray(names, str), UNIT_NOUNS[split_unit], 0
    subject_codes, subjects = pd.factorize(ids["subject"].astype(str).to_numpy(), sort=True)
    unit_codes, _ = pd.factorize(split, sort=True)
    n_s = len(subjects)
    n = n_s + int(unit_codes.max(initial=-1)) + 1
    graph = coo_matrix((np.ones(len(split)), (subject_codes, n_s + unit_codes)), shape=(n, n))
    _, label = connected_components(graph, directed=False)
    # Units named by their people, in the order of their first person's name.
    members: dict[int, list[str]] = {}
    for s, name in enumerate(subjects):
        members.setdefault(int(label[s]), []).append(str(name))
    order = sorted(members, key=lambda k: members[k][0])
    index = {k: i for i, k in enumerate(order)}
    names = np.asarray(["+".join(members[k]) for k in order], str)
    per_subject = np.array([index[int(label[s])] for s in range(n_s)], np.int64)
    merged = sum(len(members[k]) > 1 for k in order)
    return per_subject[subject_codes], names, PEOPLE, merged


def pool(files: Sequence[str | Path], split_unit: str = "subject", leak: bool = False) -> Pooled:
    """Read and concatenate the folds' predictions files; they must agree on classes and methods.

    ``split_unit``, ``leak``: the split's unit and identity-leak flag (``split_summary.csv``), for
    :func:`resampling_units`."""
    tables, probs, classes, names, missing = [], {}, None, None, []
    for path in files:
        ids, p, c, n = predictions.read(path)
        if classes is not None and (c != classes or n != names):
            raise ValueError(f"{path}: classes {c} and methods {list(n)} differ from the other folds' "
                             f"({classes}, {list(names)}); rerun the evaluation of every fold")
        classes, names = c, n
        missing.append(ids["face_missing"].fillna(False).to_numpy(bool) if "face_missing" in ids
                       else np.zeros(len(ids), bool))
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
    unit_index, units, nouns, merged = resampling_units(ids, split_unit, leak)
    return Pooled(ids, {m: np.concatenate(v) for m, v in probs.items()}, classes, names,
                  predictions.labels(ids, classes), unit_index, units, sorted(ids["fold"].unique().tolist()),
                  nouns, merged, np.concatenate(missing))


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
    face_missing: int = 0


def score(pooled: Pooled, method: str, level: str, counts: np.ndarray) -> Scored:
    """Score ``method`` at ``level`` on all units, on each fold, and on each bootstrap resample (``counts``)."""
    fold_index = np.searchsorted(pooled.folds, pooled.ids["fold"].to_numpy())
    per_unit = _confusions(pooled, method, level, pooled.unit_index, len(pooled.units))
    per_fold = _confusions(pooled, method, level, fold_index, len(pooled.folds))
    rows = (pooled.ids["level"] == level).to_numpy() & np.isfinite(pooled.probs[method][:, 0])
    missing = int(pooled.face_missing[rows].sum()) if len(pooled.face_missing) else 0
    return Scored(method, level, per_unit, per_fold, {k: float(v) for k, v in metrics.scores(per_unit.sum(0)).items()},
                  uncertainty.bootstrap_scores(per_unit, counts), metrics.scores(per_unit), metrics.scores(per_fold),
                  missing)


def _pct(x: Any) -> Any:
    return 100 * np.asarray(x, dtype=float)


def fold_stats(values: np.ndarray) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof = 1, as papers report them) of per-fold scores; NaN folds left
    out, and no standard deviation from one fold."""
    finite = values[np.isfinite(values)]
    mean = float(finite.mean()) if len(finite) else np.nan
    return mean, float(finite.std(ddof=1)) if len(finite) > 1 else np.nan


def level_name(a: str, b: str) -> str:
    """How a difference's level is written: one level, or ``window vs frame`` when the methods score different ones."""
    return a if a == b else f"{a} vs {b}"


def analyse(pooled: Pooled, resamples: int = RESAMPLES, seed: int = 42,
            confidence: float = CONFIDENCE) -> tuple[pd.DataFrame, dict[tuple[str, str], Scored]]:
    """Every score, fold score and paired difference of the pooled predictions, as rows of :data:`COLUMNS`."""
    counts = uncertainty.resample_counts(len(pooled.units), resamples, seed).astype(np.float64)
    scored = {(m, level): score(pooled, m, level, counts) for m in pooled.names for level in predictions.method_levels(m)}
    del counts
    rows = []
    blank = {"versus": ""}  # columns a row leaves out are NaN
    for (method, level), s in scored.items():
        items = int(s.per_unit.sum())
        for metric in metrics.METRICS:
            low, high = uncertainty.interval(s.resampled[metric], confidence)
            mean, std = fold_stats(s.fold_scores[metric])
            rows.append({**blank, "kind": "score", "method": method, "name": pooled.names[method], "level": level,
                         "metric": metric, "value": _pct(s.point[metric]), "ci_low": _pct(low), "ci_high": _pct(high),
                         "fold_mean": _pct(mean), "fold_std": _pct(std),
                         "units": int((s.per_unit.sum(axis=(1, 2)) > 0).sum()), "items": items,
                         "face_missing": s.face_missing})
            for k, fold in enumerate(pooled.folds):
                rows.append({**blank, "kind": "fold", "method": method, "name": pooled.names[method], "level": level,
                             "metric": metric, "fold": fold, "value": _pct(s.fold_scores[metric][k]),
                             "units": np.nan, "items": int(s.per_fold[k].sum())})
    for a, b in predictions.pairs(pooled.names):
        for la, lb in (("segment", "segment"), (predictions.native_level(a), predictions.native_level(b))):
            sa, sb = scored[(a, la)], scored[(b, lb)]
            tests = uncertainty.sign_flip(sa.per_unit, sb.per_unit, seed)
            either = (sa.per_unit.sum(axis=(1, 2)) + sb.per_unit.sum(axis=(1, 2))) > 0
            for metric in metrics.METRICS:
                low, high = uncertainty.interval(sa.resampled[metric] - sb.resampled[metric], confidence)
                mean, std = fold_stats(sa.fold_scores[metric] - sb.fold_scores[metric])
                test = tests[metric]
                rows.append({**blank, "kind": "difference", "method": a, "versus": b,
                             "name": f"{pooled.names[a]} − {pooled.names[b]}", "level": level_name(la, lb),
                             "metric": metric, "value": _pct(sa.point[metric] - sb.point[metric]),
                             "ci_low": _pct(low), "ci_high": _pct(high), "p_value": test.p,
                             "smallest_p": test.smallest_p, "p_exact": test.exact, "differing_units": test.units,
                             "fold_mean": _pct(mean), "fold_std": _pct(std),
                             "units": int(either.sum()), "items": np.nan})
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


def signed_cell(value: float, low: float, high: float) -> str:
    """A difference in points with its interval, e.g. ``+4.4 [−1.2, +9.8]`` (minus signs as in the tables)."""
    if not np.isfinite(value):
        return "–"
    return f"{_signed(value)} [{_signed(low)}, {_signed(high)}]" if np.isfinite(low) else _signed(value)


def p_text(p: float) -> str:
    """A p-value as the tables write it: ``p = 0.034``, ``p < 0.001``, ``–`` when there is none."""
    if not np.isfinite(p):
        return "–"
    return "p < 0.001" if p < 0.001 else f"p = {p:.2g}"


def verdict_sentence(row: pd.Series, a: str, b: str, n_units: int, nouns: tuple[str, str], folds: int,
                     confidence: float = CONFIDENCE, lead: bool = True) -> str:
    """One sentence on one paired difference (a minus b) of segment-level UAR, decided by its interval and p-value.

    ``alpha = 1 - confidence``. A gain (or loss) is claimed only when the
    interval excludes 0 and p < alpha; when one says so and the other not, it
    is called tentative; when the sign-flip test cannot give a p below alpha
    on these units (its ``smallest_p``), the sentence says that instead.
    """
    value, low, high, p = (float(row[k]) for k in ("value", "ci_low", "ci_high", "p_value"))
    smallest = float(row["smallest_p"])
    alpha = round(1 - confidence, 12)  # 1 - 0.95 is 0.050000000000000044: p = 0.05 must not count as below it
    plural = nouns[1] if n_units != 1 else nouns[0]
    stats = f"{100 * confidence:g}% CI {_signed(low)} to {_signed(high)}; {p_text(p)}"
    difference = f"{a} − {b} is {_signed(value)} UAR points at segment level ({stats})"
    excludes_zero = np.isfinite(low) and (low > 0 or high < 0)
    significant = np.isfinite(p) and p < alpha
    if not (np.isfinite(smallest) and smallest < alpha):
        differing = int(row["differing_units"]) if np.isfinite(float(row["differing_units"])) else 0
        shown = f"{smallest:.2g}" if np.isfinite(smallest) else "1"
        claim = (f"{difference}; with {n_units} test {plural} ({differing} of them scored differently by the two "
                 f"methods) no difference can be told from chance: the smallest p-value the sign-flip test can give "
                 f"here is {shown}, not below {alpha:.2g}")
    elif excludes_zero and significant:
        claim = f"{a} {'beats' if value > 0 else 'is worse than'} {b} by {_signed(value)} UAR points at segment level ({stats})"
    elif excludes_zero or significant:
        claim = f"{difference}: the interval and the permutation test disagree, so treat it as tentative"
    else:
        claim = (f"the difference between {a} and {b}, {_signed(value)} UAR points at segment level ({stats}), is "
                 f"within chance at this number of {nouns[1]}")
    if lead:
        return f"On {n_units} test {plural} ({folds} fold{'s' if folds != 1 else ''}), {claim}."
    return claim[0].upper() + claim[1:] + "."


@dataclass
class Floor:
    """The per-frame CNN against the landmark baseline (the floor), fold by fold: ``below`` of the ``compared``
    folds scored by both have the CNN's macro F1 below the baseline's, at ``level`` (``frame``, or ``segment`` when
    no fold has frame-level scores; None when no fold has scores of both)."""

    below: int
    compared: int
    level: str | None


def floor_check(scored: Mapping[tuple[str, str], Scored]) -> Floor:
    """Compare the per-frame CNN and the landmark baseline per fold on the frames, or on the test segments when no
    fold has frame-level scores (test segments all shorter than one window): a fold without scores of both is
    left out, not counted as clearing the floor."""
    for level in ("frame", "segment"):
        cnn = scored[("per_frame", level)].fold_scores["macro_f1"]
        floor = scored[("landmarks", level)].fold_scores["macro_f1"]
        both = np.isfinite(cnn) & np.isfinite(floor)
        if both.any():
            return Floor(int(np.sum(cnn[both] < floor[both])), int(both.sum()), level)
    return Floor(0, 0, None)


def baseline_note(floor: Floor, folds: int) -> str:
    """What a reader should conclude from the per-frame CNN against the landmark baseline (:func:`floor_check`)."""
    if floor.level is None:
        return ("The per-frame CNN and the landmark baseline have no fold scored by both, so whether the CNN clears "
                "the landmark floor is not known.")
    what = ("macro F1" if floor.level == "frame" else
            "macro F1 of the test segments: no fold has frame-level scores, its test segments being shorter than "
            "one window")
    if floor.compared == folds:
        where_all = "every fold" if folds > 1 else "the test data"
    else:
        where_all = f"the {floor.compared} of {folds} folds scored by both"
    if floor.below == 0:
        return f"The per-frame CNN is above the landmark baseline on {where_all} ({what}): it learns more than the " \
               "face shape alone gives."
    where = where_all if floor.below == floor.compared else (
        f"{floor.below} of {floor.compared} folds" + ("" if floor.compared == folds else " scored by both"))
    return (f"**The frame CNN is below the landmark baseline on {where}** ({what}): a sound frame model should "
            "clear this floor. Check frame_model.init (the reference starts from ImageNet weights) and the frame "
            "model's training curve (results/folds/*/frame_model/metrics.csv) before reading the CNN and CNN-LSTM "
            "rows.")


def is_fold_protocol(scheme: str, folds: int) -> bool:
    """Whether the run's folds are a protocol's folds (``split.scheme`` kfold or predefined, several folds): then
    the summary gives each fold's scores, their mean and sample standard deviation, as papers report them."""
    return folds > 1 and scheme.split(" ")[0] in FOLD_SCHEMES


def _find(frame: pd.DataFrame, **keys: Any) -> pd.Series:
    mask = np.ones(len(frame), bool)
    for k, v in keys.items():
        mask &= (frame[k] == v).to_numpy()
    return frame[mask].iloc[0]


def fold_table(table: pd.DataFrame, pooled: Pooled, pct: str) -> list[str]:
    """The Markdown lines of the per-fold scores: segment UAR and WAR of each method on each fold, their mean and
    sample standard deviation, beside the pooled score with its interval."""
    folds = pooled.folds
    lines = ["## Per fold (segment level, percent: each fold's test part, the mean and sample standard deviation "
             "over folds as papers report them, and all folds pooled)", "",
             "| method | metric | " + " | ".join(f"fold {k}" for k in folds)
             + f" | mean ± sd | pooled [{pct}% interval] |",
             "|---|---|" + "---|" * len(folds) + "---|---|"]
    scores, per_fold = table[table["kind"] == "score"], table[table["kind"] == "fold"]
    for method, name in pooled.names.items():
        for metric in ("uar", "war"):
            row = _find(scores, method=method, level="segment", metric=metric)
            values = [_find(per_fold, method=method, level="segment", metric=metric, fold=k)["value"] for k in folds]
            lines.append(f"| {name} | {metrics.METRIC_NAMES[metric]} | " + " | ".join(f"{v:.1f}" for v in values)
                         + f" | {row['fold_mean']:.1f} ± {row['fold_std']:.1f} | "
                         + f"{_cell(row['value'], row['ci_low'], row['ci_high'])} |")
    return lines + [""]


def markdown(table: pd.DataFrame, pooled: Pooled, split_summary: pd.DataFrame, unit: str, leak: bool, floor: Floor,
             resamples: int, confidence: float, normalise: str = "none", initialised_from: str | None = None) -> str:
    """``summary.md``: the verdict, the scores and differences with their intervals, what was scored, the caveats.
    ``initialised_from``: where the frame CNN started (:func:`ferseq.common.initialisation.describe`)."""
    nouns = pooled.unit_nouns
    folds, names = len(pooled.folds), pooled.names
    scores, diffs = table[table["kind"] == "score"], table[table["kind"] == "difference"]
    verdict = []
    for k, (a, b) in enumerate(predictions.pairs(pooled.names)[:2]):
        row = _find(diffs, method=a, versus=b, level="segment", metric="uar")
        verdict.append(verdict_sentence(row, names[a], names[b], int(row["units"]), nouns, folds, confidence, k == 0))
    pct = f"{100 * confidence:g}"  # as the plots say it: 95, 97.5
    lines = ["# ferseq evaluation summary", "", "**Verdict.** " + " ".join(verdict), "", baseline_note(floor, folds), ""]
    scheme = str(split_summary["scheme"].iloc[0]) if "scheme" in split_summary else ""
    how = f" ({scheme})" if scheme else ""
    people = nouns == PEOPLE
    if leak and not people:  # a release that names no person
        lines += [f"**Identity can leak across splits**{how}: the data names no person (each clip counts as its own "
                  "subject), so one person can be in train and test, every score below may be optimistic, and the "
                  f"intervals and p-values resample {nouns[1]}, not people.", ""]
    elif leak:
        lines += [f"**Identity leaks across splits**: this run splits by {unit}{how}, not by subject, so the same "
                  "person appears in train and test and every score below is optimistic. The intervals and p-values "
                  "resample people nonetheless (all of a person's items together).", ""]
    else:
        lines += [f"Splits are by subject{how}: no person is in two splits of a fold.", ""]
    merged = (f" ({pooled.merged} of them hold several people who share a {unit}, kept together)"
              if pooled.merged else "")
    lines += [f"Resampled unit: the test {nouns[0]}; {len(pooled.units)} test {nouns[1]}{merged}.", ""]
    if initialised_from:
        lines += [f"Frame CNN initialised from {initialised_from}.", ""]
    if normalise == "subject":
        lines += ["**Per-person normalisation** (windows.normalise: subject): the sequence models read each frame's "
                  "features minus its person's median over all of their face frames, test people's included "
                  "(transductive: their frames are seen, never their labels). The frame methods are not normalised.",
                  ""]
    by_fold = is_fold_protocol(scheme, folds)
    several = folds > 1 and not by_fold
    lines += [f"## Scores ({pct}% intervals over test {nouns[1]})", "",
              "Segment level: each test segment (a clip) scored once, by the mean of its windows' (or frames') "
              "probabilities; UAR is the mean of the per-class recalls, WAR the accuracy, both of all test items "
              "pooled. Macro F1 at each method's own level (frames for the per-frame methods, windows otherwise) is "
              "the reference's comparison. Percent.", "",
              "| method | reads | segment UAR | segment WAR | macro F1 (own level) |"
              + (" segment UAR / WAR, mean ± sd over folds |" if several else "") + " reference macro F1* | reference accuracy* |",
              "|---|---|---|---|---|" + ("---|" if several else "") + "---|---|"]
    for method, name in names.items():
        own = predictions.native_level(method)
        uar, war = _find(scores, method=method, level="segment", metric="uar"), _find(scores, method=method, level="segment", metric="war")
        f1 = _find(scores, method=method, level=own, metric="macro_f1")
        ref = REFERENCE.get(method, (np.nan, np.nan))
        folds_cell = (f" {uar['fold_mean']:.1f} ± {uar['fold_std']:.1f} / {war['fold_mean']:.1f} ± {war['fold_std']:.1f} |"
                      if several else "")
        lines.append(f"| {name} | {predictions.reads(method)} | {_cell(uar['value'], uar['ci_low'], uar['ci_high'])} | "
                     f"{_cell(war['value'], war['ci_low'], war['ci_high'])} | "
                     f"{_cell(f1['value'], f1['ci_low'], f1['ci_high'])} ({own}s) |{folds_cell} "
                     f"{'' if np.isnan(ref[0]) else f'{ref[0]:.2f}'} | {'' if np.isnan(ref[1]) else f'{ref[1]:.2f}'} |")
    lines += [""]
    if by_fold:
        lines += fold_table(table, pooled, pct)
    lines += [f"## Paired differences (a − b, percentage points, {pct}% intervals)", "",
              "| comparison | level | Δ UAR | Δ WAR | Δ macro F1 | p (UAR) | p (WAR) | p (macro F1) | smallest p |",
              "|---|---|---|---|---|---|---|---|---|"]
    for (a, b), group in diffs.groupby(["method", "versus"], sort=False):
        for level, rows in group.groupby("level", sort=False):
            cells = {r["metric"]: r for _, r in rows.iterrows()}
            lines.append(f"| {rows['name'].iloc[0]} | {level} | "
                         + " | ".join(signed_cell(cells[m]["value"], cells[m]["ci_low"], cells[m]["ci_high"])
                                      for m in metrics.METRICS) + " | "
                         + " | ".join(p_text(cells[m]["p_value"]).replace("p = ", "").replace("p ", "")
                                      for m in metrics.METRICS)
                         + f" | {cells['uar']['smallest_p']:.2g} |")
    ids = pooled.ids
    segments = ids[ids["level"] == "segment"]
    test_segments = int(split_summary.loc[split_summary["split"] == "test", "segments"].sum())
    short = int(segments["short_segment"].sum())
    lines += ["", "At segment level the per-frame CNN and frame aggregation both average the same frames' softmax, so "
              "they nearly coincide there; their comparison is at their own levels (windows against frames).", "",
              "## What was scored", "",
              "| level | items | test " + nouns[1] + " |", "|---|---|---|"]
    for level in ("segment", "window", "frame"):
        rows = (ids["level"] == level).to_numpy()
        lines.append(f"| {level} | {int(rows.sum())} | {len(np.unique(pooled.unit_index[rows]))} |")
    lines += ["", f"{len(segments)} of {test_segments} test segments are scored"
              + (f" (the other {test_segments - len(segments)} have no face frame)" if test_segments > len(segments) else "")
              + f"; {short} of them {'is' if short == 1 else 'are'} shorter than one window and scored at segment level "
              "only, through one window padded at its end by repeating its last frame. Windows and frames: the test "
              "windows of full length; each test frame once.", ""]
    missing = scores[(scores["metric"] == "uar") & (scores["face_missing"] > 0)]
    if len(missing):
        lines += ["Items of test clips without a usable face frame, scored from the training class prior "
                  "(counted right where the prior's most likely class is the true one):", "",
                  "| method | level | items | without a face |", "|---|---|---|---|"]
        lines += [f"| {r['name']} | {r['level']} | {int(r['items'])} | {int(r['face_missing'])} |"
                  for _, r in missing.iterrows()]
        lines += [""]
    else:
        lines += ["Every scored item has a usable face frame (no item is scored from the training class prior).", ""]
    alpha = 1 - confidence
    lines += [f"Intervals: percentile intervals of {resamples} bootstrap resamples of the test {nouns[1]} (drawn with "
              f"replacement, seeded), every method scored on the same resampled {nouns[1]}, folds pooled; the "
              "interval of a difference is that of the difference of the pooled scores. p: two-sided sign-flip "
              "permutation test of the same pooled difference: under the hypothesis that the two methods are "
              f"exchangeable within each {nouns[0]}, each sign pattern exchanges the two methods' confusion matrices "
              f"of the flipped {nouns[1]} and the pooled difference is computed again (exact over all patterns of the "
              f"{nouns[1]} the two methods score differently when they are at most {uncertainty.EXACT_UNITS}, else "
              f"{uncertainty.PERMUTATIONS} seeded random patterns, p = (1 + as extreme) / (1 + patterns)). "
              "Smallest p: the smallest p-value the test can give on these units. A difference is claimed when its "
              f"interval excludes 0 and p < {alpha:.2g} (1 − evaluation.confidence). Per-{nouns[0]} scores: "
              "per_person.csv and per_person.png; differences: differences.png.", "",
              "\\* Reference figures are from the original report on a different, private 3-class dataset; they are "
              "not comparable to this run's numbers, only a guide to what the protocol achieved there.", "",
              "The landmark baseline is a logistic regression on the 68 pose-normalised face landmarks of each frame "
              "(no CNN, no download): the floor that the frame CNN should clear.", ""]
    return "\n".join(lines)


def summarize(prediction_files: Sequence[str | Path], split_summary: str | Path, outputs: dict[str, str | Path],
              resamples: int = RESAMPLES, seed: int = 42, confidence: float = CONFIDENCE,
              normalise: str = "none", initialised_from: str | None = None) -> pd.DataFrame:
    """The summary stage: ``outputs`` names csv, md, per_person (CSV), per_person_png and differences_png;
    ``normalise``: windows.normalise of the sequence models, ``initialised_from``: where the frame CNN started
    (both said in ``summary.md``; the latter also a column of ``summary.csv``)."""
    splits = pd.read_csv(split_summary)
    unit, leak = str(splits["split_unit"].iloc[0]), bool(splits["identity_leak"].iloc[0])
    pooled = pool(prediction_files, unit, leak)
    table, scored = analyse(pooled, resamples, seed, confidence)
    floor = floor_check(scored)
    nouns = pooled.unit_nouns
    full = table.assign(split_unit=unit, identity_leak=leak, resampled_unit=nouns[0], resampled_units=len(pooled.units),
                        cnn_below_landmarks_folds=floor.below, cnn_landmarks_compared_folds=floor.compared,
                        cnn_landmarks_level=floor.level, folds=len(pooled.folds), resamples=resamples,
                        confidence=confidence, frame_cnn_init=initialised_from)
    people = per_person(pooled, scored)
    with atomic_path(outputs["csv"]) as tmp:
        full.to_csv(tmp, index=False, float_format="%.6g")
    with atomic_path(outputs["per_person"]) as tmp:
        people.to_csv(tmp, index=False, float_format="%.2f")
    plots.plot_per_person(people, table[table["kind"] == "score"], pooled.names, nouns[0],
                                     outputs["per_person_png"], confidence=confidence)
    plots.plot_differences(table[table["kind"] == "difference"], outputs["differences_png"], confidence=confidence)
    with atomic_path(outputs["md"]) as tmp:
        tmp.write_text(markdown(table, pooled, splits, unit, leak, floor, resamples, confidence, normalise,
                                initialised_from))
    log.info("summary of %d fold(s), %d test %s:\n%s", len(pooled.folds), len(pooled.units), nouns[1],
             Path(outputs["md"]).read_text())
    return full


def log_summary(config: dict[str, Any], table: pd.DataFrame, artifacts: Sequence[str | Path]) -> None:
    """Log the summary's scores, fold scores, intervals and p-values (and its files) to one MLflow run."""
    from ferseq.common import mlflow_runs

    values = {}
    for r in table.itertuples():
        if r.kind == "score":
            key = f"{r.method}.{r.level}.{r.metric}"
        elif r.kind == "fold":
            key = f"{r.method}.{r.level}.{r.metric}.fold{int(r.fold)}"
        else:
            key = f"{r.method}-{r.versus}.{r.level.replace(' ', '_')}.{r.metric}"
        for suffix, value in (("", r.value), (".ci_low", r.ci_low), (".ci_high", r.ci_high), (".p", r.p_value)):
            if np.isfinite(value):
                values[key + suffix] = float(value)
    init = table["frame_cnn_init"].iloc[0] if "frame_cnn_init" in table else None
    with mlflow_runs.open_run(config, "summary") as run:  # journalled: a tracking outage does not fail the step
        run.log_params({"folds": int(table["folds"].iloc[0]), "resamples": int(table["resamples"].iloc[0]),
                        "split_unit": table["split_unit"].iloc[0],
                        "resampled_unit": table["resampled_unit"].iloc[0],
                        **({"frame_cnn_init": init} if isinstance(init, str) else {})})
        run.log_metrics(values)
        for path in artifacts:
            run.log_artifact(path)
