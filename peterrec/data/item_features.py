"""Item side information: readers, per-field vocabularies and per-item tables aligned to the item vocabulary.

Sources (:func:`read_item_sources`, one or more files, fields merged by item):

* RecBole atomic ``.item`` files (tab-separated, typed header
  ``item_id:token<TAB>name:type ...``): ``token`` (one value), ``token_seq``
  (space-separated values, e.g. ml-100k's ``class:token_seq`` genres),
  ``float`` and ``float_seq`` (space-separated numbers: precomputed text
  vectors). An empty cell is a missing value. A malformed line is a
  ``DataError`` naming ``file:line``.
* Amazon 2014 ``meta_<Category>.json`` (``.json`` or ``.json.gz``): one dict
  per line, parsed with ``json.loads`` and, failing that, ``ast.literal_eval``
  (never ``eval``). Derived fields: ``categories`` (token_seq, the union of
  every category path in order, MIIR's), ``category`` (token, the last
  element of the last path, ATRank's), ``brand`` (token), ``price`` (float).
  The 2018 format's flat ``category`` list is read as one path. Lines that
  are not a dict with an ``asin`` are skipped and counted; more than
  ``max_bad_share`` of them is a ``DataError``. Text (``title``,
  ``description``) is not embedded here: give precomputed vectors as a
  ``float_seq`` column of a ``.item`` file.

Tables (:class:`ItemFeatures`): every field gets its own value vocabulary
with two reserved ids, ``PAD_VALUE`` 0 (padding) and ``MISSING_VALUE`` 1 (a
first-class "missing"), real values from 2 in frequency order (ties by first
appearance, so ids are reproducible). Each table has one row per item id of
the :class:`~peterrec.data.vocab.Vocabulary` (reserved item ids included):
``token`` int32 ``[V]``, ``token_seq`` int32 ``[V, K]`` (0-padded, a
missing row is ``[1, 0, ...]``), ``float`` float32 ``[V]``, ``float_seq``
float32 ``[V, D]`` (0 where missing), plus ``present`` bool ``[V, F]``.
The pad item's row holds ``PAD_VALUE``; the other reserved items
(OOV, MASK, SEP) and items without features hold "missing".

Saved as ``<name>.npz`` + ``<name>.json`` (fields, kinds, value
vocabularies, the item vocabulary hash, counts, the npz's sha256), written
atomically; :func:`for_set` caches them inside a TFRecord set directory
(``item_features-<key>.json``, keyed by the side files' bytes, the field
selection and the vocabulary hash) and exports carry ``item_features.json`` /
``.npz``.
"""

from __future__ import annotations

import ast
import dataclasses
import gzip
import hashlib
import json
import logging
import math
import os

import keras
import numpy as np
import tensorflow as tf

from peterrec import features
from peterrec.data.vocab import Vocabulary
from peterrec.errors import ConfigError, DataError, VocabularyError

PAD_VALUE = 0
MISSING_VALUE = 1
FIRST_VALUE = 2
KINDS = ("token", "token_seq", "float", "float_seq")
CATEGORICAL = ("token", "token_seq")
FILE_NAME = "item_features"
FORMAT = "peterrec.item_features"
FORMATS = ("auto", "item", "amazon_meta")
# Amazon 2014 meta: derived field -> kind. Text fields need precomputed vectors.
META_FIELDS = {"categories": "token_seq", "category": "token", "brand": "token", "price": "float"}
META_TEXT = ("title", "description")
DEFAULT_META_FIELDS = ("categories", "brand")
MAX_SEQ_VALUES = 64  # token_seq values kept per item (more are counted as truncated)
_log = logging.getLogger(__name__)


# ---------------------------------------------------------------- raw reading
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
        header_fields = _item_header_fields(path) if kind == "item" else {**META_FIELDS, **{t: "text" for t in META_TEXT}}
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


def _open_text(path):
    return gzip.open(path, "rt", encoding="utf-8") if path.lower().endswith(".gz") else open(path, encoding="utf-8")


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


def _item_header_fields(path):
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


