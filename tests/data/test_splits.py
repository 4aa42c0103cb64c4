"""Splits keep each unit whole, honour the fractions, stratify by label and are deterministic."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import DEMO, REPO, SMALL, run_snakemake, write_config
from ferseq.common.errors import FerseqError
from ferseq.data import splits
from ferseq.data.splits import SplitError


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


# The annotation table's own column for each split.unit, written out here rather than read from the product
# (splits.UNIT_COLUMNS), so that a unit wired to the wrong column fails.
TABLE_COLUMNS = {"subject": "subject", "video": "video_id", "segment": "segment_id"}


def split_of_each_unit(result: pd.DataFrame, segments: pd.DataFrame, unit: str) -> pd.Series:
    """How many splits each unit's segments went to, per fold, the unit taken from the table's own column."""
    return with_own_unit(result, segments, unit).groupby(["fold", "own_unit"])["split"].nunique()


def with_own_unit(result: pd.DataFrame, segments: pd.DataFrame, unit: str) -> pd.DataFrame:
    """``result`` with ``own_unit``: each segment's unit from the annotation table's column."""
    own = pd.DataFrame({"segment_id": segments["segment_id"], "own_unit": segments[TABLE_COLUMNS[unit]]})
    return result.merge(own, on="segment_id", validate="many_to_one")


@settings(max_examples=60, deadline=None)
@given(segment_tables, st.sampled_from(["subject", "video", "segment"]), st.integers(0, 10_000))
def test_holdout_keeps_units_whole_and_honours_fractions(segments, unit, seed):
    column = TABLE_COLUMNS[unit]
    n = segments[column].nunique()
    if n < 3:
        with pytest.raises(SplitError, match=f"split.unit {unit}: {n}"):
            splits.make_splits(segments, unit, "holdout", seed=seed)
        return
    result = splits.make_splits(segments, unit, "holdout", seed=seed)
    assert len(result) == len(segments) and result["split"].notna().all()
    assert (split_of_each_unit(result, segments, unit) == 1).all()
    if unit == "subject":
        assert (result.groupby("subject")["split"].nunique() == 1).all()  # no person in two splits
    per_split = with_own_unit(result, segments, unit).groupby("split")["own_unit"].nunique()
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


@pytest.mark.parametrize("unit", ["subject", "video"])
@pytest.mark.parametrize("scheme", ["holdout", "kfold"])
def test_every_video_or_person_stays_whole_by_the_tables_own_columns(unit, scheme):
    # 8 people with 3 videos each, every video cut into 4 segments of mixed labels: a unit wired to a finer column
    # (video to the segment id, subject to the video) scatters some unit's segments over several splits.
    labels = ["happy", "sad", "neutral"]
    segments = pd.DataFrame([
        {"segment_id": 100 * p + 10 * v + s, "video_id": f"p{p}_v{v}", "subject": f"p{p}",
         "label": labels[(p + v + s) % 3], "frames": 20}
        for p in range(8) for v in range(3) for s in range(4)])
    for seed in range(3):
        result = splits.make_splits(segments, unit, scheme, k=3, seed=seed)
        assert len(result) == len(segments) * (3 if scheme == "kfold" else 1)
        assert (split_of_each_unit(result, segments, unit) == 1).all()
        # ... and the units are really split: each split holds some of them.
        assert (result.groupby("fold")["split"].nunique() == 3).all()


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


# --------------------------------------------------------------------------- predefined folds (benchmark protocols)


def protocol_table(folds: list[str], labels: list[str] | None = None, leak: bool | None = None) -> pd.DataFrame:
    """Segments as the data stage writes them from a table with a folds column: one row, video and subject each."""
    labels = labels or [("happy", "sad")[i % 2] for i in range(len(folds))]
    table = pd.DataFrame({"segment_id": range(1, len(folds) + 1), "row": range(1, len(folds) + 1),
                          "video": [f"clip{i}.mp4" for i in range(len(folds))],
                          "video_id": [f"clip{i}" for i in range(len(folds))],
                          "subject": [f"clip{i}" for i in range(len(folds))], "label": labels, "frames": 20,
                          "test_folds": folds})
    return table if leak is None else table.assign(identity_leak=leak)


def test_predefined_folds_test_the_tables_rows_and_carve_val_from_train():
    folds = ["1", "2", "3", "1;3"] * 6  # 24 rows; the fourth of each four is a test row of folds 1 and 3
    segments = protocol_table(folds)
    result = splits.make_splits(segments, "subject", "predefined", val_fraction=0.25, seed=7)
    assert sorted(result["fold"].unique()) == [1, 2, 3]
    for fold in (1, 2, 3):
        mine = result[result["fold"] == fold].set_index("segment_id")["split"]
        tested = {sid for sid, fs in zip(segments["segment_id"], folds) if str(fold) in fs.split(";")}
        assert set(mine[mine == "test"].index) == tested  # exactly the table's test rows
        val = set(mine[mine == "val"].index)
        assert val and not val & tested and len(val) == round(0.25 * (24 - len(tested)))
        assert set(result[(result["fold"] == fold) & (result["split"] == "train")]["label"]) == {"happy", "sad"}
    pd.testing.assert_frame_equal(result, splits.make_splits(segments, "subject", "predefined", val_fraction=0.25, seed=7))
    # Without val_fraction, val takes val / (train + val) of split.fractions.
    default = splits.make_splits(segments, "subject", "predefined", seed=7)
    assert (default[default["fold"] == 2]["split"] == "val").sum() == round(18 * 0.2 / 0.7)


def test_predefined_split_column_keeps_a_val_the_table_names():
    segments = protocol_table(["1"] * 6).drop(columns="test_folds")
    segments["protocol_split"] = ["train", "train", "val", "val", "test", "test"]
    result = splits.make_splits(segments, "subject", "predefined", seed=1)
    assert result["fold"].unique().tolist() == [0] and result["split"].tolist() == segments["protocol_split"].tolist()


@pytest.mark.parametrize("folds,labels,message", [
    (["1", "1", "2", "2", "", ""], None,  # rows 5 and 6 train in both folds and are never tested
     r"2 annotation row\(s\) are a test row in none of the 2 folds .*: row 5 \(clip4.mp4\), row 6 \(clip5.mp4\)"),
    (["1", "", "", "", "", ""], ["sad", "happy", "happy", "happy", "happy", "happy"],
     r"fold 1: class\(es\) sad have no segment in its train part"),
    (["1", "1", "1", "1", "1", ""], None, r"fold 1: its training part has 1 subject\(s\); carving val from it"),
    (["1", "1", "1", "1", "1", "1"], None, r"fold 1: its train part is empty\n  fold 1: its val part is empty"),
])
def test_predefined_folds_that_cannot_be_used_are_named(folds, labels, message):
    with pytest.raises(SplitError, match=r"split.scheme predefined \(from column folds\) cannot be used as it is:\n"):
        splits.make_splits(protocol_table(folds, labels), "subject", "predefined", seed=0)
    with pytest.raises(SplitError, match=message):
        splits.make_splits(protocol_table(folds, labels), "subject", "predefined", seed=0)


def test_split_file_gives_the_folds_and_its_mistakes_are_named_by_line(tmp_path):
    segments = protocol_table([""] * 8).drop(columns="test_folds")
    lines = ["video,fold,split"] + [f"clip{i}.mp4,{f},{'test' if i // 4 == f else 'train'}" for f in (0, 1) for i in range(8)]
    good = tmp_path / "protocol.csv"
    good.write_text("\n".join(lines + ["unused.mp4,0,train"]) + "\n")
    segments.to_parquet(tmp_path / "segments.parquet")
    result = splits.write_splits(tmp_path / "segments.parquet", tmp_path / "splits.parquet", tmp_path / "summary.csv",
                                 scheme="predefined", val_fraction=0.25, split_file=good, folds=[0, 1])
    assert result[result["split"] == "test"].groupby("fold")["segment_id"].apply(list).to_dict() == \
        {0: [1, 2, 3, 4], 1: [5, 6, 7, 8]}
    assert (result.groupby("fold")["split"].apply(lambda s: (s == "val").sum()) == 1).all()
    summary = pd.read_csv(tmp_path / "summary.csv")
    assert set(summary["scheme"]) == {f"predefined (from split file {good})"} and summary["split_unit"].eq("subject").all()
    assert not summary["identity_leak"].any()  # every clip its own subject here, none in two parts of a fold
    assert pq.read_schema(tmp_path / "splits.parquet").metadata[b"ferseq.scheme"] == f"predefined (from split file {good})".encode()
    assert splits.planned_folds({"split": {"scheme": "predefined", "file": str(good)}, "data": {}}) == [0, 1]
    with pytest.raises(SplitError, match=r"fold\(s\) 2 were planned from the table but none of their test rows"):
        splits.write_splits(tmp_path / "segments.parquet", tmp_path / "s.parquet", tmp_path / "s.csv",
                            scheme="predefined", val_fraction=0.25, split_file=good, folds=[0, 1, 2])

    bad = tmp_path / "bad.csv"
    bad.write_text("video,fold,split\nclip0.mp4,0,train\nclip1.mp4,one,test\nclip2.mp4,0,tset\n\n"
                   "clip0.mp4,0,test\nclip3.mp4,0\n")
    with pytest.raises(SplitError) as error:
        splits.make_splits(segments, "subject", "predefined", split_file=bad)
    for problem in ("line 3: fold 'one' is not a fold number", "line 4: split 'tset' is not one of train, val, test",
                    "line 6: video clip0.mp4 is in the test part here and in the train part of fold 0 (line 2)",
                    "line 7: 2 fields, the header has 3"):
        assert problem in str(error.value), problem
    short = tmp_path / "short.csv"
    short.write_text("\n".join(lines[:8]) + "\n")  # fold 0 names clip0-clip6 only
    with pytest.raises(SplitError, match=r"fold 0: 1 video\(s\) of the annotation table have no line: clip7.mp4"):
        splits.make_splits(segments, "subject", "predefined", split_file=short)


def test_planned_folds_read_the_table_once_and_name_a_bad_row(tmp_path):
    table = tmp_path / "annotations.csv"
    config = {"split": {"scheme": "predefined"}, "data": {"annotations": str(table)}}
    table.write_text("video,subject,label,start_frame,end_frame,folds\na.mp4,p,happy,0,9,2\nb.mp4,p,sad,0,9,1;4\n"
                     "c.mp4,p,sad,0,9,\n")
    assert splits.planned_folds(config) == [1, 2, 4]
    assert splits.planned_folds({**config, "split": {"scheme": "kfold", "k": 3}}) == [0, 1, 2]
    assert splits.planned_folds({**config, "split": {"scheme": "holdout"}}) == [0]
    table.write_text("video,subject,label,start_frame,end_frame,folds\na.mp4,p,happy,0,9,2\nb.mp4,p,sad,0,9,x\n")
    with pytest.raises(FerseqError, match=rf"{table}, column folds: 1 bad row\(s\).*\n  row 2: 'x' is not a fold number"):
        splits.planned_folds(config)
    table.write_text("video,subject,label,start_frame,end_frame\na.mp4,p,happy,0,9\n")
    with pytest.raises(SplitError, match="has no folds, fold or split column, and split.file is not set"):
        splits.planned_folds(config)
    with pytest.raises(SplitError, match="split.file .* is read only with split.scheme: predefined"):
        splits.planned_folds({**config, "split": {"scheme": "holdout", "file": "p.csv"}})
    # data.import has not written the table yet: nothing is planned after the data stage.
    assert splits.planned_folds({"split": {"scheme": "predefined"},
                                 "data": {"annotations": str(tmp_path / "later.csv"), "import": {"format": "dfew"}}}) == []


def test_predefined_folds_through_the_dag(tmp_path):
    """The demo's table with a folds column, through the real rules up to splits.parquet (and a dry run of the rest)."""
    table = pd.read_csv(DEMO / "annotations.csv")
    table["folds"] = ["", "", "2", "1", "2", "2", "1"]  # sad and pensive rows are dropped (not kept classes)
    table.to_csv(tmp_path / "annotations.csv", index=False)
    config = write_config(tmp_path / "config.yaml", **SMALL,
                          data={"videos": str(DEMO / "videos"), "annotations": str(tmp_path / "annotations.csv"),
                                "min_segment_frames": 8, "max_segment_frames": 16, "count_frames": "header"},
                          classes={"names": ["neutral", "happy"]},
                          split={"scheme": "predefined", "unit": "segment", "val_fraction": 0.25},
                          windows={"length": 8, "overlap": None})
    done = run_snakemake(tmp_path, "--configfile", str(config), "--cores", "2", "results/data/splits.parquet")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    segments = pd.read_parquet(tmp_path / "results/data/segments.parquet")
    result = pd.read_parquet(tmp_path / "results/data/splits.parquet").merge(segments[["segment_id", "row"]])
    for fold in (1, 2):
        mine = result[result["fold"] == fold]
        rows = {i + 1 for i, fs in enumerate(table["folds"].fillna("").astype(str)) if fs == str(fold)}
        assert set(mine.loc[mine["split"] == "test", "row"]) == rows  # each fold tests exactly the table's rows
        val = set(mine.loc[mine["split"] == "val", "segment_id"])
        assert val and not val & set(mine.loc[mine["split"] == "test", "segment_id"])
    summary = pd.read_csv(tmp_path / "results/data/split_summary.csv")
    assert set(summary["scheme"]) == {"predefined (from column folds)"}
    assert summary["identity_leak"].all()  # the man's clips are in train and test of a fold
    log = (tmp_path / "results/logs/data/splits.log").read_text()
    assert "identity leaks across the predefined splits" in log and "predefined (from column folds)" in log
    # The DAG plans the table's folds, 1 and 2, for every per-fold stage.
    dry = run_snakemake(tmp_path, "--configfile", str(config), "-n")
    assert dry.returncode == 0, dry.stdout[-2000:] + dry.stderr[-2000:]
    assert "results/folds/1/frame_model/model.pt" in dry.stdout and "results/folds/2/frame_model/model.pt" in dry.stdout
    assert "results/folds/0/" not in dry.stdout


