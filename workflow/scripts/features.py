"""Rule features: a fold's 512-d frame embeddings and class probabilities, one file per video, and their stats."""
import torch

from ferseq.common import logs
from ferseq.features import feature_extraction

with logs.step(snakemake.log[0]):
    torch.set_num_threads(snakemake.threads)
    feature_extraction.extract_fold(
        snakemake.input.model,
        snakemake.params.faces,
        snakemake.input.segments,
        snakemake.output[0],
        snakemake.config,
        int(snakemake.wildcards.fold),
    )
