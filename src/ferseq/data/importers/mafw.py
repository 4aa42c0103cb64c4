"""MAFW: in-the-wild clips in the 5 official folds of its single-expression set (11 classes).

Layout below the dataset root (as the release unpacks)::

    split/single/no_caption/set_1/train.txt ... set_5/test.txt    one clip per line: 00025.mp4 anger
    data/frames/00025/ ...      one frame folder per clip (or clips/00025.mp4, or --clips FOLDER)

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
SPLITS = "split/single/no_caption"
FOLDS = (1, 2, 3, 4, 5)
PARTS = ("train", "test")
#: Where the clips are, tried in this order (--clips names another).
CLIP_FOLDERS = ("data/frames", "clips")
#: MAFW label word -> our label. MAFW's own order: anger, disgust, fear, happiness, neutral, sadness,
#: surprise, contempt, anxiety, helplessness, disappointment.
LABELS = {"anger": "anger", "disgust": "disgust", "fear": "fear", "happiness": "happy", "neutral": "neutral",
          "sadness": "sad", "surprise": "surprise", "contempt": "contempt", "anxiety": "anxiety",
          "helplessness": "helplessness", "disappointment": "disappointment"}

_NAME = re.compile(r"^\d+(\.mp4)?$")


def split_file(split: str, fold: int) -> str:
    """The release's split file of one fold's train or test part, relative to the root."""
    return f"{SPLITS}/set_{fold}/{split}.txt"


def scan(root: str | Path, clips: str | None = None) -> Scan:
    root = check_root(root, FORMAT)
    if not (root / SPLITS).is_dir():
        raise DatasetError(f"{FORMAT}: {root} has no {SPLITS}/ folder; expected {split_file('train', 1)} ... "
                           f"{split_file('test', 5)} below the dataset root")
    folder = clip_folder(root, FORMAT, clips, CLIP_FOLDERS)
    protocol = Protocol(FORMAT, FOLDS)
    for fold in FOLDS:
        for split in PARTS:
            for where, fields in split_lines(root / split_file(split, fold), root, FORMAT):
                _line(where, fields, fold, split, protocol)
    protocol.check()
    return folds_scan(root, folder, protocol, {split_file(s, f) for f in FOLDS for s in PARTS},
                      f"{SPLITS}/set_1..5/*.txt",
                      f"not part of MAFW's single-expression protocol ({SPLITS}/set_1..5/, {folder}/)")


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
