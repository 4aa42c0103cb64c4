"""Faces stage at corpus scale: which videos one faces job processes.

Starting a faces job (Python, OpenCV, dlib, the 100 MB landmark model) takes
about as long as processing 300 frames, while the clips of public corpora are
a few dozen frames each; so one job walks a batch of videos. The batches are
planned when the DAG is built, from the annotation table alone (no video is
opened), so every batch is a rule with its per-video outputs named.

The plan must be stable: adding, removing or changing one video should rerun
the batch it is in, not renumber every batch. Videos are taken in sorted
order and a batch ends after a video chosen by the video's own name (content-
defined chunking, as rsync and backup tools cut files into blocks): video
``v`` ends its batch when ``hash(v) < cost(v) / batch_frames``, so a batch
holds about ``batch_frames`` frame-equivalents on average, and whether a
batch ends at ``v`` never depends on the other videos. A video that costs
``batch_frames`` or more is a batch of its own, and a corpus that costs less
than ``batch_frames`` in all is one batch. A batch is named after its first
video, so its name, log and outputs stay put while the other batches change.

:func:`plan_from_config` is the one place that plans them: from the config and
the annotation table, read once per DAG build (:func:`ferseq.data.annotations.plan_videos`).
:func:`write_plan` then writes each batch's plan file (its videos, their files'
stamps and their planned segments), only when its content changed, in rule
``faces_plan``: a local job with no input and the plan's digest as a parameter,
so it reruns exactly when its plan changes, and the batch that reads the file
with it; no other batch does. (No input: a plan written downstream of a job
that reruns, such as the data stage whenever the table changes, would rerun
every batch with it.) No torch or OpenCV here: this runs in every Snakemake
start.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Processing a clip costs about this many frames on top of its frames: opening the file (or listing the
# folder), the first full detection and writing its two output files (measured on 2- to 16-frame clips,
# benchmarks/faces_corpus.py).
CLIP_COST = 10

# Seconds per frame-equivalent a job is granted on a cluster, by detector: about 10x what one core of the
# development machine takes (docs/performance.md), for slower cores and larger frames.
SECONDS_PER_FRAME = {"hog": 0.05, "opencv_dnn": 0.15, "mmod": 1.0, "none": 0.05}  # none: landmarks on every frame
MINUTES_FIXED = 5  # start-up (Python, models) and a margin


#: faces settings that do not change a video's faces files: missing_face (read by later stages),
#: batch_frames (plans the batches) and skip_faceless_videos (read by the job from the config, so that
#: turning it on after a failure neither reruns the batches that succeeded nor loses partial work).
NOT_IN_OUTPUT = ("skip_faceless_videos", "missing_face", "batch_frames")


@dataclass(frozen=True)
class Batch:
    """Videos processed by one faces job, in sorted order; ``cost`` in frame-equivalents."""

    name: str
    videos: tuple[str, ...]
    frames: int
    cost: int


def _unit_hash(text: str) -> float:
    """A uniform number in [0, 1) from ``text``, the same in every process and Python version."""
    return int.from_bytes(hashlib.sha1(text.encode("utf-8")).digest()[:8], "big") / 2**64


def batch_name(first_video: str) -> str:
    """The name of the batch that starts with ``first_video`` (a short hash: video ids hold '/' and dots)."""
    return "b" + hashlib.sha1(first_video.encode("utf-8")).hexdigest()[:10]


def plan(frames: dict[str, int], batch_frames: int, clip_cost: int = CLIP_COST) -> list[Batch]:
    """Cut the videos (``video_id -> annotated frames``) into batches of about ``batch_frames`` frames.

    ``batch_frames`` 1 or less gives one video per batch.
    """
    batches: list[Batch] = []
    current: list[str] = []

    def close() -> None:
        if current:
            videos = tuple(current)
            batches.append(Batch(batch_name(videos[0]), videos, sum(frames[v] for v in videos),
                                 sum(frames[v] + clip_cost for v in videos)))
            current.clear()

    if sum(frames.values()) + clip_cost * len(frames) < batch_frames:
        # A corpus smaller than one batch is one batch; when it first grows past batch_frames it is cut as
        # below, which reruns it once (no more than one batch's work).
        current.extend(sorted(frames))
        close()
        return batches
    for video in sorted(frames):
        cost = frames[video] + clip_cost
        if cost >= batch_frames:  # a long video is a job of its own
            close()
            current.append(video)
            close()
            continue
        current.append(video)
        if _unit_hash(video) < cost / batch_frames:
            close()
    close()
    return batches


def runtime_minutes(batch: Batch, detector: str) -> int:
    """The wall time to ask a scheduler for, in minutes, for one batch with ``detector``."""
    return MINUTES_FIXED + math.ceil(batch.cost * SECONDS_PER_FRAME.get(detector, max(SECONDS_PER_FRAME.values())) / 60)


@dataclass(frozen=True)
class FacesPlan:
    """The videos the DAG plans (``video_id -> PlannedVideo``), their faces batches, and the annotation table's
    plan they come from (:class:`ferseq.data.annotations.TablePlan`, for the rest of the DAG)."""

    videos: dict[str, Any]
    batches: list[Batch]
    table: Any

    def record(self, batch: Batch) -> dict[str, Any]:
        """What one faces job processes: each video's id, path below ``data.videos``, file stamp and segments."""
        return {"batch": batch.name, "videos": [
            {"video_id": vid, "video": self.videos[vid].video, "stamp": self.videos[vid].stamp,
             "segments": [list(segment) for segment in self.videos[vid].segments]} for vid in batch.videos]}


    def text(self, batch: Batch) -> str:
        """A batch's plan file, as :func:`write_plans` writes it."""
        return json.dumps(self.record(batch), indent=1) + "\n"

    def digest(self, batch: Batch) -> str:
        """A short hash of a batch's plan: a rule parameter, so a batch reruns exactly when its plan changes."""
        return plan_digest(self.text(batch))


def plan_digest(text: str) -> str:
    """:meth:`FacesPlan.digest` of a plan file's text."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def plan_file(folder: str | Path, batch: str) -> Path:
    """The plan file of a batch (:func:`write_plans`)."""
    return Path(folder) / f"{batch}.plan.json"


def write_plan(plan: FacesPlan, batch: Batch, path: str | Path) -> bool:
    """Write ``batch``'s plan file at ``path`` (atomically) unless it already holds that plan; return whether it
    was written. Rule faces_plan calls it; the batch job checks that the file it reads is the plan of its DAG
    (:meth:`FacesPlan.digest`)."""
    from ferseq.common.outputs import atomic_path

    path, text = Path(path), plan.text(batch)
    if path.is_file() and path.read_text() == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return True


def write_plans(plan: FacesPlan, folder: str | Path) -> int:
    """Write each batch's plan file into ``folder`` (:func:`plan_file`) where its content changed; return how
    many."""
    return sum(write_plan(plan, batch, plan_file(folder, batch.name)) for batch in plan.batches)


def plan_from_config(config: dict[str, Any], schema: str | Path | dict) -> FacesPlan:
    """The videos and faces batches of a validated config, from its annotation table (``schema``: the table's)."""
    from ferseq.data.annotations import plan_table, plan_videos  # pandas: only where the plan is made

    data = config["data"]
    table = plan_table(data["annotations"], data["videos"], config["classes"], schema, data["min_segment_frames"],
                       data.get("max_segment_frames"))
    videos = plan_videos(table, data["videos"])
    batches = plan({vid: p.frames for vid, p in videos.items()}, config["faces"]["batch_frames"])
    return FacesPlan(videos, batches, table)
