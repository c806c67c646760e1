"""Ratings CSVs ``user,item,rating,timestamp`` (``"ratings"`` format: the Amazon 2014 ``ratings_<Category>.csv``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from peterrec.data.formats.lines import check_token, iter_lines, parse_number
from peterrec.errors import DataError

if TYPE_CHECKING:
    from peterrec.data.readers import Grouper

_RATINGS_COLUMNS = 4


def read_ratings(path: str, grouper: Grouper) -> None:
    """Reads a ``user,item,rating,timestamp`` CSV (Amazon 2014 ``ratings_*.csv``); a first line whose
    rating and timestamp are not numbers is a header."""
    grouper.set_columns(has_timestamps=True, has_ratings=True, where="the ratings format")
    for index, (number, text) in enumerate(iter_lines(path)):
        where = f"{path}:{number}"
        fields = text.split(",")
        if len(fields) != _RATINGS_COLUMNS:
            raise DataError(f"{where}: expected 4 comma-separated columns user,item,rating,timestamp, got {len(fields)}")
        if index == 0 and not _is_number(fields[2]) and not _is_number(fields[3]):
            continue  # header
        grouper.lines_read += 1
        grouper.add(
            check_token(fields[0].strip(), "user", where),
            check_token(fields[1].strip(), "item", where),
            parse_number(fields[3], "timestamp", where),
            parse_number(fields[2], "rating", where),
        )
    if grouper.lines_read == 0:
        raise DataError(f"{path}: no interactions (expected 'user,item,rating,timestamp' lines)")


def _is_number(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True
