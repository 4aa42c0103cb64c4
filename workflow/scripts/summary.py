"""Rule summary: the folds' predictions pooled into scores with intervals, paired differences and the verdict."""
from ferseq.common import logs
from ferseq.evaluation import summary

with logs.step(snakemake.log[0]):
    names = ("csv", "md", "per_person", "per_person_png", "differences_png")
    outputs = {name: snakemake.output[name] for name in names}
    table = summary.summarize(
        snakemake.input.predictions,
        snakemake.input.splits,
        outputs,
        resamples=snakemake.params.resamples,
        seed=snakemake.params.seed,
        confidence=snakemake.params.confidence,
        normalise=snakemake.params.normalise,
        initialised_from=snakemake.params.frame_init,
    )
    summary.log_summary(snakemake.config, table, list(outputs.values()))
