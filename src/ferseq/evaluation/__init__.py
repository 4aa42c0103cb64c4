"""Stage 7, evaluation (rules ``landmark_baseline``, ``evaluate``, ``summary``): every method's predictions on a fold's
test data (``predictions``), their scores (``metrics``, ``fold_scores``) and plots (``plots``), and over all folds
the answer with its uncertainty (``summary``, ``uncertainty``); ``landmark_baseline`` is the per-frame floor the
frame CNN must clear."""
