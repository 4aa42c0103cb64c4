# Shared by every stage: config validation, the planned videos and folds, the final targets.
import os
from pathlib import Path

import yaml
from snakemake.exceptions import WorkflowError
from snakemake.logging import logger
from snakemake.utils import validate

import ferseq.common.cluster
import ferseq.common.config
import ferseq.common.errors
import ferseq.common.mlflow_runs
import ferseq.data.splits
import ferseq.faces.batch_plan
import ferseq.common.initialisation
import ferseq.frame_model.pretrained_weights
from ferseq.evaluation.predictions import methods as evaluation_methods
from ferseq.sequence_model.grid_plan import families, grid, job_outputs, job_points
from ferseq.sequences.windows import overlaps as windows_overlap

# The schemas of workflow/schemas, found through the workflow's source (also when it is used as a
# module, from a checkout or a remote source); the annotation table's as its content, a parameter of
# the data stage (a changed schema reruns it; the cached file's path changes with every run).
CONFIG_SCHEMA = workflow.source_path("../schemas/config.schema.yaml")
ANNOTATIONS_SCHEMA = yaml.safe_load(
    Path(workflow.source_path("../schemas/annotations.schema.yaml")).read_text()
)

try:
    validate(config, "../schemas/config.schema.yaml")
except WorkflowError:
    raise WorkflowError(ferseq.common.config.explain(config, CONFIG_SCHEMA)) from None
ferseq.common.config.check(config)

# Where the folds' frame CNNs start (frame_model.init, or its older spelling pretrained) and where
# the pretraining starts when they start from it (ferseq.common.initialisation).
FRAME_INIT = ferseq.common.initialisation.choice(config)
PRETRAIN_INIT = ferseq.common.initialisation.choice(config, "pretrain")
FRAME_INIT_TEXT = ferseq.common.initialisation.describe(config)
# A checkpoint path of another architecture stops the run now, not in a job on a GPU node.
# (pretrain.init only when the folds start from the pretraining.)
_STARTS = {"frame_model": FRAME_INIT}
if FRAME_INIT == "pretrain":
    _STARTS["pretrain"] = PRETRAIN_INIT
for _section, _init in _STARTS.items():
    if ferseq.common.initialisation.is_path(_init) and workflow.is_main_process:
        import ferseq.frame_model.initial_weights  # (torch: imported only when a path is given)

        try:
            ferseq.frame_model.initial_weights.check_checkpoint(
                _init, config["frame_model"], f"{_section}.init"
            )
        except ferseq.common.errors.ConfigError as err:
            raise WorkflowError(str(err)) from None

# ImageNet weights are the reference start. Checked once, in the process that plans the DAG, so
# an offline run without the weights stops before any job; the jobs themselves (on nodes without
# network) only read the weights file.
_IMAGENET = [section for section, init in _STARTS.items() if init == "imagenet"]
if workflow.is_main_process and _IMAGENET:
    try:
        _source = ferseq.frame_model.pretrained_weights.check_obtainable(
            config["frame_model"]["backbone"],
            config["frame_model"]["weights_dir"],
            f"{_IMAGENET[0]}.init",
        )
    except ferseq.common.errors.ConfigError as err:
        raise WorkflowError(str(err)) from None
    logger.info(f"{_IMAGENET[0]}.init: ImageNet weights from {_source}")


# Checks of a run about to start on a cluster. (Snakemake runs the main Snakefile's onstart alone: used as
# a module, these are skipped; nothing else depends on them.)
onstart:
    # Jobs on many nodes writing one sqlite file over a shared filesystem can corrupt it.
    if workflow.non_local_exec and ferseq.common.mlflow_runs.is_local_store(config):
        logger.warning(
            "mlflow.tracking_uri is a local sqlite store but jobs run on a cluster: "
            "set it to an `mlflow server` URI (http://host:port, see docs/clusters.md)"
        )
    # A SLURM job bigger than every node of its partition would pend forever: refuse before submitting.
    if workflow.non_local_exec and (nodes := ferseq.common.cluster.cluster_nodes()):
        try:
            ferseq.common.cluster.check(
                ferseq.common.cluster.requests_from_dag(
                    workflow.dag, workflow.parent_groupids
                ),
                nodes,
            )
        except ferseq.common.cluster.ClusterError as err:
            raise WorkflowError(str(err)) from None


def plan_faces():
    """The planned videos and faces batches, from the annotation table read once here; None while
    data.import has not written the table yet (the first run imports it and runs the data stage).
    """
    table = Path(config["data"]["annotations"])
    if config["data"].get("import") and not table.exists():
        if workflow.is_main_process:
            logger.warning(
                f"data.annotations ({table}) does not exist yet: this run imports it and runs the "
                "data stage; run the same command again for the rest (the faces stage is planned "
                "from that table)"
            )
        return None
    try:
        return ferseq.faces.batch_plan.plan_from_config(config, ANNOTATIONS_SCHEMA)
    except (
        ferseq.common.errors.FerseqError
    ) as err:  # a malformed table: its message, not a traceback
        raise WorkflowError(str(err)) from None


FACES_PLAN = plan_faces()
# Each batch's plan by name, for rule faces_plan (faces.smk), which writes its file.
FACES_BATCHES = (
    {batch.name: batch for batch in FACES_PLAN.batches} if FACES_PLAN else {}
)
# The table as it was planned from: with data.import, a rerun of the import in this run changes it.
_PLANNED_TABLE = (
    Path(config["data"]["annotations"]).stat().st_mtime_ns if FACES_PLAN else None
)
# The faces settings that shape the outputs, a parameter of each batch, so changing one reruns
# the batches. Not among them (ferseq.faces.batch_plan.NOT_IN_OUTPUT): missing_face, batch_frames
# and skip_faceless_videos.
FACES_SETTINGS = {
    k: v
    for k, v in config["faces"].items()
    if k not in ferseq.faces.batch_plan.NOT_IN_OUTPUT
}


