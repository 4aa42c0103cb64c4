# Data: the annotation table (or a public dataset's own layout, with data.import) becomes the
# validated segments and the splits of every fold. The user's files (data.*, split.file) are
# local(): a module's prefix, which Snakemake puts before every other input and output, is not
# put before them (they are where the config says, relative to the working directory).


# Write data.annotations from a public dataset's own layout (config block data.import;
# `ferseq import` does the same from the command line). A checkpoint, so that the later stages
# are planned from the table once it exists (checkpoints.import_annotations.get(), common.smk).
if config["data"].get("import"):

    checkpoint import_annotations:
        input:
            # The subjects table of the folders format, when one is given.
            [local(config["data"]["import"]["subjects"])]
            if config["data"]["import"].get("subjects")
            else [],
        output:
            annotations=local(config["data"]["annotations"]),
            skipped=local(config["data"]["annotations"] + ".skipped.csv"),
        log:
            "results/logs/data/import_annotations.log",
        benchmark:
            "results/benchmarks/data/import_annotations.tsv"
        conda:
            "../../envs/ferseq.yaml"
        # Clips are probed (frames counted) in parallel threads.
        threads: 4
        resources:
            mem_mb=2000,
            runtime=120,
        params:
            format=config["data"]["import"]["format"],
            path=config["data"]["import"].get("path") or config["data"]["videos"],
            videos=config["data"]["videos"],
            options={
                key: config["data"]["import"].get(key)
                for key in (
                    "onset_apex",
                    "subject_regex",
                    "subjects",
                    "subject_from_clip",
                    "clips",
                )
            },
            count_frames=config["data"].get("count_frames", "decode"),
        script:
            "../scripts/import_annotations.py"


rule segments:
    input:
        annotations=local(config["data"]["annotations"]),
    output:
        segments="results/data/segments.parquet",
        videos="results/data/videos.parquet",
        dropped=report(
            "results/data/dropped_segments.csv",
            caption="../report/dropped_segments.rst",
            category="Data",
        ),
        counts=report(
            "results/data/class_counts.csv",
            caption="../report/class_counts.rst",
            category="Data",
        ),
    log:
        "results/logs/data/segments.log",
    benchmark:
        "results/benchmarks/data/segments.tsv"
    conda:
        "../../envs/ferseq.yaml"
    threads: 2
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        videos=config["data"]["videos"],
        classes=config["classes"],
        schema=ANNOTATIONS_SCHEMA,
        min_segment_frames=config["data"]["min_segment_frames"],
        max_segment_frames=config["data"]["max_segment_frames"],
        strict=config["data"]["strict"],
        count_frames=config["data"]["count_frames"],
    script:
        "../scripts/segments.py"


rule splits:
    input:
        segments="results/data/segments.parquet",
        # split.scheme predefined with split.file: the benchmark's folds, one line per video and fold.
        protocol=[local(config["split"]["file"])] if config["split"].get("file") else [],
    output:
        splits="results/data/splits.parquet",
        summary=report(
            "results/data/split_summary.csv",
            caption="../report/split_summary.rst",
            category="Data",
        ),
    log:
        "results/logs/data/splits.log",
    benchmark:
        "results/benchmarks/data/splits.tsv"
    conda:
        "../../envs/ferseq.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        split=config["split"],
        seed=config["seed"],
        folds=FOLDS,
    script:
        "../scripts/splits.py"
