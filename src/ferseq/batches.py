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
No torch, pandas or OpenCV here: this runs in every Snakemake start.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

# Processing a clip costs about this many frames on top of its frames: opening the file (or listing the
# folder), the first full detection and writing its two output files (measured on 2- to 16-frame clips,
# benchmarks/faces_corpus.py).
CLIP_COST = 10

# Seconds per frame-equivalent a job is granted on a cluster, by detector: about 10x what one core of the
# development machine takes (README, Performance), for slower cores and larger frames.
SECONDS_PER_FRAME = {"hog": 0.05, "opencv_dnn": 0.15, "mmod": 1.0}
MINUTES_FIXED = 5  # start-up (Python, models) and a margin


#: faces settings that do not change a video's faces files: missing_face (read by later stages),
#: batch_frames (plans the batches) and skip_faceless_videos (read by the job from the config, so that
#: turning it on after a failure neither reruns the batches that succeeded nor loses partial work).
NOT_IN_OUTPUT = ("skip_faceless_videos", "missing_face", "batch_frames")


@dataclass(frozen=True)
class Batch:
    """Videos processed by one faces job, in sorted order; ``cost`` in frame-equivalents.

    ``stamp`` changes when any of its videos' stamps does (a rule parameter, so that a
    replaced video file reruns its batch without every video being a declared input).
    """

    name: str
    videos: tuple[str, ...]
    frames: int
    cost: int
    stamp: str


def _unit_hash(text: str) -> float:
    """A uniform number in [0, 1) from ``text``, the same in every process and Python version."""
    return int.from_bytes(hashlib.sha1(text.encode("utf-8")).digest()[:8], "big") / 2**64


def batch_name(first_video: str) -> str:
    """The name of the batch that starts with ``first_video`` (a short hash: video ids hold '/' and dots)."""
    return "b" + hashlib.sha1(first_video.encode("utf-8")).hexdigest()[:10]


def plan(frames: dict[str, int], batch_frames: int, stamps: dict[str, str] | None = None,
         clip_cost: int = CLIP_COST) -> list[Batch]:
    """Cut the videos (``video_id -> annotated frames``) into batches of about ``batch_frames`` frames.

    ``stamps``: ``video_id -> stamp`` (size and mtime) of the video files, for
    :attr:`Batch.stamp`. ``batch_frames`` 1 or less gives one video per batch.
    """
    batches: list[Batch] = []
    current: list[str] = []
    stamps = stamps or {}

    def close() -> None:
        if current:
            videos = tuple(current)
            stamp = hashlib.sha1("\n".join(f"{v}\t{stamps.get(v, '')}" for v in videos).encode("utf-8")).hexdigest()
            batches.append(Batch(batch_name(videos[0]), videos, sum(frames[v] for v in videos),
                                 sum(frames[v] + clip_cost for v in videos), stamp[:16]))
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
