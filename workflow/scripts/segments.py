"""Rule segments: validate the annotation table against the videos and write the data tables."""
from ferseq.common import logs
from ferseq.data import annotations

with logs.step(snakemake.log[0]):
    annotations.write_segments(
        annotations=snakemake.input.annotations,
        videos_dir=snakemake.params.videos,
        classes=snakemake.params.classes,
        schema=snakemake.params.schema,
        out_segments=snakemake.output.segments,
        out_videos=snakemake.output.videos,
        out_dropped=snakemake.output.dropped,
        out_counts=snakemake.output.counts,
        min_segment_frames=snakemake.params.min_segment_frames,
        max_segment_frames=snakemake.params.max_segment_frames,
        strict=snakemake.params.strict,
        count_frames=snakemake.params.count_frames,
    )
