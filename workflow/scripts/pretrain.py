"""Rule pretrain: the frame network trained on the image set's faces, early-stopped on its val images."""
import torch

from ferseq.common import logs
from ferseq.pretrain import training

with logs.step(snakemake.log[0]):
    torch.set_num_threads(snakemake.threads)
    training.pretrain(
        snakemake.input.faces,
        snakemake.input.images,
        snakemake.config,
        snakemake.output.model,
        snakemake.output.summary,
        snakemake.output.metrics,
        splits_path=snakemake.input.splits,
        init_weights=snakemake.input.get("weights") or None,
        resume_dir=snakemake.params.resume,
    )
