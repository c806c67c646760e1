"""Amazon 2014 ``meta_<Category>.json`` files of item side information.

Amazon 2014 ``meta_<Category>.json`` (``.json`` or ``.json.gz``): one dict
per line, parsed with ``json.loads`` and, failing that, ``ast.literal_eval``
(never ``eval``). Derived fields: ``categories`` (token_seq, the union of
every category path in order, MIIR's), ``category`` (token, the last
element of the last path, ATRank's), ``brand`` (token), ``price`` (float).
The 2018 format's flat ``category`` list is read as one path. Lines that
are not a dict with an ``asin`` are skipped and counted; more than
``max_bad_share`` of them is a ``DataError``. Text (``title``,
``description``) is not embedded here: give precomputed vectors as a
``float_seq`` column of a ``.item`` file.
"""

from __future__ import annotations

import ast
import gzip
import json
import logging
import math

from peterrec.data.item_atomic import RawItemFeatures
from peterrec.errors import ConfigError, DataError

# Amazon 2014 meta: derived field -> kind. Text fields need precomputed vectors.
META_FIELDS = {"categories": "token_seq", "category": "token", "brand": "token", "price": "float"}
META_TEXT = ("title", "description")
DEFAULT_META_FIELDS = ("categories", "brand")
_log = logging.getLogger(__name__)


def _open_text(path):
    return gzip.open(path, "rt", encoding="utf-8") if path.lower().endswith(".gz") else open(path, encoding="utf-8")


def parse_meta_line(text):
    """A meta line as a dict: JSON first, then a Python literal (``ast.literal_eval``, never ``eval``); None if neither."""
    try:
        value = json.loads(text)
    except ValueError:
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            return None
    return value if isinstance(value, dict) else None


def _category_paths(record):
    paths = record.get("categories")
    if paths is None and isinstance(record.get("category"), list):  # the 2018 format: one flat path
        paths = [record["category"]]
    if not isinstance(paths, list):
        return []
    out = []
    for path in paths:
        if isinstance(path, str):
            path = [path]
        if isinstance(path, list):
            names = [str(c).strip() for c in path if str(c).strip()]
            if names:
                out.append(names)
    return out


def _meta_value(record, field):
    if field in ("categories", "category"):
        paths = _category_paths(record)
        if not paths:
            return None
        if field == "category":
            return paths[-1][-1]
        return list(dict.fromkeys(c for path in paths for c in path))
    if field == "brand":
        brand = record.get("brand")
        return str(brand).strip() or None if brand is not None else None
    if field == "price":
        price = record.get("price")
        try:
            price = float(str(price).replace("$", "").replace(",", "").strip()) if price is not None else None
        except ValueError:
            return None
        return price if price is not None and math.isfinite(price) else None
    raise ConfigError(f"unknown meta field {field!r}")


def read_amazon_meta(path, fields=DEFAULT_META_FIELDS, *, max_bad_share=0.05):
    """Read an Amazon 2014 ``meta_<Category>.json`` (see the module docstring).

    Raises:
        DataError: more than ``max_bad_share`` of the non-blank lines are not
            a dict with an ``asin`` (the message gives the count and the first
            bad line), or no line is usable.
    """
    if not 0.0 <= max_bad_share <= 1.0:
        raise ConfigError(f"--max_bad_share: must be in [0, 1], got {max_bad_share}")
    rows, stats = {}, {"lines": 0, "bad_lines": 0, "duplicates": 0, "first_bad_line": None}
    with _open_text(path) as stream:
        for number, text in enumerate(stream, start=1):
            if not text.strip():
                continue
            stats["lines"] += 1
            record = parse_meta_line(text)
            asin = record.get("asin") if record is not None else None
            if not isinstance(asin, str) or not asin.strip():
                stats["bad_lines"] += 1
                stats["first_bad_line"] = stats["first_bad_line"] or number
                continue
            asin = asin.strip()
            if asin in rows:
                stats["duplicates"] += 1
                continue
            values = {}
            for field in fields:
                value = _meta_value(record, field)
                if value is not None:
                    values[field] = value
            rows[asin] = values
    lines, bad = stats["lines"], stats["bad_lines"]
    if lines == 0 or not rows:
        raise DataError(f"{path}: no usable meta line ({bad} of {lines} lines are not a dict with an 'asin')")
    if bad / lines > max_bad_share:
        raise DataError(
            f"{path}: {bad} of {lines} lines ({bad / lines:.1%}) are not a JSON/Python-literal dict with an 'asin' "
            f"(first: line {stats['first_bad_line']}), more than --max_bad_share {max_bad_share:g}"
        )
    if bad:
        _log.warning("%s: skipped %d of %d meta lines that are not a dict with an 'asin' (first: line %d)", path, bad, lines, stats["first_bad_line"])
    return RawItemFeatures({f: META_FIELDS[f] for f in fields}, rows, stats, [path])
