# Shared by every stage: config validation, the planned videos and folds, the final targets.
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.logging import logger
from snakemake.utils import validate

import ferseq.config
import ferseq.tracking
from ferseq.annotations import planned_videos
from ferseq.grid import grid, job_outputs, job_points


SCHEMAS = Path(workflow.basedir) / "workflow" / "schemas"

try:
    validate(config, "../schemas/config.schema.yaml")
except WorkflowError:
    raise WorkflowError(ferseq.config.explain(config, SCHEMAS / "config.schema.yaml")) from None
ferseq.config.check(config)

onstart:
    # Jobs on many nodes writing one sqlite file over a shared filesystem can corrupt it.
    if workflow.non_local_exec and ferseq.tracking.is_local_store(config):
        logger.warning(
            "mlflow.tracking_uri is a local sqlite store but jobs run on a cluster: "
            "set it to an `mlflow server` URI (http://host:port, see README, 'Running on a cluster')"
        )


_VIDEOS = {}


def videos():
    """``video_id -> video`` of the planned videos, read from the annotation table once.

    Built without probing any video, so the DAG stays cheap to construct; the
    data stage validates every row before any job uses it. With ``data.import``
    the table is itself a DAG output (checkpoint import_annotations).
    """
    if not _VIDEOS:
        if config["data"].get("import"):
            checkpoints.import_annotations.get()
        _VIDEOS.update(
            planned_videos(
                config["data"]["annotations"],
                config["data"]["videos"],
                config["classes"],
                config["data"]["min_segment_frames"],
            )
        )
    return _VIDEOS


FOLDS = list(range(config["split"]["k"] if config["split"]["scheme"] == "kfold" else 1))
GRID = grid(config["sequence_model"])
EVAL_METHODS = ["per_frame", "aggregation", "cnn_lstm"]


def video_path(video_id):
    """The file (or image folder) of a planned video."""
    return Path(config["data"]["videos"]) / videos()[video_id]


def final_outputs(wildcards):
    """The targets of the whole workflow; each stage adds its final outputs."""
    return [
        "results/data/segments.parquet",
        "results/data/splits.parquet",
        "results/data/split_summary.csv",
        "results/faces/qc.csv",
        *expand("results/folds/{fold}/features", fold=FOLDS),
        *expand("results/folds/{fold}/windows/counts.csv", fold=FOLDS),
        "results/evaluation/summary.csv",
        "results/evaluation/summary.md",
    ]


wildcard_constraints:
    fold=r"\d+",
    arch="|".join(config["sequence_model"]["architectures"]),
    hidden=r"\d+",
