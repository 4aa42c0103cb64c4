"""Stage 4, features (rule ``features``): every face frame of every video becomes a row of the fold's feature store,
``results/folds/{fold}/features/{video}.parquet`` (FC-512 embedding, class probabilities, normalised landmarks),
one job per fold with the model loaded once (``feature_extraction``)."""