# ---------------------------------------------------------------- tables
@dataclasses.dataclass
class ItemFeatures:
    """Per-item feature tables aligned to an item vocabulary (see the module docstring).

    Attributes:
        fields: field names, in order.
        kinds: ``{field: kind}``.
        values: ``{field: [value tokens]}`` for categorical fields (``values[f][i]`` has id ``FIRST_VALUE + i``).
        tables: ``{field: np.ndarray}`` with one row per item id.
        present: bool ``[V, F]``.
        vocab_hash: the item vocabulary's hash.
        stats: counts (feature rows, rows of unknown items, missing shares, ...).
    """

    fields: list
    kinds: dict
    values: dict
    tables: dict
    present: np.ndarray
    vocab_hash: str
    stats: dict

    @property
    def num_items(self):
        return int(self.present.shape[0])

    def size(self, field):
        """Rows of a categorical field's embedding table (values + pad + missing)."""
        return FIRST_VALUE + len(self.values[field])

    def width(self, field):
        """Values per item (token_seq), numbers per item (float_seq), else 1."""
        table = self.tables[field]
        return int(table.shape[1]) if table.ndim == 2 else 1

    def spec(self):
        """``[{name, kind, size, width}]``: what a model needs to hold these tables (JSON-able)."""
        return [
            {"name": f, "kind": self.kinds[f], "size": self.size(f) if self.kinds[f] in CATEGORICAL else 0, "width": self.width(f)}
            for f in self.fields
        ]

    @property
    def hash(self):
        """sha256 over the fields, value vocabularies and tables (identifies the features a model was trained on)."""
        digest = hashlib.sha256(json.dumps([self.fields, self.kinds, self.values, self.vocab_hash], sort_keys=True).encode())
        for f in self.fields:
            digest.update(np.ascontiguousarray(self.tables[f]).tobytes())
        digest.update(np.ascontiguousarray(self.present).tobytes())
        return digest.hexdigest()

    @classmethod
    def build(cls, raw: RawItemFeatures, vocab: Vocabulary, max_seq_values=MAX_SEQ_VALUES):
        """Tables for ``vocab`` from raw values; feature rows of items outside ``vocab`` are counted and dropped."""
        size = vocab.size
        known = {item: values for item, values in raw.rows.items() if item in vocab}
        fields = list(raw.kinds)
        tables, values, present = {}, {}, np.zeros((size, len(fields)), bool)
        stats = {
            "feature_rows": len(raw.rows),
            "feature_rows_unknown_items": len(raw.rows) - len(known),
            "items": size - features.NUM_RESERVED,
            "items_without_features": sum(1 for t in vocab.tokens if not raw.rows.get(t)),
            "missing_share": {},
            "truncated_values": {},
            "sources": {os.path.basename(p): s for p, s in raw.stats.items()},
        }
        ids = {item: vocab.id_of(item) for item in known}
        for j, field in enumerate(fields):
            kind = raw.kinds[field]
            have = {ids[item]: row[field] for item, row in known.items() if field in row}
            rows = np.fromiter(have, dtype=np.int64, count=len(have))
            present[rows, j] = True
            if kind in CATEGORICAL:
                counts = {}
                for value in have.values():
                    for token in [value] if kind == "token" else value:
                        counts[token] = counts.get(token, 0) + 1
                tokens = sorted(counts, key=lambda t: -counts[t])  # stable: ties keep first appearance
                index = {t: FIRST_VALUE + i for i, t in enumerate(tokens)}
                values[field] = tokens
                if kind == "token":
                    table = np.full(size, MISSING_VALUE, np.int32)
                    for row, token in have.items():
                        table[row] = index[token]
                    table[features.PAD_ID] = PAD_VALUE
                else:
                    width = max(1, min(max_seq_values, max((len(v) for v in have.values()), default=1)))
                    table = np.zeros((size, width), np.int32)
                    table[:, 0] = MISSING_VALUE
                    truncated = 0
                    for row, tokens_ in have.items():
                        truncated += max(0, len(tokens_) - width)
                        kept = [index[t] for t in tokens_[:width]]
                        table[row, : len(kept)] = kept
                    table[features.PAD_ID] = PAD_VALUE
                    stats["truncated_values"][field] = truncated
            else:
                width = 1 if kind == "float" else len(next(iter(have.values()), np.zeros(1)))
                table = np.zeros((size,) if kind == "float" else (size, width), np.float32)
                for row, value in have.items():
                    table[row] = value
            tables[field] = table
            stats["missing_share"][field] = round(1.0 - float(present[features.NUM_RESERVED:, j].mean()) if size > features.NUM_RESERVED else 0.0, 4)
        return cls(fields, dict(raw.kinds), values, tables, present, vocab.hash, stats)

    def discard(self, share, seed):
        """A copy with each present (item, field) cell dropped to "missing" with probability ``share``
        (MIIR's "discard" setting, drawn once with ``seed``)."""
        if not 0.0 <= share < 1.0:
            raise ConfigError(f"--discard_share: must be in [0, 1), got {share}")
        if share == 0.0:
            return self
        drop = self.present & (np.random.default_rng([int(seed), 7]).random(self.present.shape) < share)
        tables = {}
        for j, field in enumerate(self.fields):
            table = self.tables[field].copy()
            rows = drop[:, j]
            if self.kinds[field] == "token":
                table[rows] = MISSING_VALUE
            elif self.kinds[field] == "token_seq":
                table[rows] = PAD_VALUE
                table[rows, 0] = MISSING_VALUE
            else:
                table[rows] = 0.0
            tables[field] = table
        stats = dict(self.stats, discarded={"share": share, "seed": int(seed), "cells": int(drop.sum())})
        return dataclasses.replace(self, tables=tables, present=self.present & ~drop, stats=stats)

    def standardized(self):
        """A copy whose scalar ``float`` fields are z-scored over their present items (missing stays 0)."""
        tables, scales = dict(self.tables), {}
        for j, field in enumerate(self.fields):
            if self.kinds[field] != "float" or not self.present[:, j].any():
                continue
            values = self.tables[field][self.present[:, j]]
            mean, std = float(values.mean()), float(values.std()) or 1.0
            tables[field] = np.where(self.present[:, j], (self.tables[field] - mean) / std, 0.0).astype(np.float32)
            scales[field] = {"mean": mean, "std": std}
        if not scales:
            return self
        return dataclasses.replace(self, tables=tables, stats=dict(self.stats, standardized=scales))

    # ------------------------------------------------------------ persistence
    def save(self, directory, name=FILE_NAME):
        """Write ``<name>.npz`` then ``<name>.json`` (each atomically); returns the json path."""
        os.makedirs(directory, exist_ok=True)
        arrays = {f"table_{i}": self.tables[f] for i, f in enumerate(self.fields)} | {"present": self.present}
        npz = os.path.join(directory, f"{name}.npz")
        _atomic_write(npz, lambda stream: np.savez(stream, **arrays), binary=True)
        payload = {
            "format": FORMAT,
            "version": 1,
            "fields": [{"name": f, "kind": self.kinds[f]} for f in self.fields],
            "values": self.values,
            "vocab_hash": self.vocab_hash,
            "num_items": self.num_items,
            "hash": self.hash,
            "npz_sha256": _sha256(npz),
            "stats": self.stats,
        }
        path = os.path.join(directory, f"{name}.json")
        _atomic_write(path, lambda stream: json.dump(payload, stream, indent=1, sort_keys=True, ensure_ascii=False))
        return path

    @classmethod
    def load(cls, path, vocab: Vocabulary | None = None):
        """Load from a ``.json`` path or a directory holding ``item_features.json``.

        Raises:
            DataError: a missing, corrupt or modified file.
            VocabularyError: the tables belong to another item vocabulary than ``vocab``.
        """
        if os.path.isdir(path):
            path = os.path.join(path, f"{FILE_NAME}.json")
        try:
            with open(path, encoding="utf-8") as stream:
                payload = json.load(stream)
        except (OSError, ValueError) as err:
            raise DataError(f"{path}: cannot read item features: {err}") from None
        if payload.get("format") != FORMAT:
            raise DataError(f"{path}: not a peterrec item-features file")
        npz = path[: -len(".json")] + ".npz"
        if not os.path.isfile(npz) or _sha256(npz) != payload["npz_sha256"]:
            raise DataError(f"{npz}: missing or modified (its sha256 differs from {os.path.basename(path)})")
        with np.load(npz) as data:
            fields = [f["name"] for f in payload["fields"]]
            tables = {f: data[f"table_{i}"] for i, f in enumerate(fields)}
            present = data["present"]
        out = cls(fields, {f["name"]: f["kind"] for f in payload["fields"]}, payload["values"], tables, present,
                  payload["vocab_hash"], payload["stats"])
        if vocab is not None and vocab.hash != out.vocab_hash:
            raise VocabularyError(
                f"{path}: item features built for vocabulary {out.vocab_hash[:12]}, the data's is {vocab.hash[:12]}"
            )
        return out


