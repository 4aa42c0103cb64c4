"""CK+ (Extended Cohn-Kanade): image sequences with one emotion code per labelled sequence.

Layout below the dataset root (as the CK+ archives unpack)::

    cohn-kanade-images/S005/001/S005_001_00000001.png ...   one folder = one sequence = one video
    Emotion/S005/001/S005_001_00000011_emotion.txt          "   3.0000000e+00" (absent: unlabelled)

The video is the sequence folder (``cohn-kanade-images/S005/001``), the subject
the ``Sxxx`` folder; CK+ ships no demographics, so ``group`` stays empty.
Unlabelled sequences are skipped and counted. By default a sequence is one
segment with its emotion; ``onset_apex=(N, M)`` gives the usual protocol
instead: the first N frames ``neutral``, the last M frames the emotion.
"""

from __future__ import annotations

import re
from pathlib import Path

from ferseq.data import videos
from ferseq.data.importers.base import Clip, DatasetError, Scan, build, check_root, entries, rel, walk_files, whole

FORMAT = "ckplus"
IMAGES = "cohn-kanade-images"
EMOTION = "Emotion"
#: CK+ emotion code (the float in ``*_emotion.txt``) -> our label. CK+'s own names:
#: 0 neutral, 1 anger, 2 contempt, 3 disgust, 4 fear, 5 happy, 6 sadness, 7 surprise.
LABELS = {0: "neutral", 1: "anger", 2: "contempt", 3: "disgust", 4: "fear", 5: "happy", 6: "sad", 7: "surprise"}
#: Other parts of the CK+ distribution that the importer does not read (listed once each in the report).
COMPANIONS = {"FACS": "CK+ FACS action-unit labels", "Landmarks": "CK+ landmark files"}

_SUBJECT = re.compile(r"^S\d{3}$")
_SEQUENCE = re.compile(r"^\d{3}$")


def scan(root: str | Path, onset_apex: tuple[int, int] | None = None) -> Scan:
    root = check_root(root, FORMAT)
    check_onset_apex(onset_apex)
    images, emotion = root / IMAGES, root / EMOTION
    for folder, what in ((images, "the image sequences (extended-cohn-kanade-images.zip)"), (emotion, "the emotion labels (Emotion_labels.zip)")):
        if not folder.is_dir():
            raise DatasetError(f"{FORMAT}: {root} has no {folder.name}/ folder with {what}; "
                               f"expected {IMAGES}/Sxxx/yyy/*.png and {EMOTION}/Sxxx/yyy/*_emotion.txt below the dataset root")
    result = Scan()
    for entry in entries(root):
        if entry.name in (IMAGES, EMOTION):
            continue
        reason = f"{COMPANIONS[entry.name]}: not used" if entry.name in COMPANIONS else f"not part of the CK+ layout ({IMAGES}/, {EMOTION}/)"
        result.skip(rel(entry, root), "not used", reason)

    labels = _labels(root, emotion, result)
    sequences: set[tuple[str, str]] = set()
    for subject_dir in entries(images):
        where = rel(subject_dir, root)
        if not (subject_dir.is_dir() and _SUBJECT.match(subject_dir.name)):
            result.skip(where, "bad name", f"not a CK+ subject folder ({IMAGES}/Sxxx/)")
            continue
        for seq_dir in entries(subject_dir):
            where = rel(seq_dir, root)
            if not (seq_dir.is_dir() and _SEQUENCE.match(seq_dir.name)):
                result.skip(where, "bad name", f"not a CK+ sequence folder ({IMAGES}/Sxxx/yyy/)")
                continue
            key = (subject_dir.name, seq_dir.name)
            sequences.add(key)
            if _frames_ok(seq_dir, root, key, result):
                label = labels.get(key)
                if label is None:
                    result.skip(where, "unlabelled sequence", f"no label: {EMOTION}/{key[0]}/{key[1]} has no *_emotion.txt")
                elif label == "":
                    result.skip(where, "bad label", f"its label file in {EMOTION}/{key[0]}/{key[1]} cannot be used (listed)")
                else:
                    result.clips.append(Clip(where, key[0], label))
    for key in sorted(set(labels) - sequences):
        result.skip(f"{EMOTION}/{key[0]}/{key[1]}", "label without sequence", f"no image sequence {IMAGES}/{key[0]}/{key[1]} for this label")
    unlabelled = sum(s.kind == "unlabelled sequence" for s in result.skipped)
    if unlabelled:
        result.notes.append(f"{unlabelled} sequence(s) without an emotion label skipped (CK+ labels 327 of its 593 sequences)")
    return result


