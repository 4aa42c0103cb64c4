"""What the benchmark importers share: a release's split files, the folds they give, its clip folder.

The dynamic-FER benchmarks (DFEW, MAFW, FERV39k) ship their protocol as split
files that name each clip with its label, per fold and split (train or test).
:func:`split_lines` reads such a file line by line; :class:`Protocol` collects
what the files say about every clip, keeping the file and line of each
statement, so that a contradiction (a clip in a fold's train and test, two
labels for one clip, a fold whose files leave a clip out, a clip that is a
test clip in no fold of a cross-validation) is reported where it is, and the
import stops before anything is written. :class:`ClipFolder` finds the clips a
protocol names in the release's clip folder (image-sequence folders or video
files) and lists what it holds besides.

The importers write each clip's test folds into the annotation table's
``folds`` column (a single train/test protocol: its ``split`` column), which
``split.scheme: predefined`` reads (:mod:`ferseq.data.splits`), and
``identity_leak = true``: these releases name no person, so each clip stands in
for its subject and one person can be in train and test, as the protocols
themselves allow.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import pandas as pd

from ferseq.data.importers.base import VIDEO_SUFFIXES, Clip, DatasetError, Scan, entries, rel

#: Problems listed in one error message (the count says how many more there are).
LISTED = 30
#: The note every benchmark import ends with.
IDENTITY_NOTE = ("the release names no subjects: each clip is its own subject (identity_leak true in the table), "
                 "so one person can be in train and test of a fold, as the protocol allows")

_FIELDS = re.compile(r"\s*,\s*|\s+")


@dataclass(frozen=True)
class Where:
    """A line of a split file (path relative to the dataset root, lines count from 1)."""

    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}, line {self.line}"


def split_lines(path: Path, root: Path, format: str) -> Iterator[tuple[Where, list[str]]]:
    """The non-blank lines of a split file, each split into fields on commas or whitespace."""
    name = rel(path, root)
    if not path.is_file():
        raise DatasetError(f"{format}: split file {name} not found below {root}")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise DatasetError(f"{format}: {Where(name, line)}: not UTF-8 text (byte 0x{raw[err.start]:02x})") from None
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            yield Where(name, number), _FIELDS.split(line.strip())


class Protocol:
    """What a release's split files say about each clip: its label and its split in every fold."""

    def __init__(self, format: str, folds: Sequence[int]):
        self.format = format
        self.folds = list(folds)
        self.labels: dict[str, tuple[str, Where]] = {}
        self.splits: dict[str, dict[int, tuple[str, Where]]] = {}
        self.problems: list[str] = []

    def problem(self, where: Where, text: str) -> None:
        """A line that cannot be used; all are reported together by :meth:`check`."""
        self.problems.append(f"{where}: {text}")

    def add(self, clip: str, label: str, fold: int, split: str, where: Where) -> None:
        """The file at ``where`` puts ``clip`` (labelled ``label``) into ``split`` of ``fold``."""
        known, at = self.labels.setdefault(clip, (label, where))
        if known != label:
            self.problem(where, f"clip {clip} is labelled {label} here but {known} at {at}")
        placed = self.splits.setdefault(clip, {})
        if fold in placed:
            before, at = placed[fold]
            if before == split:
                self.problem(where, f"clip {clip} is named twice in the {split} part of fold {fold} (also {at})")
            else:
                self.problem(where, f"clip {clip} is in the {split} part of fold {fold} here and in its {before} part "
                                    f"at {at}: a clip is in one part of a fold")
            return
        placed[fold] = (split, where)

    def check(self) -> None:
        """Raise :class:`DatasetError` listing every problem of the files, by file and line."""
        for clip, placed in self.splits.items():
            first = self.first(clip)
            missing = [str(f) for f in self.folds if f not in placed]
            if missing:
                self.problem(first, f"clip {clip} is in no part of fold(s) {', '.join(missing)}: each fold's train "
                                    "and test files together name every clip of the protocol")
            elif len(self.folds) > 1 and not any(split == "test" for split, _ in placed.values()):
                self.problem(first, f"clip {clip} is a test clip in none of the {len(self.folds)} folds: the test "
                                    "files of a cross-validation cover every clip")
        if self.problems:
            shown = "\n".join(f"  {p}" for p in self.problems[:LISTED])
            more = f"\n  ... and {len(self.problems) - LISTED} more" if len(self.problems) > LISTED else ""
            raise DatasetError(f"{self.format}: {len(self.problems)} problem(s) in the split files; nothing was "
                               f"written:\n{shown}{more}")

    def first(self, clip: str) -> Where:
        """The first line (in reading order) that names ``clip``."""
        return self.labels[clip][1]

    def test_folds(self, clip: str) -> str:
        """The folds in which ``clip`` is a test clip, as the table's ``folds`` column holds them ("2", "1;4")."""
        return ";".join(str(f) for f in self.folds if self.splits[clip][f][0] == "test")