def _sha256(path):
    from peterrec.io import file_sha256

    return file_sha256(path)


def _atomic_write(path, write, binary=False):
    from peterrec.io import write_atomic

    write_atomic(path, write, encoding=None if binary else "utf-8", binary=binary)


def cache_key(paths, fields, fmt, vocab: Vocabulary, max_bad_share=0.05):
    """12 hex identifying the tables ``for_set`` would build (file bytes, field selection, format, vocabulary)."""
    digest = hashlib.sha256(json.dumps([split_paths(fields) if fields is not None else None, fmt, vocab.hash, max_bad_share]).encode())
    for path in split_paths(paths):
        digest.update(_sha256(path).encode())
    return digest.hexdigest()[:12]


def for_set(set_dir, vocab: Vocabulary, paths, fields=None, *, fmt="auto", max_bad_share=0.05, flag="item_fields"):
    """The item features of a TFRecord set, built once and cached in it as ``item_features-<key>.{json,npz}``."""
    for path in split_paths(paths):
        if not os.path.isfile(path):
            raise DataError(f"{path}: no such side-information file (--item_data)")
    name = f"{FILE_NAME}-{cache_key(paths, fields, fmt, vocab, max_bad_share)}"
    cached = os.path.join(set_dir, f"{name}.json")
    if os.path.isfile(cached):
        try:
            return ItemFeatures.load(cached, vocab)
        except DataError:
            _log.warning("%s is damaged; rebuilding it", cached)
    raw = read_item_sources(paths, fields, fmt=fmt, max_bad_share=max_bad_share, flag=flag)
    built = ItemFeatures.build(raw, vocab)
    built.save(set_dir, name)
    return built


