"""Rule summary: one row per method over all folds, beside the reference figures."""
from pathlib import Path

from ferseq import evaluate, logs

with logs.step(snakemake.log[0]):
    folds = sorted({str(Path(t).parent) for t in snakemake.input.tables})
    evaluate.summarize(folds, snakemake.input.splits, snakemake.output.csv, snakemake.output.md)
