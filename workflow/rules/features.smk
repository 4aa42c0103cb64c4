rule features:
    input:
        model="results/folds/{fold}/frame_model/model.pt",
        faces="results/faces/{video}.parquet",
        segments="results/data/segments.parquet",
    output:
        "results/folds/{fold}/features/{video}.parquet",
    log:
        "results/logs/folds/{fold}/features/{video}.log",
    benchmark:
        "results/benchmarks/folds/{fold}/features/{video}.tsv"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=120,
        gpu=1,
    conda:
        "../../envs/ferseq.yaml"
    script:
        "../scripts/features.py"


rule features_stats:
    input:
        lambda w: expand(
            "results/folds/{fold}/features/{video}.parquet", fold=w.fold, video=videos()
        ),
    output:
        "results/folds/{fold}/features/stats.csv",
    log:
        "results/logs/folds/{fold}/features/stats.log",
    benchmark:
        "results/benchmarks/folds/{fold}/features/stats.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        "../../envs/ferseq.yaml"
    script:
        "../scripts/features_stats.py"
