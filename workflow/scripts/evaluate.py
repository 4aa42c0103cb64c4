"""Rule evaluate: per-frame CNN, frame aggregation and CNN-LSTM on the same test windows of a fold."""
from pathlib import Path

from ferseq import evaluate, logs

with logs.step(snakemake.log[0]):
    evaluate.evaluate_fold(
        snakemake.input.test,
        snakemake.input.best,
        snakemake.config,
        int(snakemake.wildcards.fold),
        Path(snakemake.output.tables[0]).parent,
    )
