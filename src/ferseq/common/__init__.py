"""The workflow's plumbing, shared by every stage: config checks (``config``), the configuration reference
generated from the schema (``config_reference``), user errors (``errors``), step logs (``logs``), atomic outputs
(``outputs``), MLflow runs and their journal (``mlflow_runs``, ``mlflow_outbox``), training state kept between
attempts (``resume``), model files read as data only (``model_files``) and the SLURM checks (``cluster``). It
imports no stage."""
