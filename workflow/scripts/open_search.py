"""Rule open_search: the fold's parent MLflow run, under which every grid point logs a child run (its id, or
its journal while the tracking server is away)."""
from ferseq.common import logs
from ferseq.sequence_model import selection

with logs.step(snakemake.log[0]):
    selection.open_search(snakemake.config, int(snakemake.wildcards.fold), snakemake.output[0])
