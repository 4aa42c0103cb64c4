"""Splits keep each unit whole, honour the fractions, stratify by label and are deterministic."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ferseq import splits
from ferseq.splits import SplitError


def table(rows: list[tuple[str, str]]) -> pd.DataFrame:
    """Segments from (subject, label) pairs; each subject's segments come from one video per label."""
    return pd.DataFrame([
        {"segment_id": i + 1, "video_id": f"{subject}_{label}", "subject": subject, "label": label, "frames": 20}
        for i, (subject, label) in enumerate(rows)
    ])


segment_tables = st.lists(
    st.tuples(st.sampled_from([f"s{i}" for i in range(12)]), st.sampled_from(["happy", "sad", "neutral"])),
    min_size=1, max_size=60,
).map(table)


@settings(max_examples=60, deadline=None)
@given(segment_tables, st.sampled_from(["subject", "video", "segment"]), st.integers(0, 10_000))
def test_holdout_keeps_units_whole_and_honours_fractions(segments, unit, seed):
    column = splits.UNIT_COLUMNS[unit]
    n = segments[column].nunique()
    if n < 3:
        with pytest.raises(SplitError, match=f"split.unit {unit}: {n}"):
            splits.make_splits(segments, unit, "holdout", seed=seed)
        return
    result = splits.make_splits(segments, unit, "holdout", seed=seed)
    assert len(result) == len(segments) and result["split"].notna().all()
    assert (result.groupby("unit")["split"].nunique() == 1).all()
    if unit == "subject":
        assert (result.groupby("subject")["split"].nunique() == 1).all()  # no person in two splits
    per_split = result.groupby("split")["unit"].nunique()
    for name, fraction in {"train": 0.5, "val": 0.2, "test": 0.3}.items():
        assert abs(per_split.get(name, 0) - fraction * n) < 1 + 1e-9 or per_split.get(name, 0) == 1
    again = splits.make_splits(segments, unit, "holdout", seed=seed)
    pd.testing.assert_frame_equal(result, again)


@settings(max_examples=40, deadline=None)
@given(segment_tables, st.integers(2, 5), st.integers(0, 10_000))
def test_kfold_tests_each_subject_exactly_once(segments, k, seed):
    n = segments["subject"].nunique()
    if n < k or n - -(-n // k) < 2:  # every fold needs test units plus a train and a val unit
        with pytest.raises(SplitError):
            splits.make_splits(segments, "subject", "kfold", k=k, seed=seed)
        return
    result = splits.make_splits(segments, "subject", "kfold", k=k, seed=seed)
    assert sorted(result["fold"].unique()) == list(range(k))
    tested = result[result["split"] == "test"].groupby("subject")["fold"].nunique()
    assert set(tested.index) == set(segments["subject"]) and (tested == 1).all()
    assert (result.groupby(["fold", "subject"])["split"].nunique() == 1).all()
    sizes = result[result["split"] == "test"].groupby("fold")["subject"].nunique()
    assert sizes.max() - sizes.min() <= 1


def test_stratified_by_label_when_subjects_allow():
    # 10 subjects only ever happy, 10 only sad: every split gets both labels in proportion.
    rows = [(f"h{i}", "happy") for i in range(10)] + [(f"s{i}", "sad") for i in range(10)]
    for seed in range(5):
        result = splits.make_splits(table(rows), "subject", "holdout", seed=seed)
        counts = result.groupby(["split", "label"])["subject"].nunique().unstack()
        assert counts.loc["train"].tolist() == [5, 5]
        assert counts.loc["val"].tolist() == [2, 2]
        assert counts.loc["test"].tolist() == [3, 3]


def test_rare_class_reaches_train_and_test():
    rows = [(f"h{i}", "happy") for i in range(12)] + [("r1", "sad"), ("r2", "sad"), ("r3", "sad")]
    result = splits.make_splits(table(rows), "subject", "holdout", seed=3)
    assert set(result[result["label"] == "sad"]["split"]) == {"train", "val", "test"}


def test_too_few_subjects_says_what_to_do():
    with pytest.raises(SplitError, match=r"2 subject\(s\) but holdout needs at least 3.*split.unit: video or segment"):
        splits.make_splits(table([("a", "happy"), ("b", "sad")]), "subject", "holdout")


def test_fractions_must_sum_to_one():
    with pytest.raises(SplitError, match="must sum to 1"):
        splits.make_splits(table([("a", "happy")] * 3), "segment", fractions={"train": 0.5, "val": 0.5, "test": 0.5})


def test_unit_counts_within_one_of_exact_share():
    for n in range(3, 40):
        counts = splits.unit_counts(n, {"train": 0.5, "val": 0.2, "test": 0.3})
        assert sum(counts.values()) == n
        assert all(abs(counts[s] - f * n) < 1 or counts[s] == 1 for s, f in {"train": 0.5, "val": 0.2, "test": 0.3}.items())


def test_written_splits_say_when_identity_leaks(tmp_path):
    segments = table([("a", "happy"), ("a", "sad"), ("b", "happy"), ("b", "sad"), ("a", "neutral")])
    segments.to_parquet(tmp_path / "segments.parquet")
    splits.write_splits(tmp_path / "segments.parquet", tmp_path / "splits.parquet", tmp_path / "summary.csv", unit="segment")
    metadata = pq.read_schema(tmp_path / "splits.parquet").metadata
    assert metadata[b"ferseq.identity_leak"] == b"true" and metadata[b"ferseq.split_unit"] == b"segment"
    summary = pd.read_csv(tmp_path / "summary.csv")
    assert summary["identity_leak"].all() and np.array_equal(summary["split_unit"].unique(), ["segment"])
