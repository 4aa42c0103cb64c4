"""Rule windows: cut one fold's segments into fixed-length windows of frame features, per split."""
from ferseq.common import logs
from ferseq.sequences import windows

with logs.step(snakemake.log[0]):
    windows.write_windows(
        windows.feature_files(snakemake.input.features),
        snakemake.input.segments,
        snakemake.input.splits,
        fold=int(snakemake.wildcards.fold),
        length=snakemake.params.length,
        overlap=snakemake.params.overlap,
        policy=snakemake.params.missing_face,
        outputs={s: snakemake.output[s] for s in ("train", "val", "test")},
        out_counts=snakemake.output.counts,
        classes=snakemake.params.classes,
        sampling=snakemake.params.sampling,
        draws=snakemake.params.draws,
        seed=snakemake.params.seed,
        out_medians=snakemake.output.medians,
    )
