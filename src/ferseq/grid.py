"""The sequence-model grid: its points and their file names (no torch here: the DAG is built from it)."""

from __future__ import annotations

import itertools
from typing import Any


def point_name(lr: float, hidden: int, dropout: float) -> str:
    """File stem of a grid point, e.g. ``lr0.001_h64_d0.5``."""
    return f"lr{lr:g}_h{hidden}_d{dropout:g}"


def grid(cfg: dict[str, Any]) -> list[tuple[str, str]]:
    """``(arch, point_name)`` for every point of the ``sequence_model`` grid."""
    return [(arch, point_name(lr, hidden, dropout))
            for arch, lr, hidden, dropout in itertools.product(cfg["architectures"], cfg["lr"], cfg["hidden"], cfg["dropout"])]