def test_protocol_columns_are_checked_by_the_data_stage(tmp_path):
    from ferseq.data.annotations import AnnotationError, load_segments

    classes = {"names": ["neutral", "happy"], "map": {}}
    schema = REPO / "workflow" / "schemas" / "annotations.schema.yaml"
    table = tmp_path / "annotations.csv"
    head = "video,subject,label,start_frame,end_frame"

    def load(text: str):
        table.write_text(text)
        return load_segments(table, DEMO / "videos", classes, schema, count_frames="header")

    segments, _, _ = load(f"{head},folds,identity_leak\nman_neutral_to_happy.mp4,man,neutral,0,20,2; 1,TRUE\n"
                          "man_neutral_to_happy.mp4,man,happy,24,72,,false\n")
    assert segments["test_folds"].tolist() == ["1;2", ""] and segments["identity_leak"].tolist() == [True, False]
    with pytest.raises(AnnotationError) as error:
        load(f"{head},folds,identity_leak\nman_neutral_to_happy.mp4,man,neutral,0,20,2;x,yes\n")
    assert "row 1, column folds: '2;x' is not a fold number or a list of them (e.g. 2 or 1;4)" in str(error.value)
    assert "row 1, column identity_leak: 'yes' is not of type 'boolean'" in str(error.value)
    with pytest.raises(AnnotationError, match="row 2, column split: missing value: with a split column every row"):
        load(f"{head},split\nman_neutral_to_happy.mp4,man,neutral,0,20,test\nman_neutral_to_happy.mp4,man,happy,24,72,\n")
    with pytest.raises(AnnotationError, match="columns fold and split both say where a row is tested; keep one"):
        load(f"{head},fold,split\nman_neutral_to_happy.mp4,man,neutral,0,20,1,test\n")
