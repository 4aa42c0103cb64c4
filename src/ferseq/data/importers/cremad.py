"""CREMA-D: one Flash video per file, everything in the file name.

Layout below the dataset root (the CREMA-D repository)::

    VideoFlash/1001_DFA_ANG_XX.flv      AAAA_SSS_EEE_LL.flv
    VideoDemographics.csv               optional: ActorID, Age, Sex, Race, Ethnicity

AAAA actor 1001-1091 (the subject), SSS sentence (:data:`SENTENCES`), EEE
emotion (:data:`LABELS`), LL level (LO, MD, HI, XX unspecified). ``group`` is
the actor's sex from ``VideoDemographics.csv`` when it is there (lower-case),
else empty. The whole clip is one segment; its end is the probed frame count.
Everything else at the root (AudioWAV/, AudioMP3/, the rating tables) is listed
once as not used.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from ferseq.data.importers.base import Clip, DatasetError, Scan, build, check_root, entries, rel, walk_files

FORMAT = "cremad"
VIDEOS = "VideoFlash"
DEMOGRAPHICS = "VideoDemographics.csv"
#: CREMA-D emotion code (EEE) -> our label. CREMA-D's own names: ANG anger, DIS disgust,
#: FEA fear, HAP happy, NEU neutral, SAD sad.
LABELS = {"ANG": "anger", "DIS": "disgust", "FEA": "fear", "HAP": "happy", "NEU": "neutral", "SAD": "sad"}
#: The twelve sentences, by code.
SENTENCES = {
    "IEO": "It's eleven o'clock", "TIE": "That is exactly what happened", "IOM": "I'm on my way to the meeting",
    "IWW": "I wonder what this is about", "TAI": "The airplane is almost full", "MTI": "Maybe tomorrow it will be cold",
    "IWL": "I would like a new alarm clock", "ITH": "I think I have a doctor's appointment",
    "DFA": "Don't forget a jacket", "ITS": "I think I've seen this before", "TSI": "The surface is slick",
    "WSI": "We'll stop in a couple of minutes",
}
LEVELS = {"LO": "low", "MD": "medium", "HI": "high", "XX": "unspecified"}
ACTORS = range(1001, 1092)

_NAME = re.compile(r"^(\d{4})_([A-Z]{3})_([A-Z]{3})_([A-Z]{2})\.flv$")
PATTERN = f"{VIDEOS}/AAAA_SSS_EEE_LL.flv"


def scan(root: str | Path) -> Scan:
    root = check_root(root, FORMAT)
    folder = root / VIDEOS
    if not folder.is_dir():
        raise DatasetError(f"{FORMAT}: {root} has no {VIDEOS}/ folder; expected {PATTERN} below the dataset root")
    result = Scan()
    groups = _demographics(root / DEMOGRAPHICS, result)
    for entry in entries(root):
        if entry.name not in (VIDEOS, DEMOGRAPHICS):
            result.skip(rel(entry, root), "not used", f"not part of the CREMA-D video layout (only {VIDEOS}/ and {DEMOGRAPHICS} are read)")
    for path in walk_files(folder):
        where = rel(path, root)
        if path.parent != folder:
            result.skip(where, "bad folder", f"in a sub-folder of {VIDEOS}/ ({PATTERN})")
            continue
        match = _NAME.match(path.name)
        if not match:
            result.skip(where, "bad name", f"not a CREMA-D video name ({PATTERN})")
            continue
        actor, sentence, emotion, level = match.groups()
        problems = []
        if int(actor) not in ACTORS:
            problems.append(f"actor {actor} is not one of 1001-1091")
        for value, known, what in ((sentence, SENTENCES, "sentence"), (emotion, LABELS, "emotion"), (level, LEVELS, "level")):
            if value not in known:
                problems.append(f"{what} {value} is not one of {', '.join(known)}")
        if problems:
            result.skip(where, "bad name", "; ".join(problems))
            continue
        result.clips.append(Clip(where, actor, LABELS[emotion], groups.get(actor)))
    missing = sorted({c.subject for c in result.clips if c.group is None})
    if groups and missing:
        result.notes.append(f"actor(s) {', '.join(missing)} not in {DEMOGRAPHICS}: their group is empty")
    return result


def load(root: str | Path, count_frames: str = "decode", workers: int = 4):
    root = Path(root)
    return build(FORMAT, root, scan(root), count_frames=count_frames, workers=workers)


def _demographics(path: Path, result: Scan) -> dict[str, str]:
    """``actor -> sex`` (lower-case) from VideoDemographics.csv; empty, with a note, when it is absent or unusable."""
    if not path.is_file():
        result.notes.append(f"no {DEMOGRAPHICS} at the dataset root: group left empty")
        return {}
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (ValueError, UnicodeDecodeError) as err:
        result.notes.append(f"{DEMOGRAPHICS} cannot be read ({err}): group left empty")
        return {}
    if not {"ActorID", "Sex"} <= set(table.columns):
        result.notes.append(f"{DEMOGRAPHICS} has no ActorID and Sex columns: group left empty")
        return {}
    return {a.strip(): s.strip().lower() for a, s in zip(table["ActorID"], table["Sex"]) if a.strip() and s.strip()}
