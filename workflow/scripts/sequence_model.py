"""Rule sequence_model: train the (lr, dropout) points of one architecture and hidden size together on a fold's windows."""
from pathlib import Path

import torch

from ferseq.common import logs
from ferseq.sequence_model import grid_search

with logs.step(snakemake.log[0]):
    torch.set_num_threads(snakemake.threads)
    w = snakemake.wildcards
    grid_search.run_points(
        Path(snakemake.input.train).parent,
        arch=w.arch,
        hidden=int(w.hidden),
        points=snakemake.params.points,
        config=snakemake.config,
        fold=int(w.fold),
        parent_run_id=Path(snakemake.input.parent).read_text().strip(),
        out_models=snakemake.output.models,
        out_metrics=snakemake.output.metrics,
        resume_dir=snakemake.params.resume,
    )