# ---------------------------------------------------------------- the tables inside a Keras model
@keras.saving.register_keras_serializable(package="peterrec")
class ItemFeatureTables(keras.layers.Layer):
    """The per-item tables of :class:`ItemFeatures` as non-trainable weights (saved with the model).

    ``spec`` is :meth:`ItemFeatures.spec`; :meth:`assign` loads the arrays.
    ``call(item_ids)`` returns ``{field: (values, present)}``: int32
    ``[..., ]``/``[..., K]`` value ids or float32 ``[...]``/``[..., D]``
    numbers, and float32 ``present`` ``[...]``.
    """

    def __init__(self, spec, vocabulary_size, **kwargs):
        super().__init__(**kwargs)
        self.spec = [dict(s) for s in spec]
        self.vocabulary_size = int(vocabulary_size)
        self.value_tables, self.present_tables = {}, {}
        for s in self.spec:
            name, kind, width = s["name"], s["kind"], int(s["width"])
            shape = (self.vocabulary_size,) if kind in ("token", "float") else (self.vocabulary_size, width)
            dtype = "int32" if kind in CATEGORICAL else "float32"
            self.value_tables[name] = self.add_weight(shape=shape, dtype=dtype, initializer="zeros", trainable=False, name=f"{name}_values")
            self.present_tables[name] = self.add_weight(
                shape=(self.vocabulary_size,), dtype="float32", initializer="zeros", trainable=False, name=f"{name}_present"
            )
        self.built = True

    @property
    def fields(self):
        return [s["name"] for s in self.spec]

    def assign(self, item_features: ItemFeatures):
        """Load the arrays of ``item_features`` (its spec must equal this layer's)."""
        if item_features.spec() != self.spec or item_features.num_items != self.vocabulary_size:
            raise ConfigError(
                f"item features {item_features.spec()} over {item_features.num_items} items do not match the model's "
                f"{self.spec} over {self.vocabulary_size} items"
            )
        for j, name in enumerate(self.fields):
            self.value_tables[name].assign(item_features.tables[name])
            self.present_tables[name].assign(item_features.present[:, j].astype(np.float32))

    def call(self, item_ids):
        ids = tf.cast(item_ids, tf.int32)
        return {
            name: (tf.gather(self.value_tables[name], ids), tf.gather(self.present_tables[name], ids))
            for name in self.fields
        }

    def get_config(self):
        return super().get_config() | {"spec": self.spec, "vocabulary_size": self.vocabulary_size}


def embed_categorical(table, values, kind):
    """Embedding ``[..., d]`` of a categorical field's ``values`` (``[...]`` token, ``[..., K]`` token_seq).

    A token field is its value's row; a token_seq field the sum of its
    values' rows (``PAD_VALUE`` slots excluded): MIIR's multi-hot vector times
    the table. A missing value is the field's "missing" row.
    """
    embedded = tf.gather(table, values)
    if kind == "token":
        return embedded
    keep = tf.cast(tf.not_equal(values, PAD_VALUE), embedded.dtype)[..., None]
    return tf.reduce_sum(embedded * keep, axis=-2)


