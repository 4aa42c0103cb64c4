"""Rule landmark_baseline: one fold's per-frame classifier on the normalised landmarks of the faces stage."""
from ferseq.common import logs
from ferseq.evaluation import landmark_baseline

with logs.step(snakemake.log[0]):
    landmark_baseline.train_fold(
        snakemake.params.faces,
        snakemake.input.segments,
        snakemake.input.splits,
        int(snakemake.wildcards.fold),
        snakemake.config,
        snakemake.output.model,
        snakemake.output.metrics,
    )
