"""After the workflow (``ferseq predict``, ``ferseq export``): a trained run's models applied to new videos
(``predict``), and the bundle that carries them, verified before anything is loaded (``manifest``), with its model
card (``model_card``)."""
