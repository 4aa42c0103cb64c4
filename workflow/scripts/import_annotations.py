"""Rule import_annotations: write the annotation table from a public dataset's own layout (config data.import)."""
import logging
from pathlib import Path

from ferseq.common import logs
from ferseq.common.errors import ConfigError
from ferseq.data import importers

with logs.step(snakemake.log[0]):
    params = snakemake.params
    if Path(params.path).resolve() != Path(params.videos).resolve():
        raise ConfigError(
            f"data.import.path {params.path!r} must be the folder data.videos ({params.videos!r}): "
            "the table's video paths are relative to the dataset root (leave data.import.path out to use data.videos)"
        )
    result = importers.import_dataset(
        params.format,
        params.path,
        snakemake.output.annotations,
        count_frames=params.count_frames,
        workers=snakemake.threads,
        **params.options,  # unset ones are None/false; one that does not fit the format is an error
    )
    logging.getLogger("ferseq.data.importers").info("%s", result.report(snakemake.output.annotations))
