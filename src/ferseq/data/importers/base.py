"""What every dataset adapter shares: the scan result, probing, the report and the atomic write.

An adapter's ``scan(root, ...)`` walks a dataset's own layout and returns a
:class:`Scan`: one :class:`Clip` per usable video (path relative to the root,
subject, label already mapped to our names, group) and one :class:`Skip` per
path it did not use, with the reason. :func:`build` then probes every clip
(frame counts through :func:`ferseq.data.videos.probe`), turns clips into segments
and collects everything a user must see; :func:`write` writes the annotation
table and ``<output>.skipped.csv`` all-or-nothing.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import pandas as pd

from ferseq.common.errors import FerseqError
from ferseq.common.outputs import atomic_path
from ferseq.data import videos
from ferseq.data.annotations import video_id

log = logging.getLogger("ferseq.data.importers")

COLUMNS = ["video", "subject", "label", "start_frame", "end_frame", "group"]
SKIPPED_COLUMNS = ["path", "reason"]
#: Our label names: every adapter maps the dataset's own names onto these.
EMOTIONS = ("neutral", "anger", "contempt", "disgust", "fear", "happy", "sad", "surprise", "calm",
            "anxiety", "helplessness", "disappointment")
#: File suffixes taken for video files where a layout allows any video (OpenCV/FFmpeg decodes them).
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".flv", ".webm", ".mpg", ".mpeg", ".m4v", ".wmv", ".3gp", ".ogv", ".ts", ".mts")
#: How many skipped paths of one kind the printed report lists (the .skipped.csv lists all).
REPORT_LIST = 20


class DatasetError(FerseqError, ValueError):
    """A dataset or an import option that cannot be used; the message names the path, format or option."""


class NoUsableClipError(DatasetError):
    """A dataset folder in which not one clip could be imported."""


@dataclass(frozen=True)
class Skip:
    """A path not used, and why. ``kind`` groups reasons in the printed report."""

    path: str
    kind: str
    reason: str


@dataclass(frozen=True)
class Clip:
    """One usable video (file or image-sequence folder) before probing."""

    video: str  # relative to the dataset root, POSIX separators
    subject: str
    label: str  # already one of our names (or, for folders, the folder name when it is not a known one)
    group: str | None = None
    #: Values of the scan's extra columns (``Scan.columns``), e.g. a benchmark clip's test folds.
    extra: tuple[tuple[str, object], ...] = ()


@dataclass
class Scan:
    """What an adapter found in a dataset folder."""

    clips: list[Clip] = field(default_factory=list)
    skipped: list[Skip] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: Columns written after :data:`COLUMNS`, filled from each clip's ``extra``
    #: (the benchmark importers' ``folds`` or ``split``, and ``identity_leak``).
    columns: list[str] = field(default_factory=list)

    def skip(self, path: str | Path, kind: str, reason: str) -> None:
        self.skipped.append(Skip(str(path), kind, reason))


@dataclass
class ImportResult:
    """The annotation table, the skipped paths and the notes of one import."""

    format: str
    root: Path
    table: pd.DataFrame
    skipped: pd.DataFrame
    kinds: list[str]  # kind of each skipped row, same order
    notes: list[str]
    clips: int

    def report(self, output: str | Path | None = None) -> str:
        """The summary a user reads: counts, labels, and the skipped paths grouped by kind."""
        table = self.table
        lines = [
            f"ferseq import {self.format}: {self.root}" + (f" -> {output}" if output else ""),
            f"  {self.clips} clip(s) imported as {len(table)} segment(s) of {table['subject'].nunique()} subject(s)",
        ]
        counts = table.groupby("label", sort=True).size()
        lines.append("  segments per label: " + ", ".join(f"{label} {n}" for label, n in counts.items()))
        lines.extend(f"  note: {note}" for note in self.notes)
        if self.skipped.empty:
            lines.append("  no path skipped")
            return "\n".join(lines)
        where = f" (all listed in {skipped_path(output)})" if output else ""
        lines.append(f"  {len(self.skipped)} path(s) skipped{where}:")
        rows = list(zip(self.kinds, self.skipped["path"], self.skipped["reason"]))
        for kind, n in Counter(self.kinds).most_common():
            lines.append(f"    {kind}: {n}")
            mine = [(p, r) for k, p, r in rows if k == kind]
            lines.extend(f"      {p}: {r}" for p, r in mine[:REPORT_LIST])
            if len(mine) > REPORT_LIST:
                lines.append(f"      ... and {len(mine) - REPORT_LIST} more")
        return "\n".join(lines)


def skipped_path(output: str | Path) -> Path:
    """Where the skipped-paths table of ``output`` goes: ``<output>.skipped.csv``."""
    output = Path(output)
    return output.with_name(output.name + ".skipped.csv")


def rel(path: Path, root: Path) -> str:
    """``path`` relative to ``root``, with POSIX separators (as the annotation table stores it)."""
    return path.relative_to(root).as_posix()


def entries(folder: Path) -> list[Path]:
    """The entries of a folder in name order."""
    return sorted(folder.iterdir(), key=lambda p: p.name)


def walk_files(folder: Path) -> Iterable[Path]:
    """Every file below ``folder``, in path order (symbolic links to folders followed)."""
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames.sort()
        for name in sorted(filenames):
            yield Path(dirpath) / name


def check_root(root: str | Path, format: str) -> Path:
    root = Path(root)
    if not root.exists():
        raise DatasetError(f"{format}: dataset folder {root} does not exist")
    if not root.is_dir():
        raise DatasetError(f"{format}: {root} is not a folder (give the dataset's root folder)")
    return root


def whole(clip: Clip, frames: int) -> list[tuple[str, int, int]]:
    """The default segmentation: the whole clip, one segment with the clip's label."""
    return [(clip.label, 0, frames)]


