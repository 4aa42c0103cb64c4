"""Rule features: one video's 512-d frame embeddings and class probabilities under the fold's model."""
import torch

from ferseq import features, logs

with logs.step(snakemake.log[0]):
    torch.set_num_threads(snakemake.threads)
    features.extract_features(
        snakemake.input.model,
        snakemake.input.faces,
        snakemake.input.segments,
        snakemake.output[0],
        snakemake.config,
        int(snakemake.wildcards.fold),
        video_id=snakemake.wildcards.video,
    )
