"""Rule windows: cut one fold's segments into fixed-length windows of frame features, per split."""
from pathlib import Path

from ferseq import logs, windows

with logs.step(snakemake.log[0]):
    windows.write_windows(
        sorted(Path(snakemake.input.features).glob("*.parquet")),
        snakemake.input.segments,
        snakemake.input.splits,
        fold=int(snakemake.wildcards.fold),
        length=snakemake.params.length,
        overlap=snakemake.params.overlap,
        policy=snakemake.params.missing_face,
        outputs={s: snakemake.output[s] for s in ("train", "val", "test")},
        out_counts=snakemake.output.counts,
        classes=snakemake.params.classes,
    )
