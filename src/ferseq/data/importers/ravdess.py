"""RAVDESS: one clip per file, everything in the file name.

Layout below the dataset root (as the per-actor archives unpack; the
``Actor_XX`` folders may sit in sub-folders, e.g. one per archive)::

    Actor_01/01-01-03-02-01-01-01.mp4    MM-VV-EE-II-SS-RR-AA.mp4

MM modality (01 full audio-video, 02 video-only, 03 audio-only: skipped),
VV vocal channel (01 speech, 02 song), EE emotion (:data:`LABELS`), II
intensity (01 normal, 02 strong), SS statement (01, 02), RR repetition (01,
02), AA actor 01-24: the subject. ``group`` is the actor's sex as RAVDESS
defines it (odd actors male, even female). The whole clip is one segment;
its end is the probed frame count.
"""

from __future__ import annotations

import re
from pathlib import Path

from ferseq.data.importers.base import Clip, Scan, build, check_root, rel, walk_files

FORMAT = "ravdess"
#: RAVDESS emotion code (EE) -> our label. RAVDESS's own names: 01 neutral, 02 calm,
#: 03 happy, 04 sad, 05 angry, 06 fearful, 07 disgust, 08 surprised.
LABELS = {"01": "neutral", "02": "calm", "03": "happy", "04": "sad", "05": "anger", "06": "fear", "07": "disgust", "08": "surprise"}
MODALITIES = {"01": "full audio-video", "02": "video-only", "03": "audio-only"}
CHANNELS = {"01": "speech", "02": "song"}
INTENSITIES = {"01": "normal", "02": "strong"}
ACTORS = range(1, 25)

_NAME = re.compile(r"^(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})\.([A-Za-z0-9]+)$")
_ACTOR_DIR = re.compile(r"^Actor_(\d{2})$")
PATTERN = "Actor_XX/MM-VV-EE-II-SS-RR-AA.mp4"


def sex(actor: int) -> str:
    """RAVDESS: odd-numbered actors are male, even-numbered female."""
    return "male" if actor % 2 else "female"


def scan(root: str | Path) -> Scan:
    root = check_root(root, FORMAT)
    result = Scan()
    for path in walk_files(root):
        where = rel(path, root)
        clip = _clip(path, where, result)
        if clip:
            result.clips.append(clip)
    audio = sum(s.kind == "audio-only" for s in result.skipped)
    if audio:
        result.notes.append(f"{audio} audio-only file(s) (modality 03) skipped: there is no face to see")
    return result


def load(root: str | Path, count_frames: str = "decode", workers: int = 4):
    root = Path(root)
    return build(FORMAT, root, scan(root), count_frames=count_frames, workers=workers)


def _clip(path: Path, where: str, result: Scan) -> Clip | None:
    match = _NAME.match(path.name)
    if not match:
        result.skip(where, "bad name", f"not a RAVDESS file name ({PATTERN})")
        return None
    modality, channel, emotion, intensity, statement, repetition, actor, suffix = match.groups()
    problems = []
    for value, known, what in ((modality, MODALITIES, "modality"), (channel, CHANNELS, "vocal channel"),
                               (emotion, LABELS, "emotion"), (intensity, INTENSITIES, "intensity")):
        if value not in known:
            problems.append(f"{what} {value} is not one of {', '.join(known)}")
    for value, what in ((statement, "statement"), (repetition, "repetition")):
        if value not in ("01", "02"):
            problems.append(f"{what} {value} is not 01 or 02")
    if int(actor) not in ACTORS:
        problems.append(f"actor {actor} is not one of 01-24")
    if emotion == "01" and intensity == "02":
        problems.append("neutral has no strong intensity (02) in RAVDESS")
    if problems:
        result.skip(where, "bad name", "; ".join(problems))
        return None
    if modality == "03":
        result.skip(where, "audio-only", "audio-only (modality 03)")
        return None
    if suffix.lower() != "mp4":
        result.skip(where, "bad name", f"modality {modality} ({MODALITIES[modality]}) should be an .mp4 file, not .{suffix}")
        return None
    folder = _ACTOR_DIR.match(path.parent.name)
    if not folder or folder.group(1) != actor:
        result.skip(where, "bad folder", f"actor {actor} clip is not in its Actor_{actor} folder ({PATTERN})")
        return None
    return Clip(where, actor, LABELS[emotion], sex(int(actor)))
