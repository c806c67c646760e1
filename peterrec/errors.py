"""Errors that carry a message meant for the user.

Every error peterrec raises on bad input derives from :class:`PeterRecError`
and names the file, line or flag at fault. The pipelines print the message
(one line, no traceback) and exit with status 2.
"""


class PeterRecError(Exception):
    """Base class for user-facing errors."""


class DataError(PeterRecError, ValueError):
    """A data file is malformed; the message names the file and line."""


class VocabularyError(PeterRecError, ValueError):
    """A vocabulary is missing, edited by hand or does not match (hash)."""


class ConfigError(PeterRecError, ValueError):
    """A flag or configuration value is invalid; the message names it."""


class ExportError(PeterRecError, ValueError):
    """An export directory is missing, incomplete or of the wrong kind."""


def check(ok, flag, message):
    """Raise ConfigError naming the setting ``--flag`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"--{flag}: {message}")
