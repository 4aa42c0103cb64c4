"""Rule splits: assign each unit (subject, video or segment) to train/val/test per fold, or take a benchmark's folds."""
from ferseq.common import logs
from ferseq.data import splits

with logs.step(snakemake.log[0]):
    split = snakemake.params.split
    splits.write_splits(
        snakemake.input.segments,
        snakemake.output.splits,
        snakemake.output.summary,
        unit=split["unit"],
        scheme=split["scheme"],
        fractions=split["fractions"],
        k=split["k"],
        seed=snakemake.params.seed,
        val_fraction=split.get("val_fraction"),
        split_file=split.get("file"),
        folds=snakemake.params.folds,
    )
