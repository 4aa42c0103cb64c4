"""The manifest of an exported bundle: what the model is, and the SHA-256 of every file, checked before loading.

``ferseq export`` writes ``manifest.json`` into the bundle: ferseq and bundle
format versions, the date, the classes, window length, sequence-model
inputs and faces settings the models need, the fold, a summary of the data
it was trained and tested on (:func:`data_summary`), its val scores and the
run's test scores (:func:`evaluation_scores`), the config and its hash, and the
SHA-256 of every other file. :func:`verify` checks all of it before
``ferseq predict`` reads any model file of the bundle.
"""

from __future__ import annotations

import json
import logging
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from ferseq import __version__
from ferseq.common.errors import FerseqError
from ferseq.common.model_files import sha256

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
OLD_BUNDLE = "bundle.json"  # ferseq's bundles before the manifest: no checksums, so never read
FORMAT = "ferseq-bundle"
FORMAT_VERSION = 1
# Files a person may add to a bundle (notes, a paper) without making it another bundle: warned about, not refused.
DOCUMENT_SUFFIXES = {".md", ".txt", ".pdf", ".html", ".png", ".jpg", ".jpeg"}
SPLITS = ("train", "val", "test")


class BundleError(FerseqError):
    """A bundle that is not as exported: a changed, missing or extra file, or a format this ferseq cannot read."""


def new(**fields: Any) -> dict[str, Any]:
    """A manifest's header (format, versions, date) followed by ``fields``."""
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "ferseq_version": __version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), **fields}


