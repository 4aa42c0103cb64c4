"""Train/val/test splits by unit (subject by default), stratified by label.

A *unit* is what stays whole within one split of a fold: a subject (no person
in two splits), or, for data with too few people, a video or a segment, which
lets identity leak across splits; every output then says so.

``holdout`` gives one fold (fold 0) with train/val/test fractions of units.
``kfold`` partitions the units into K test groups; within each fold the other
units are split into train and val in proportion ``train : val``.
``predefined`` takes a benchmark's own folds: from the annotation table's
``folds`` (or ``fold``) column, the folds in which each row is a test row (the
protocol's fold numbers are ferseq's), or its ``split`` column (one fold, 0),
or from ``split.file``, a CSV ``video,fold,split`` with one line per video and
fold. Unless the protocol names a fold's val part itself, val is carved from
that fold's training part by unit (``split.val_fraction``, else ``val / (train +
val)`` of ``split.fractions``), never from its test part. Every output names
the scheme, e.g. "predefined (from column folds)".
"""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ferseq.common.errors import FerseqError
from ferseq.common.outputs import atomic_path
from ferseq.data.annotations import AnnotationError, parse_folds, protocol_columns, read_table

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
SCHEMES = ("holdout", "kfold", "predefined")
UNIT_COLUMNS = {"subject": "subject", "video": "video_id", "segment": "segment_id"}
SPLIT_FILE_COLUMNS = ("video", "fold", "split")
#: Problems listed in one error message (the count says how many more there are).
LISTED = 30


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
                fractions: dict[str, float] | None = None, k: int = 5, seed: int = 42,
                val_fraction: float | None = None, split_file: str | Path | None = None) -> pd.DataFrame:
    """One row per fold x segment: fold, segment_id, video_id, subject, label, unit, split.

    With ``scheme="predefined"`` the folds come from the segments' protocol
    columns or ``split_file`` (:func:`predefined`); the other arguments as for
    the random schemes, ``val_fraction`` overriding the val share that
    ``fractions`` gives a fold's training part.
    """
    fractions = dict(fractions or {"train": 0.5, "val": 0.2, "test": 0.3})
    if abs(sum(fractions.values()) - 1) > 1e-6:
        raise SplitError(f"split.fractions must sum to 1, not {sum(fractions.values()):g} ({fractions})")
    if scheme == "predefined":
        given, source = protocol(segments, split_file)
        share = val_fraction if val_fraction is not None else fractions["val"] / (fractions["train"] + fractions["val"])
        return predefined(segments, given, unit, share, seed, source)
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
        raise SplitError(f"split.scheme must be one of {', '.join(SCHEMES)}, not {scheme!r}")

    base = segments[["segment_id", "video_id", "subject", "label"]]
    rows = [
        base.assign(fold=fold, unit=segments[column].astype(str), split=segments[column].map(mapping))
        for fold, mapping in enumerate(folds)
    ]
    return pd.concat(rows, ignore_index=True)[["fold", "segment_id", "video_id", "subject", "label", "unit", "split"]]


def summary(splits: pd.DataFrame, segments: pd.DataFrame, unit: str, leak: bool | None = None,
            scheme: str = "") -> pd.DataFrame:
    """Counts per fold, split and class (segments, frames, units, subjects), with the leak flag and the scheme.

    ``leak`` defaults to what the unit implies; ``scheme`` is how the data was
    split, in words (:func:`describe`).
    """
    merged = splits.merge(segments[["segment_id", "frames"]], on="segment_id")
    table = (merged.groupby(["fold", "split", "label"], sort=True)
             .agg(segments=("segment_id", "size"), frames=("frames", "sum"),
                  units=("unit", "nunique"), subjects=("subject", "nunique"))
             .reset_index())
    table["split_unit"] = unit
    table["identity_leak"] = leaks_identity(unit) if leak is None else leak
    table["scheme"] = scheme
    return table


def describe(scheme: str, k: int = 5, source: str | None = None) -> str:
    """How the data was split, as every output says it: "holdout", "kfold (5 folds)", "predefined (from column folds)"."""
    if scheme == "kfold":
        return f"kfold ({k} folds)"
    if scheme == "predefined":
        return f"predefined (from {source})"
    return scheme


