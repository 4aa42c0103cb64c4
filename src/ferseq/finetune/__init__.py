"""Stage 7, fine-tuning (rule ``finetune``, off unless ``finetune.enabled``): a fold's frame model and its selected
LSTM trained together, end to end, on the grid's windows of face crops. The joint network and its model file
(``cnn_lstm``), the crops of each window, decoded by OpenCV in loader workers or on the GPU (``window_crops``),
and the training loop with the test windows' probabilities (``training``)."""
