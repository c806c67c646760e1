"""Whitespace-separated ``user item [rating [timestamp]]`` lines (``"caser"`` format)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from peterrec.data.formats.lines import iter_lines, parse_number
from peterrec.errors import DataError

if TYPE_CHECKING:
    from peterrec.data.readers import Grouper

_CASER_COLUMNS = (2, 3, 4)


def read_caser(path: str, grouper: Grouper) -> None:
    """Reads a whitespace-separated ``user item [rating [timestamp]]`` file."""
    width = None
    for number, text in iter_lines(path):
        where = f"{path}:{number}"
        fields = text.split()
        if width is None:
            if len(fields) not in _CASER_COLUMNS:
                raise DataError(f"{where}: expected 2, 3 or 4 whitespace-separated columns (user item [rating [timestamp]]), got {len(fields)}")
            width, first_line = len(fields), number
            grouper.set_columns(has_timestamps=width == 4, has_ratings=width >= 3, where=f"{path} ({width} columns)")
        elif len(fields) != width:
            raise DataError(f"{where}: expected {width} whitespace-separated columns as on line {first_line}, got {len(fields)}")
        grouper.lines_read += 1
        grouper.add(
            fields[0],
            fields[1],
            parse_number(fields[3], "timestamp", where) if width == 4 else None,
            parse_number(fields[2], "rating", where) if width >= 3 else None,
        )
    if width is None:
        raise DataError(f"{path}: empty file (expected 'user item [rating [timestamp]]' lines)")
