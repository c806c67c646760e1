"""RecBole atomic ``.inter`` files: interactions (``"inter"`` format) and per-user finetuning targets."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from peterrec.data.formats.lines import BOM, check_token, iter_lines, parse_number
from peterrec.data.synthetic import ensure_default
from peterrec.errors import DataError

if TYPE_CHECKING:
    from peterrec.data.readers import Grouper

_INTER_USER = "user_id"
_INTER_ITEM = "item_id"
_INTER_RATING = "rating"
_INTER_TIMESTAMP = "timestamp"


def read_user_targets(path: str) -> dict[str, list[str]]:
    """Reads per-user target tokens from a RecBole file (finetuning targets).

    The file has a ``user_id`` column and either ``item_id`` (target-domain
    items, e.g. ``Data/synthetic/target.inter``) or ``label`` (a user-profile
    class, e.g. ``Data/synthetic/profile.inter``); rows are sorted stably by
    ``timestamp`` when that column exists.

    Returns:
        ``{user: [target tokens]}`` in order of first appearance.

    Raises:
        DataError: missing file, no usable columns, malformed lines (file:line).
    """
    if not os.path.isfile(ensure_default(path)):
        raise DataError(f"{path}: no such file")
    lines = iter_lines(path)
    first = next(lines, None)
    if first is None:
        raise DataError(f"{path}: empty file (expected a RecBole header line and targets)")
    header_line, header = first
    value_name = _INTER_ITEM if _INTER_ITEM in [f.split(":", 1)[0].strip() for f in header.split("\t")] else "label"
    columns = parse_inter_header(f"{path}:{header_line}", header, required=(_INTER_USER, value_name))
    user_col, value_col, time_col = columns[_INTER_USER], columns[value_name], columns.get(_INTER_TIMESTAMP)
    declared = header.split("\t")[value_col].split(":", 1)
    if len(declared) == 2 and declared[1].strip() != "token":
        raise DataError(
            f"{path}:{header_line}: column {declared[0].strip()!r} is typed {declared[1].strip()!r}; targets must be single tokens "
            f"('{value_name}:token', one {value_name} per line: write a user with several on several lines)"
        )
    rows: dict[str, list[tuple[float, str]]] = {}
    for number, text in lines:
        where, fields = inter_fields(path, number, text, header, header_line, len(columns))
        when = 0.0 if time_col is None else parse_number(fields[time_col], _INTER_TIMESTAMP, where)
        rows.setdefault(check_token(fields[user_col], "user_id", where), []).append((when, check_token(fields[value_col], value_name, where)))
    if not rows:
        raise DataError(f"{path}: header only, no targets")
    return {user: [token for _, token in sorted(entries, key=lambda e: e[0])] for user, entries in rows.items()}


def parse_inter_header(where: str, header: str, required: tuple = (_INTER_USER, _INTER_ITEM)) -> dict[str, int]:
    """Maps the column names of a RecBole header to their positions.

    Raises:
        DataError: Duplicate names, or a ``required`` column missing.
    """
    names = [field.split(":", 1)[0].strip() for field in header.split("\t")]
    columns: dict[str, int] = {}
    for position, name in enumerate(names):
        if name in columns:
            raise DataError(f"{where}: duplicate column {name!r} in header {header!r}")
        columns[name] = position
    missing = [name for name in required if name not in columns]
    if missing:
        hint = "; it has a single column: RecBole files are tab-separated" if len(names) == 1 else ""
        raise DataError(
            f"{where}: header {header!r} lacks the column(s) {', '.join(missing)} "
            f"(expected e.g. 'user_id:token<TAB>item_id:token<TAB>timestamp:float'){hint}"
        )
    return columns


def inter_fields(path: str, number: int, text: str, header: str, header_line: int, num_columns: int) -> tuple[str, list[str]]:
    """``("path:line", tab-separated fields)`` of one ``.inter`` data line, checked against the header."""
    where = f"{path}:{number}"
    _check_not_header(text, header, header_line, where)
    fields = text.split("\t")
    if len(fields) != num_columns:
        raise DataError(f"{where}: expected {num_columns} tab-separated columns as in the header, got {len(fields)}")
    return where, fields


def _check_not_header(text: str, header: str, header_line: int, where: str) -> None:
    """Rejects a data line that repeats the header (files concatenated with their headers)."""
    if text.lstrip(BOM) == header:
        raise DataError(f"{where}: repeats the header of line {header_line} (were two files concatenated?)")


def read_inter(path: str, grouper: Grouper) -> None:
    """Reads a RecBole ``.inter`` file into ``grouper``."""
    lines = iter_lines(path)
    first = next(lines, None)
    if first is None:
        raise DataError(f"{path}: empty file (expected a RecBole header line and interactions)")
    header_line, header = first
    columns = parse_inter_header(f"{path}:{header_line}", header)
    user_col, item_col = columns[_INTER_USER], columns[_INTER_ITEM]
    rating_col, time_col = columns.get(_INTER_RATING), columns.get(_INTER_TIMESTAMP)
    grouper.set_columns(has_timestamps=time_col is not None, has_ratings=rating_col is not None, where=f"the header {header!r}")
    for number, text in lines:
        where, fields = inter_fields(path, number, text, header, header_line, len(columns))
        grouper.lines_read += 1
        grouper.add(
            check_token(fields[user_col], "user_id", where),
            check_token(fields[item_col], "item_id", where),
            None if time_col is None else parse_number(fields[time_col], _INTER_TIMESTAMP, where),
            None if rating_col is None else parse_number(fields[rating_col], _INTER_RATING, where),
        )
    if grouper.lines_read == 0:
        raise DataError(f"{path}: header only, no interactions")
