"""Rule frame_model: train one fold's Xception frame model on its train frames, early-stopped on val."""
import torch

from ferseq.common import logs
from ferseq.frame_model import training

with logs.step(snakemake.log[0]):
    torch.set_num_threads(snakemake.threads)
    training.train_frame_model(
        snakemake.params.faces,
        snakemake.input.segments,
        snakemake.input.splits,
        int(snakemake.wildcards.fold),
        snakemake.config,
        snakemake.output.model,
        snakemake.output.metrics,
        init_weights=snakemake.input.get("weights") or None,
        resume_dir=snakemake.params.resume,
    )
