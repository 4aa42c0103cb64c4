"""Train/val/test splits by unit (subject by default), stratified by label.

A *unit* is what stays whole within one split of a fold: a subject (no person
in two splits), or, for data with too few people, a video or a segment, which
lets identity leak across splits; every output then says so.

``holdout`` gives one fold (fold 0) with train/val/test fractions of units.
``kfold`` partitions the units into K test groups; within each fold the other
units are split into train and val in proportion ``train : val``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ferseq.errors import FerseqError
from ferseq.outputs import atomic_path

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
UNIT_COLUMNS = {"subject": "subject", "video": "video_id", "segment": "segment_id"}


class SplitError(FerseqError, ValueError):
    """The units cannot be split as configured; the message says why and what to change."""


def leaks_identity(unit: str) -> bool:
    """True when a split by ``unit`` can put one person in two splits."""
    return unit != "subject"


def unit_counts(n_units: int, fractions: dict[str, float]) -> dict[str, int]:
    """Units per split: each within one unit of ``fraction * n`` (largest remainder),
    and at least one for every split with a positive fraction."""
    names = [s for s in fractions if fractions[s] > 0]
    if n_units < len(names):
        raise SplitError(f"{n_units} unit(s) cannot fill {len(names)} splits ({', '.join(names)})")
    exact = {s: fractions[s] * n_units for s in names}
    counts = {s: int(np.floor(exact[s])) for s in names}
    for s in sorted(names, key=lambda s: exact[s] - counts[s], reverse=True)[: n_units - sum(counts.values())]:
        counts[s] += 1
    # A split rounded to zero takes one unit from the largest; each stays within one of its exact share.
    for s in names:
        if counts[s] == 0:
            donor = max(names, key=lambda d: counts[d] - exact[d])
            counts[donor] -= 1
            counts[s] = 1
    return counts


def assign(labels: pd.DataFrame, fractions: dict[str, float], rng: np.random.Generator) -> dict[object, str]:
    """Assign units (rows of a unit x class count table) to splits, stratified by class.

    Units holding the rarest classes are placed first, each into the split that
    most lacks its classes relative to that split's target share, among splits
    with room left. Returns ``unit -> split``.
    """
    counts = unit_counts(len(labels), fractions)
    names = list(counts)
    totals = labels.sum(axis=0).to_numpy(dtype=float)
    totals[totals == 0] = 1.0
    share = np.array([counts[s] / len(labels) for s in names])
    have = np.zeros((len(names), labels.shape[1]))
    room = np.array([counts[s] for s in names])

    order = rng.permutation(len(labels))
    matrix = labels.to_numpy(dtype=float)
    rarity = (matrix[order] > 0) / totals  # a unit holding a rare class scores high
    order = order[np.argsort(-rarity.max(axis=1), kind="stable")]

    result: dict[object, str] = {}
    for i in order:
        unit_vec = matrix[i]
        # Relative deficit: the share of each split's target for a class still unfilled,
        # so a split still lacking a class entirely is preferred to one already holding some;
        # ties go to the larger absolute deficit (test before val), then to the roomier split.
        target = share[:, None] * totals[None, :]
        weights = unit_vec / max(unit_vec.sum(), 1)
        score = ((target - have) / np.maximum(target, 1e-9)) @ weights
        score += 1e-3 * ((target - have) / totals[None, :]) @ weights + 1e-6 * room / max(room.max(), 1)
        score[room == 0] = -np.inf
        best = int(np.argmax(score))
        result[labels.index[i]] = names[best]
        have[best] += unit_vec
        room[best] -= 1
    return result


def make_splits(segments: pd.DataFrame, unit: str = "subject", scheme: str = "holdout",
                fractions: dict[str, float] | None = None, k: int = 5, seed: int = 42) -> pd.DataFrame:
    """One row per fold x segment: fold, segment_id, video_id, subject, label, unit, split."""
    fractions = dict(fractions or {"train": 0.5, "val": 0.2, "test": 0.3})
    if abs(sum(fractions.values()) - 1) > 1e-6:
        raise SplitError(f"split.fractions must sum to 1, not {sum(fractions.values()):g} ({fractions})")
    column = UNIT_COLUMNS[unit]
    labels = pd.crosstab(segments[column], segments["label"])
    n = len(labels)
    rng = np.random.default_rng(seed)
    hint = "" if unit == "segment" else " (split.unit: video or segment can split data with few people, leaking identity)"

    folds: list[dict[object, str]] = []
    if scheme == "holdout":
        needed = sum(1 for f in fractions.values() if f > 0)
        if n < needed:
            raise SplitError(f"split.unit {unit}: {n} {unit}(s) but holdout needs at least {needed}{hint}")
        folds.append(assign(labels, fractions, rng))
    elif scheme == "kfold":
        inner = {"train": fractions["train"], "val": fractions["val"]}
        inner = {s: f / sum(inner.values()) for s, f in inner.items()}
        # Each fold's non-test units (n minus the largest test group) must fill train and val.
        inner_needed = 2 if inner["val"] > 0 else 1
        needed = next(m for m in range(k, 10**6) if m - -(-m // k) >= inner_needed)
        if n < needed:
            raise SplitError(f"split.unit {unit}: {n} {unit}(s) but {k}-fold needs at least {needed}{hint}")
        groups = assign(labels, {f"fold{i}": 1 / k for i in range(k)}, rng)
        for i in range(k):
            test = [u for u, g in groups.items() if g == f"fold{i}"]
            rest = labels.drop(index=test)
            fold = assign(rest, inner, rng)
            fold.update({u: "test" for u in test})
            folds.append(fold)
    else:
        raise SplitError(f"split.scheme must be holdout or kfold, not {scheme!r}")

    base = segments[["segment_id", "video_id", "subject", "label"]]
    rows = [
        base.assign(fold=fold, unit=segments[column].astype(str), split=segments[column].map(mapping))
        for fold, mapping in enumerate(folds)
    ]
    return pd.concat(rows, ignore_index=True)[["fold", "segment_id", "video_id", "subject", "label", "unit", "split"]]


def summary(splits: pd.DataFrame, segments: pd.DataFrame, unit: str) -> pd.DataFrame:
    """Counts per fold, split and class (segments, frames, units, subjects), with the leak flag."""
    merged = splits.merge(segments[["segment_id", "frames"]], on="segment_id")
    table = (merged.groupby(["fold", "split", "label"], sort=True)
             .agg(segments=("segment_id", "size"), frames=("frames", "sum"),
                  units=("unit", "nunique"), subjects=("subject", "nunique"))
             .reset_index())
    table["split_unit"] = unit
    table["identity_leak"] = leaks_identity(unit)
    return table


def write_splits(segments_path: str | Path, out_splits: str | Path, out_summary: str | Path, unit: str = "subject",
                 scheme: str = "holdout", fractions: dict[str, float] | None = None, k: int = 5, seed: int = 42) -> pd.DataFrame:
    """The split stage: read segments.parquet, write splits.parquet (with the unit and
    leak flag in its metadata) and a per-fold/split/class summary CSV."""
    segments = pd.read_parquet(segments_path)
    splits = make_splits(segments, unit, scheme, fractions, k, seed)
    table = summary(splits, segments, unit)
    if leaks_identity(unit):
        log.warning("split.unit is %s: the same person can be in train and test; identity leaks across splits", unit)
    log.info("splits:\n%s", table.to_string(index=False))
    arrow = pa.Table.from_pandas(splits, preserve_index=False)
    arrow = arrow.replace_schema_metadata({
        **(arrow.schema.metadata or {}),
        b"ferseq.split_unit": unit.encode(),
        b"ferseq.identity_leak": str(leaks_identity(unit)).lower().encode(),
        b"ferseq.scheme": scheme.encode(),
    })
    with atomic_path(out_splits) as split_tmp, atomic_path(out_summary) as summary_tmp:
        pq.write_table(arrow, split_tmp)
        table.to_csv(summary_tmp, index=False)
    return splits
