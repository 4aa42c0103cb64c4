# Write data.annotations from a public dataset's own layout (config block data.import;
# `ferseq import` does the same from the command line). Include this file only when
# config["data"]["import"] is present. A checkpoint, so that a Snakefile can plan the
# per-video jobs from the table once it exists (checkpoints.import_annotations.get()).


checkpoint import_annotations:
    input:
        # The subjects table of the folders format, when one is given.
        [config["data"]["import"]["subjects"]] if config["data"]["import"].get("subjects") else [],
    output:
        annotations=config["data"]["annotations"],
        skipped=config["data"]["annotations"] + ".skipped.csv",
    params:
        format=config["data"]["import"]["format"],
        path=config["data"]["import"].get("path") or config["data"]["videos"],
        videos=config["data"]["videos"],
        options={
            key: config["data"]["import"].get(key)
            for key in ("onset_apex", "subject_regex", "subjects", "subject_from_clip", "clips")
        },
        count_frames=config["data"].get("count_frames", "decode"),
    log:
        "results/logs/data/import_annotations.log",
    benchmark:
        "results/benchmarks/data/import_annotations.tsv"
    # Clips are probed (frames counted) in parallel threads.
    threads: 4
    resources:
        mem_mb=2000,
        runtime=120,
    conda:
        "../../envs/ferseq.yaml"
    script:
        "../scripts/import_annotations.py"
