"""Rule frame_model: train one fold's Xception frame model on its train frames, early-stopped on val."""
import torch

from ferseq import frame_model, logs

with logs.step(snakemake.log[0]):
    torch.set_num_threads(snakemake.threads)
    frame_model.train_frame_model(
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
