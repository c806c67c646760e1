"""Line and cell helpers shared by the readers of :mod:`peterrec.data.formats`."""

from __future__ import annotations

import math
from collections.abc import Iterator

from peterrec.errors import DataError

BOM = "\ufeff"


def iter_lines(path: str) -> Iterator[tuple[int, str]]:
    """Yields ``(line_number, text)`` for the non-blank lines of a UTF-8 file.

    A UTF-8 byte order mark and ``\\r\\n`` line endings are accepted.

    Raises:
        DataError: A line is not valid UTF-8.
    """
    with open(path, "rb") as stream:
        for number, raw in enumerate(stream, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise DataError(f"{path}:{number}: not valid UTF-8 (byte {err.start}: {raw[err.start:err.start + 1]!r})") from None
            if number == 1 and text.startswith(BOM):
                text = text[len(BOM):]
            text = text.rstrip("\n").rstrip("\r")
            if text.strip():
                yield number, text


def parse_number(value: str, column: str, where: str) -> float:
    """Parses a finite float, naming ``where`` (file:line) and the column on error."""
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number):
        raise DataError(f"{where}: column {column!r} must be a finite number, got {value!r}")
    return number


def check_token(token: str, what: str, where: str) -> str:
    """Rejects empty tokens (the empty string is never a valid id)."""
    if not token:
        raise DataError(f"{where}: empty {what}")
    return token
