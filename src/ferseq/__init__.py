"""ferseq: video facial-emotion recognition with sequence models, as a reproducible pipeline."""

__version__ = "0.2.0"
