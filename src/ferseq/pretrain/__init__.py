"""Stage 2b, pretraining (rules ``pretrain_faces``, ``pretrain``; off by default): the frame network trained on a
static facial-expression image set before the folds, so that each fold's frame model can start from it
(``frame_model.init: pretrain``). Image sets as users have them (``image_sets``: a folder of class folders, a CSV,
RAF-DB, FER2013, FERPlus, AffectNet), their faces found and aligned as the videos' are (``image_faces``), and the
training (``training``), the frame model's own loop."""
