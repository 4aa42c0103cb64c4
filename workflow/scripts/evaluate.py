"""Rule evaluate: every method's predictions on a fold's test data, then their scores, tables and confusion plots."""
from pathlib import Path

from ferseq import evaluate, logs

with logs.step(snakemake.log[0]):
    evaluate.evaluate_fold(
        snakemake.input.test,
        snakemake.input.best,
        snakemake.input.baseline,
        snakemake.input.splits,
        snakemake.config,
        int(snakemake.wildcards.fold),
        Path(snakemake.output.predictions).parent,
    )
