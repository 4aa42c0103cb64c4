"""Rule finetune: train one fold's frame model and selected LSTM together, end to end, on its windows of crops."""
from pathlib import Path

import torch

from ferseq.common import logs
from ferseq.finetune import training

with logs.step(snakemake.log[0]):
    torch.set_num_threads(snakemake.threads)
    training.finetune(
        snakemake.params.faces,
        snakemake.input.frame_model,
        snakemake.input.best,
        Path(snakemake.input.train).parent,
        int(snakemake.wildcards.fold),
        snakemake.config,
        snakemake.output.model,
        snakemake.output.metrics,
        snakemake.output.test,
        resume_dir=snakemake.params.resume,
    )
