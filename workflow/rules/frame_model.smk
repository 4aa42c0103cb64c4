# ImageNet weights (frame_model.init: imagenet) are written once, where Snakemake runs (a
# local rule: the login node of a cluster, which has network or timm's cache); the
# frame_model jobs on the nodes only read the file.
rule pretrained_weights:
    output:
        weights_file("{backbone}"),
    log:
        "results/logs/pretrained_weights/{backbone}.log",
    benchmark:
        "results/benchmarks/pretrained_weights/{backbone}.tsv"
    conda:
        "../../envs/ferseq.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    script:
        "../scripts/pretrained_weights.py"


rule frame_model:
    input:
        faces=faces_inputs,
        segments="results/data/segments.parquet",
        splits="results/data/splits.parquet",
        # where the network starts (frame_model.init): ImageNet weights, the pretraining's model, a checkpoint
        weights=initial_weights_file(FRAME_INIT),
    output:
        model="results/folds/{fold}/frame_model/model.pt",
        metrics=report(
            "results/folds/{fold}/frame_model/metrics.csv",
            caption="../report/frame_model_metrics.rst",
            category="Frame model",
            subcategory="fold {fold}",
        ),
    log:
        "results/logs/folds/{fold}/frame_model.log",
    benchmark:
        "results/benchmarks/folds/{fold}/frame_model.tsv"
    conda:
        "../../envs/ferseq.yaml"
    # the main process and its frame_model.num_workers loader workers (sbatch --cpus-per-task)
    threads: config["frame_model"]["num_workers"] + 1
    resources:
        mem_mb=8000,
        runtime=720,
        gpu=1,
    params:
        faces=faces_files,
        # the training state between attempts (a killed or timed-out job resumes from it); Snakemake
        # does not delete it on failure, the job removes it when it succeeds
        resume=beside("model", ".resume"),
    script:
        "../scripts/frame_model.py"
