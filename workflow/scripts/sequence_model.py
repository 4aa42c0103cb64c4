"""Rule sequence_model: train one grid point (architecture, lr, hidden, dropout) on a fold's windows."""
from pathlib import Path

import torch

from ferseq import logs, search

with logs.step(snakemake.log[0]):
    torch.set_num_threads(snakemake.threads)
    w = snakemake.wildcards
    search.run_point(
        Path(snakemake.input.train).parent,
        arch=w.arch,
        lr=float(w.lr),
        hidden=int(w.hidden),
        dropout=float(w.dropout),
        config=snakemake.config,
        fold=int(w.fold),
        parent_run_id=Path(snakemake.input.parent).read_text().strip(),
        out_model=snakemake.output.model,
        out_metrics=snakemake.output.metrics,
    )
