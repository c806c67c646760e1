"""Reading item side information from one or more files, fields merged by item (:func:`read_item_sources`).

The formats: RecBole atomic ``.item`` files (:mod:`peterrec.data.item_atomic`) and
Amazon 2014 ``meta_<Category>.json`` / ``.json.gz`` (:mod:`peterrec.data.item_meta`).
The result, :class:`~peterrec.data.item_atomic.RawItemFeatures`, holds the values by raw
item token; :class:`peterrec.data.item_features.ItemFeatures` turns it into tables.
"""

from __future__ import annotations

import os

from peterrec.data.item_atomic import RawItemFeatures, item_header_fields, read_atomic_items
from peterrec.data.item_meta import DEFAULT_META_FIELDS, META_FIELDS, META_TEXT, read_amazon_meta
from peterrec.errors import ConfigError, DataError

FORMATS = ("auto", "item", "amazon_meta")


def detect_format(path):
    """``item`` for ``.item``, ``amazon_meta`` for ``.json`` / ``.json.gz``; DataError otherwise."""
    lower = path.lower()
    if lower.endswith(".item"):
        return "item"
    if lower.endswith(".json") or lower.endswith(".json.gz"):
        return "amazon_meta"
    raise DataError(f"{path}: cannot tell the item-feature format from the name (expected .item, .json or .json.gz)")


def read_item_sources(paths, fields=None, *, fmt="auto", max_bad_share=0.05, flag="item_fields"):
    """Read one or more side-information files and merge their fields by item.

    Args:
        paths: a path or a sequence of paths (a comma-separated string is split).
        fields: field names to keep (``None``: every field of ``.item`` files,
            ``DEFAULT_META_FIELDS`` of meta files). A name no file has is a
            ConfigError naming ``--{flag}``.
        fmt: one of ``FORMATS``.
        max_bad_share: meta files only: the largest share of unparseable lines
            tolerated (they are skipped and counted).

    Raises:
        ConfigError: an unknown field or format, a field in two files.
        DataError: a missing or malformed file.
    """
    paths = split_paths(paths)
    if not paths:
        raise ConfigError("--item_data: no side-information file given")
    if fmt not in FORMATS:
        raise ConfigError(f"--item_format: {fmt!r} is not one of {', '.join(FORMATS)}")
    wanted = None if fields is None else list(dict.fromkeys(split_paths(fields)))
    merged = RawItemFeatures({}, {}, {}, [])
    available = {}
    for path in paths:
        if not os.path.isfile(path):
            raise DataError(f"{path}: no such side-information file")
        kind = detect_format(path) if fmt == "auto" else fmt
        header_fields = item_header_fields(path) if kind == "item" else {**META_FIELDS, **{t: "text" for t in META_TEXT}}
        available[path] = header_fields
        take = [f for f in (wanted if wanted is not None else (list(header_fields) if kind == "item" else DEFAULT_META_FIELDS)) if f in header_fields]
        if kind == "item":
            raw = read_atomic_items(path, take)
        else:
            text = [f for f in take if f in META_TEXT]
            if text:
                raise ConfigError(
                    f"--{flag}: {', '.join(text)} of {path} is text; peterrec does not embed text at run time: give "
                    "precomputed vectors as a float_seq column of a .item file"
                )
            raw = read_amazon_meta(path, take, max_bad_share=max_bad_share)
        for name, kind_ in raw.kinds.items():
            if name in merged.kinds:
                raise ConfigError(f"--{flag}: field {name!r} is in more than one of --item_data's files")
            merged.kinds[name] = kind_
        for item, values in raw.rows.items():
            merged.rows.setdefault(item, {}).update(values)
        merged.stats[path] = raw.stats
        merged.sources.append(path)
    if wanted is not None:
        unknown = [f for f in wanted if f not in merged.kinds]
        if unknown:
            have = "; ".join(f"{p}: {', '.join(v) or 'none'}" for p, v in available.items())
            raise ConfigError(f"--{flag}: unknown field(s) {', '.join(map(repr, unknown))} (available: {have})")
    if not merged.kinds:
        raise ConfigError(f"--{flag}: no side-information field selected from {', '.join(paths)}")
    return merged


def split_paths(value):
    """A list from a list/tuple or a comma-separated string (empty entries dropped)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return [str(part) for part in value]
