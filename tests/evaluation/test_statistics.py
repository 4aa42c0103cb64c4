"""The evaluation's statistics: one pooled statistic per difference (its point, interval and p-value), the person as
the resampling unit, the fold figures papers report, and the verdict that follows, each checked against an
independent computation (scipy, scikit-learn, a hand computation or a from-scratch re-implementation)."""

from __future__ import annotations

import statistics

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.metrics import accuracy_score, f1_score, recall_score

from conftest import ferseq_log
from ferseq.evaluation import metrics, predictions, summary, uncertainty

CLASSES = ["neutral", "happy", "sad"]


# --------------------------------------------------------------------------- independent computations


def labels_of(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The (true, predicted) label vectors a confusion matrix counts."""
    pairs = [(t, p) for (t, p), n in np.ndenumerate(np.asarray(cm, int)) for _ in range(n)]
    true, pred = zip(*pairs)
    return np.array(true), np.array(pred)


def sklearn_score(cm: np.ndarray, metric: str) -> float:
    """UAR, WAR or macro F1 of a confusion matrix by scikit-learn, over the classes present among the true labels."""
    true, pred = labels_of(cm)
    present = sorted(set(true))
    if metric == "uar":
        return recall_score(true, pred, labels=present, average="macro", zero_division=0)
    if metric == "war":
        return accuracy_score(true, pred)
    return f1_score(true, pred, labels=present, average="macro", zero_division=0)


def direct_uar(cm: np.ndarray) -> np.ndarray:
    """UAR of matrices ``(..., C, C)`` written out: the mean recall over classes with items."""
    support = cm.sum(axis=-1)
    recall = np.diagonal(cm, axis1=-2, axis2=-1) / np.where(support > 0, support, 1)
    return (recall * (support > 0)).sum(axis=-1) / (support > 0).sum(axis=-1)


def random_units(rng: np.random.Generator, n: int, items: int = 6, classes: int = 3,
                 right: tuple[float, float] = (0.7, 0.45)) -> tuple[np.ndarray, np.ndarray]:
    """Per-unit confusion matrices of two methods on the same items: each unit ``items`` labelled items, each
    method right with probability ``right``."""
    a = np.zeros((n, classes, classes), np.int64)
    b = np.zeros_like(a)
    for u in range(n):
        true = rng.integers(0, classes, items)
        right_a, right_b = rng.random(items) < right[0], rng.random(items) < right[1]
        for t, ra, rb in zip(true, right_a, right_b):
            a[u, t, t if ra else (t + 1) % classes] += 1
            b[u, t, t if rb else (t + 2) % classes] += 1
    return a, b


# --------------------------------------------------------------------------- metrics


def test_margins_are_what_the_scores_need_and_add_up():
    rng = np.random.default_rng(0)
    cm = rng.integers(0, 9, size=(4, 3, 3))
    cm[2, 1, :] = 0  # a class without items in one matrix
    m = metrics.margins(cm)
    assert m.shape == (4, 3, 3)
    assert np.array_equal(m[:, 0], np.diagonal(cm, axis1=1, axis2=2))
    assert np.array_equal(m[:, 1], cm.sum(axis=2)) and np.array_equal(m[:, 2], cm.sum(axis=1))
    assert np.array_equal(metrics.margins(cm.sum(0)), m.sum(0))  # linear: pooled margins are sums
    for metric in metrics.METRICS:
        got = metrics.margin_scores(m)[metric]
        assert got == pytest.approx([sklearn_score(c, metric) for c in cm])
        assert np.array_equal(got, metrics.scores(cm)[metric])
    assert all(np.isnan(v) for v in metrics.margin_scores(np.zeros((3, 3))).values())


def test_class_table_scores_a_class_never_predicted_and_one_without_items_as_zero():
    # neutral: 2 items, never predicted; happy: 3 items; sad: no item and never predicted.
    cm = np.array([[0, 2, 0], [0, 3, 0], [0, 0, 0]])
    table = metrics.class_table(cm, CLASSES).set_index("class")
    assert table.loc[CLASSES, "precision"].tolist() == [0.0, 0.6, 0.0]
    assert table.loc[CLASSES, "recall"].tolist() == [0.0, 1.0, 0.0]
    assert table.loc[CLASSES, "f1"].tolist() == pytest.approx([0.0, 0.75, 0.0]) and table.at["sad", "f1"] == 0
    assert table.loc[CLASSES, "support"].tolist() == [2, 3, 0]
    # Means over the classes with items (neutral, happy), as scikit-learn with labels=[0, 1].
    assert table.at["macro avg", "precision"] == pytest.approx(0.3) and table.at["macro avg", "recall"] == 0.5
    assert table.at["macro avg", "f1"] == pytest.approx(0.375) and table.at["macro avg", "support"] == 5
    assert table.at["accuracy", "f1"] == pytest.approx(0.6) and table.at["accuracy", "support"] == 5
    assert np.isnan(table.at["accuracy", "precision"]) and np.isnan(table.at["accuracy", "recall"])
    assert list(table.columns) == ["precision", "recall", "f1", "support"]
    empty = metrics.class_table(np.zeros((3, 3), int), CLASSES).set_index("class")
    assert np.isnan(empty.at["macro avg", "recall"]) and empty.at["macro avg", "support"] == 0
    assert (empty.loc[CLASSES, ["precision", "recall", "f1"]].to_numpy() == 0).all()


def test_grouped_confusion_counts_each_group():
    groups, true, pred = np.array([0, 0, 1, 2, 2]), np.array([0, 1, 1, 2, 0]), np.array([0, 1, 0, 2, 2])
    cm = metrics.grouped_confusion(groups, 4, true, pred, 3)
    assert cm.shape == (4, 3, 3) and cm.sum() == 5 and cm[3].sum() == 0
    assert cm[0, 0, 0] == cm[0, 1, 1] == cm[1, 1, 0] == cm[2, 2, 2] == cm[2, 0, 2] == 1
    assert np.array_equal(cm.sum(0), metrics.confusion(true, pred, 3))


# --------------------------------------------------------------------------- interval and bootstrap


def test_the_interval_is_the_95_percent_percentile_interval():
    samples = np.arange(1001.0)
    assert uncertainty.interval(samples) == pytest.approx((25.0, 975.0))  # the default level: 95%, 2.5% a tail
    assert uncertainty.interval(samples, 0.9) == pytest.approx((50.0, 950.0))
    assert uncertainty.interval(np.r_[samples, np.nan, np.nan]) == pytest.approx((25.0, 975.0))  # NaN left out
    assert np.isnan(uncertainty.interval(np.full(5, np.nan))).all()
    assert summary.CONFIDENCE == 0.95


def test_bootstrap_scores_are_the_scores_of_each_resample():
    rng = np.random.default_rng(1)
    a, _ = random_units(rng, 7)
    counts = uncertainty.resample_counts(7, 50, seed=3)
    assert counts.shape == (50, 7) and (counts.sum(axis=1) == 7).all()
    assert np.array_equal(counts, uncertainty.resample_counts(7, 50, seed=3))
    assert not np.array_equal(counts, uncertainty.resample_counts(7, 50, seed=4))
    got = uncertainty.bootstrap_scores(a, counts)
    for r in (0, 17, 49):
        pooled = np.tensordot(counts[r], a, axes=1)
        for metric in metrics.METRICS:
            assert got[metric][r] == pytest.approx(sklearn_score(pooled, metric))
    assert uncertainty.resample_counts(0, 4, 1).shape == (4, 0)


# --------------------------------------------------------------------------- sign-flip test of a pooled statistic


@pytest.mark.parametrize("metric", metrics.METRICS)
def test_the_exact_sign_flip_p_equals_scipy_permutation_test_on_paired_confusion_matrices(metric):
    rng = np.random.default_rng(2)
    a, b = random_units(rng, 7)
    b[3] = a[3]  # a unit the two methods score alike: no distinct pattern, same p
    stacked = np.concatenate([a, b])

    def statistic(x, y):  # the pooled difference of the units' matrices as scipy's pairs give them
        return sklearn_score(stacked[x].sum(0), metric) - sklearn_score(stacked[y].sum(0), metric)

    index = np.arange(len(a))
    expected = stats.permutation_test((index, index + len(a)), statistic, permutation_type="samples",
                                      vectorized=False, n_resamples=np.inf, alternative="two-sided")
    got = uncertainty.sign_flip(a, b, seed=0)[metric]
    assert got.exact and got.units == 6 and got.patterns == 2 ** 6
    assert got.p == pytest.approx(expected.pvalue, abs=1e-12)
    assert 0 < got.p < 1
    # The observed statistic is the difference of the pooled scores, the point the summary reports.
    assert expected.statistic == pytest.approx(metrics.scores(a.sum(0))[metric] - metrics.scores(b.sum(0))[metric])


def test_the_sign_flip_tests_the_pooled_statistic_not_the_mean_of_per_unit_scores():
    # Each unit one item: 80 of class 0, 10 of class 1, 10 of class 2. A always says class 0, B finds the minorities.
    a, b = np.zeros((100, 3, 3), np.int64), np.zeros((100, 3, 3), np.int64)
    true = np.r_[np.zeros(80, int), np.ones(10, int), np.full(10, 2)]
    b_pred = true.copy()
    b_pred[:13] = 1  # B wrong on 13 of the majority ...
    b_pred[[80, 90]] = 0  # ... and on one item of each minority
    for u, (t, pb) in enumerate(zip(true, b_pred)):
        a[u, t, 0] += 1
        b[u, t, pb] += 1
    assert metrics.scores(b.sum(0))["uar"] == pytest.approx((67 / 80 + 0.9 + 0.9) / 3)
    assert metrics.scores(b.sum(0))["war"] == pytest.approx(0.85)
    test = uncertainty.sign_flip(b, a, seed=0)
    assert not test["uar"].exact and test["uar"].units == 31  # the items the two score differently
    assert test["uar"].p < 0.001 and test["uar"].p == pytest.approx(1 / (1 + uncertainty.PERMUTATIONS))
    assert test["war"].p > 0.2  # the accuracy gain (+5 points) is within chance


def test_the_random_pattern_branch_equals_an_independent_seeded_computation(monkeypatch):
    rng = np.random.default_rng(3)
    a, b = random_units(rng, 21, items=4)
    b[[4, 9]] = a[[4, 9]]  # two units alike: 19 make patterns, drawn for n = 19
    permutations, seed = 2500, 11
    monkeypatch.setattr(uncertainty, "CHUNK", 1000)  # blocks of 1000, 1000, 500: the same patterns as one draw
    got = uncertainty.sign_flip(a, b, seed, permutations)["uar"]
    # The documented patterns, from scratch: bit j of the little-endian 64-bit words of the raw stream of
    # default_rng([seed, n]) flips unit j of the units whose two matrices differ.
    keep = np.flatnonzero(np.any((a != b).reshape(len(a), -1), axis=1))
    n = len(keep)
    words = np.random.default_rng([seed, n]).bit_generator.random_raw(permutations).reshape(permutations, 1)
    flip = ((words >> np.arange(n, dtype=np.uint64)[None, :]) & np.uint64(1)).astype(bool)
    pa = np.where(flip[:, :, None, None], b[keep][None], a[keep][None]).sum(1) + np.delete(a, keep, 0).sum(0)
    pb = np.where(flip[:, :, None, None], a[keep][None], b[keep][None]).sum(1) + np.delete(b, keep, 0).sum(0)
    differences = direct_uar(pa) - direct_uar(pb)
    observed = direct_uar(a.sum(0)) - direct_uar(b.sum(0))
    extreme = np.sum(np.abs(differences) >= abs(observed) - 1e-12)
    assert not got.exact and got.units == n == 19 and got.patterns == permutations
    assert got.p == (1 + extreme) / (1 + permutations)
    assert got.smallest_p == 1 / (1 + permutations)
    assert np.array_equal(uncertainty.random_signs(seed, n, permutations), np.where(flip, -1, 1).astype(np.int8))


def test_the_random_pattern_branch_is_two_sided_and_close_to_the_exact_p():
    rng = np.random.default_rng(4)
    a, b = random_units(rng, 17, items=3, right=(0.6, 0.45))
    exact_p = None
    for metric in ("uar", "war"):
        # Exact over 2**17 patterns, with the enumeration the exact branch uses for up to 16 units.
        n = 17
        bits = ((np.arange(2 ** n)[:, None] >> np.arange(n)[None, :]) & 1).astype(bool)
        values = []
        for chunk in np.array_split(bits, 16):
            pa = np.where(chunk[:, :, None, None], b[None], a[None]).sum(1)
            pb = np.where(chunk[:, :, None, None], a[None], b[None]).sum(1)
            values.append(metrics.scores(pa)[metric] - metrics.scores(pb)[metric])
        values = np.concatenate(values)
        observed = values[0]
        exact_p = np.mean(np.abs(values) >= abs(observed) - 1e-12)
        got = uncertainty.sign_flip(a, b, seed=5)[metric]
        assert 0.02 < exact_p < 0.5, exact_p  # a case where a one-sided p (about half) is far off
        assert abs(got.p - exact_p) < 4 * np.sqrt(exact_p * (1 - exact_p) / uncertainty.PERMUTATIONS) + 1e-4


def test_units_scored_alike_make_no_distinct_pattern_and_raise_the_smallest_p():
    # Six units, A right and B wrong on each: the most extreme pattern (and its mirror) of 2**6.
    a, b = np.zeros((6, 2, 2), np.int64), np.zeros((6, 2, 2), np.int64)
    a[:, 0, 0], b[:, 0, 1] = 1, 1
    a[::2, 0, 0], a[::2, 1, 1] = 0, 1  # some units of the other class, so that UAR has two classes
    b[::2, 0, 1], b[::2, 1, 0] = 0, 1
    test = uncertainty.sign_flip(a, b, seed=0)["uar"]
    assert test.units == 6 and test.smallest_p == pytest.approx(2 / 64) and test.p == pytest.approx(2 / 64)
    b[5] = a[5]  # the sixth unit scored alike by both: only 2**5 distinct patterns
    test = uncertainty.sign_flip(a, b, seed=0)["uar"]
    assert test.units == 5 and test.smallest_p == pytest.approx(0.0625) and test.p == pytest.approx(0.0625)
    same = uncertainty.sign_flip(a, a, seed=0)
    assert all(t.p == 1 and t.smallest_p == 1 and t.units == 0 for t in same.values())
    empty = uncertainty.sign_flip(np.zeros((3, 2, 2)), np.zeros((3, 2, 2)), seed=0)["uar"]
    assert np.isnan(empty.p) and np.isnan(empty.smallest_p)


def test_methods_at_different_levels_are_exchanged_at_equal_weight():
    rng = np.random.default_rng(6)
    windows, _ = random_units(rng, 8, items=3)
    frames = random_units(rng, 8, items=3)[1] * 16  # each window's 16 frames, scored alike here
    scaled_a, scaled_b = uncertainty.comparable(windows, frames)
    assert np.array_equal(scaled_a, windows * 16) and np.array_equal(scaled_b, frames)
    assert scaled_a.dtype == np.float64
    got = uncertainty.sign_flip(windows, frames, seed=0)
    same_weight = uncertainty.sign_flip(windows, frames // 16, seed=0)
    for metric in metrics.METRICS:
        assert got[metric].p == same_weight[metric].p
    # Totals 6 and 4: the integer factors 2 and 3 (greatest common divisor 2).
    x, y = uncertainty.comparable(np.array([[[6]]]), np.array([[[4]]]))
    assert x.item() == 12 and y.item() == 12


# --------------------------------------------------------------------------- the resampling unit


def id_table(rows: list[tuple[str, str, str]]) -> pd.DataFrame:
    """Items ``(subject, video_id, unit)``."""
    return pd.DataFrame(rows, columns=["subject", "video_id", "unit"])


def test_the_person_is_the_unit_whatever_the_split_unit():
    ids = id_table([("p1", "v1", "v1"), ("p1", "v2", "v2"), ("p2", "v3", "v3"), ("p1", "v2", "v2")])
    index, names, nouns, merged = summary.resampling_units(ids, "video", True)
    assert list(names) == ["p1", "p2"] and index.tolist() == [0, 0, 1, 0] and nouns == ("person", "people")
    assert merged == 0 and summary.names_people(ids, "video", True)
    # A video with two people keeps them together: one unit.
    ids = id_table([("p1", "v1", "v1"), ("p2", "v1", "v1"), ("p3", "v2", "v2")])
    index, names, nouns, merged = summary.resampling_units(ids, "video", True)
    assert list(names) == ["p1+p2", "p3"] and index.tolist() == [0, 0, 1] and merged == 1


def test_without_named_people_the_split_unit_is_resampled():
    # A benchmark release: each clip its own subject, identity may leak, split by "subject".
    ids = id_table([("c1", "c1", "c1"), ("c2", "c2", "c2"), ("c1", "c1", "c1")])
    assert not summary.names_people(ids, "subject", True)
    index, names, nouns, merged = summary.resampling_units(ids, "subject", True)
    assert list(names) == ["c1", "c2"] and index.tolist() == [0, 1, 0] and nouns == ("clip", "clips")
    assert summary.names_people(ids, "subject", False)  # no leak: real people who each have one clip
    two = id_table([("p1", "v1", "p1"), ("p1", "v2", "p1")])
    assert summary.names_people(two, "subject", True)


# --------------------------------------------------------------------------- the summary stage


def write_predictions(path, fold: int, clips: list[tuple[str, str, int, int, int]], missing: set[int] = frozenset(),
                      unit: str = "video") -> None:
    """A fold's predictions file: clips ``(subject, video, true, frame_pred, sequence_pred)``, one window of 2
    frames each; the frame methods (and their aggregation) predict ``frame_pred``, the sequence model
    ``sequence_pred``; clips whose position is in ``missing`` are flagged face_missing. ``unit``: the split unit
    column (``video`` or ``subject``)."""
    names = predictions.methods("embedding")
    rows, probs = [], {m: [] for m in names}
    for k, (subject, video, true, frame_pred, seq_pred) in enumerate(clips):
        segment = fold * 10_000 + k
        base = {"fold": fold, "unit": video if unit == "video" else subject, "subject": subject, "video_id": video,
                "segment_id": segment, "label": CLASSES[true], "short_segment": False,
                "face_missing": k in missing}
        for level, count in (("frame", 2), ("window", 1), ("segment", 1)):
            for i in range(count):
                rows.append({**base, "level": level, "window_id": segment if level != "segment" else -1,
                             "frame": i if level == "frame" else -1})
                for method in names:
                    scores_here = level == "segment" or (level == "frame") == (method in predictions.FRAME_METHODS)
                    pred = seq_pred if method == "cnn_lstm" else frame_pred
                    p = np.full(3, 0.1, np.float32)
                    p[pred] = 0.8
                    probs[method].append(p if scores_here else np.full(3, np.nan, np.float32))
    ids = pd.DataFrame(rows)
    ids = ids[[c for c in predictions.ID_COLUMNS if c in ids]]
    predictions.write(path, ids, {m: np.stack(v) for m, v in probs.items()}, CLASSES, names)


def split_summary(path, unit="subject", leak=False, scheme="kfold (5 folds)", segments=0):
    pd.DataFrame({"fold": [0], "split": ["test"], "label": ["happy"], "segments": [segments], "split_unit": [unit],
                  "identity_leak": [leak], "scheme": [scheme]}).to_csv(path, index=False)
    return path


def outputs(tmp_path):
    return {"csv": tmp_path / "s.csv", "md": tmp_path / "s.md", "per_person": tmp_path / "pp.csv",
            "per_person_png": tmp_path / "pp.png", "differences_png": tmp_path / "d.png"}


def row(table, kind="difference", method="cnn_lstm", versus="aggregation", level="segment", metric="uar", fold=None):
    mask = ((table["kind"] == kind) & (table["method"] == method) & (table["level"] == level)
            & (table["metric"] == metric))
    if kind == "difference":
        mask &= table["versus"] == versus
    if fold is not None:
        mask &= table["fold"] == fold
    found = table[mask]
    assert len(found) == 1
    return found.iloc[0]


def verdict(out) -> str:
    return out["md"].read_text().split("**Verdict.** ")[1].split("\n")[0]


def tables_of(md: str) -> list[list[list[str]]]:
    """Every Markdown table of ``md`` as rows of cells, after checking its form: a blank line before and after,
    a header, a ``|---|`` separator of as many columns, and every row with as many cells."""
    lines = md.split("\n")
    tables, k = [], 0
    while k < len(lines):
        if not lines[k].startswith("|"):
            k += 1
            continue
        start = k
        while k < len(lines) and lines[k].startswith("|"):
            k += 1
        block = lines[start:k]
        assert lines[start - 1] == "" and k < len(lines) and lines[k] == "", block[0]
        rows = [line.split(" | ") for line in block]
        assert block[1] == "|" + "---|" * len(rows[0]), block[:2]
        assert all(line.endswith(" |") or line.endswith("|") for line in block)
        assert all(len(r) == len(rows[0]) for r in rows[2:]), block
        tables.append([[c.strip("| ") for c in r] for r in rows[:1] + rows[2:]])
    return tables


def hundred_clips(a_pred, b_pred) -> list[list[tuple[str, str, int, int, int]]]:
    """100 clips, 80/10/10 per class, each its own subject (a release naming no person), in five folds of 20."""
    true = np.r_[np.zeros(80, int), np.ones(10, int), np.full(10, 2)]
    clips = [(f"c{k}", f"c{k}", int(t), int(a), int(b)) for k, (t, a, b) in enumerate(zip(true, a_pred, b_pred))]
    return [clips[f::5] for f in range(5)]


def run_folds(tmp_path, folds, unit="subject", leak=True, scheme="predefined (from column folds)", **kwargs):
    files = []
    for f, clips in enumerate(folds):
        files.append(tmp_path / f"f{f}.parquet")
        write_predictions(files[-1], f, clips, unit="video" if unit == "video" else "subject")
    out = outputs(tmp_path)
    table = summary.summarize(files, split_summary(tmp_path / "split.csv", unit, leak, scheme,
                                                   sum(len(c) for c in folds)), out, **kwargs)
    return table, out


def test_a_large_uar_gain_from_finding_the_minority_classes_is_significant(tmp_path):
    true = np.r_[np.zeros(80, int), np.ones(10, int), np.full(10, 2)]
    b = true.copy()
    b[:13], b[[80, 90]] = 1, 0  # B: recall 67/80, 9/10, 9/10 -> UAR 87.9, WAR 85
    table, out = run_folds(tmp_path, hundred_clips(np.zeros(100, int), b))
    uar, war = row(table), row(table, metric="war")
    assert uar["value"] == pytest.approx(100 * ((67 / 80 + 0.9 + 0.9) / 3 - 1 / 3))
    assert war["value"] == pytest.approx(5.0)
    assert uar["p_value"] < 0.001 and uar["ci_low"] > 0 and war["p_value"] > 0.2
    assert uar["units"] == 100 and uar["differing_units"] == 31 and not uar["p_exact"]
    assert verdict(out).startswith("On 100 test clips (5 folds), CNN-LSTM beats frame aggregation by +54.6 UAR points "
                                   "at segment level (95% CI +")
    assert verdict(out).split("; ")[1].startswith("p < 0.001)")
    md = out["md"].read_text()
    assert "the intervals and p-values resample clips, not people" in md
    assert "Resampled unit: the test clip; 100 test clips." in md
    csv = pd.read_csv(out["csv"])
    assert set(csv["resampled_unit"]) == {"clip"} and set(csv["resampled_units"]) == {100}


def test_an_accuracy_gain_that_loses_uar_is_called_a_loss(tmp_path):
    true = np.r_[np.zeros(80, int), np.ones(10, int), np.full(10, 2)]
    a = true.copy()
    a[:20] = 1  # A: recall 60/80, 10/10, 10/10 -> UAR 91.7, WAR 80
    b = np.zeros(100, int)
    b[[80, 81, 90, 91]] = true[[80, 81, 90, 91]]  # B: recall 1, 2/10, 2/10 -> UAR 46.7, WAR 84
    table, out = run_folds(tmp_path, hundred_clips(a, b))
    assert row(table, metric="war")["value"] == pytest.approx(4.0)
    uar = row(table)
    assert uar["value"] == pytest.approx(100 * ((1 + 0.2 + 0.2) / 3 - (0.75 + 2) / 3))
    assert uar["p_value"] < 0.001
    assert verdict(out).startswith("On 100 test clips (5 folds), CNN-LSTM is worse than frame aggregation by −45.0 "
                                   "UAR points at segment level")


def test_fold_scores_are_each_folds_with_their_mean_and_sample_sd(tmp_path):
    rng = np.random.default_rng(7)
    folds = []
    for f in range(5):  # fold f: 12 clips of 12 people, the sequence model wrong on f + 1 of them
        clips = []
        for k in range(12):
            t = k % 3
            clips.append((f"f{f}p{k}", f"f{f}v{k}", t, int(rng.integers(3)), (t + 1) % 3 if k <= f else t))
        folds.append(clips)
    table, out = run_folds(tmp_path, folds, unit="video", leak=True, scheme="kfold (5 folds)")
    # By hand: fold f's WAR is (11 - f) / 12; its UAR the mean recall over the three classes.
    war = [(11 - f) / 12 for f in range(5)]
    uar = [np.mean([1 - sum(1 for k in range(12) if k % 3 == c and k <= f) / 4 for c in range(3)]) for f in range(5)]
    for metric, by_hand in (("war", war), ("uar", uar)):
        got = [row(table, "fold", metric=metric, fold=f)["value"] for f in range(5)]
        assert got == pytest.approx([100 * v for v in by_hand])
        score = row(table, "score", metric=metric)
        assert score["fold_mean"] == pytest.approx(100 * statistics.mean(by_hand))
        assert score["fold_std"] == pytest.approx(100 * statistics.stdev(by_hand))  # sample sd, ddof = 1
    assert row(table, "fold", metric="war", fold=2)["items"] == 12
    md = out["md"].read_text()
    assert ("## Per fold (segment level, percent: each fold's test part, the mean and sample standard deviation "
            "over folds as papers report them, and all folds pooled)\n\n| method | metric | fold 0 | fold 1 | fold 2 "
            "| fold 3 | fold 4 | mean ± sd | pooled [95% interval] |\n|---|---|---|---|---|---|---|---|---|\n") in md
    assert "| CNN-LSTM | WAR | 91.7 | 83.3 | 75.0 | 66.7 | 58.3 | 75.0 ± 13.2 | 75.0 [" in md
    assert "mean ± sd over folds |" not in md  # the fold figures are in their own table
    scores, by_fold, differences, scored = tables_of(md)
    assert scores[0] == ["method", "reads", "segment UAR", "segment WAR", "macro F1 (own level)",
                         "reference macro F1*", "reference accuracy*"]
    f1 = row(table, "score", level="window", metric="macro_f1")
    uar = row(table, "score", metric="uar")
    assert scores[3][:3] == ["CNN-LSTM", "CNN embeddings", f"{uar['value']:.1f} [{uar['ci_low']:.1f}, "
                                                          f"{uar['ci_high']:.1f}]"]
    assert scores[3][4] == f"{f1['value']:.1f} [{f1['ci_low']:.1f}, {f1['ci_high']:.1f}] (windows)"
    assert by_fold[0][-2:] == ["mean ± sd", "pooled [95% interval]"] and len(by_fold) == 1 + 5 * 2
    assert differences[0] == ["comparison", "level", "Δ UAR", "Δ WAR", "Δ macro F1", "p (UAR)", "p (WAR)",
                              "p (macro F1)", "smallest p"] and len(differences) == 1 + 5 * 2
    assert scored == [["level", "items", "test people"], ["segment", "60", "60"], ["window", "60", "60"],
                      ["frame", "120", "60"]]
    assert "## Paired differences (a − b, percentage points, 95% intervals)\n\n|" in md
    csv = pd.read_csv(out["csv"])
    assert len(csv[csv["kind"] == "fold"]) == 5 * 5 * 2 * 3  # folds x methods x levels x metrics
    assert set(csv["resampled_unit"]) == {"person"} and set(csv["resampled_units"]) == {60}
    assert "The intervals and p-values resample people nonetheless" in md


def test_one_persons_videos_are_resampled_together(tmp_path):
    # Split by video; "big" has 5 videos the sequence model gets right (aggregation wrong), 5 others one video
    # each, the other way round.
    clips = [("big", f"big{v}", v % 3, (v + 1) % 3, v % 3) for v in range(5)]
    clips += [(f"p{i}", f"v{i}", i % 3, i % 3, (i + 1) % 3) for i in range(5)]
    by_person, out = run_folds(tmp_path, [clips], unit="video", leak=True, scheme="holdout", seed=3)
    # The same items with each video its own person: what resampling videos would give.
    videos = [(video, video, t, a, b) for _, video, t, a, b in clips]
    (tmp_path / "videos").mkdir()
    by_video, _ = run_folds(tmp_path / "videos", [videos], unit="video", leak=True, scheme="holdout", seed=3)
    person, video = row(by_person, metric="war"), row(by_video, metric="war")
    assert person["value"] == video["value"] == 0
    assert person["units"] == 6 and video["units"] == 10
    assert person["ci_high"] - person["ci_low"] > video["ci_high"] - video["ci_low"]
    assert "Resampled unit: the test person; 6 test people." in out["md"].read_text()
    people = pd.read_csv(out["per_person"])
    assert people["unit"].tolist() == ["big", "p0", "p1", "p2", "p3", "p4"] and people["segments"].tolist()[0] == 5


@pytest.mark.parametrize("confidence,claim", [(0.95, "no difference can be told from chance"), (0.9, "beats")])
def test_a_unit_scored_alike_changes_the_smallest_p_and_the_verdict(tmp_path, confidence, claim):
    # Six people; the sequence model right and aggregation wrong on five, both alike on the sixth.
    clips = [(f"p{i}", f"v{i}", i % 3, (i + 1) % 3, i % 3) for i in range(5)] + [("p5", "v5", 0, 0, 0)]
    table, out = run_folds(tmp_path, [clips], unit="subject", leak=False, scheme="holdout", confidence=confidence)
    uar = row(table)
    assert uar["differing_units"] == 5 and uar["smallest_p"] == pytest.approx(0.0625)
    assert uar["p_value"] == pytest.approx(0.0625) and uar["p_exact"]
    assert claim in verdict(out)
    if confidence == 0.95:
        assert ("with 6 test people (5 of them scored differently by the two methods) no difference can be told "
                "from chance: the smallest p-value the sign-flip test can give here is 0.062, not below 0.05"
                ) in verdict(out)
    else:
        assert "(90% CI" in verdict(out) and "p < 0.1 (1 − evaluation.confidence)" in out["md"].read_text()


def test_the_summary_interval_is_the_95_percent_interval_of_the_resampled_people(tmp_path):
    clips = [(f"p{i}", f"v{i}", i % 3, (i * 7) % 3, (i * 5 + i // 3) % 3) for i in range(15)]
    table, out = run_folds(tmp_path, [clips], unit="subject", leak=False, scheme="holdout", seed=9, resamples=2000)
    pooled = summary.pool([tmp_path / "f0.parquet"])
    counts = uncertainty.resample_counts(len(pooled.units), 2000, 9)
    scored = summary.score(pooled, "cnn_lstm", "segment", counts)
    assert (scored.method, scored.level, scored.per_unit.shape, scored.per_fold.shape) == ("cnn_lstm", "segment",
                                                                                          (15, 3, 3), (1, 3, 3))
    a = scored.resampled["uar"]
    b = summary.score(pooled, "aggregation", "segment", counts).resampled["uar"]
    low, high = np.percentile(100 * (a - b), [2.5, 97.5])
    got = row(table)
    assert got["ci_low"] == pytest.approx(low) and got["ci_high"] == pytest.approx(high)
    score = row(table, "score", metric="uar")
    low, high = np.percentile(100 * a, [2.5, 97.5])
    assert score["ci_low"] == pytest.approx(low) and score["ci_high"] == pytest.approx(high)
    assert "95% CI" in verdict(out)


def test_clips_without_a_face_are_counted_per_method_and_level(tmp_path):
    clips = [(f"p{i}", f"v{i}", i % 3, i % 3, i % 3) for i in range(6)]
    write_predictions(tmp_path / "f0.parquet", 0, clips, missing={1, 4})
    out = outputs(tmp_path)
    with ferseq_log() as messages:
        table = summary.summarize([tmp_path / "f0.parquet"], split_summary(tmp_path / "s.csv", scheme="holdout",
                                                                           segments=6), out)
    assert messages[-1] == f"summary of 1 fold(s), 6 test people:\n{out['md'].read_text()}"
    assert row(table, "score", metric="uar")["face_missing"] == 2
    assert row(table, "score", level="window", metric="war")["face_missing"] == 2
    assert row(table, "score", method="per_frame", level="frame", metric="war")["face_missing"] == 4
    md = out["md"].read_text()
    assert "| CNN-LSTM | segment | 6 | 2 |" in md and "| per-frame CNN | frame | 12 | 4 |" in md
    assert tables_of(md)[-1][0] == ["method", "level", "items", "without a face"] and len(tables_of(md)[-1]) == 11
    assert "6 of 6 test segments are scored;" in md
    write_predictions(tmp_path / "f0.parquet", 0, clips)
    summary.summarize([tmp_path / "f0.parquet"], split_summary(tmp_path / "s.csv", scheme="holdout", segments=6), out,
                      normalise="subject")
    md = out["md"].read_text()
    assert "Every scored item has a usable face frame" in md
    assert "**Per-person normalisation** (windows.normalise: subject)" in md


def test_summary_inputs_that_do_not_match_raise_an_error(tmp_path):
    write_predictions(tmp_path / "a.parquet", 0, [("p0", "v0", 0, 0, 0)])
    ids, probs, classes, names = predictions.read(tmp_path / "a.parquet")
    predictions.write(tmp_path / "b.parquet", ids.assign(fold=1), probs, ["neutral", "happy", "angry"], names)
    with pytest.raises(ValueError, match="b.parquet: classes .* differ from the other folds'"):
        summary.pool([tmp_path / "a.parquet", tmp_path / "b.parquet"])
    with pytest.raises(ValueError, match="no predictions files"):
        summary.pool([])


def test_the_summary_table_says_what_each_number_counts(tmp_path):
    clips = [(f"p{i}", f"v{i}", i % 3, (i * 2) % 3, i % 3) for i in range(8)] + [("p0", "v8", 1, 1, 1)]
    table, out = run_folds(tmp_path, [clips], unit="subject", leak=False, scheme="holdout", seed=2, resamples=2000)
    score = row(table, "score", metric="war")
    assert score["items"] == 9 and score["units"] == 8 and score["face_missing"] == 0
    assert np.isnan(score["p_value"]) and np.isnan(score["fold"]) and score["versus"] == ""
    assert score["fold_mean"] == score["value"] and np.isnan(score["fold_std"])  # one fold: no sample sd
    frames = row(table, "score", method="per_frame", level="frame", metric="war")
    assert frames["items"] == 18 and frames["name"] == "per-frame CNN"
    diff = row(table, metric="war")
    assert diff["units"] == 8 and np.isnan(diff["items"]) and diff["name"] == "CNN-LSTM − frame aggregation"
    assert row(table, method="aggregation", versus="per_frame", level="window vs frame")["p_value"] == 1
    assert set(table["split_unit"]) == {"subject"} and set(table["confidence"]) == {0.95}
    assert set(table["resamples"]) == {2000} and set(table["folds"]) == {1} and not table["identity_leak"].any()
    people = pd.read_csv(out["per_person"]).set_index("unit")
    assert people.loc["p0", ["segments", "windows", "frames"]].tolist() == [2, 2, 4]
    assert people.loc["p0", "folds"] == 0 and people.loc["p1", "cnn_lstm_segment_uar"] == 100
    assert people.loc["p1", "aggregation_window_uar"] == 0 and "per_frame_frame_uar" in people
    md = out["md"].read_text()
    assert "Splits are by subject (holdout): no person is in two splits of a fold." in md
    assert "| segment | 9 | 8 |" in md and "| frame | 18 | 8 |" in md
    assert "Intervals: percentile intervals of 2000 bootstrap resamples of the test people" in md
    assert "mean ± sd over folds" not in md and "## Per fold" not in md and "Per-person normalisation" not in md
    # Identical predictions: a difference of exactly zero, p = 1, and the test can give nothing smaller.
    assert ("| frame aggregation − per-frame CNN | window vs frame | +0.0 [+0.0, +0.0] | +0.0 [+0.0, +0.0] | "
            "+0.0 [+0.0, +0.0] | 1 | 1 | 1 | 1 |") in md
    uar, war, f1 = (row(table, metric=m) for m in metrics.METRICS)
    signed = [f"{v:+.1f}".replace("-", "−") for v in (uar["value"], uar["ci_low"], uar["ci_high"])]
    assert f"| CNN-LSTM − frame aggregation | segment | {signed[0]} [{signed[1]}, {signed[2]}] | " in md
    assert "else 10000 seeded random patterns" in md and "at most 16, else" in md


def test_verdict_sentences_follow_the_interval_and_the_p_value():
    def sentence(value, low, high, p, smallest=0.001, differing=20, confidence=0.95, lead=True):
        r = pd.Series({"value": value, "ci_low": low, "ci_high": high, "p_value": p, "smallest_p": smallest,
                       "differing_units": differing})
        return summary.verdict_sentence(r, "A", "B", 30, ("person", "people"), 5, confidence, lead)

    assert sentence(5, 1, 9, 0.01) == ("On 30 test people (5 folds), A beats B by +5.0 UAR points at segment level "
                                       "(95% CI +1.0 to +9.0; p = 0.01).")
    assert sentence(-5, -9, -1, 0.0004, lead=False) == ("A is worse than B by −5.0 UAR points at segment level (95% "
                                                        "CI −9.0 to −1.0; p < 0.001).")
    assert sentence(5, 1, 9, 0.2).endswith("A − B is +5.0 UAR points at segment level (95% CI +1.0 to +9.0; p = 0.2): "
                                           "the interval and the permutation test disagree, so treat it as tentative.")
    assert "tentative" in sentence(5, -1, 9, 0.01) and "tentative" in sentence(-5, -9, 1, 0.04)
    assert sentence(1, -2, 3, 0.5).endswith("the difference between A and B, +1.0 UAR points at segment level (95% CI "
                                            "−2.0 to +3.0; p = 0.5), is within chance at this number of people.")
    # The threshold is 1 - confidence: p = 0.07 is a claim at 90%, tentative at 95%.
    assert "beats" in sentence(5, 1, 9, 0.07, confidence=0.9) and "tentative" in sentence(5, 1, 9, 0.07)
    assert "(90% CI" in sentence(5, 1, 9, 0.07, confidence=0.9)
    # p exactly at the threshold is no claim; neither is a test that cannot go below it.
    assert "tentative" in sentence(5, 1, 9, 0.05)
    assert sentence(5, 1, 9, 0.05, smallest=0.05, differing=4).endswith(
        "(4 of them scored differently by the two methods) no difference can be told from chance: the smallest "
        "p-value the sign-flip test can give here is 0.05, not below 0.05.")
    assert "the smallest p-value the sign-flip test can give here is 1," in sentence(0, 0, 0, 1, smallest=1,
                                                                                      differing=0)
    assert "can give here is 1," in sentence(np.nan, np.nan, np.nan, np.nan, smallest=np.nan, differing=np.nan)
    assert sentence(5, 1, 9, 0.01).count("On 30 test people") == 1
    one = pd.Series({"value": 5, "ci_low": 1, "ci_high": 9, "p_value": 0.3, "smallest_p": 0.5, "differing_units": 1})
    assert summary.verdict_sentence(one, "A", "B", 1, ("person", "people"), 1).startswith("On 1 test person (1 fold),")


def test_the_summary_run_logs_every_number_to_mlflow(tmp_path, monkeypatch):
    import mlflow

    base = {"kind": "score", "method": "cnn_lstm", "versus": "", "level": "segment", "metric": "uar", "fold": np.nan,
            "value": 70.0, "ci_low": 60.0, "ci_high": 80.0, "p_value": np.nan, "folds": 2, "resamples": 2000,
            "split_unit": "video", "resampled_unit": "person"}
    table = pd.DataFrame([base, {**base, "kind": "fold", "fold": 1, "value": 65.0, "ci_low": np.nan, "ci_high": np.nan},
                          {**base, "kind": "difference", "versus": "aggregation", "level": "window vs frame",
                           "value": 5.0, "ci_low": -1.0, "ci_high": 11.0, "p_value": 0.125}])
    (tmp_path / "s.md").write_text("summary")
    monkeypatch.chdir(tmp_path)
    config = {"experiment": "t", "mlflow": {"tracking_uri": f"sqlite:///{tmp_path}/m.db"}}
    summary.log_summary(config, table, [tmp_path / "s.md"])
    mlflow.set_tracking_uri(config["mlflow"]["tracking_uri"])
    (run,) = mlflow.search_runs(experiment_names=["t"], output_format="list")
    assert run.data.metrics == {"cnn_lstm.segment.uar": 70.0, "cnn_lstm.segment.uar.ci_low": 60.0,
                                "cnn_lstm.segment.uar.ci_high": 80.0, "cnn_lstm.segment.uar.fold1": 65.0,
                                "cnn_lstm-aggregation.window_vs_frame.uar": 5.0,
                                "cnn_lstm-aggregation.window_vs_frame.uar.ci_low": -1.0,
                                "cnn_lstm-aggregation.window_vs_frame.uar.ci_high": 11.0,
                                "cnn_lstm-aggregation.window_vs_frame.uar.p": 0.125}
    assert run.data.params == {"folds": "2", "resamples": "2000", "split_unit": "video", "resampled_unit": "person"}
    assert "s.md" in [a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)]
