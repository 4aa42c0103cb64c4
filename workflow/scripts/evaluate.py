"""Rule evaluate: every method's predictions on a fold's test data, then their scores, tables and confusion plots."""
from pathlib import Path

from ferseq.common import logs
from ferseq.evaluation import fold_scores

with logs.step(snakemake.log[0]):
    fold_scores.evaluate_fold(
        snakemake.input.test,
        snakemake.input.best,
        snakemake.input.baseline,
        snakemake.input.splits,
        snakemake.config,
        int(snakemake.wildcards.fold),
        Path(snakemake.output.predictions).parent,
        snakemake.input.finetuned or None,
    )
