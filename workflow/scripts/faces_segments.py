"""Checkpoint faces_segments: the segment table cut into one CSV per faces batch."""
from ferseq import faces_batch, logs

with logs.step(snakemake.log[0]):
    faces_batch.write_batch_segments(
        snakemake.input.segments,
        snakemake.input.annotations,
        snakemake.params.videos,
        snakemake.params.classes,
        snakemake.params.min_segment_frames,
        snakemake.params.batch_frames,
        snakemake.output,
        "results/faces/.partial",
    )
