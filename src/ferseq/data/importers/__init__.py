"""Dataset adapters: turn a public dataset's own layout into the annotation table.

One module per format (``ckplus``, ``ravdess``, ``cremad``, ``folders``, and the
benchmarks ``dfew``, ``mafw``, ``ferv39k``, whose official folds go into the
table's ``folds`` or ``split`` column: :mod:`ferseq.data.importers.protocol`), each
with a module-level ``LABELS`` dict from the dataset's label names to ours
(:data:`~ferseq.data.importers.base.EMOTIONS`). :func:`import_dataset` runs one and
writes the table (``video`` relative to the dataset root, which becomes the
config's ``data.videos``; ``subject``, ``label``, half-open 0-based
``start_frame``/``end_frame``, ``group``; the benchmarks add ``folds`` or
``split``, and ``identity_leak``) plus ``<output>.skipped.csv``: every
path of the dataset folder that was not used, with the reason. Used by
``ferseq import`` (:mod:`ferseq.cli`) and by the rule ``import_annotations``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ferseq.data.importers import ckplus, cremad, dfew, ferv39k, folders, mafw, ravdess
from ferseq.data.importers.base import (
    COLUMNS,
    EMOTIONS,
    DatasetError,
    ImportResult,
    NoUsableClipError,
    skipped_path,
    write,
)

__all__ = ["COLUMNS", "EMOTIONS", "FORMATS", "OPTIONS", "DatasetError", "ImportResult", "NoUsableClipError",
           "import_dataset", "load", "skipped_path", "write"]

log = logging.getLogger("ferseq.data.importers")

#: format name -> adapter module (each has ``FORMAT``, ``LABELS``, ``scan`` and ``load``).
FORMATS = {"ckplus": ckplus, "ravdess": ravdess, "cremad": cremad, "folders": folders,
           "dfew": dfew, "mafw": mafw, "ferv39k": ferv39k}
#: The options each format takes (besides ``count_frames`` and ``workers``, which all take).
OPTIONS = {
    "ckplus": ("onset_apex",),
    "ravdess": (),
    "cremad": (),
    "folders": ("subject_regex", "subjects", "subject_from_clip"),
    "dfew": ("clips",),
    "mafw": ("clips",),
    "ferv39k": ("clips",),
}


def load(format: str, root: str | Path, count_frames: str = "decode", workers: int = 4, **options: Any) -> ImportResult:
    """Scan and probe the dataset at ``root``; nothing is written. Options that are None or False count as not given."""
    if format not in FORMATS:
        raise DatasetError(f"unknown dataset format {format!r}; one of {', '.join(FORMATS)}")
    given = {k: v for k, v in options.items() if v is not None and v is not False}
    wrong = sorted(set(given) - set(OPTIONS[format]))
    if wrong:
        allowed = ", ".join(OPTIONS[format]) or "none"
        raise DatasetError(f"{format}: option(s) {', '.join(wrong)} do not apply to this format (it takes: {allowed})")
    if count_frames not in ("decode", "header"):
        raise DatasetError(f"count_frames must be decode or header, not {count_frames!r}")
    if "onset_apex" in given:
        given["onset_apex"] = tuple(given["onset_apex"])
    return FORMATS[format].load(Path(root), count_frames=count_frames, workers=workers, **given)


def import_dataset(format: str, root: str | Path, output: str | Path, count_frames: str = "decode", workers: int = 4,
                   **options: Any) -> ImportResult:
    """Import the dataset at ``root`` and write ``output`` (.csv or .parquet) and ``<output>.skipped.csv``.

    Raises :class:`DatasetError` (a :class:`~ferseq.common.errors.FerseqError`) for a
    missing folder, a wrong option, or a dataset with no usable clip; then
    nothing is written.
    """
    output = Path(output)
    if output.suffix.lower() not in (".csv", ".parquet"):
        raise DatasetError(f"output {output}: the annotation table must end in .csv or .parquet")
    result = load(format, root, count_frames=count_frames, workers=workers, **options)
    write(result, output)
    log.info("wrote %s (%d segments) and %s (%d skipped paths)", output, len(result.table), skipped_path(output), len(result.skipped))
    return result
