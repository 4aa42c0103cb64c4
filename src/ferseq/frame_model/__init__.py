"""Stage 3, frame model (rules ``pretrained_weights``, ``frame_model``): a fold's train face crops become its
per-frame CNN, ``results/folds/{fold}/frame_model/model.pt``. The network (``network``: timm backbone, GAP,
FC 1024-512-256, softmax), its training loop (``training``), ImageNet weights fetched once where there is network
(``pretrained_weights``), and the crops fed to it: decoded by OpenCV in loader workers (``crops``) or on the GPU
(``device_crops``)."""
