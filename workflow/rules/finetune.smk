# The CNN-LSTM fine-tuned end to end (finetune.enabled; off by default): per fold, its frame model and
# the best LSTM of its grid trained together on the grid's windows of face crops. Its test windows'
# probabilities (FINETUNE_TEST_WINDOWS, common.smk) are the evaluation's "CNN-LSTM fine-tuned" row.
rule finetune:
    input:
        faces=faces_inputs,
        frame_model="results/folds/{fold}/frame_model/model.pt",
        best="results/folds/{fold}/sequence_model/best.json",
        train="results/folds/{fold}/windows/train.parquet",
        val="results/folds/{fold}/windows/val.parquet",
        test="results/folds/{fold}/windows/test.parquet",
    output:
        model=FINETUNE_MODEL,
        metrics=FINETUNE_METRICS,
        test=FINETUNE_TEST_WINDOWS,
    log:
        "results/logs/folds/{fold}/finetune.log",
    benchmark:
        "results/benchmarks/folds/{fold}/finetune.tsv"
    conda:
        "../../envs/ferseq.yaml"
    # the main process and its frame_model.num_workers loader workers, as frame_model's
    threads: config["frame_model"]["num_workers"] + 1
    resources:
        mem_mb=8000,
        runtime=720,
        gpu=1,
    params:
        faces=faces_files,
        # its settings (lr, backbone_lr, epochs, ...): a change reruns it (the job reads them from the config)
        settings=config["finetune"],
        # the training state between attempts (removed when the job succeeds)
        resume=beside("model", ".resume"),
    script:
        "../scripts/finetune.py"
