"""Errors a user can cause. Each message names the file, row or config key to fix."""


class FerseqError(Exception):
    """Base of the errors that come from inputs, not from bugs: shown without a traceback."""


class ConfigError(FerseqError, ValueError):
    """A config value that passes the schema but cannot work (e.g. a class map to an unknown class)."""
