"""Rule faces: aligned face crops of one video's annotated frames."""
from ferseq import faces, logs

with logs.step(snakemake.log[0]):
    faces.run_video(
        snakemake.input.video,
        snakemake.wildcards.video,
        snakemake.input.segments,
        snakemake.params.faces,
        snakemake.output.faces,
        snakemake.output.qc,
    )
