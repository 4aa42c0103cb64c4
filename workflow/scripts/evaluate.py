"""Rule evaluate: per-frame CNN, frame aggregation, CNN-LSTM and the landmark baseline on the same test windows of a fold."""
from pathlib import Path

from ferseq import evaluate, logs

with logs.step(snakemake.log[0]):
    evaluate.evaluate_fold(
        snakemake.input.test,
        snakemake.input.best,
        snakemake.input.baseline,
        snakemake.config,
        int(snakemake.wildcards.fold),
        Path(snakemake.output.tables[0]).parent,
    )
