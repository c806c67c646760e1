"""RecBole atomic ``.item`` files of item side information, and the raw values every side-information reader returns.

RecBole atomic ``.item`` files (tab-separated, typed header
``item_id:token<TAB>name:type ...``): ``token`` (one value), ``token_seq``
(space-separated values, e.g. ml-100k's ``class:token_seq`` genres),
``float`` and ``float_seq`` (space-separated numbers: precomputed text
vectors). An empty cell is a missing value. A malformed line is a
``DataError`` naming ``file:line``.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from peterrec.errors import DataError

KINDS = ("token", "token_seq", "float", "float_seq")


@dataclasses.dataclass
class RawItemFeatures:
    """Field values by raw item token, as read from the files.

    Attributes:
        kinds: ``{field: kind}`` in file order.
        rows: ``{item token: {field: value}}``; a field absent from a row is missing.
            Values: ``str`` (token), ``list[str]`` (token_seq), ``float``, ``np.ndarray`` (float_seq).
        stats: counts per source file (lines, bad lines, duplicates).
        sources: the files read.
    """

    kinds: dict
    rows: dict
    stats: dict
    sources: list


def _read_header(path):
    with open(path, encoding="utf-8") as stream:
        header = stream.readline().lstrip("\ufeff").rstrip("\n").rstrip("\r")
    if not header:
        raise DataError(f"{path}:1: empty file (expected a RecBole header such as 'item_id:token<TAB>class:token_seq')")
    columns = []
    for cell in header.split("\t"):
        name, _, kind = cell.partition(":")
        name, kind = name.strip(), kind.strip()
        if kind not in KINDS:
            raise DataError(f"{path}:1: column {cell!r} has type {kind!r}; expected one of {', '.join(KINDS)}")
        if name in (c[0] for c in columns):
            raise DataError(f"{path}:1: duplicate column {name!r}")
        columns.append((name, kind))
    if "item_id" not in (c[0] for c in columns):
        raise DataError(f"{path}:1: header {header!r} has no item_id column")
    return columns


def item_header_fields(path):
    return {name: kind for name, kind in _read_header(path) if name != "item_id"}


def read_atomic_items(path, fields=None):
    """Read a RecBole ``.item`` file (see the module docstring); ``fields=None`` keeps every column."""
    columns = _read_header(path)
    id_col = [c[0] for c in columns].index("item_id")
    keep = [(i, name, kind) for i, (name, kind) in enumerate(columns) if name != "item_id" and (fields is None or name in fields)]
    rows, stats = {}, {"lines": 0, "duplicates": 0}
    widths = {}
    with open(path, "rb") as stream:
        for number, raw in enumerate(stream, start=1):
            if number == 1:
                continue
            try:
                text = raw.decode("utf-8").rstrip("\n").rstrip("\r")
            except UnicodeDecodeError:
                raise DataError(f"{path}:{number}: not valid UTF-8") from None
            if not text.strip():
                continue
            where = f"{path}:{number}"
            cells = text.split("\t")
            if len(cells) != len(columns):
                raise DataError(f"{where}: expected {len(columns)} tab-separated columns as in the header, got {len(cells)}")
            stats["lines"] += 1
            item = cells[id_col].strip()
            if not item:
                raise DataError(f"{where}: empty item_id")
            if item in rows:
                stats["duplicates"] += 1
                continue
            values = {}
            for i, name, kind in keep:
                value = _parse_cell(cells[i], kind, name, where)
                if value is None:
                    continue
                if kind == "float_seq":
                    if widths.setdefault(name, len(value)) != len(value):
                        raise DataError(f"{where}: column {name!r} has {len(value)} numbers, earlier rows {widths[name]}")
                values[name] = value
            rows[item] = values
    if stats["lines"] == 0:
        raise DataError(f"{path}: header only, no items")
    return RawItemFeatures({name: kind for _, name, kind in keep}, rows, stats, [path])


def _parse_cell(cell, kind, name, where):
    """A cell's value, or None when it is empty (missing)."""
    cell = cell.strip()
    if not cell:
        return None
    if kind == "token":
        return cell
    if kind == "token_seq":
        return list(dict.fromkeys(cell.split()))
    parts = cell.split()
    try:
        numbers = [float(p) for p in parts]
    except ValueError:
        raise DataError(f"{where}: column {name!r} must hold numbers, got {cell[:40]!r}") from None
    if not all(math.isfinite(x) for x in numbers):
        raise DataError(f"{where}: column {name!r} holds a non-finite number")
    if kind == "float":
        if len(numbers) != 1:
            raise DataError(f"{where}: column {name!r} is a float, got {len(numbers)} numbers")
        return numbers[0]
    return np.asarray(numbers, np.float32)