def videos():
    """``video_id -> video`` of the planned videos (FACES_PLAN), built without probing any video.

    The data stage validates every row before any job uses it. With ``data.import`` the table
    is itself a DAG output (checkpoint import_annotations): when the import runs again in this
    run, the plan made from the earlier table no longer holds, and the run stops.
    """
    table = config["data"]["annotations"]
    if FACES_PLAN is None:
        raise WorkflowError(
            f"data.annotations ({table}) did not exist when this run started, so the faces stage "
            "is not planned: run the import (results/data/segments.parquet), then the same command again"
        )
    if config["data"].get("import"):
        checkpoints.import_annotations.get()
        if Path(table).stat().st_mtime_ns != _PLANNED_TABLE:
            raise WorkflowError(
                f"data.annotations ({table}) was imported again after this run planned the faces "
                "batches: run the same command again"
            )
    return {vid: planned.video for vid, planned in FACES_PLAN.videos.items()}


def faces_qc_tables(wildcards):
    """The QC table of every faces batch."""
    videos()  # stops with a message if the plan does not hold
    return [
        f"results/faces/batches/{batch.name}.qc.csv" for batch in FACES_PLAN.batches
    ]


def faces_inputs(wildcards):
    """The input to declare for the faces files (results/faces/{video}.parquet) a later stage reads:
    the QC table of every faces batch, written after all of the batch's faces files. One file per
    batch instead of one per video keeps a large corpus's DAG small: Snakemake looks up the
    producer of every input of every job (16,000 videos x 3 rules x 10 folds otherwise).
    """
    return faces_qc_tables(wildcards)


def faces_files(wildcards, input):
    """A params function: ``video_id -> faces file`` of every planned video, in the folder of the faces
    stage's outputs as this job's inputs name them (``input.faces``: the batches' QC tables,
    results/faces/batches/{batch}.qc.csv), so under a module's ``prefix`` too."""
    faces_dir = Path(input.faces[0]).parent.parent
    return {v: str(faces_dir / f"{v}.parquet") for v in videos()}


def beside(name, *parts):
    """A params function: the path ``parts`` (wildcards filled in) in the folder of the job's output ``name``
    (its first file, if several). Snakemake puts a module's ``prefix`` before every output, not before
    params: paths derived from outputs follow it."""

    def path(wildcards, output):
        first = output[name] if isinstance(output[name], str) else output[name][0]
        parts_ = (part.format(**wildcards) for part in parts)
        return os.path.normpath(Path(first).parent.joinpath(*parts_))

    return path


# holdout: [0]; kfold: 0..k-1; predefined: the folds of the annotation table's column (the table
# FACES_PLAN read) or of split.file.
try:
    FOLDS = ferseq.data.splits.planned_folds(
        config, FACES_PLAN.table.table if FACES_PLAN else None
    )
except ferseq.common.errors.FerseqError as err:
    # a malformed fold column or split file: its message, not a traceback
    raise WorkflowError(str(err)) from None
GRID = grid(config["sequence_model"])
# Whether the finetune stage runs (the CNN-LSTM fine-tuned end to end): a row of the evaluation.
FINETUNE = bool(config.get("finetune", {}).get("enabled", False))
# Every evaluated method: a sequence model's row is named by what it reads (windows.features) and its
# family (one row per family the grid trains), and the fine-tuned CNN-LSTM when it runs.
EVAL_METHODS = list(
    evaluation_methods(
        config["windows"]["features"], families(config["sequence_model"]), FINETUNE
    )
)


def weights_file(backbone):
    """The backbone weights file that rule pretrained_weights writes."""
    return str(
        ferseq.frame_model.pretrained_weights.weights_path(
            config["frame_model"]["weights_dir"], backbone
        )
    )


def initial_weights_file(init):
    """The file an init choice starts a network from: the ImageNet weights that rule
    pretrained_weights writes, the pretraining's model (rule pretrain), the user's checkpoint, or
    none."""
    if init == "imagenet":
        return weights_file(config["frame_model"]["backbone"])
    if init == "pretrain":
        return ferseq.common.initialisation.PRETRAIN_MODEL
    if init == "none":
        return []
    return local(init)


# The fine-tuned CNN-LSTM of each fold (rule finetune, finetune.smk), when FINETUNE.
FINETUNE_MODEL = "results/folds/{fold}/finetune/model.pt"
FINETUNE_METRICS = "results/folds/{fold}/finetune/model.json"
# window_id and probs of every test window: the evaluation's row "CNN-LSTM fine-tuned"
FINETUNE_TEST_WINDOWS = "results/folds/{fold}/finetune/test_windows.parquet"


def final_outputs(wildcards):
    """The targets of the whole workflow; each stage adds its final outputs."""
    if FACES_PLAN is None:  # data.import, first run: the rest is planned from its table
        return [
            "results/data/segments.parquet",
            "results/data/splits.parquet",
            "results/data/split_summary.csv",
        ]
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
        *(expand(FINETUNE_MODEL, fold=FOLDS) if FINETUNE else []),
        *(["results/pretrain/model.json"] if FRAME_INIT == "pretrain" else []),
    ]


wildcard_constraints:
    fold=r"\d+",
    batch=r"b[0-9a-f]{10}",
    arch="|".join(config["sequence_model"]["architectures"]),
    hidden=r"\d+",
