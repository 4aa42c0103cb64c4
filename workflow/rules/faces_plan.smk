# The faces batches, planned when Snakemake starts (included by faces.smk): from the annotation
# table alone, without opening a video (ferseq.batches), so that every batch can be a rule that
# names its per-video outputs.
import ferseq.batches
from ferseq.annotations import AnnotationError, planned_frames


def plan_faces_batches():
    """The faces batches; None while data.import has not written the annotation table yet."""
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
        planned = planned_frames(
            table,
            config["data"]["videos"],
            config["classes"],
            config["data"]["min_segment_frames"],
        )
    except AnnotationError as err:  # a malformed table: its message, not a traceback
        raise WorkflowError(str(err)) from None
    return ferseq.batches.plan(
        {video: p.frames for video, p in planned.items()},
        config["faces"]["batch_frames"],
        {video: p.stamp for video, p in planned.items()},
    )


FACES_BATCHES = plan_faces_batches()
FACES_PLANNED = {v for batch in FACES_BATCHES or [] for v in batch.videos}
# The faces settings that shape the outputs, a parameter of each batch, so changing one reruns
# the batches. Not among them (ferseq.batches.NOT_IN_OUTPUT): missing_face, batch_frames and
# skip_faceless_videos.
FACES_SETTINGS = {
    k: v
    for k, v in config["faces"].items()
    if k not in ferseq.batches.NOT_IN_OUTPUT
}


def check_faces_plan(planned_videos):
    """Stop with one message when the DAG asks for videos that no faces batch was planned with."""
    if FACES_BATCHES is None:
        raise WorkflowError(
            f"data.annotations ({config['data']['annotations']}) did not exist when this run started, "
            "so the faces stage is not planned: run the import (results/data/segments.parquet), then "
            "the same command again"
        )
    missing = sorted(set(planned_videos) - FACES_PLANNED)
    if missing:
        raise WorkflowError(
            f"data.annotations ({config['data']['annotations']}) changed after this run planned the "
            f"faces batches: {len(missing)} video(s) ({', '.join(missing[:3])}) are in none; "
            "run the same command again"
        )


def batch_segments(name):
    """A batch's segments CSV; through the checkpoint, so that a batch whose CSV did not
    change is not rerun when the segment table is rewritten."""
    checkpoints.faces_segments.get()
    return f"results/faces/batches/{name}.segments.csv"


def faces_qc_tables(wildcards):
    """The QC table of every faces batch."""
    check_faces_plan(())
    return [f"results/faces/batches/{batch.name}.qc.csv" for batch in FACES_BATCHES]


def faces_inputs(wildcards):
    """The input to declare for the faces files (results/faces/{video}.parquet) a later stage reads:
    the QC table of every faces batch, written after all of the batch's faces files. One file per
    batch instead of one per video keeps a large corpus's DAG small: Snakemake looks up the
    producer of every input of every job (16,000 videos x 3 rules x 10 folds otherwise)."""
    videos()  # the planned videos; stops with a message if one is in no faces batch
    return faces_qc_tables(wildcards)