def check_onset_apex(onset_apex: tuple[int, int] | None) -> None:
    if onset_apex is None:
        return
    if len(onset_apex) != 2 or any(not isinstance(n, int) or isinstance(n, bool) for n in onset_apex):
        raise DatasetError(f"{FORMAT}: onset_apex must be two whole numbers N M, not {onset_apex!r}")
    onset, apex = onset_apex
    if onset < 0 or apex < 1:
        raise DatasetError(f"{FORMAT}: onset_apex N M needs N >= 0 neutral onset frames and M >= 1 apex frames, not {onset} {apex}")


def segmenter(onset_apex: tuple[int, int] | None):
    """Whole sequence with its emotion, or the onset-apex protocol."""
    if onset_apex is None:
        return whole
    onset, apex = onset_apex

    def segment(clip: Clip, frames: int):
        if onset + apex > frames:
            return f"only {frames} frames, fewer than onset {onset} + apex {apex} (--onset-apex)"
        neutral = [("neutral", 0, onset)] if onset else []
        return neutral + [(clip.label, frames - apex, frames)]

    return segment


def load(root: str | Path, onset_apex: tuple[int, int] | None = None, count_frames: str = "decode", workers: int = 4):
    root = Path(root)
    return build(FORMAT, root, scan(root, onset_apex), segmenter(onset_apex), count_frames, workers)


def _frames_ok(seq_dir: Path, root: Path, key: tuple[str, str], result: Scan) -> bool:
    """Report what in a sequence folder is not one of its frames; False when the folder cannot be read as the sequence."""
    frame = re.compile(rf"^{key[0]}_{key[1]}_\d{{8}}\.png$")
    n_frames, strays = 0, 0
    for path in walk_files(seq_dir):
        if path.parent == seq_dir and frame.match(path.name):
            n_frames += 1
            continue
        counted = path.parent == seq_dir and path.suffix.lower() in videos.IMAGE_SUFFIXES
        strays += counted
        why = "an image that is not a frame of the sequence" if counted else "not a frame"
        result.skip(rel(path, root), "bad name", f"{why} (frames are {key[0]}_{key[1]}_NNNNNNNN.png)")
    where = rel(seq_dir, root)
    if strays:
        # image_files() reads every image of the folder as a frame: the stray ones would shift the frame numbers.
        result.skip(where, "bad sequence", f"holds {strays} image(s) that are not its frames (listed); remove them to use the sequence")
        return False
    if not n_frames:
        result.skip(where, "bad sequence", "no frames")
        return False
    return True


def _labels(root: Path, emotion: Path, result: Scan) -> dict[tuple[str, str], str]:
    """``(subject, sequence) -> label`` from Emotion/; "" where the label file is bad (reported)."""
    found: dict[tuple[str, str], list[Path]] = {}
    for path in walk_files(emotion):
        parts = path.relative_to(emotion).parts
        if len(parts) == 3 and _SUBJECT.match(parts[0]) and _SEQUENCE.match(parts[1]) \
                and re.match(rf"^{parts[0]}_{parts[1]}_\d{{8}}_emotion\.txt$", parts[2]):
            found.setdefault((parts[0], parts[1]), []).append(path)
        else:
            result.skip(rel(path, root), "bad name", f"not a CK+ label file ({EMOTION}/Sxxx/yyy/Sxxx_yyy_NNNNNNNN_emotion.txt)")
    labels: dict[tuple[str, str], str] = {}
    for key, files in sorted(found.items()):
        if len(files) > 1:
            for path in files:
                result.skip(rel(path, root), "bad label", f"one of {len(files)} label files of {key[0]}/{key[1]}; a sequence has one")
            labels[key] = ""
            continue
        text = files[0].read_text(errors="replace").strip()
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if value.is_integer() and int(value) in LABELS:
            labels[key] = LABELS[int(value)]
        else:
            result.skip(rel(files[0], root), "bad label", f"{text[:40]!r} is not a CK+ emotion code {min(LABELS)}-{max(LABELS)}")
            labels[key] = ""
    return labels
