"""Rule faces_{batch}: aligned face crops of the annotated frames of a batch of videos."""
from ferseq import faces_batch, logs

with logs.step(snakemake.log[0]):
    faces_batch.run_batch(
        faces_batch.video_ids(snakemake.output.faces),
        snakemake.input.segments,
        snakemake.params.videos_dir,
        # skip_faceless_videos from the config, not a parameter: turning it on after a failure
        # must not rerun the batches that succeeded.
        {
            **snakemake.params.faces,
            "skip_faceless_videos": snakemake.config["faces"]["skip_faceless_videos"],
        },
        snakemake.output.faces,
        snakemake.output.qc,
        snakemake.params.partial,
    )