def write_splits(segments_path: str | Path, out_splits: str | Path, out_summary: str | Path, unit: str = "subject",
                 scheme: str = "holdout", fractions: dict[str, float] | None = None, k: int = 5, seed: int = 42,
                 val_fraction: float | None = None, split_file: str | Path | None = None,
                 folds: list[int] | None = None) -> pd.DataFrame:
    """The split stage: read segments.parquet, write splits.parquet (with the unit, the scheme
    and the leak flag in its metadata) and a per-fold/split/class summary CSV.

    ``folds``: the folds the DAG planned (predefined: read from the table or
    split file when the DAG was built); each must be among the protocol's.
    """
    segments = pd.read_parquet(segments_path)
    splits = make_splits(segments, unit, scheme, fractions, k, seed, val_fraction, split_file)
    if scheme == "predefined":
        source = protocol_source(segments, split_file)
        leak, why = predefined_leak(splits, segments)
        missing = sorted(set(folds or ()) - set(splits["fold"]))
        if missing:
            raise SplitError(f"split.scheme predefined (from {source}): fold(s) {', '.join(map(str, missing))} "
                             "were planned from the table but none of their test rows is a kept segment (see "
                             "results/data/dropped_segments.csv)")
        if leak:
            log.warning("identity leaks across the predefined splits: %s", why)
    else:
        source, leak = None, leaks_identity(unit)
        unused = [c for c in ("test_folds", "protocol_split") if c in segments.columns]
        if unused:
            log.info("the annotation table's protocol column is not used: split.scheme is %s, not predefined", scheme)
        if leak:
            log.warning("split.unit is %s: the same person can be in train and test; identity leaks across splits", unit)
    described = describe(scheme, k, source)
    table = summary(splits, segments, unit, leak, described)
    log.info("splits, %s:\n%s", described, table.to_string(index=False))
    arrow = pa.Table.from_pandas(splits, preserve_index=False)
    arrow = arrow.replace_schema_metadata({
        **(arrow.schema.metadata or {}),
        b"ferseq.split_unit": unit.encode(),
        b"ferseq.identity_leak": str(leak).lower().encode(),
        b"ferseq.scheme": described.encode(),
    })
    with atomic_path(out_splits) as split_tmp, atomic_path(out_summary) as summary_tmp:
        pq.write_table(arrow, split_tmp)
        table.to_csv(summary_tmp, index=False)
    return splits


# --------------------------------------------------------------------------- predefined folds


def protocol(segments: pd.DataFrame, split_file: str | Path | None = None) -> tuple[pd.DataFrame, str]:
    """``(given, source)``: fold, segment_id and given split of every segment in every fold of the protocol.

    From ``split_file`` when one is named, else from the segment table's
    protocol columns (the annotation table's ``folds``/``fold`` or ``split``).
    A training segment's split is ``train`` (val is carved from those later)
    unless the protocol says ``val``.
    """
    source = protocol_source(segments, split_file)
    if split_file:
        return _protocol_of_file(segments, Path(split_file)), source
    if "test_folds" in segments.columns:
        tested = segments["test_folds"].map(parse_folds)
        folds = sorted(set().union(*tested))
        if not folds:
            raise SplitError("split.scheme predefined: no kept row of the annotation table names a test fold in its "
                             "folds column")
        given = pd.concat([pd.DataFrame({"fold": fold, "segment_id": segments["segment_id"].to_numpy(),
                                         "split": np.where(tested.map(lambda fs: fold in fs), "test", "train")})
                           for fold in folds], ignore_index=True)
        return given, source
    if "protocol_split" in segments.columns:
        return pd.DataFrame({"fold": 0, "segment_id": segments["segment_id"], "split": segments["protocol_split"]}), \
            source
    raise SplitError("split.scheme predefined needs the folds: a folds (or fold) or split column in the annotation "
                     "table (data.annotations), or split.file (a CSV video,fold,split)")


def protocol_source(segments: pd.DataFrame, split_file: str | Path | None = None) -> str:
    """Where the predefined folds come from, in words: "split file F", "column folds" or "column split"."""
    if split_file:
        return f"split file {split_file}"
    if "protocol_split" in segments.columns and "test_folds" not in segments.columns:
        return "column split"
    return "column folds"


