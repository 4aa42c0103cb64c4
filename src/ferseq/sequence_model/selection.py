"""A fold's search: its MLflow parent run, and the choice of the best grid point.

The grid jobs (:mod:`ferseq.sequence_model.grid_search`) log each point as a
child of the search's parent run, which :func:`open_search` opens before them;
:func:`select` records the choice on the parent as tags and metrics (values a
rerun may change), never as params. Neither needs torch: these two small jobs
start in a second rather than after torch's import.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Iterable

from ferseq.common import mlflow_runs
from ferseq.common.outputs import atomic_path
from ferseq.sequence_model.grid_plan import family, point_name

log = logging.getLogger(__name__)


def parent_ref(text: str) -> dict[str, str]:
    """The search's run as ``mlflow_parent_run.txt`` names it: its id, or ``journal:PATH`` while the tracking
    server has not had it yet (:attr:`ferseq.common.mlflow_outbox.RunLog.ref`)."""
    text = text.strip()
    return {"journal": text[len("journal:"):]} if text.startswith("journal:") else {"run_id": text}


def open_search(config: dict[str, Any], fold: int, out_run_id: str | Path) -> str:
    """Create the fold's parent MLflow run for the search and write its reference for the grid jobs."""
    with mlflow_runs.open_run(config, "sequence_search", fold=fold) as run:
        run.log_params({f"grid.{k}": str(v) for k, v in config["sequence_model"].items()})
    ref = run.ref
    text = ref["run_id"] if "run_id" in ref else f"journal:{ref['journal']}"
    with atomic_path(out_run_id) as tmp:
        tmp.write_text(text + "\n")
    return text


def select(metrics_files: Iterable[str | Path], config: dict[str, Any], fold: int, parent_run_id: str,
           out_best: str | Path) -> dict[str, Any]:
    """Pick the grid point with the best val macro F1 (ties: lower val loss), and the best of each family of
    architectures (``families`` in ``out_best``), and record them.

    On the search's run (``parent_run_id`` as :func:`open_search` wrote it) the choice is a set of tags
    (``best.arch``, ...) and metrics, which a rerun with another outcome overwrites; the fold's grid-point
    runs that are no longer in the grid are marked superseded.
    """
    points = []
    for path in metrics_files:
        m = json.loads(Path(path).read_text())
        m["model"] = str(Path(path).with_suffix(".pt"))
        points.append(m)
    def rank(m: dict[str, Any]) -> tuple[float, float]:
        return -m["val_macro_f1"], m["val_loss"]

    best = min(points, key=rank)
    # The best point of each family too (the reference's LSTMs, GRU, transformer): one evaluation row each.
    families = {}
    for m in sorted(points, key=rank):
        families.setdefault(family(m["arch"]), m)
    log.info("fold %d: best of %d grid points: %s (val macro F1 %.3f, val loss %.4f)", fold, len(points),
             Path(best["model"]).relative_to(Path(best["model"]).parents[1]), best["val_macro_f1"], best["val_loss"])
    run = mlflow_runs.attach_run(config, parent_ref(parent_run_id), f"select-fold{fold}")
    run.set_tags({f"best.{k}": best[k] for k in ("arch", "lr", "hidden", "dropout")})
    run.log_metrics({"best_val_macro_f1": best["val_macro_f1"], "best_val_loss": best["val_loss"],
                     **{f"best_{name}_val_macro_f1": m["val_macro_f1"] for name, m in families.items()}})
    run.log_dict({"points": points}, "grid.json")
    # the runs of this fold's grid points that are not among these (a grid value changed since they ran)
    run.supersede_others(f"tags.stage = 'sequence_model' and tags.fold = '{fold}'",
                         [f"{m['arch']}-{point_name(m['lr'], m['hidden'], m['dropout'])}" for m in points])
    run.end()
    with atomic_path(out_best) as tmp:
        tmp.write_text(json.dumps({**best, "points": len(points), "families": families}, indent=2) + "\n")
    return best
