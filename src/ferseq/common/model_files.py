"""Model files as data, never code: reading torch checkpoints with ``weights_only`` and keeping their contents plain.

A ``.pt`` file that ferseq writes holds tensors and JSON-plain values only
(dicts, lists, strings, numbers, booleans, None), so
``torch.load(..., weights_only=True)`` reads it; that loader refuses anything
that would import or call code (a pickled object's ``__reduce__``), which is
what a tampered or foreign file carries. ferseq reads no other pickle.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from ferseq.common.errors import FerseqError


class ModelFileError(FerseqError):
    """A model file that is not data ferseq wrote: a pickle with code, a foreign or damaged file."""


def plain(info: Any) -> Any:
    """A JSON-plain copy of ``info`` (what a checkpoint holds besides tensors); refuses anything else."""
    try:
        return json.loads(json.dumps(info))
    except (TypeError, ValueError) as err:
        raise TypeError(f"checkpoint information must be plain JSON data: {err}") from None


def read_torch(path: str | Path, what: str) -> dict[str, Any]:
    """The contents of a ``.pt`` checkpoint (on the CPU), read as data only; ``what`` names it in errors."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no {what} there")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # the safe loader's refusal or a damaged file: either way not ferseq's data
        raise ModelFileError(f"{path}: not a {what} that loads as data only ({_reason(err)}); ferseq never runs "
                             "code from a model file: use the file as ferseq wrote it (rebuild it with the workflow, "
                             "or export the run again: ferseq export --run RESULTS -o NEW_BUNDLE)") from None
    if not isinstance(checkpoint, dict):
        raise ModelFileError(f"{path}: not a {what} (a {type(checkpoint).__name__}, not a checkpoint dictionary)")
    return checkpoint


def _reason(err: Exception) -> str:
    """The part of a loader error that says what was refused (torch's own advice to load unsafely is dropped)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    said = [line for line in lines if not line.startswith(
        ("Weights only load failed", "Please file an issue", "Check the documentation"))]
    return "; ".join(said)[:300] if said and len(said) < len(lines) else f"{type(err).__name__}: {str(err)[:200]}"


def sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def looks_like_pickle(data: bytes) -> bool:
    """Whether ``data`` starts as a pickle (protocol 2 or later) does: the format of older ferseq model files."""
    return data[:1] == b"\x80" and data[1:2] in {bytes([n]) for n in range(2, 6)}
