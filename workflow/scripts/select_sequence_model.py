"""Rule select_sequence_model: the fold's best grid point by val macro F1 (ties: val loss)."""
from pathlib import Path

from ferseq import logs, search

with logs.step(snakemake.log[0]):
    search.select(
        snakemake.input.metrics,
        snakemake.config,
        int(snakemake.wildcards.fold),
        Path(snakemake.input.parent).read_text().strip(),
        snakemake.output[0],
    )
