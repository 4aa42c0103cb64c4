rule segments:
    input:
        annotations=config["data"]["annotations"],
        schema=SCHEMAS / "annotations.schema.yaml",
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
    params:
        videos=config["data"]["videos"],
        classes=config["classes"],
        min_segment_frames=config["data"]["min_segment_frames"],
        max_segment_frames=config["data"]["max_segment_frames"],
        strict=config["data"]["strict"],
        count_frames=config["data"]["count_frames"],
    log:
        "results/logs/data/segments.log",
    benchmark:
        "results/benchmarks/data/segments.tsv"
    threads: 2
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        "../../envs/ferseq.yaml"
    script:
        "../scripts/segments.py"


rule splits:
    input:
        segments="results/data/segments.parquet",
        # split.scheme predefined with split.file: the benchmark's folds, one line per video and fold.
        protocol=[config["split"]["file"]] if config["split"].get("file") else [],
    output:
        splits="results/data/splits.parquet",
        summary=report(
            "results/data/split_summary.csv",
            caption="../report/split_summary.rst",
            category="Data",
        ),
    params:
        split=config["split"],
        seed=config["seed"],
        folds=FOLDS,
    log:
        "results/logs/data/splits.log",
    benchmark:
        "results/benchmarks/data/splits.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        "../../envs/ferseq.yaml"
    script:
        "../scripts/splits.py"