def read_split_file(path: str | Path) -> pd.DataFrame:
    """A split file (CSV ``video,fold,split``, one line per video and fold) with each row's file ``line``.

    Every problem (structure, a fold that is no number, a split that is not
    train/val/test, a video named twice in one fold) is reported by file line
    in one :class:`SplitError`.
    """
    path = Path(path)
    if not path.is_file():
        raise SplitError(f"split.file: {path} does not exist")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise SplitError(f"split.file: {path} is not UTF-8 text ({err.reason} at byte {err.start})") from None
    reader = csv.reader(io.StringIO(text, newline=""), skipinitialspace=True)
    problems: list[str] = []
    rows: list[tuple[str, int, str, int]] = []
    seen: dict[tuple[str, int], tuple[str, int]] = {}
    header: list[str] | None = None
    try:
        for fields in reader:
            line = reader.line_num
            if not fields or all(not f.strip() for f in fields):
                continue
            if header is None:
                header = [f.strip() for f in fields]
                missing = [c for c in SPLIT_FILE_COLUMNS if c not in header]
                if missing:
                    raise SplitError(f"split.file {path}, line {line}: the header lacks {', '.join(missing)} (it needs "
                                     f"{','.join(SPLIT_FILE_COLUMNS)}; found {','.join(header)})")
                continue
            if len(fields) != len(header):
                problems.append(f"line {line}: {len(fields)} fields, the header has {len(header)}")
                continue
            cell = dict(zip(header, (f.strip() for f in fields)))
            video, fold, split = cell["video"], cell["fold"], cell["split"]
            if not video:
                problems.append(f"line {line}: empty video")
            elif not fold.isdigit():
                problems.append(f"line {line}: fold {fold!r} is not a fold number (0 or more)")
            elif split not in SPLITS:
                problems.append(f"line {line}: split {split!r} is not one of {', '.join(SPLITS)}")
            elif (video, int(fold)) in seen:
                before, at = seen[(video, int(fold))]
                what = "named twice in" if before == split else f"in the {split} part here and in the {before} part of"
                problems.append(f"line {line}: video {video} is {what} fold {fold} (line {at}); a clip is in one part "
                                "of a fold")
            else:
                seen[(video, int(fold))] = (split, line)
                rows.append((video, int(fold), split, line))
    except csv.Error as err:
        problems.append(f"line {reader.line_num}: {err}")
    if header is None:
        raise SplitError(f"split.file {path}: the file is empty; it needs the header {','.join(SPLIT_FILE_COLUMNS)}")
    if problems:
        shown = "\n".join(f"  {p}" for p in problems[:LISTED])
        more = f"\n  ... and {len(problems) - LISTED} more" if len(problems) > LISTED else ""
        raise SplitError(f"split.file {path}: {len(problems)} malformed line(s) (lines count from 1, the header "
                         f"included):\n{shown}{more}")
    return pd.DataFrame(rows, columns=["video", "fold", "split", "line"])


