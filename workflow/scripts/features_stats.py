"""Rule features_stats: one MLflow run and one table for a fold's feature extraction."""
from ferseq import features, logs

with logs.step(snakemake.log[0]):
    features.log_features_run(snakemake.input, snakemake.config, int(snakemake.wildcards.fold), snakemake.output[0])
