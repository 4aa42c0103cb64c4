from ferseq.sequence_model.grid_plan import gpu_resources, uses_gpu


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
    conda:
        "../../envs/ferseq.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    script:
        "../scripts/open_search.py"


# One job per fold, architecture and hidden size trains all its (lr, dropout) points in one
# process, together (one fused computation per batch): the windows are read and moved to the
# device, and Python, torch and MLflow start, once for those points.
rule sequence_model:
    input:
        train="results/folds/{fold}/windows/train.parquet",
        val="results/folds/{fold}/windows/val.parquet",
        medians="results/folds/{fold}/windows/subject_medians.parquet",
        parent="results/folds/{fold}/sequence_model/mlflow_parent_run.txt",
    output:
        models=job_outputs(
            config["sequence_model"],
            "results/folds/{{fold}}/sequence_model/{{arch}}/{point}.pt",
        ),
        metrics=job_outputs(
            config["sequence_model"],
            "results/folds/{{fold}}/sequence_model/{{arch}}/{point}.json",
        ),
    log:
        "results/logs/folds/{fold}/sequence_model/{arch}/h{hidden}.log",
    benchmark:
        "results/benchmarks/folds/{fold}/sequence_model/{arch}/h{hidden}.tsv"
    # A cluster run submits several of a fold's CPU jobs in one SLURM job (see the slurm profile);
    # a GPU job goes alone (a group adds up its jobs' GPUs, and they would share one device).
    group:
        None if uses_gpu(config["sequence_model"]) else "sequence_grid_{fold}"
    conda:
        "../../envs/ferseq.yaml"
    threads: 1
    # runtime, minutes: up to 30 a point (200 epochs on one core); measure yours in results/benchmarks/.
    # gpu=1 only with sequence_model.device: cuda; "auto" cannot know at DAG time whether a node has a
    # GPU, so it never asks for one (it uses one if the job sees it).
    resources:
        **gpu_resources(config["sequence_model"]),
        mem_mb=2000,
        runtime=30 * len(job_points(config["sequence_model"])),
    params:
        points=job_points(config["sequence_model"]),
        # what the models read (embedding, landmarks or both): a change retrains the grid
        features=config["windows"]["features"],
        # each feature minus its person's median (windows.normalise: subject), or not
        normalise=config["windows"]["normalise"],
        # the job's training state between attempts (removed when it succeeds)
        resume=beside("models", ".resume", "h{hidden}"),
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
    conda:
        "../../envs/ferseq.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    script:
        "../scripts/select_sequence_model.py"
