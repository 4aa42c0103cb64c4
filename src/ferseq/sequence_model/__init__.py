"""Stage 6, sequence model (rules ``open_search``, ``sequence_model``, ``select_sequence_model``): a fold's windows
become the trained LSTMs of its grid and the one selected on val. The classifiers and a point's training loop
(``classifier``), the grid's points, files and jobs, planned without torch (``grid_plan``), a job's points trained
together (``fused_training``), the grid jobs and checkpoints (``grid_search``), and the search's MLflow run and
the choice of the best point, without torch (``selection``)."""