def _protocol_of_file(segments: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Each segment takes its video's split in every fold of the file; every video needs a line in every fold."""
    table = read_split_file(path)
    folds = sorted(table["fold"].unique())
    if not folds:
        raise SplitError(f"split.file {path}: no line after the header")
    videos = segments["video"].astype(str)
    problems, parts = [], []
    for fold in folds:
        mine = table[table["fold"] == fold].set_index("video")["split"]
        split = videos.map(mine)
        lacking = sorted(set(videos[split.isna()]))
        if lacking:
            problems.append(f"fold {fold}: {len(lacking)} video(s) of the annotation table have no line: "
                            + ", ".join(lacking[:10]) + (" ..." if len(lacking) > 10 else ""))
        parts.append(pd.DataFrame({"fold": fold, "segment_id": segments["segment_id"].to_numpy(),
                                   "split": split.to_numpy()}))
    if problems:
        raise SplitError(f"split.file {path} does not place every video in every fold:\n"
                         + "\n".join(f"  {p}" for p in problems))
    unused = sorted(set(table["video"]) - set(videos))
    if unused:
        log.info("split.file %s: %d video(s) not among the kept segments are not used (%s%s)", path, len(unused),
                 ", ".join(unused[:5]), " ..." if len(unused) > 5 else "")
    return pd.concat(parts, ignore_index=True)


def predefined(segments: pd.DataFrame, given: pd.DataFrame, unit: str = "subject", val_fraction: float = 0.2,
               seed: int = 42, source: str = "the annotation table") -> pd.DataFrame:
    """The splits of a predefined protocol: ``given`` (fold, segment_id, split) with val carved per fold.

    A fold whose protocol names no val segment gets val from its training part,
    by ``unit``, stratified by label, ``val_fraction`` of the units. Raises
    :class:`SplitError` listing every fold with an empty train, val or test
    part or a class missing from its train part, and, with several folds,
    every segment that is a test segment in none (a cross-validation's test
    folds cover the data).
    """
    if not 0 < val_fraction < 1:
        raise SplitError(f"split.val_fraction must be between 0 and 1, not {val_fraction}")
    column = UNIT_COLUMNS[unit]
    base = segments[["segment_id", "video_id", "subject", "label"]].assign(
        row=segments.get("row", segments["segment_id"]), video=segments.get("video", segments["video_id"]))
    classes = sorted(base["label"].unique())
    rng = np.random.default_rng(seed)
    problems, folds = [], []
    for fold, part in given.groupby("fold", sort=True):
        part = part.merge(base, on="segment_id").reset_index(drop=True)
        part["unit"] = part[column].astype(str)
        train = part["split"] == "train"
        if not (part["split"] == "val").any() and train.any():
            labels = pd.crosstab(part.loc[train, "unit"], part.loc[train, "label"])
            if len(labels) < 2:
                problems.append(f"fold {fold}: its training part has {len(labels)} {unit}(s); carving val from it "
                                "needs 2 or more")
            else:
                mapping = assign(labels, {"train": 1 - val_fraction, "val": val_fraction}, rng)
                part.loc[train, "split"] = part.loc[train, "unit"].map(mapping)
        for name in SPLITS:
            if not (part["split"] == name).any():
                problems.append(f"fold {fold}: its {name} part is empty")
        lacking = sorted(set(classes) - set(part.loc[part["split"] == "train", "label"]))
        if lacking:
            problems.append(f"fold {fold}: class(es) {', '.join(lacking)} have no segment in its train part")
        folds.append(part)
    result = pd.concat(folds, ignore_index=True)
    n_folds = result["fold"].nunique()
    if n_folds > 1:
        tested = set(result.loc[result["split"] == "test", "segment_id"])
        never = base[~base["segment_id"].isin(tested)].drop_duplicates("row")
        if len(never):
            named = ", ".join(f"row {r.row} ({r.video})" for r in never.head(10).itertuples())
            problems.append(f"{len(never)} annotation row(s) are a test row in none of the {n_folds} folds (the test "
                            f"folds of a cross-validation cover the data): {named}" + (" ..." if len(never) > 10 else ""))
    if problems:
        raise SplitError(f"split.scheme predefined (from {source}) cannot be used as it is:\n"
                         + "\n".join(f"  {p}" for p in problems))
    return result[["fold", "segment_id", "video_id", "subject", "label", "unit", "split"]]


def predefined_leak(splits: pd.DataFrame, segments: pd.DataFrame) -> tuple[bool, str]:
    """Whether identity can leak across a predefined protocol's splits, and why (the table says so, or a
    subject is in two parts of a fold)."""
    if "identity_leak" in segments.columns and segments["identity_leak"].fillna(False).astype(bool).any():
        return True, "the annotation table's identity_leak column says the release names no subjects (each clip is " \
                     "its own subject), so one person can be in train and test"
    mixed = splits.groupby(["fold", "subject"])["split"].nunique()
    mixed = mixed[mixed > 1]
    if len(mixed):
        fold, subject = mixed.index[0]
        subjects = mixed.index.get_level_values("subject").nunique()
        return True, f"{subjects} subject(s) are in two parts of a fold (e.g. {subject} in fold {fold})"
    return False, ""


def planned_folds(config: dict[str, Any], table: pd.DataFrame | None = None) -> list[int]:
    """The folds the DAG plans: ``[0]`` (holdout), ``0..k-1`` (kfold) or the protocol's (predefined).

    For ``predefined`` the fold column of the annotation table (``table``, as
    the DAG already read it, else read here) or the split file gives them; a
    malformed one raises a :class:`~ferseq.common.errors.FerseqError` naming
    the file and row. While ``data.import`` has not written the table yet,
    there are none (``[]``).
    """
    split = config["split"]
    scheme = split.get("scheme", "holdout")
    if split.get("file") and scheme != "predefined":
        raise SplitError(f"split.file {split['file']} is read only with split.scheme: predefined (it is {scheme})")
    if scheme == "holdout":
        return [0]
    if scheme == "kfold":
        return list(range(split.get("k", 5)))
    if split.get("file"):
        return sorted(int(f) for f in read_split_file(split["file"])["fold"].unique())
    path = Path(config["data"]["annotations"])
    if table is None:
        if config["data"].get("import") and not path.exists():
            return []
        table = read_table(path)
    column, _ = protocol_columns(table, path)
    if column is None:
        raise SplitError(f"split.scheme predefined: {path} has no folds, fold or split column, and split.file is "
                         "not set; the folds come from one of them")
    if column == "split":
        return [0]
    folds: set[int] = set()
    problems = []
    for number, value in enumerate(table[column], start=1):
        try:
            folds.update(parse_folds(value))
        except ValueError as err:
            problems.append(f"row {number}: {err}")
    if problems:
        raise AnnotationError(f"{path}, column {column}: {len(problems)} bad row(s) (rows count from 1 after the "
                              "header):\n" + "\n".join(f"  {p}" for p in problems[:LISTED]))
    if not folds:
        raise SplitError(f"split.scheme predefined: column {column} of {path} names no test fold in any row")
    return sorted(folds)
