"""Rule faces_{batch}: aligned face crops of the annotated frames of a batch of videos."""
from ferseq.common import logs
from ferseq.faces import batch_job

with logs.step(snakemake.log[0]):
    batch_job.run_batch(
        snakemake.input.plan,
        snakemake.params.videos_dir,
        # skip_faceless_videos from the config, not a parameter: turning it on after a failure
        # must not rerun the batches that succeeded (nor does data.strict, which the data stage applies).
        {
            **snakemake.params.faces,
            "skip_faceless_videos": snakemake.config["faces"]["skip_faceless_videos"],
        },
        snakemake.output.faces,
        snakemake.output.qc,
        snakemake.params.partial,
        strict=snakemake.config["data"]["strict"],
        digest=snakemake.params.digest,
    )
