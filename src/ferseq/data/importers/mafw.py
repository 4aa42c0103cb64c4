"""MAFW: in-the-wild clips in the 5 official folds of its single-expression set (11 classes).

Layout below the dataset root, in either of the release's layouts::

    split/single/no_caption/set_1/train.txt ... set_5/test.txt    one clip per line: 00025.mp4 anger
    data/frames/00025/ ...      one frame folder per clip (or clips/00025.mp4, or --clips FOLDER)

    Train & Test Set/single/no_caption/set_1/train.txt ... set_5/test.txt
    data/clips/00025.mp4 ...    one video per clip

The split folder is the first of :data:`SPLIT_FOLDERS` found, the clip folder
the first of :data:`CLIP_FOLDERS` (frames before videos); a root with none of
them names every folder looked for.

Each line names a clip file and its label word (:data:`LABELS`). Fold k's test
clips are those of ``set_k/test.txt`` and its ``train.txt`` names every other
clip of the protocol (checked, like every line). A clip is the frame folder
named after the clip file without its suffix (or the video file itself),
whole, one segment. MAFW names no actors: subject = the clip name,
``identity_leak`` = true; ``folds`` = its test fold. The compound
(multi-label) and captioned splits are not read.
"""

from __future__ import annotations

import re
from pathlib import Path

from ferseq.data.importers.base import DatasetError, Scan, build, check_root
from ferseq.data.importers.protocol import (
    Protocol,
    clip_folder,
    fold_notes,
    folds_scan,
    split_lines,
)

FORMAT = "mafw"
#: Where the single-expression split files are (set_1 ... set_5 below), tried in this order.
SPLIT_FOLDERS = ("split/single/no_caption", "Train & Test Set/single/no_caption")
SPLITS = SPLIT_FOLDERS[0]
FOLDS = (1, 2, 3, 4, 5)
PARTS = ("train", "test")
#: Where the clips are, tried in this order (--clips names another).
CLIP_FOLDERS = ("data/frames", "data/clips", "clips")
#: MAFW label word -> our label. MAFW's own order: anger, disgust, fear, happiness, neutral, sadness,
#: surprise, contempt, anxiety, helplessness, disappointment.
LABELS = {"anger": "anger", "disgust": "disgust", "fear": "fear", "happiness": "happy", "neutral": "neutral",
          "sadness": "sad", "surprise": "surprise", "contempt": "contempt", "anxiety": "anxiety",
          "helplessness": "helplessness", "disappointment": "disappointment"}

_NAME = re.compile(r"^\d+(\.mp4)?$")


def split_file(split: str, fold: int, splits: str = SPLITS) -> str:
    """The release's split file of one fold's train or test part, relative to the root (``splits``: the split
    folder found, one of :data:`SPLIT_FOLDERS`)."""
    return f"{splits}/set_{fold}/{split}.txt"


def split_folder(root: Path) -> str:
    """The first of :data:`SPLIT_FOLDERS` below ``root``; an error naming every one looked for when none is."""
    for candidate in SPLIT_FOLDERS:
        if (root / candidate).is_dir():
            return candidate
    raise DatasetError(f"{FORMAT}: {root} has none of the split folders {', '.join(f'{c}/' for c in SPLIT_FOLDERS)} "
                       "(each with set_1/train.txt ... set_5/test.txt)")


def scan(root: str | Path, clips: str | None = None) -> Scan:
    root = check_root(root, FORMAT)
    splits = split_folder(root)
    folder = clip_folder(root, FORMAT, clips, CLIP_FOLDERS)
    protocol = Protocol(FORMAT, FOLDS)
    for fold in FOLDS:
        for split in PARTS:
            for where, fields in split_lines(root / split_file(split, fold, splits), root, FORMAT):
                _line(where, fields, fold, split, protocol)
    protocol.check()
    return folds_scan(root, folder, protocol, {split_file(s, f, splits) for f in FOLDS for s in PARTS},
                      f"{splits}/set_1..5/*.txt",
                      f"not part of MAFW's single-expression protocol ({splits}/set_1..5/, {folder}/)")


def load(root: str | Path, clips: str | None = None, count_frames: str = "decode", workers: int = 4):
    root = Path(root)
    result = build(FORMAT, root, scan(root, clips), count_frames=count_frames, workers=workers)
    result.notes.extend(fold_notes(result.table, FOLDS))
    return result


def _line(where, fields: list[str], fold: int, split: str, protocol: Protocol) -> None:
    if len(fields) != 2:
        protocol.problem(where, f"{len(fields)} field(s), expected a clip and its label (00025.mp4 anger)")
        return
    name, word = fields
    if not _NAME.match(name):
        protocol.problem(where, f"{name!r} is not a MAFW clip name (e.g. 00025.mp4)")
    elif word.lower() not in LABELS:
        protocol.problem(where, f"label {word!r} is not a MAFW single-expression label ({', '.join(LABELS)})")
    else:
        protocol.add(name.removesuffix(".mp4"), LABELS[word.lower()], fold, split, where)