# ---------------------------------------------------------------- per-interaction behaviour types
BEHAVIOURS_FILE = "behaviours"
BEHAVIOUR_HINTS = ("behaviour", "behavior", "action", "behaviour_type", "behavior_type")


def inter_columns(path):
    """The column names of a RecBole ``.inter`` file's header (``[]`` when ``path`` is not such a file)."""
    if not (os.path.isfile(path) and path.lower().endswith(".inter")):
        return []
    with open(path, encoding="utf-8", errors="replace") as stream:
        header = stream.readline().lstrip("\ufeff").rstrip("\n").rstrip("\r")
    return [cell.split(":", 1)[0].strip() for cell in header.split("\t")]


def read_behaviour_column(path, field, *, rating_threshold=None, flag="behaviour_field"):
    """Each user's interactions of a RecBole ``.inter`` file with their ``field`` token (the behaviour type).

    Read as ``peterrec.data.readers`` reads the file (users by first
    appearance, a user's interactions sorted stably by timestamp, the same
    rating threshold), so the result lines up with the TFRecord set built
    from it. Returns ``{user: (item tokens, timestamps (int seconds) or None,
    behaviour tokens)}``.

    Raises:
        ConfigError: ``path`` is not an ``.inter`` file, or has no column ``field`` (naming ``--{flag}`` and the columns).
        DataError: a malformed line or an empty behaviour cell (``file:line``).
    """
    from peterrec.data import readers

    columns = inter_columns(path)
    if not columns:
        raise ConfigError(f"--{flag}: needs a RecBole .inter --data file with a behaviour column, got {path!r}")
    if field not in columns:
        raise ConfigError(f"--{flag}: {path} has no column {field!r} (its columns: {', '.join(columns)})")
    lines = readers._iter_lines(path)
    header_line, header = next(lines)
    index = readers._parse_inter_header(f"{path}:{header_line}", header)
    user_col, item_col, col = index["user_id"], index["item_id"], index[field]
    time_col, rating_col = index.get("timestamp"), index.get("rating")
    users = {}
    for number, text in lines:
        where, cells = readers._inter_fields(path, number, text, header, header_line, len(index))
        if rating_threshold is not None and rating_col is not None:
            if readers._parse_number(cells[rating_col], "rating", where) < rating_threshold:
                continue
        kind = cells[col].strip()
        if not kind:
            raise DataError(f"{where}: empty {field!r} (every interaction needs a behaviour type with --{flag})")
        when = None if time_col is None else readers._parse_number(cells[time_col], "timestamp", where)
        users.setdefault(cells[user_col], []).append((when, cells[item_col], kind))
    out = {}
    for user, entries in users.items():
        if time_col is not None:
            entries.sort(key=lambda entry: entry[0])
        out[user] = ([e[1] for e in entries], None if time_col is None else [int(e[0]) for e in entries], [e[2] for e in entries])
    return out


@dataclasses.dataclass
class Behaviours:
    """Behaviour-type ids of every interaction of a TFRecord set, aligned with its records' ``items``.

    Attributes:
        field: the ``.inter`` column they come from.
        types: type tokens; id ``k`` is ``types[k]`` (frequency order, ties by first appearance).
        users: raw user ids, one per record.
        values: int32, the users' id sequences concatenated; ``row_splits`` int64 ``[len(users) + 1]``.
        stats: counts (``interactions`` per type).
    """

    field: str
    types: list
    users: list
    values: np.ndarray
    row_splits: np.ndarray
    stats: dict

    def type_id(self, token, flag="candidate_behaviour"):
        """The id of a type token (ConfigError naming ``--{flag}`` and the types otherwise)."""
        if token not in self.types:
            raise ConfigError(f"--{flag}: {token!r} is not a behaviour type of --behaviour_field {self.field} ({', '.join(self.types)})")
        return self.types.index(token)

    def of(self, user):
        """The id sequence of one user (numpy)."""
        k = self.users.index(user)
        return self.values[self.row_splits[k] : self.row_splits[k + 1]]

    def lookup_fn(self):
        """``record -> int32 [n]``: the behaviour ids of a parsed TFRecord record (for ``tf.data`` maps)."""
        table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(tf.constant(self.users), tf.range(len(self.users), dtype=tf.int64)), default_value=-1
        )
        values, splits = tf.constant(self.values, tf.int32), tf.constant(self.row_splits, tf.int64)

        def lookup(record):
            row = table.lookup(record["user"])
            tf.debugging.assert_non_negative(row, message="a record's user has no behaviour row")
            return values[splits[row] : splits[row + 1]]

        return lookup

    def save(self, directory, name=BEHAVIOURS_FILE):
        os.makedirs(directory, exist_ok=True)
        npz = os.path.join(directory, f"{name}.npz")
        _atomic_write(npz, lambda stream: np.savez(stream, values=self.values, row_splits=self.row_splits), binary=True)
        payload = {"field": self.field, "types": self.types, "users": self.users, "stats": self.stats, "npz_sha256": _sha256(npz)}
        path = os.path.join(directory, f"{name}.json")
        _atomic_write(path, lambda stream: json.dump(payload, stream, ensure_ascii=False))
        return path

    @classmethod
    def load(cls, path):
        with open(path, encoding="utf-8") as stream:
            payload = json.load(stream)
        npz = path[: -len(".json")] + ".npz"
        if not os.path.isfile(npz) or _sha256(npz) != payload["npz_sha256"]:
            raise DataError(f"{npz}: missing or modified")
        with np.load(npz) as data:
            return cls(payload["field"], payload["types"], payload["users"], data["values"], data["row_splits"], payload["stats"])


