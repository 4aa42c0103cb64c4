rule open_search:
    input:
        train="results/folds/{fold}/windows/train.parquet",
        val="results/folds/{fold}/windows/val.parquet",
    output:
        "results/folds/{fold}/sequence_model/mlflow_parent_run.txt",
    log:
        "results/logs/folds/{fold}/sequence_model/open_search.log",
    benchmark:
        "results/benchmarks/folds/{fold}/sequence_model/open_search.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        "../../envs/ferseq.yaml"
    script:
        "../scripts/open_search.py"


rule sequence_model:
    input:
        train="results/folds/{fold}/windows/train.parquet",
        val="results/folds/{fold}/windows/val.parquet",
        parent="results/folds/{fold}/sequence_model/mlflow_parent_run.txt",
    output:
        model="results/folds/{fold}/sequence_model/{arch}/lr{lr}_h{hidden}_d{dropout}.pt",
        metrics="results/folds/{fold}/sequence_model/{arch}/lr{lr}_h{hidden}_d{dropout}.json",
    log:
        "results/logs/folds/{fold}/sequence_model/{arch}/lr{lr}_h{hidden}_d{dropout}.log",
    benchmark:
        "results/benchmarks/folds/{fold}/sequence_model/{arch}/lr{lr}_h{hidden}_d{dropout}.tsv"
    # Grid points are small: a cluster run submits them in batches (see the slurm profile).
    group:
        "sequence_grid"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        "../../envs/ferseq.yaml"
    script:
        "../scripts/sequence_model.py"


rule select_sequence_model:
    input:
        metrics=lambda w: [
            f"results/folds/{w.fold}/sequence_model/{arch}/{point}.json"
            for arch, point in GRID
        ],
        parent="results/folds/{fold}/sequence_model/mlflow_parent_run.txt",
    output:
        "results/folds/{fold}/sequence_model/best.json",
    log:
        "results/logs/folds/{fold}/sequence_model/select.log",
    benchmark:
        "results/benchmarks/folds/{fold}/sequence_model/select.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        "../../envs/ferseq.yaml"
    script:
        "../scripts/select_sequence_model.py"
