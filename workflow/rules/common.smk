# Shared by every stage: config validation, the planned videos and folds, the final targets.
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

import ferseq.config
from ferseq.annotations import planned_videos


SCHEMAS = Path(workflow.basedir) / "workflow" / "schemas"

try:
    validate(config, "../schemas/config.schema.yaml")
except WorkflowError:
    raise WorkflowError(ferseq.config.explain(config, SCHEMAS / "config.schema.yaml")) from None
ferseq.config.check(config)
# Built from the annotation table without probing any video, so the DAG stays
# cheap to construct; the data stage validates every row before any job uses it.
VIDEOS = planned_videos(
    config["data"]["annotations"],
    config["data"]["videos"],
    config["classes"],
    config["data"]["min_segment_frames"],
)
FOLDS = list(range(config["split"]["k"] if config["split"]["scheme"] == "kfold" else 1))


def final_outputs():
    """The targets of the whole workflow; each stage adds its final outputs."""
    return [
        "results/data/segments.parquet",
        "results/data/splits.parquet",
        "results/data/split_summary.csv",
    ]
