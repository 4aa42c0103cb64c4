"""Rule select_sequence_model: the fold's best grid point by val macro F1 (ties: val loss)."""
from pathlib import Path

from ferseq.common import logs
from ferseq.sequence_model import selection

with logs.step(snakemake.log[0]):
    selection.select(
        snakemake.input.metrics,
        snakemake.config,
        int(snakemake.wildcards.fold),
        Path(snakemake.input.parent).read_text().strip(),
        snakemake.output[0],
    )