def align_behaviours(set_dir, vocab: Vocabulary, raw, field, data="--data"):
    """``Behaviours`` for the records of a TFRecord set from :func:`read_behaviour_column`'s ``raw``.

    Each record's items are a subsequence of the user's interactions in the
    file (the set's filters only drop interactions: consecutive repeats,
    k-core, too-short users); they are matched in order, by item id (and
    timestamp when the set has them), earliest first.

    Raises:
        DataError: a record's user or items are not in the file (the set was built from another file).
    """
    from peterrec.data import dataset

    counts = {}
    for _, _, kinds in raw.values():
        for kind in kinds:
            counts[kind] = counts.get(kind, 0) + 1
    types = sorted(counts, key=lambda t: -counts[t])  # stable: ties keep first appearance
    type_ids = {t: k for k, t in enumerate(types)}
    users, chunks, splits = [], [], [0]
    for record in dataset._records(set_dir):
        user = record["user"].numpy().decode("utf-8")
        items, times = record["items"].numpy(), record["timestamps"].numpy()
        if user not in raw:
            raise DataError(f"{data}: user {user!r} of the TFRecord set {set_dir} is not in the file (built from another file?)")
        tokens, raw_times, kinds = raw[user]
        raw_ids = vocab.encode(tokens)[0]
        out, j = np.zeros(len(items), np.int32), 0
        for i, item in enumerate(items):
            while j < len(raw_ids) and not (raw_ids[j] == item and (not len(times) or raw_times is None or raw_times[j] == times[i])):
                j += 1
            if j == len(raw_ids):
                raise DataError(f"{data}: user {user!r}'s interactions in the TFRecord set {set_dir} do not match the file (built from another file?)")
            out[i] = type_ids[kinds[j]]
            j += 1
        users.append(user)
        chunks.append(out)
        splits.append(splits[-1] + len(out))
    values = np.concatenate(chunks) if chunks else np.zeros(0, np.int32)
    stats = {"interactions": {t: int(np.sum(values == k)) for k, t in enumerate(types)}}
    return Behaviours(field, types, users, values, np.asarray(splits, np.int64), stats)


def behaviours_for_set(set_dir, vocab: Vocabulary, data, field, *, rating_threshold=None):
    """The behaviour ids of a set's records, read from ``data`` once and cached in the set (``behaviours-<key>.json``)."""
    if not os.path.isfile(data):
        raise ConfigError(f"--behaviour_field: needs a RecBole .inter --data file with a behaviour column, got {data!r}")
    digest = hashlib.sha256(json.dumps([field, rating_threshold, vocab.hash]).encode())
    digest.update(_sha256(data).encode())
    cached = os.path.join(set_dir, f"{BEHAVIOURS_FILE}-{digest.hexdigest()[:12]}.json")
    if os.path.isfile(cached):
        try:
            return Behaviours.load(cached)
        except (DataError, OSError, ValueError, KeyError):
            _log.warning("%s is damaged; rebuilding it", cached)
    raw = read_behaviour_column(data, field, rating_threshold=rating_threshold)
    built = align_behaviours(set_dir, vocab, raw, field, data)
    built.save(set_dir, os.path.basename(cached)[: -len(".json")])
    return built
