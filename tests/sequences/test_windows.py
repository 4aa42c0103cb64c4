"""Window cutting on constructed segments, with exact expected counts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ferseq.sequences import subject_medians, windows


def features_for(spans: list[tuple[int, int, int]], missing: set[int] = frozenset(), dim: int = 4, classes: int = 2):
    """Feature rows for (segment_id, start, end) spans, shuffled; each embedding encodes its frame number."""
    rows = [(segment_id, frame) for segment_id, start, end in spans for frame in range(start, end) if frame not in missing]
    rows = [rows[i] for i in np.random.default_rng(0).permutation(len(rows))]  # cutting must not rely on row order
    table = pd.DataFrame(rows, columns=["segment_id", "frame"]).assign(video_id="v")
    embeddings = np.repeat(table["frame"].to_numpy(np.float32)[:, None], dim, axis=1)
    probs = np.full((len(table), classes), 1 / classes, np.float32)
    landmarks = np.repeat(-table["frame"].to_numpy(np.float32)[:, None], 136, axis=1)
    return table, {"embedding": embeddings, "probs": probs, "landmarks": landmarks}


SEGMENTS = pd.DataFrame([
    {"segment_id": 1, "video_id": "v", "subject": "s", "label": "happy", "start": 0, "end": 40},
    {"segment_id": 2, "video_id": "v", "subject": "s", "label": "sad", "start": 40, "end": 71},
    {"segment_id": 3, "video_id": "v", "subject": "s", "label": "sad", "start": 80, "end": 90},  # shorter than 16
])
FEATURES = features_for([(1, 0, 40), (2, 40, 71), (3, 80, 90)])


def test_stride_and_starts():
    assert windows.stride(16, 0.0) == 16 and windows.stride(16, 0.5) == 8 and windows.stride(16, 0.3) == 11
    assert windows.starts(40, 16, 16) == [0, 16]
    assert windows.starts(40, 16, 8) == [0, 8, 16, 24]
    assert windows.starts(15, 16, 16) == []


def test_no_overlap_counts_and_boundaries():
    table, m = windows.cut(*FEATURES, SEGMENTS, 16, {})
    emb = m["embedding"]
    assert table.groupby("segment_id").size().to_dict() == {1: 2, 2: 1}
    assert emb.shape == (3, 16, 4) and m["probs"].shape == (3, 16, 2) and m["landmarks"].shape == (3, 16, 136)
    # Every per-frame column is cut from the same frames.
    assert np.array_equal(m["landmarks"][..., 0], -emb[..., 0])
    bounds = SEGMENTS.set_index("segment_id")
    for w in table.itertuples():
        assert bounds.at[w.segment_id, "start"] <= w.first_frame and w.last_frame < bounds.at[w.segment_id, "end"]
    # Each window holds its own consecutive frames.
    assert emb[0, :, 0].tolist() == list(range(0, 16)) and emb[1, :, 0].tolist() == list(range(16, 32))
    assert emb[2, :, 0].tolist() == list(range(40, 56))


def test_class_overlap_applies_to_its_class_only():
    table, _ = windows.cut(*FEATURES, SEGMENTS, 16, {"happy": 0.5})
    assert table.groupby("segment_id").size().to_dict() == {1: 4, 2: 1}
    assert table[table.segment_id == 1]["first_frame"].tolist() == [0, 8, 16, 24]
    table, _ = windows.cut(*FEATURES, SEGMENTS, 16, {"happy": 0.5, "sad": 0.3})
    assert table[table.segment_id == 2]["first_frame"].tolist() == [0 + 40, 11 + 40]


def test_missing_faces_drop_or_repeat():
    features = features_for([(1, 0, 40)], missing={10, 11, 12, 13})
    table, m = windows.cut(*features, SEGMENTS[:1], 16, {"happy": 0.5}, policy="drop")
    assert table["first_frame"].tolist() == [0, 8, 20]  # 36 face frames: positions 0, 8, 16 = frames 0, 8, 20
    assert 10 not in m["embedding"][0, :, 0]
    table, m = windows.cut(*features, SEGMENTS[:1], 16, {"happy": 0.5}, policy="repeat")
    emb = m["embedding"]
    assert table["first_frame"].tolist() == [0, 8, 16, 24]
    assert emb[0, 9:15, 0].tolist() == [9, 9, 9, 9, 9, 14]  # frames 10-13 repeat frame 9
    leading = features_for([(1, 0, 40)], missing={0, 1, 2})
    _, m = windows.cut(*leading, SEGMENTS[:1], 16, {}, policy="repeat")
    assert m["embedding"][0, :4, 0].tolist() == [3, 3, 3, 3]  # a leading gap takes the first face frame


def test_segment_without_faces_gives_no_window():
    table, m = windows.cut(*features_for([(2, 40, 71)]), SEGMENTS[:1], 16, {})
    assert table.empty and m["embedding"].shape == (0, 16, 4)


def test_write_read_round_trip_and_stage_counts(tmp_path):
    table, m = windows.cut(*FEATURES, SEGMENTS, 16, {"happy": 0.5})
    windows.write(tmp_path / "w.parquet", table, m)
    back, m2 = windows.read(tmp_path / "w.parquet")
    pd.testing.assert_frame_equal(back, table)
    assert m.keys() == m2.keys() and all(np.array_equal(m[k], m2[k]) for k in m)
    _, only = windows.read(tmp_path / "w.parquet", ["landmarks"])
    assert list(only) == ["landmarks"] and np.array_equal(only["landmarks"], m["landmarks"])

    frames, per_frame = FEATURES
    pd.DataFrame({"video_id": "v", "frame": frames["frame"], "segment_id": frames["segment_id"], "label": "x",
                  **{k: list(v) for k, v in per_frame.items()}}).to_parquet(tmp_path / "v.parquet")
    SEGMENTS.assign(frames=SEGMENTS.end - SEGMENTS.start).to_parquet(tmp_path / "segments.parquet")
    splits = pd.DataFrame({"fold": 0, "segment_id": [1, 2, 3], "split": ["train", "test", "val"]})
    splits.to_parquet(tmp_path / "splits.parquet")
    # Segment 1 (happy) in test would keep its 2 disjoint windows; in train it gets 4 with overlap 0.5.
    counts = windows.write_windows([tmp_path / "v.parquet"], tmp_path / "segments.parquet", tmp_path / "splits.parquet",
                                   0, 16, {"happy": 0.5, "sad": 0.3}, "repeat",
                                   {s: tmp_path / "out" / f"{s}.parquet" for s in ("train", "val", "test")},
                                   tmp_path / "counts.csv", ["happy", "sad"])
    got = counts.set_index(["split", "label"])["windows"].to_dict()
    assert got[("train", "happy")] == 4 and got[("test", "sad")] == 1  # no overlap in test, even for sad (0.3)
    assert got[("val", "sad")] == 0
    test_table, _ = windows.read(tmp_path / "out" / "test.parquet")
    assert test_table["first_frame"].tolist() == [40]
    val_table, val_m = windows.read(tmp_path / "out" / "val.parquet")
    assert val_table.empty and val_m["embedding"].shape == (0, 16, 4) and val_m["landmarks"].shape == (0, 16, 136)


def test_sequence_inputs_follow_windows_features():
    _, m = windows.cut(*FEATURES, SEGMENTS, 16, {})
    assert windows.inputs(m, "embedding") is m["embedding"]
    assert windows.inputs(m, "landmarks") is m["landmarks"]
    both = windows.inputs(m, "both")
    assert both.shape == (3, 16, 4 + 136)
    assert np.array_equal(both[..., :4], m["embedding"]) and np.array_equal(both[..., 4:], m["landmarks"])
    # per frame too, as ferseq predict builds its windows from the frames' features
    frames = windows.inputs(FEATURES[1], "both")
    assert frames.shape == (len(FEATURES[0]), 4 + 136) and np.array_equal(frames[:, 4:], FEATURES[1]["landmarks"])
    with pytest.raises(ValueError, match="windows.features"):
        windows.inputs(m, "pixels")
    with pytest.raises(ValueError, match="rerun the features stage"):
        windows.inputs({"embedding": m["embedding"]}, "both")


def test_reference_overlap_fits_any_class_list():
    assert windows.overlaps({"overlap": None}, ["neutral", "happy", "sad", "pensive"]) == {"happy": 0.5, "pensive": 0.3}
    assert windows.overlaps({"overlap": None}, ["anger", "happy", "fear"]) == {"happy": 0.5}
    assert windows.overlaps({}, ["anger", "fear"]) == {}
    assert windows.overlaps({"overlap": {"fear": 0.5}}, ["anger", "fear"]) == {"fear": 0.5}


def test_unknown_policy_is_an_error():
    with pytest.raises(ValueError, match="missing_face"):
        windows.segment_frames(0, 10, np.arange(10), "interpolate")


def test_each_window_knows_its_frames_and_a_short_test_segment_gets_one_padded_window():
    table, m = windows.cut(*FEATURES, SEGMENTS, 16, {}, pad_short=True)
    assert table.groupby("segment_id").size().to_dict() == {1: 2, 2: 1, 3: 1}
    assert table["padded"].tolist() == [False, False, False, True]
    assert np.array_equal(m["frames"][:3], m["embedding"][:3, :, 0].astype(np.int64))  # embeddings encode frames
    # Segment 3 (frames 80-89): its 10 frames, then its last frame repeated to fill 16 positions.
    assert m["frames"][3].tolist() == list(range(80, 90)) + [89] * 6
    assert m["embedding"][3, :, 0].tolist() == m["frames"][3].tolist()
    assert table.iloc[3][["first_frame", "last_frame"]].tolist() == [80, 89]
    # Without pad_short (train and val) the short segment gives none, as in the reference.
    assert 3 not in windows.cut(*FEATURES, SEGMENTS, 16, {})[0]["segment_id"].tolist()


def test_uniform_sampling_spreads_over_the_whole_segment():
    # Test: one centred window per segment, spread over all of it; the short one repeats frames.
    table, m = windows.cut(*FEATURES, SEGMENTS, 16, {}, sampling="uniform")
    assert table["segment_id"].tolist() == [1, 2, 3] and table["padded"].tolist() == [False, False, True]
    assert m["frames"][0].tolist() == [int((i + 0.5) * 40 / 16) for i in range(16)]  # 1, 3, 6, ... 38
    assert m["frames"][0, 0] < 40 / 16 and m["frames"][0, -1] >= 40 - 40 / 16  # first and last part both sampled
    assert m["frames"][1].min() >= 40 and m["frames"][1].max() == 70 and len(set(m["frames"][1])) == 16
    assert sorted(set(m["frames"][2])) == list(range(80, 90)) and np.all(np.diff(m["frames"][2]) >= 0)
    assert np.array_equal(m["embedding"][..., 0], m["frames"].astype(np.float32))
    # Train/val: `draws` jittered windows per segment, each frame in its own part, reproducible from the seed.
    table, m = windows.cut(*FEATURES, SEGMENTS, 16, {"happy": 0.5}, sampling="uniform", draws=3, seed=7)
    assert table.groupby("segment_id").size().to_dict() == {1: 3, 2: 3, 3: 3}  # the overlap is consecutive's only
    # Segment 1 (40 frames): position i is a frame of part i, [2.5 i, 2.5 (i + 1)).
    low, high = np.floor(np.arange(16) * 2.5), np.arange(1, 17) * 2.5
    assert ((m["frames"][:3] >= low) & (m["frames"][:3] < high)).all()
    assert len({tuple(f) for f in m["frames"][:3]}) == 3  # three different draws
    again = windows.cut(*FEATURES, SEGMENTS, 16, {}, sampling="uniform", draws=3, seed=7)[1]["frames"]
    other = windows.cut(*FEATURES, SEGMENTS, 16, {}, sampling="uniform", draws=3, seed=8)[1]["frames"]
    assert np.array_equal(again, m["frames"]) and not np.array_equal(other, m["frames"])
    # A segment's draws do not depend on the other segments cut with it.
    alone = windows.cut(*FEATURES, SEGMENTS[SEGMENTS.segment_id == 2], 16, {}, sampling="uniform", draws=3, seed=7)
    assert np.array_equal(alone[1]["frames"], m["frames"][3:6])
    with pytest.raises(ValueError, match="windows.sampling"):
        windows.window_positions(10, 16, "sad", sampling="random")


def test_a_persons_median_is_taken_once_all_of_their_videos_are_read():
    # Person p has two videos; q one. p's median waits for p's second video and covers both.
    rng = np.random.default_rng(3)
    frames = {v: {"embedding": rng.normal(size=(n, 4)).astype(np.float32),
                  "landmarks": rng.normal(size=(n, 136)).astype(np.float32)} for v, n in (("p1", 5), ("q", 3), ("p2", 6))}
    collector = subject_medians.MedianCollector({"p": {"p1", "p2"}, "q": {"q"}})
    collector.add("p1", np.array(["p"] * 5), frames["p1"])
    assert collector.medians == {}
    collector.add("q", np.array(["q"] * 3), frames["q"])
    assert set(collector.medians) == {"q"} and "p" in collector.frames
    collector.add("p2", np.array(["p"] * 6), frames["p2"])
    table = collector.table()
    assert table["subject"].tolist() == ["p", "q"] and table["frames"].tolist() == [11, 3] and not collector.frames
    both = np.concatenate([frames["p1"]["embedding"], frames["p2"]["embedding"]])
    assert np.allclose(table["embedding"][0], np.median(both, axis=0))


def test_each_persons_normalised_features_have_median_zero(demo_run, tmp_path):
    # The windows stage of the demo run wrote every person's medians beside the windows (whatever the setting).
    fold = demo_run / "results/folds/0"
    subjects, medians = subject_medians.read(fold / "windows" / subject_medians.FILE)
    segments = pd.read_parquet(demo_run / "results/data/segments.parquet")
    person = dict(zip(segments["segment_id"], segments["subject"].astype(str)))
    stores = [windows.read_features(path) for path in windows.feature_files(fold / "features")]
    table = pd.concat([t for t, _ in stores], ignore_index=True)
    per_frame = {name: np.concatenate([m[name] for _, m in stores]) for name in subject_medians.COLUMNS}
    who = table["segment_id"].map(person).to_numpy()
    assert sorted(subjects) == sorted(set(who))
    for i, subject in enumerate(subjects):
        mine = who == subject
        for name in subject_medians.COLUMNS:
            centred = per_frame[name][mine] - medians[name][i]
            assert np.allclose(np.median(centred, axis=0), 0, atol=1e-6), (subject, name)
    # the windows a sequence model reads with windows.normalise: subject
    test, matrices = windows.read(fold / "windows/test.parquet")
    normalised = subject_medians.normalise(matrices, test["subject"], (subjects, medians))
    index = [subjects.index(s) for s in test["subject"].astype(str)]
    assert np.allclose(normalised["embedding"], matrices["embedding"] - medians["embedding"][index][:, None])
    assert np.array_equal(normalised["probs"], matrices["probs"])
    with pytest.raises(ValueError, match="no median features for subject"):
        subject_medians.normalise(matrices, ["nobody"] * len(test), (subjects, medians), "test.parquet")
