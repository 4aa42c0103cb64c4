"""Class folders (AFEW/DFEW style): the label is the folder a clip sits in.

Layout below the dataset root::

    Happy/000046280.avi          a video file (any of VIDEO_SUFFIXES) ...
    Sad/p07_take2/0001.png ...   ... or an image-sequence folder (frames in name order)

Label folders are matched to our labels case-insensitively through
:data:`LABELS`; a folder name that is not there is kept as it is (map it with
the config's ``classes.map``) and named in the report. These datasets carry no
subject in the layout, and splits need subjects, so exactly one of these says
who is in each clip:

- ``subject_regex``: a regular expression with a named group ``subject``,
  searched in the clip's name (file name with suffix, or folder name);
- ``subjects``: a CSV with columns ``clip,subject``; ``clip`` is the clip's
  path below the root (``Happy/000046280.avi``), its name, or its name without
  suffix (tried in that order);
- ``subject_from_clip``: each clip is its own subject (its name without suffix).

``group`` stays empty. The whole clip is one segment, its end the probed frame count.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from ferseq.data import videos
from ferseq.data.importers.base import (
    VIDEO_SUFFIXES,
    Clip,
    DatasetError,
    Scan,
    build,
    check_root,
    entries,
    rel,
    walk_files,
)

FORMAT = "folders"
#: Label folder name (compared lower-case) -> our label: the AFEW/DFEW/FER class names and common variants.
LABELS = {
    "neutral": "neutral",
    "angry": "anger", "anger": "anger",
    "contempt": "contempt",
    "disgust": "disgust", "disgusted": "disgust",
    "fear": "fear", "fearful": "fear", "scared": "fear",
    "happy": "happy", "happiness": "happy",
    "sad": "sad", "sadness": "sad",
    "surprise": "surprise", "surprised": "surprise",
    "calm": "calm",
}
PATTERN = "<label>/<clip file or image folder>"


def scan(root: str | Path, subject_regex: str | None = None, subjects: str | Path | None = None,
         subject_from_clip: bool = False) -> Scan:
    root = check_root(root, FORMAT)
    subject_of = _subject_rule(subject_regex, subjects, subject_from_clip)
    result = Scan()
    unknown: dict[str, int] = {}
    for label_dir in entries(root):
        if not label_dir.is_dir():
            result.skip(rel(label_dir, root), "not in a label folder", f"a file at the dataset root; clips go in label folders ({PATTERN})")
            continue
        if label_dir.name.startswith("."):
            result.skip(rel(label_dir, root), "not used", "hidden folder, not a label")
            continue
        label = LABELS.get(label_dir.name.lower(), label_dir.name)
        for entry in entries(label_dir):
            where = rel(entry, root)
            if not _clip_ok(entry, root, result):
                continue
            subject = subject_of(entry, where, result)
            if subject is None:
                continue
            if label_dir.name.lower() not in LABELS:
                unknown[label] = unknown.get(label, 0) + 1
            result.clips.append(Clip(where, subject, label))
    for label, n in unknown.items():
        result.notes.append(f"label folder {label!r} ({n} clip(s)) is not a known emotion name ({', '.join(sorted(LABELS))}); "
                            f"kept as {label!r}: keep it in classes.names or map it with classes.map")
    unused = sorted(getattr(subject_of, "unused", set)())
    if unused:
        result.notes.append(f"{len(unused)} clip(s) of the --subjects table not found: {', '.join(unused[:10])}"
                            + (" ..." if len(unused) > 10 else ""))
    return result


def load(root: str | Path, subject_regex: str | None = None, subjects: str | Path | None = None,
         subject_from_clip: bool = False, count_frames: str = "decode", workers: int = 4):
    root = Path(root)
    return build(FORMAT, root, scan(root, subject_regex, subjects, subject_from_clip), count_frames=count_frames, workers=workers)


def _clip_ok(entry: Path, root: Path, result: Scan) -> bool:
    """Is ``entry`` (in a label folder) a clip? Report it, or what in it is not a frame, otherwise."""
    where = rel(entry, root)
    if entry.name.startswith("."):
        result.skip(where, "not a clip", "hidden file or folder")
        return False
    if entry.is_file():
        if entry.suffix.lower() in VIDEO_SUFFIXES:
            return True
        result.skip(where, "not a clip", f"not a video file ({' '.join(VIDEO_SUFFIXES)}) or an image-sequence folder")
        return False
    if not entry.is_dir():
        result.skip(where, "not a clip", "neither a file nor a folder")
        return False
    images = 0
    for path in walk_files(entry):
        if path.parent == entry and path.suffix.lower() in videos.IMAGE_SUFFIXES:
            images += 1
        else:
            why = "in a sub-folder of an image sequence" if path.parent != entry else "not an image"
            result.skip(rel(path, root), "not a frame", f"{why}; not read as a frame of {where}")
    if not images:
        result.skip(where, "not a clip", f"folder holds no images ({' '.join(videos.IMAGE_SUFFIXES)})")
        return False
    return True


def _subject_rule(subject_regex: str | None, subjects: str | Path | None, subject_from_clip: bool):
    """A function ``(clip path, relative path, scan) -> subject or None`` (None: skipped, reported)."""
    given = [name for name, value in (("--subject-regex", subject_regex), ("--subjects", subjects),
                                      ("--subject-from-clip", subject_from_clip)) if value]
    if not given:
        raise DatasetError(f"{FORMAT}: clips need subjects, since splits keep each person in one split: give --subject-regex "
                           "(a regular expression with a named group 'subject', searched in each clip name), --subjects "
                           "(a CSV with columns clip,subject) or --subject-from-clip (each clip its own subject)")
    if len(given) > 1:
        raise DatasetError(f"{FORMAT}: give only one of --subject-regex, --subjects, --subject-from-clip (got {', '.join(given)})")
    if subject_from_clip:
        return lambda path, where, result: _stem(path)
    if subject_regex:
        return _by_regex(subject_regex)
    return _by_table(Path(subjects))


def _stem(path: Path) -> str:
    return path.stem if path.is_file() else path.name


def _by_regex(pattern: str):
    try:
        regex = re.compile(pattern)
    except re.error as err:
        raise DatasetError(f"{FORMAT}: --subject-regex {pattern!r} is not a regular expression: {err}") from None
    if "subject" not in regex.groupindex:
        raise DatasetError(f"{FORMAT}: --subject-regex {pattern!r} has no named group 'subject', e.g. '^(?P<subject>[^_]+)_'")

    def subject(path: Path, where: str, result: Scan) -> str | None:
        match = regex.search(path.name)
        if match and match.group("subject"):
            return match.group("subject")
        result.skip(where, "no subject", f"clip name {path.name!r} does not match --subject-regex {pattern!r}")
        return None

    return subject


def _by_table(table_path: Path):
    if not table_path.is_file():
        raise DatasetError(f"{FORMAT}: --subjects {table_path} does not exist")
    try:
        table = pd.read_csv(table_path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (ValueError, UnicodeDecodeError) as err:
        raise DatasetError(f"{FORMAT}: --subjects {table_path} cannot be read as CSV: {err}") from None
    if not {"clip", "subject"} <= set(table.columns):
        raise DatasetError(f"{FORMAT}: --subjects {table_path} needs the columns clip,subject (has {', '.join(table.columns)})")
    mapping: dict[str, str] = {}
    problems = []
    for number, (clip, subject) in enumerate(zip(table["clip"].str.strip(), table["subject"].str.strip()), start=1):
        if not clip or not subject:
            problems.append(f"row {number}: empty {'clip' if not clip else 'subject'}")
        elif mapping.get(clip, subject) != subject:
            problems.append(f"row {number}: clip {clip!r} is given subject {subject!r} here and {mapping[clip]!r} before")
        else:
            mapping[clip] = subject
    if problems:
        raise DatasetError(f"{FORMAT}: --subjects {table_path} (rows count from 1 after the header):\n"
                           + "\n".join(f"  {p}" for p in problems))
    used: set[str] = set()

    def subject(path: Path, where: str, result: Scan) -> str | None:
        for key in (where, path.name, _stem(path)):
            if key in mapping:
                used.add(key)
                return mapping[key]
        result.skip(where, "no subject", f"not in the --subjects table {table_path.name} (by path, name or name without suffix)")
        return None

    subject.unused = lambda: set(mapping) - used  # type: ignore[attr-defined]
    return subject