Segmenter = Callable[[Clip, int], "list[tuple[str, int, int]] | str"]


def build(format: str, root: Path, scan: Scan, segment: Segmenter = whole, count_frames: str = "decode",
          workers: int = 4) -> ImportResult:
    """Probe the clips of ``scan`` and turn them into the annotation table.

    A clip that cannot be decoded, or that ``segment`` refuses (it returns a
    reason instead of segments), joins the skipped paths. Raises
    :class:`NoUsableClipError` when no clip is left.
    """
    skipped = list(scan.skipped)
    clips = _unique_ids(scan.clips, root, skipped)
    probes = _probe(clips, root, count_frames, workers)
    rows = []
    used = 0
    for clip, probe in zip(clips, probes):
        if isinstance(probe, str):
            skipped.append(Skip(clip.video, "unreadable video", probe))
            continue
        segments = segment(clip, probe.frames)
        if isinstance(segments, str):
            skipped.append(Skip(clip.video, "too short", segments))
            continue
        used += 1
        for label, start, end in segments:
            rows.append({"video": clip.video, "subject": clip.subject, "label": label,
                         "start_frame": start, "end_frame": end, "group": clip.group, **dict(clip.extra)})
    skipped.sort(key=lambda s: s.path)
    if not rows:
        raise NoUsableClipError(_nothing_message(format, root, skipped))
    table = pd.DataFrame(rows, columns=COLUMNS + scan.columns).sort_values(["video", "start_frame"], kind="stable")
    table = table.reset_index(drop=True)
    table = table.astype({"video": str, "subject": str, "label": str, "start_frame": "int64", "end_frame": "int64"})
    skipped_table = pd.DataFrame([(s.path, s.reason) for s in skipped], columns=SKIPPED_COLUMNS)
    return ImportResult(format, root, table, skipped_table, [s.kind for s in skipped], list(scan.notes), used)


def _nothing_message(format: str, root: Path, skipped: Sequence[Skip]) -> str:
    message = f"{format}: no usable clip in {root}"
    if not skipped:
        return message + " (the folder is empty or holds nothing of the expected layout; see `ferseq import --help`)"
    lines = [f"{message}; {len(skipped)} path(s) skipped:"]
    lines.extend(f"  {s.path}: {s.reason}" for s in skipped[:REPORT_LIST])
    if len(skipped) > REPORT_LIST:
        lines.append(f"  ... and {len(skipped) - REPORT_LIST} more")
    return "\n".join(lines)


def _unique_ids(clips: list[Clip], root: Path, skipped: list[Skip]) -> list[Clip]:
    """Drop clips whose output name (path without suffix) another clip shares: the data stage could not tell them apart."""
    by_id: dict[str, list[Clip]] = {}
    for clip in clips:
        by_id.setdefault(video_id(clip.video, root), []).append(clip)
    kept = []
    for vid, same in by_id.items():
        if len(same) == 1:
            kept.append(same[0])
            continue
        names = ", ".join(c.video for c in same)
        for clip in same:
            skipped.append(Skip(clip.video, "name clash", f"clips {names} would share the output name {vid!r}; rename or remove one"))
    return sorted(kept, key=lambda c: c.video)


def _probe(clips: list[Clip], root: Path, count: str, workers: int) -> list[videos.VideoInfo | str]:
    """Probe every clip (threads: OpenCV releases the GIL); a clip that fails maps to the reason."""
    total = len(clips)
    every = max(1, total // 10)
    done = 0

    def probe(clip: Clip) -> videos.VideoInfo | str:
        try:
            return videos.probe(root / clip.video, count=count)
        except videos.VideoError as err:
            return str(err).replace(str(root / clip.video) + ": ", "", 1)

    results = []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for result in pool.map(probe, clips):
            results.append(result)
            done += 1
            if done % every == 0 or done == total:
                log.info("probed %d/%d clips", done, total)
    return results


def write(result: ImportResult, output: str | Path) -> Path:
    """Write the annotation table (CSV or Parquet, by suffix) and ``<output>.skipped.csv``, both or neither."""
    output = Path(output)
    with atomic_path(output) as tmp, atomic_path(skipped_path(output)) as skipped_tmp:
        if output.suffix.lower() == ".parquet":
            result.table.to_parquet(tmp, index=False)
        else:
            result.table.to_csv(tmp, index=False)
        result.skipped.to_csv(skipped_tmp, index=False)
    return output
