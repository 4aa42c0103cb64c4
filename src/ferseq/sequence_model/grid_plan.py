"""The sequence-model grid: its points, their file names and how they are cut into jobs.

No torch here: the DAG is built from it. One job trains every (lr, dropout) point
of one architecture and hidden size, so a job's start-up (Python, torch, MLflow,
reading the windows) is paid once for those points instead of once per point.
"""

from __future__ import annotations

import itertools
from typing import Any


#: Each architecture's family: the evaluation scores the best point of each family the grid trained.
FAMILIES = {"lstm": "lstm", "lstm2": "lstm", "bilstm": "lstm", "gru": "gru", "transformer": "transformer"}


def family(arch: str) -> str:
    """The family of an architecture of ``sequence_model.architectures`` (``lstm`` for the reference's three)."""
    return FAMILIES[arch]


def families(cfg: dict[str, Any]) -> list[str]:
    """The families of the grid's architectures, in the order they first appear, the reference's LSTMs first."""
    found = list(dict.fromkeys(family(arch) for arch in cfg["architectures"]))
    return sorted(found, key=lambda name: name != "lstm")


def point_name(lr: float, hidden: int | str, dropout: float) -> str:
    """File stem of a grid point, e.g. ``lr0.001_h64_d0.5``."""
    return f"lr{lr:g}_h{hidden}_d{dropout:g}"


def grid(cfg: dict[str, Any]) -> list[tuple[str, str]]:
    """``(arch, point_name)`` for every point of the ``sequence_model`` grid."""
    return [(arch, point_name(lr, hidden, dropout))
            for arch, hidden in jobs(cfg) for lr, dropout in job_points(cfg)]


def jobs(cfg: dict[str, Any]) -> list[tuple[str, int]]:
    """``(arch, hidden)`` of every grid job."""
    return list(itertools.product(cfg["architectures"], cfg["hidden"]))


def job_points(cfg: dict[str, Any]) -> list[tuple[float, float]]:
    """``(lr, dropout)`` of the points each grid job trains, in order."""
    return list(itertools.product(cfg["lr"], cfg["dropout"]))


def job_outputs(cfg: dict[str, Any], pattern: str) -> list[str]:
    """One path per point of a job: ``pattern`` with ``{point}`` filled and the job's wildcards kept.

    ``pattern`` uses ``{{hidden}}``-style wildcards (doubled braces) and ``{point}``,
    e.g. ``results/folds/{{fold}}/sequence_model/{{arch}}/{point}.pt``.
    """
    return [pattern.format(point=point_name(lr, "{hidden}", dropout)) for lr, dropout in job_points(cfg)]


def uses_gpu(cfg: dict[str, Any]) -> bool:
    """Whether grid jobs ask the scheduler for a GPU: only with ``device: cuda``.

    ``auto`` cannot know when the DAG is built whether the node that runs a job
    has a GPU, so it never asks (a CPU-only cluster never gets a GPU request);
    the job then uses a GPU only if it sees one.
    """
    return cfg.get("device", "auto") == "cuda"


def gpu_resources(cfg: dict[str, Any]) -> dict[str, int]:
    """The grid rule's GPU resource: ``{"gpu": 1}`` when :func:`uses_gpu`, else none."""
    return {"gpu": 1} if uses_gpu(cfg) else {}
