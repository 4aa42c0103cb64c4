"""Stage 5, sequences (rule ``windows``): the feature store's frames become windows of ``windows.length`` frames per
split, ``results/folds/{fold}/windows/{split}.parquet`` (``windows``: consecutive or uniform sampling)."""