def write(folder: str | Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Add the SHA-256 of every file now in ``folder`` to ``manifest`` and write it as ``manifest.json``."""
    folder = Path(folder)
    files = {p.relative_to(folder).as_posix(): sha256(p) for p in sorted(folder.rglob("*"))
             if p.is_file() and p.name != MANIFEST}
    manifest = _finite({**manifest, "files": files})
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, allow_nan=False) + "\n")
    return manifest


def _finite(value: Any) -> Any:
    """``value`` with every non-finite float (an infinite val loss) as None: strict JSON has no such numbers."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return None if isinstance(value, float) and not math.isfinite(value) else value


def read(folder: str | Path) -> dict[str, Any]:
    """The manifest of a bundle, its format checked (not yet its files: :func:`verify`)."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        if (folder / OLD_BUNDLE).is_file():
            raise BundleError(f"{folder}: a bundle from an older ferseq ({OLD_BUNDLE}, no {MANIFEST} with checksums); "
                              "this ferseq does not load it. Export it again from its results folder: "
                              "ferseq export --run RESULTS -o NEW_BUNDLE")
        raise BundleError(f"{path}: missing; {folder} is not a bundle from `ferseq export`")
    try:
        manifest = json.loads(path.read_text())
        version = manifest["format_version"]
        if manifest.get("format") != FORMAT or not isinstance(version, int) or not isinstance(manifest["files"], dict):
            raise ValueError("not a ferseq bundle manifest")
    except (ValueError, KeyError, TypeError) as err:
        raise BundleError(f"{path}: not a ferseq bundle manifest ({err})") from None
    if version > FORMAT_VERSION:
        raise BundleError(f"{path}: bundle format {version}, written by ferseq {manifest.get('ferseq_version', '?')}; "
                          f"this ferseq ({__version__}) reads bundle formats up to {FORMAT_VERSION}: upgrade ferseq")
    return manifest


def verify(folder: str | Path) -> dict[str, Any]:
    """The bundle's manifest, once every file it lists has its SHA-256 and no other file is there but documents.

    Raises :class:`BundleError` naming every changed, missing or extra file;
    an extra document (:data:`DOCUMENT_SUFFIXES`) is only warned about.
    """
    folder = Path(folder)
    manifest = read(folder)
    problems = []
    listed = manifest["files"]
    for name, digest in listed.items():
        path = folder / name
        if Path(name).is_absolute() or ".." in Path(name).parts:
            problems.append(f"{name}: named outside the bundle")
        elif not path.is_file():
            problems.append(f"{name}: missing")
        elif sha256(path) != digest:
            problems.append(f"{name}: changed since export (SHA-256 differs from {MANIFEST})")
    for path in sorted(folder.rglob("*")):
        name = path.relative_to(folder).as_posix()
        if not path.is_file() or name == MANIFEST or name in listed:
            continue
        if path.suffix.lower() in DOCUMENT_SUFFIXES:
            log.warning("%s: not part of the bundle as exported (not in %s); ignored", path, MANIFEST)
        else:
            problems.append(f"{name}: not part of the bundle as exported (not in {MANIFEST}); remove it")
    if problems:
        raise BundleError(f"{folder}: not the bundle that was exported, nothing of it was loaded:\n  "
                          + "\n  ".join(problems))
    return manifest


def data_summary(run: str | Path, fold: int) -> dict[str, Any] | None:
    """Per split of ``fold`` (train, val, test): videos, subjects, and segments and frames per class.

    From the results folder's ``data/splits.parquet`` and ``data/segments.parquet``
    (annotated frames); None when they are not there. ``shared_subjects``: the
    test subjects also in train or val (an identity leak when there are any).
    """
    run = Path(run)
    splits_path, segments_path = run / "data" / "splits.parquet", run / "data" / "segments.parquet"
    if not splits_path.is_file() or not segments_path.is_file():
        return None
    splits = pd.read_parquet(splits_path, columns=["fold", "segment_id", "split", "unit"])
    segments = pd.read_parquet(segments_path, columns=["segment_id", "video_id", "subject", "label", "frames"])
    mine = splits[splits["fold"] == fold].merge(segments, on="segment_id")
    summary: dict[str, Any] = {}
    for split in SPLITS:
        rows = mine[mine["split"] == split]
        by_class = rows.groupby("label", sort=True)
        summary[split] = {"videos": int(rows["video_id"].nunique()), "subjects": int(rows["subject"].nunique()),
                          "segments": {str(k): int(v) for k, v in by_class.size().items()},
                          "frames": {str(k): int(v) for k, v in by_class["frames"].sum().items()}}
    seen = set(mine.loc[mine["split"] != "test", "subject"])
    summary["shared_subjects"] = sorted(str(s) for s in set(mine.loc[mine["split"] == "test", "subject"]) & seen)
    return summary


def evaluation_scores(run: str | Path, fold: int) -> dict[str, Any]:
    """The evaluation's test scores, in percent, where the results folder has them.

    ``run``: rows ``kind == "score"`` at segment level of
    ``evaluation/summary.csv`` (every fold pooled, with intervals of ``evaluation.confidence``);
    ``fold``: each method's UAR, WAR and macro F1 per level from
    ``folds/{fold}/evaluation/{method}.csv``; ``limits``: what the summary
    says about the run (split unit, identity leak, folds where the CNN is
    below the landmark baseline, the intervals' confidence). Missing files give empty entries and a note.
    """
    run = Path(run)
    scores: dict[str, Any] = {"run": [], "fold": [], "limits": {}, "notes": []}
    summary_path = run / "evaluation" / "summary.csv"
    if summary_path.is_file():
        summary = pd.read_csv(summary_path)
        scores["limits"] = {key: _plain(summary[key].iloc[0]) for key in
                            ("split_unit", "identity_leak", "cnn_below_landmarks_folds", "folds", "confidence")
                            if key in summary.columns and len(summary)}
        if {"kind", "level", "metric", "value"} <= set(summary.columns):
            rows = summary[(summary["kind"] == "score") & (summary["level"] == "segment")]
            keep = [c for c in ("method", "name", "level", "metric", "value", "ci_low", "ci_high", "fold_mean",
                                "fold_std", "units", "items", "folds") if c in rows.columns]
            scores["run"] = [{k: _plain(v) for k, v in row.items()} for row in rows[keep].to_dict(orient="records")]
        else:
            scores["notes"].append(f"{summary_path.name} is in an older format, without intervals")
    else:
        scores["notes"].append("no evaluation/summary.csv in the results folder")
    evaluation = run / "folds" / str(fold) / "evaluation"
    for path in sorted(evaluation.glob("*.csv")):
        table = pd.read_csv(path)
        if not {"class", "recall", "f1", "support"} <= set(table.columns):
            continue
        levels = table.groupby("level", sort=False) if "level" in table.columns else [(None, table)]
        for level, rows in levels:
            rows = rows.set_index("class")
            if "macro avg" not in rows.index or "accuracy" not in rows.index:
                continue
            scores["fold"].append({"method": path.stem, "level": level,
                                   "uar": _percent(rows.at["macro avg", "recall"]),
                                   "war": _percent(rows.at["accuracy", "f1"]),
                                   "macro_f1": _percent(rows.at["macro avg", "f1"]),
                                   "support": _plain(rows.at["accuracy", "support"])})
    if not scores["fold"]:
        scores["notes"].append(f"no evaluation tables in folds/{fold}/evaluation")
    return scores


def _percent(value: Any) -> float | None:
    value = _plain(value)
    return None if value is None else round(100 * float(value), 2)


def _plain(value: Any) -> Any:
    """A table cell as JSON data: numpy numbers become Python ones, NaN becomes None."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value
