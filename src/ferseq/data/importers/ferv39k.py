"""FERV39k: in-the-wild clips of 22 scenes in its official train/test split (7 classes).

Layout below the dataset root (as the release unpacks)::

    4_setups/All_scenes/train_All.csv, test_All.csv    one clip per line: Action/Happy/0015 Happy
    2_ClipsforFaceCrop/Action/Happy/0015/ ...          one frame folder per clip (or --clips FOLDER)

Each line names a clip by its path below the clip folder (scene/label/number)
and its label word (:data:`LABELS`), which must be the label folder of its
path. A clip is that frame folder (or a video file of that name), whole, one
segment. ``group`` = the scene; FERV39k names no actors: subject = the clip's
path, ``identity_leak`` = true; ``split`` = train or test (one fold: val is
carved from train by ``split.scheme: predefined``).
"""

from __future__ import annotations

import re
from pathlib import Path

from ferseq.data.importers.base import Clip, DatasetError, Scan, build, check_root
from ferseq.data.importers.protocol import (
    IDENTITY_NOTE,
    ClipFolder,
    Protocol,
    clip_folder,
    fold_notes,
    list_unused,
    split_lines,
)

FORMAT = "ferv39k"
SETUP = "4_setups/All_scenes"
FILES = {"train": f"{SETUP}/train_All.csv", "test": f"{SETUP}/test_All.csv"}
CLIP_FOLDERS = ("2_ClipsforFaceCrop",)
#: FERV39k label word (also the label folder of each clip) -> our label.
LABELS = {"Happy": "happy", "Sad": "sad", "Neutral": "neutral", "Angry": "anger", "Surprise": "surprise",
          "Disgust": "disgust", "Fear": "fear"}

_PATH = re.compile(r"^([A-Za-z]+)/([A-Za-z]+)/(\d+)$")


def scan(root: str | Path, clips: str | None = None) -> Scan:
    root = check_root(root, FORMAT)
    if not (root / SETUP).is_dir():
        raise DatasetError(f"{FORMAT}: {root} has no {SETUP}/ folder; expected {FILES['train']} and {FILES['test']} "
                           "below the dataset root")
    folder = clip_folder(root, FORMAT, clips, CLIP_FOLDERS)
    protocol = Protocol(FORMAT, (0,))
    for split, name in FILES.items():
        for where, fields in split_lines(root / name, root, FORMAT):
            _line(where, fields, split, protocol)
    protocol.check()

    result = Scan(columns=["split", "identity_leak"])
    found = ClipFolder(root, folder, depth=3)
    for clip in sorted(protocol.splits):
        path = found.take(clip, protocol.first(clip), result)
        if path:
            result.clips.append(Clip(path, clip, protocol.labels[clip][0], clip.split("/")[0],
                                     (("split", protocol.splits[clip][0][0]), ("identity_leak", True))))
    found.report_rest(result, f"{FILES['train']}, {FILES['test']}")
    list_unused(root, set(FILES.values()) | {folder}, result,
                f"not part of FERV39k's protocol ({SETUP}/{{train,test}}_All.csv, {folder}/)")
    missing = sum(s.kind == "missing clip" for s in result.skipped)
    if missing:
        result.notes.append(f"{missing} clip(s) named in the split files are not in {folder}/ (listed)")
    result.notes.append(IDENTITY_NOTE)
    return result


def load(root: str | Path, clips: str | None = None, count_frames: str = "decode", workers: int = 4):
    root = Path(root)
    result = build(FORMAT, root, scan(root, clips), count_frames=count_frames, workers=workers)
    result.notes.extend(fold_notes(result.table, ()))
    return result


def _line(where, fields: list[str], split: str, protocol: Protocol) -> None:
    if len(fields) != 2:
        protocol.problem(where, f"{len(fields)} field(s), expected a clip and its label (Action/Happy/0015 Happy)")
        return
    path, word = fields
    match = _PATH.match(path)
    if not match:
        protocol.problem(where, f"{path!r} is not a FERV39k clip path (scene/label/number, e.g. Action/Happy/0015)")
    elif word not in LABELS:
        protocol.problem(where, f"label {word!r} is not a FERV39k label ({', '.join(LABELS)})")
    elif match.group(2) != word:
        protocol.problem(where, f"label {word} is not the label folder of its clip {path}")
    else:
        protocol.add(path, LABELS[word], 0, split, where)
