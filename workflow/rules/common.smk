# Shared by every stage: config validation, the planned videos and folds, the final targets.
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.logging import logger
from snakemake.utils import validate

import ferseq.cluster
import ferseq.config
import ferseq.errors
import ferseq.group_packing
import ferseq.pretrained
import ferseq.splits
import ferseq.tracking
from ferseq.annotations import planned_videos
from ferseq.grid import grid, job_outputs, job_points
from ferseq.predictions import methods as evaluation_methods
from ferseq.windows import overlaps as windows_overlap


SCHEMAS = Path(workflow.basedir) / "workflow" / "schemas"

# The SLURM profile packs a fold's grid jobs 3 to a SLURM job (group-components); Snakemake 9.27
# packs them again, unevenly, when a checkpoint makes it build the DAG twice (ferseq.group_packing).
ferseq.group_packing.apply()

try:
    validate(config, "../schemas/config.schema.yaml")
except WorkflowError:
    raise WorkflowError(ferseq.config.explain(config, SCHEMAS / "config.schema.yaml")) from None
ferseq.config.check(config)

# frame_model.pretrained: true is the reference (ImageNet weights). Checked once, in the
# process that plans the DAG, so an offline run without the weights stops before any job;
# the jobs themselves (on nodes without network) only read the weights file.
if config["frame_model"]["pretrained"] is True and workflow.is_main_process:
    try:
        _source = ferseq.pretrained.check_obtainable(
            config["frame_model"]["backbone"], config["frame_model"]["weights_dir"]
        )
    except ferseq.errors.ConfigError as err:
        raise WorkflowError(str(err)) from None
    logger.info(f"frame_model.pretrained: ImageNet weights from {_source}")

onstart:
    # Jobs on many nodes writing one sqlite file over a shared filesystem can corrupt it.
    if workflow.non_local_exec and ferseq.tracking.is_local_store(config):
        logger.warning(
            "mlflow.tracking_uri is a local sqlite store but jobs run on a cluster: "
            "set it to an `mlflow server` URI (http://host:port, see README, 'Running on a cluster')"
        )
    # A SLURM job bigger than every node of its partition would pend forever: refuse before submitting.
    if workflow.non_local_exec and (nodes := ferseq.cluster.cluster_nodes()):
        try:
            ferseq.cluster.check(ferseq.cluster.requests_from_dag(workflow.dag, workflow.parent_groupids), nodes)
        except ferseq.cluster.ClusterError as err:
            raise WorkflowError(str(err)) from None


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
        try:
            planned = planned_videos(
                config["data"]["annotations"],
                config["data"]["videos"],
                config["classes"],
                config["data"]["min_segment_frames"],
            )
        except ferseq.errors.FerseqError as err:  # a malformed table: its message, not a traceback
            raise WorkflowError(str(err)) from None
        check_faces_plan(planned)  # every video is in a faces batch (faces.smk)
        _VIDEOS.update(planned)
    return _VIDEOS


# holdout: [0]; kfold: 0..k-1; predefined: the folds of the annotation table's column or split.file, read once here.
try:
    FOLDS = ferseq.splits.planned_folds(config)
except ferseq.errors.FerseqError as err:  # a malformed fold column or split file: its message, not a traceback
    raise WorkflowError(str(err)) from None
GRID = grid(config["sequence_model"])
# Every evaluated method; the sequence model's row is named by what it reads (windows.features).
EVAL_METHODS = list(evaluation_methods(config["windows"]["features"]))


def weights_file(backbone):
    """The backbone weights file that rule pretrained_weights writes."""
    return str(ferseq.pretrained.weights_path(config["frame_model"]["weights_dir"], backbone))


def pretrained_weights_input(wildcards):
    """frame_model's initial backbone weights: the materialised ImageNet file with pretrained: true."""
    if config["frame_model"]["pretrained"] is True:
        return weights_file(config["frame_model"]["backbone"])
    return []


def final_outputs(wildcards):
    """The targets of the whole workflow; each stage adds its final outputs."""
    if FACES_BATCHES is None:  # data.import, first run: the rest is planned from its table (faces.smk)
        return ["results/data/segments.parquet", "results/data/splits.parquet", "results/data/split_summary.csv"]
    return [
        "results/data/segments.parquet",
        "results/data/splits.parquet",
        "results/data/split_summary.csv",
        "results/faces/qc.csv",
        *expand("results/folds/{fold}/features", fold=FOLDS),
        *expand("results/folds/{fold}/windows/counts.csv", fold=FOLDS),
        "results/evaluation/summary.csv",
        "results/evaluation/summary.md",
        "results/evaluation/per_person.csv",
        "results/evaluation/per_person.png",
        "results/evaluation/differences.png",
    ]


wildcard_constraints:
    fold=r"\d+",
    arch="|".join(config["sequence_model"]["architectures"]),
    hidden=r"\d+",
