"""DFEW (Dynamic Facial Expression in the Wild): movie clips in the 5 official folds of its single-labelled set.

Layout below the dataset root (as the release unpacks)::

    EmoLabel_DataSplit/train(single-labeled)/set_1.csv ... set_5.csv    header video_name,label
    EmoLabel_DataSplit/test(single-labeled)/set_1.csv  ... set_5.csv
    Clip/clip_224x224/00001/ ...     one frame folder per clip (or Clip/jpg_256/, or --clips FOLDER;
                                     a video file 00001.mp4 there counts as the clip too)

Copies of the release spell the split folders ``train(single_labeled)`` and
``test(single_labeled)`` too: both spellings are read (:data:`PARTS`, the first
found of each part), and a root with neither names every folder looked for.
The five test files of the single-labelled protocol name 11,697 clips (of the
16,372 clips in the corpus).

``video_name`` is the clip number (with or without its leading zeros), ``label``
DFEW's code 1-7 (:data:`LABELS`; the reference code subtracts 1 from it). Fold
k's test clips are those of ``test(single-labeled)/set_k.csv`` and its train file
names every other clip of the protocol: the five test files partition the
single-labelled clips (checked, like every line). A clip is the frame folder
``{number:05d}`` in the clip folder, whole, one segment. DFEW names no actors:
subject = the clip number, ``identity_leak`` = true; ``folds`` = its test fold.
Clips of the folder that no split file names (the release's clips without a
single label) are listed as not in the protocol.
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

FORMAT = "dfew"
SPLITS = "EmoLabel_DataSplit"
#: The split folder of each part below EmoLabel_DataSplit/, in the spellings of the release's copies, tried in order.
PARTS = {"train": ("train(single-labeled)", "train(single_labeled)"),
         "test": ("test(single-labeled)", "test(single_labeled)")}
FOLDS = (1, 2, 3, 4, 5)
#: Where the release keeps the clips' frames, tried in this order (--clips names another).
CLIP_FOLDERS = ("Clip/clip_224x224", "Clip/jpg_256")
#: DFEW label code -> our label. DFEW's own names: 1 Happy, 2 Sad, 3 Neutral, 4 Angry, 5 Surprise, 6 Disgust, 7 Fear.
LABELS = {1: "happy", 2: "sad", 3: "neutral", 4: "anger", 5: "surprise", 6: "disgust", 7: "fear"}
HEADER = ("video_name", "label")

_NUMBER = re.compile(r"^\d{1,5}$")


def split_file(split: str, fold: int, part: str | None = None) -> str:
    """The release's split file of one fold's train or test part, relative to the root (``part``: the part's
    folder as found, by default its first spelling in :data:`PARTS`)."""
    return f"{SPLITS}/{part or PARTS[split][0]}/set_{fold}.csv"


def part_folders(root: Path) -> dict[str, str]:
    """split -> the folder below EmoLabel_DataSplit/ that holds it, the first spelling of :data:`PARTS` found;
    an error naming every folder looked for when a part has none."""
    found = {split: next((name for name in names if (root / SPLITS / name).is_dir()), None)
             for split, names in PARTS.items()}
    if None in found.values():
        looked = ", ".join(f"{SPLITS}/{name}/" for split, names in PARTS.items() if found[split] is None
                           for name in names)
        raise DatasetError(f"{FORMAT}: {root} has no {' or '.join(s for s, f in found.items() if f is None)} split "
                           f"folder: looked for {looked} (each with set_1.csv ... set_5.csv)")
    return found


def scan(root: str | Path, clips: str | None = None) -> Scan:
    root = check_root(root, FORMAT)
    parts = part_folders(root)
    folder = clip_folder(root, FORMAT, clips, CLIP_FOLDERS)
    protocol = Protocol(FORMAT, FOLDS)
    for fold in FOLDS:
        for split, part in parts.items():
            _read(root, split_file(split, fold, part), fold, split, protocol)
    protocol.check()
    spellings = {part[len(split):] for split, part in parts.items()}  # "(single-labeled)" or "(single_labeled)"
    listing = (f"{SPLITS}/*{spellings.pop()}/set_1..5.csv" if len(spellings) == 1
               else f"{SPLITS}/{parts['train']}/ and {parts['test']}/set_1..5.csv")
    return folds_scan(root, folder, protocol, {split_file(s, f, p) for f in FOLDS for s, p in parts.items()},
                      listing, f"not part of DFEW's single-labelled protocol ({SPLITS}/*/set_1..5.csv, {folder}/)")


def load(root: str | Path, clips: str | None = None, count_frames: str = "decode", workers: int = 4):
    root = Path(root)
    result = build(FORMAT, root, scan(root, clips), count_frames=count_frames, workers=workers)
    result.notes.extend(fold_notes(result.table, FOLDS))
    return result


def _read(root: Path, name: str, fold: int, split: str, protocol: Protocol) -> None:
    """One split file: its header, then one clip number and DFEW label code per line."""
    lines = split_lines(root / name, root, FORMAT)
    first = next(lines, None)
    if first is None or tuple(f.lower() for f in first[1]) != HEADER:
        where = first[0] if first else f"{name} (empty)"
        protocol.problems.append(f"{where}: the first line must be the header {','.join(HEADER)}")
        return
    for where, fields in lines:
        if len(fields) != 2:
            protocol.problem(where, f"{len(fields)} field(s), expected {','.join(HEADER)}")
            continue
        number, code = fields
        if not _NUMBER.match(number):
            protocol.problem(where, f"video_name {number!r} is not a DFEW clip number (e.g. 00042 or 42)")
        elif not code.isdigit() or int(code) not in LABELS:
            protocol.problem(where, f"label {code!r} is not a DFEW label code 1-7"
                                    + (" (a copy whose labels count from 0?)" if code == "0" else ""))
        else:
            protocol.add(f"{int(number):05d}", LABELS[int(code)], fold, split, where)
