"""Settings by name: a config dataclass field from its name (or RecBole's) and a value coerced to its type.

What ``--set model.field=value``, params files (``pipelines.tune``) and
:meth:`peterrec.recipes.Recipe.config` share.
"""

from __future__ import annotations

import ast
import dataclasses
import math

from peterrec.errors import ConfigError

# RecBole configuration names -> peterrec field names (used only when the name is not a field itself)
RECBOLE_NAMES = {
    "embedding_size": "embedding_dim",
    "train_batch_size": "batch_size",
    "dropout_prob": "dropout",
    "MAX_ITEM_LIST_LENGTH": "max_len",
    "stopping_step": "patience",
}


def resolve_field(config_class, name, where, model="the model"):
    """``name`` (or its RecBole alias) as a field of ``config_class``; ConfigError naming ``where`` otherwise."""
    fields = {f.name for f in dataclasses.fields(config_class)}
    if name in fields:
        return name
    if RECBOLE_NAMES.get(name) in fields:
        return RECBOLE_NAMES[name]
    raise ConfigError(f"{where}: {name!r} is not a setting of {model} ({config_class.__name__} has no field {name!r})")


def coerce(config_class, field, value, where):
    """``value`` converted to the type of ``config_class.field``'s default (int, float, bool, tuple)."""
    default = next(f for f in dataclasses.fields(config_class) if f.name == field).default
    if default is dataclasses.MISSING or default is None:
        # an optional field: a string that spells a number or a bool is that value (a path or JSON stays a string)
        parsed = _literal(value) if isinstance(value, str) else value
        return parsed if isinstance(parsed, (bool, int, float)) or parsed is None else value
    if isinstance(value, str) and not isinstance(default, str):
        value = _literal(value)
    bad = ConfigError(f"{where}: {field} expects a {type(default).__name__}, got {value!r}")
    if isinstance(default, bool):
        if value not in (True, False, 0, 1):
            raise bad
        return bool(value)
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise bad
        return int(round(value))
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if isinstance(default, (tuple, list)):
        if not isinstance(value, (tuple, list)):
            raise bad
        return type(default)(value)
    if isinstance(default, str) and not isinstance(value, str):
        raise bad
    return value


def _literal(text):
    """A string that is a Python literal as that literal (RecBole parses such config strings), else itself."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a plain string: the type check that follows names the field
