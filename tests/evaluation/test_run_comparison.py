"""`ferseq compare A B` on the session's demo run: two runs paired by person, item by item whatever their order,
with the arithmetic of the summary's differences; runs of other test data refused, naming what differs."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats
from sklearn.metrics import confusion_matrix, recall_score
from test_statistics import split_summary, write_predictions

from ferseq import cli
from ferseq.common.errors import FerseqError
from ferseq.evaluation import predictions, run_comparison, uncertainty


def copy_run(demo_run, folder, change):
    """A results folder with the demo run's split and summary, and its predictions changed by ``change(ids, probs)``
    then written in a shuffled row order."""
    results = folder / "results"
    for name in ("data/split_summary.csv", "evaluation/summary.csv"):
        (results / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(demo_run / "results" / name, results / name)
    rng = np.random.default_rng(0)
    for source in sorted((demo_run / "results" / "folds").glob("*/evaluation/predictions.parquet")):
        ids, probs, classes, names = predictions.read(source)
        ids, probs = change(ids, probs)
        order = rng.permutation(len(ids))
        target = results / source.relative_to(demo_run / "results")
        target.parent.mkdir(parents=True)
        predictions.write(target, ids.iloc[order].reset_index(drop=True), {m: p[order] for m, p in probs.items()},
                          classes, names)
    return results


def test_a_run_against_its_own_landmark_baseline_gives_the_summarys_difference(demo_run, tmp_path):
    # B is the demo run with its per-frame CNN replaced by its landmark baseline (the one method of the tiny demo
    # that does not give every item one class), rows shuffled: A − B for the per-frame CNN is then the summary's
    # own per-frame CNN − landmark baseline difference, item by item.
    b = copy_run(demo_run, tmp_path / "b", lambda ids, probs: (ids, {**probs, "per_frame": probs["landmarks"]}))
    a = run_comparison.read_run(demo_run)  # the working directory: its results/ is found
    summary = pd.read_csv(demo_run / "results" / "evaluation" / "summary.csv")
    resamples, confidence = int(summary["resamples"].iloc[0]), float(summary["confidence"].iloc[0])
    seed = yaml.safe_load((demo_run / "config.yaml").read_text())["seed"]
    table, skipped = run_comparison.compare(a, run_comparison.read_run(b), resamples, seed, confidence)
    assert skipped == {}

    ours = table[table["method"] == "per_frame"].set_index(["level", "metric"])
    theirs = summary[(summary["kind"] == "difference") & (summary["method"] == "per_frame")
                     & (summary["versus"] == "landmarks")].set_index(["level", "metric"])
    assert len(ours) == len(theirs) == 6  # segment and frame, three metrics
    assert (ours["difference"] != 0).any()
    for key, row in ours.iterrows():
        mirror = theirs.loc[key]
        assert row["difference"] == pytest.approx(mirror["value"], abs=1e-4)
        assert (row["ci_low"], row["ci_high"]) == pytest.approx((mirror["ci_low"], mirror["ci_high"]), abs=1e-4)
        assert row["p_value"] == pytest.approx(mirror["p_value"], rel=1e-5)
        assert row["differing_units"] == mirror["differing_units"]

    # Independently: each run's UAR from the files, with scikit-learn, at both levels.
    ids, probs, classes = a.pooled.ids, a.pooled.probs, a.pooled.classes
    for level in ("segment", "frame"):
        rows = (ids["level"] == level).to_numpy()
        truth = ids.loc[rows, "label"].map({c: i for i, c in enumerate(classes)}).to_numpy()
        uar = {m: 100 * recall_score(truth, probs[m][rows].argmax(1), average="macro",
                                     labels=np.unique(truth)) for m in ("per_frame", "landmarks")}
        row = ours.loc[(level, "uar")]
        assert (row["a"], row["b"]) == pytest.approx((uar["per_frame"], uar["landmarks"]))
    # The methods B did not change: the same predictions, no difference, p = 1.
    same = table[table["method"] == "cnn_lstm"]
    assert (same["difference"] == 0).all() and (same["differing_units"] == 0).all() and (same["p_value"] == 1).all()


def test_the_command_writes_the_page_and_table_and_refuses_other_test_data(demo_run, tmp_path, capsys):
    relabelled = copy_run(demo_run, tmp_path / "relabelled", relabel_first_segment)
    out = tmp_path / "comparison"
    assert cli.main(["compare", str(demo_run / "results"), str(demo_run), "-o", str(out), "--resamples", "50"]) == 0
    page = capsys.readouterr().out
    assert page == (out / "comparison.md").read_text()
    assert "CNN-LSTM: the same predictions in both runs." in page
    table = pd.read_csv(out / "comparison.csv")
    assert set(table["level"]) == {"segment", "window", "frame"} and (table["difference"] == 0).all()

    # Another label for one test segment: not the same test data, whichever run is A.
    for pair in ((demo_run, relabelled), (relabelled, demo_run)):
        with pytest.raises(FerseqError, match=r"did not score the same test segments: .*1 only in A, 1 only in B"):
            run_comparison.run(*pair)
    assert cli.main(["compare", str(demo_run), str(tmp_path / "nowhere")]) == 2
    assert f"{tmp_path / 'nowhere'}: not the results folder of a finished run" in capsys.readouterr().err


def relabel_first_segment(ids: pd.DataFrame, probs: dict) -> tuple[pd.DataFrame, dict]:
    """The first test segment of fold 0 given another label, at every level."""
    if ids["fold"].iloc[0] != 0:
        return ids, probs
    ids = ids.copy()
    first = ids.loc[ids["level"] == "segment", "segment_id"].min()
    rows = ids["segment_id"] == first
    label = ids.loc[rows, "label"].iloc[0]
    other = next(c for c in ids["label"].cat.categories if c != label)
    ids["label"] = ids["label"].astype(str)
    ids.loc[rows, "label"] = other
    ids["label"] = ids["label"].astype("category")
    return ids, probs


def test_runs_with_other_windows_are_compared_on_their_segments_only(demo_run, tmp_path):
    def drop_a_window(ids, probs):
        """Fold 0 without its first test window."""
        if ids["fold"].iloc[0] != 0:
            return ids, probs
        first = ids.loc[ids["level"] == "window", "window_id"].min()
        keep = ~((ids["level"] == "window") & (ids["window_id"] == first))
        return ids[keep.to_numpy()].reset_index(drop=True), {m: p[keep.to_numpy()] for m, p in probs.items()}

    fewer = copy_run(demo_run, tmp_path / "fewer", drop_a_window)
    page = run_comparison.run(demo_run, fewer, resamples=20)
    assert "Not compared at window level:" in page and "1 only in A, 0 only in B" in page
    table, skipped = run_comparison.compare(run_comparison.read_run(demo_run), run_comparison.read_run(fewer), 20)
    assert set(skipped) == {"window"} and set(table["level"]) == {"segment", "frame"}
    (fewer / "data" / "split_summary.csv").unlink()
    with pytest.raises(FerseqError, match="not a finished run: .*split_summary.csv missing"):
        run_comparison.read_run(fewer)


def synthetic_run(folder, clips):
    """A results folder of one fold whose test clips are ``clips`` (see test_statistics.write_predictions)."""
    results = folder / "results"
    (results / "folds" / "0" / "evaluation").mkdir(parents=True)
    (results / "data").mkdir()
    write_predictions(results / "folds" / "0" / "evaluation" / "predictions.parquet", 0, clips, unit="subject")
    split_summary(results / "data" / "split_summary.csv", "subject", False, segments=len(clips))
    return results


def test_the_interval_resamples_people_for_both_runs_at_once_and_p_is_scipys(tmp_path):
    # 30 people, 4 clips each; B's per-frame CNN differs from A's on some clips of 8 people only.
    rng = np.random.default_rng(5)
    people, per_person = 30, 4
    true = rng.integers(0, 3, people * per_person)
    pred_a = np.where(rng.random(len(true)) < 0.7, true, rng.integers(0, 3, len(true)))
    pred_b = pred_a.copy()
    person = np.repeat(np.arange(people), per_person)
    changed = (person < 8) & (rng.random(len(true)) < 0.6)
    changed[np.arange(8) * per_person] = True  # each of the 8 at least once
    pred_b[changed] = (pred_a[changed] + 1) % 3
    clips = [[(f"p{person[k]:02d}", f"p{person[k]:02d}v{k}", int(true[k]), int(pred[k]), int(pred[k]))
              for k in range(len(true))] for pred in (pred_a, pred_b)]
    a, b = (run_comparison.read_run(synthetic_run(tmp_path / name, c)) for name, c in zip("ab", clips))
    resamples, seed = 300, 7
    table, _ = run_comparison.compare(a, b, resamples, seed)
    row = table[(table["method"] == "per_frame") & (table["level"] == "segment") & (table["metric"] == "uar")].iloc[0]

    def uar(pred, weight):  # scikit-learn's macro recall over the resample's items, each weighted by its draws
        kept = weight > 0
        return 100 * recall_score(true[kept], pred[kept], average="macro", labels=np.unique(true[kept]),
                                  sample_weight=weight[kept])

    assert row["difference"] == pytest.approx(uar(pred_a, np.ones(len(true))) - uar(pred_b, np.ones(len(true))))
    # The same draws of people for A and B (a paired bootstrap); each person's clips go together.
    draws = uncertainty.resample_counts(people, resamples, seed)
    differences = [uar(pred_a, d[person].astype(float)) - uar(pred_b, d[person].astype(float)) for d in draws]
    assert (row["ci_low"], row["ci_high"]) == pytest.approx(tuple(np.percentile(differences, [2.5, 97.5])))
    # The sign-flip p: scipy's exact paired permutation test, exchanging a person's A and B clips (the 22 people
    # scored alike by both runs are in both pooled matrices whatever the pattern).
    cm = {name: np.stack([confusion_matrix(true[person == i], pred[person == i], labels=[0, 1, 2])
                          for i in range(people)]) for name, pred in (("a", pred_a), ("b", pred_b))}
    alike = cm["a"][8:].sum(0)
    stacked = np.concatenate([cm["a"][:8], cm["b"][:8]])

    def statistic(x, y):
        def score(matrix):
            rows = matrix.sum(1) > 0
            return 100 * np.mean(np.diag(matrix)[rows] / matrix.sum(1)[rows])
        return score(alike + stacked[x].sum(0)) - score(alike + stacked[y].sum(0))

    index = np.arange(8)
    expected = stats.permutation_test((index, index + 8), statistic, permutation_type="samples", vectorized=False,
                                      n_resamples=np.inf, alternative="two-sided")
    assert expected.statistic == pytest.approx(row["difference"])
    assert row["p_exact"] and row["differing_units"] == 8
    assert row["p_value"] == pytest.approx(expected.pvalue, abs=1e-12)
