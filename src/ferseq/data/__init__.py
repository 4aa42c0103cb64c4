"""Stage 1, data (rules ``segments``, ``splits``, ``import_annotations``): raw videos and an annotation table become
validated segments (``annotations``, with each video probed by ``videos``) and the train/val/test splits of every
fold (``splits``); ``importers`` write the annotation table of a public dataset from its own layout."""
