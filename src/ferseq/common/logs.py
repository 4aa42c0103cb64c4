"""Send a stage's progress messages to its Snakemake log file (and stderr)."""

from __future__ import annotations

import logging
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ferseq.common.errors import FerseqError


def setup(log_file: str | Path | None = None, level: int = logging.INFO) -> None:
    """Route the ``ferseq`` loggers to ``log_file`` (created) and to stderr."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, mode="w"))
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    logger = logging.getLogger("ferseq")
    logger.handlers.clear()
    for handler in handlers:
        handler.setFormatter(fmt)
        logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False


@contextmanager
def step(log_file: str | Path | None) -> Iterator[None]:
    """Run one pipeline step: log to ``log_file``; an input error ends it with its message, not a traceback."""
    setup(log_file)
    try:
        yield
    except FerseqError as err:
        logging.getLogger("ferseq").error("%s", err)
        sys.exit(1)