def clip_folder(root: Path, format: str, given: str | None, candidates: Sequence[str]) -> str:
    """The folder below ``root`` that holds the clips: ``given`` (the --clips option), else the first candidate there."""
    if given:
        if not (root / given).is_dir():
            raise DatasetError(f"{format}: --clips {given}: no such folder below {root}")
        return Path(given).as_posix().rstrip("/")
    for candidate in candidates:
        if (root / candidate).is_dir():
            return candidate
    raise DatasetError(f"{format}: {root} has none of the clip folders {', '.join(candidates)}; "
                       "name the one that holds the clips (frame folders or video files) with --clips")


class ClipFolder:
    """The clips in a release's clip folder: image-sequence folders or video files, ``depth`` levels down."""

    def __init__(self, root: Path, folder: str, depth: int = 1):
        self.root, self.folder, self.depth = root, folder, depth
        self.clips: dict[str, Path] = {}  # clip name (path below the folder, no video suffix) -> entry
        self.strays: list[tuple[Path, str]] = []
        self.used: set[str] = set()
        self._walk(root / folder, depth)

    def _walk(self, folder: Path, depth: int) -> None:
        for entry in entries(folder):
            if entry.name.startswith("."):
                self.strays.append((entry, "hidden file or folder"))
            elif depth > 1 and entry.is_dir():
                self._walk(entry, depth - 1)
            elif depth > 1:
                self.strays.append((entry, f"a file among the folders of {self.folder}/, whose clips sit "
                                           f"{self.depth} folder levels down"))
            elif entry.is_dir() or entry.suffix.lower() in VIDEO_SUFFIXES:
                name = (entry.parent / (entry.name if entry.is_dir() else entry.stem)).relative_to(self.root / self.folder)
                key = name.as_posix()
                if key in self.clips:
                    self.strays.append((entry, f"a second clip named {key} (the {self.clips[key].name} beside it is used)"))
                else:
                    self.clips[key] = entry
            else:
                self.strays.append((entry, f"neither a frame folder nor a video file ({' '.join(VIDEO_SUFFIXES)})"))

    def take(self, name: str, where: Where, scan: Scan) -> str | None:
        """The clip ``name`` (its path relative to the root), or None after listing it as missing in ``scan``."""
        key = name[: -len(Path(name).suffix)] if Path(name).suffix.lower() in VIDEO_SUFFIXES else name
        entry = self.clips.get(key)
        if entry is None:
            scan.skip(f"{self.folder}/{key}", "missing clip",
                      f"named in {where} but not on disk (no frame folder or video file {key} in {self.folder}/)")
            return None
        self.used.add(key)
        return rel(entry, self.root)

    def report_rest(self, scan: Scan, protocol_files: str) -> None:
        """List the clips no split file names, and everything in the folder that is no clip."""
        for key, entry in self.clips.items():
            if key not in self.used:
                scan.skip(rel(entry, self.root), "not in the protocol",
                          f"a clip that no split file of the protocol names ({protocol_files})")
        for entry, why in self.strays:
            scan.skip(rel(entry, self.root), "not a clip", why)


def list_unused(root: Path, keep: set[str], scan: Scan, why: str) -> None:
    """List every entry below ``root`` that is neither in ``keep`` (paths relative to the root) nor above one of them."""

    def walk(folder: Path) -> None:
        for entry in entries(folder):
            where = rel(entry, root)
            if where in keep:
                continue
            if entry.is_dir() and any(k.startswith(where + "/") for k in keep):
                walk(entry)
            else:
                scan.skip(where, "not used", why)

    walk(root)


def folds_scan(root: Path, folder: str, protocol: Protocol, split_files: set[str], listing: str,
               unused_why: str) -> Scan:
    """The clips of a k-fold protocol of single-labelled clips without subjects (DFEW's, MAFW's), once
    ``protocol`` holds its checked split files: each clip found in ``folder`` (relative to ``root``) with its label
    and test folds; what is not in the protocol (``listing``: its split files, for the message) and every other
    entry but ``split_files`` listed as skipped; a note for the clips named but missing."""
    result = Scan(columns=["folds", "identity_leak"])
    found = ClipFolder(root, folder)
    for clip in sorted(protocol.splits):
        path = found.take(clip, protocol.first(clip), result)
        if path:
            result.clips.append(Clip(path, clip, protocol.labels[clip][0], None,
                                     (("folds", protocol.test_folds(clip)), ("identity_leak", True))))
    found.report_rest(result, listing)
    list_unused(root, split_files | {folder}, result, unused_why)
    missing = sum(s.kind == "missing clip" for s in result.skipped)
    if missing:
        result.notes.append(f"{missing} clip(s) named in the split files are not in {folder}/ (listed); their folds "
                            "miss them")
    result.notes.append(IDENTITY_NOTE)
    return result


def fold_notes(table: pd.DataFrame, folds: Sequence[int]) -> list[str]:
    """One line per fold of an imported table: its train and test clips (by the ``folds`` or ``split`` column)."""
    if "split" in table.columns:
        counts = table["split"].value_counts()
        return [f"one train/test split: {counts.get('train', 0)} train and {counts.get('test', 0)} test clip(s); "
                "val is carved from train by split.scheme: predefined"]
    tested = table["folds"].astype(str).str.split(";")
    lines = []
    for fold in folds:
        test = int(tested.map(lambda fs: str(fold) in fs).sum())
        lines.append(f"fold {fold}: {len(table) - test} train and {test} test clip(s)")
    return lines
