"""The faces batches' plan: every video in one batch, sized by frames, and stable when videos come and go."""

from __future__ import annotations

import json
import random
import time

import pytest

from ferseq.data.annotations import PlannedVideo
from ferseq.faces import batch_plan
from ferseq.faces.batch_plan import CLIP_COST, Batch, FacesPlan, batch_name, plan, runtime_minutes


def corpus(n: int, seed: int = 0, low: int = 2, high: int = 16) -> dict[str, int]:
    rng = random.Random(seed)
    return {f"Actor_{i % 24:02d}/clip{i:05d}": rng.randint(low, high) for i in range(n)}


def by_name(batches: list[Batch]) -> dict[str, tuple[str, ...]]:
    return {b.name: b.videos for b in batches}


def test_every_video_is_in_one_batch_in_sorted_order():
    frames = corpus(500)
    batches = plan(frames, 400)
    assert [v for b in batches for v in b.videos] == sorted(frames)
    assert len({b.name for b in batches}) == len(batches)
    for b in batches:
        assert b.name == batch_name(b.videos[0]) and b.frames == sum(frames[v] for v in b.videos)
        assert b.cost == b.frames + CLIP_COST * len(b.videos)


def test_batches_hold_about_batch_frames_frame_equivalents():
    frames = corpus(20_000, high=120)
    batches = plan(frames, 5000)
    mean = sum(b.cost for b in batches) / len(batches)
    assert 0.8 * 5000 < mean < 1.2 * 5000


def test_a_corpus_smaller_than_one_batch_is_one_batch():
    frames = corpus(100)  # about 1,900 frame-equivalents
    assert [b.videos for b in plan(frames, 2000)] == [tuple(sorted(frames))]
    assert len(plan(frames, 1000)) > 1


def test_a_long_video_is_a_batch_of_its_own_and_batch_frames_1_is_one_video_per_batch():
    frames = {**corpus(50), "Actor_05/long": 50_000}
    batches = plan(frames, 1000)
    assert ("Actor_05/long",) in [b.videos for b in batches]
    assert [b.videos for b in plan(frames, 1)] == [(v,) for v in sorted(frames)]


@pytest.mark.parametrize("seed", range(20))
def test_adding_a_video_changes_only_the_batch_it_joins(seed):
    frames = corpus(300, seed)
    before = by_name(plan(frames, 300))
    rng = random.Random(seed)
    added = f"Actor_{rng.randrange(24):02d}/new{seed}"
    after = by_name(plan({**frames, added: rng.randint(2, 16)}, 300))
    changed_before = {name for name in before if after.get(name) != before[name]}
    changed_after = {name for name in after if before.get(name) != after[name]}
    # One batch takes the new video; when the new video ends a batch, that batch is cut in two.
    assert len(changed_before) == 1 and 1 <= len(changed_after) <= 2
    (old,) = changed_before
    assert sorted(v for name in changed_after for v in after[name]) == sorted([*before[old], added])


@pytest.mark.parametrize("seed", range(20))
def test_removing_a_video_changes_at_most_the_batch_it_left_and_its_neighbour(seed):
    frames = corpus(300, seed)
    before = by_name(plan(frames, 300))
    removed = random.Random(seed).choice(sorted(frames))
    after = by_name(plan({v: f for v, f in frames.items() if v != removed}, 300))
    changed_before = {name for name in before if after.get(name) != before[name]}
    assert 1 <= len(changed_before) <= 2 and any(removed in before[name] for name in changed_before)
    assert len(set(after) - set(before)) <= 1


def test_a_batch_plan_file_changes_only_with_its_own_videos_or_segments(tmp_path):
    videos = {f"v{i:02d}": PlannedVideo(f"v{i:02d}.mp4", 30, "100:1", ((i + 1, 0, 30, "happy"),)) for i in range(40)}
    plan = FacesPlan(videos, batch_plan.plan({v: p.frames for v, p in videos.items()}, 100), None)
    assert len(plan.batches) > 3 and batch_plan.write_plans(plan, tmp_path) == len(plan.batches)
    first = {b.name: batch_plan.plan_file(tmp_path, b.name).stat().st_mtime_ns for b in plan.batches}
    assert batch_plan.write_plans(plan, tmp_path) == 0  # nothing changed: nothing rewritten

    def rewritten(changed: dict) -> set[str]:
        again = FacesPlan({**videos, **changed}, plan.batches, None)
        time.sleep(0.01)
        batch_plan.write_plans(again, tmp_path)
        return {b.name for b in plan.batches if batch_plan.plan_file(tmp_path, b.name).stat().st_mtime_ns != first[b.name]}

    # A replaced video file (its stamp), then an edited segment: each rewrites the file of its own batch only.
    of = {v: b.name for b in plan.batches for v in b.videos}
    assert rewritten({"v03": PlannedVideo("v03.mp4", 30, "100:2", ((4, 0, 30, "happy"),))}) == {of["v03"]}
    assert rewritten({"v03": videos["v03"], "v30": PlannedVideo("v30.mp4", 30, "100:1", ((31, 2, 30, "happy"),))}) \
        == {of["v03"], of["v30"]}
    record = json.loads(batch_plan.plan_file(tmp_path, of["v30"]).read_text())
    assert {"video_id": "v30", "video": "v30.mp4", "stamp": "100:1", "segments": [[31, 2, 30, "happy"]]} \
        in record["videos"]


def test_runtime_grows_with_the_batch_and_the_detector():
    small, large = (Batch("b", ("v",), cost, cost) for cost in (100, 100_000))
    assert runtime_minutes(small, "hog") < runtime_minutes(large, "hog") < runtime_minutes(large, "mmod")
    assert runtime_minutes(large, "hog") >= 100_000 * 0.05 / 60
