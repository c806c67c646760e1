"""TensorFlow Datasets interaction datasets (``"tfds"`` format; needs the optional ``tensorflow_datasets``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from peterrec.errors import DataError

if TYPE_CHECKING:
    from peterrec.data.readers import Grouper

_TFDS_USER_KEYS = ("user_id",)
_TFDS_ITEM_KEYS = ("item_id", "movie_id", "bucketized_item_id")
_TFDS_RATING_KEYS = ("user_rating", "rating")
_TFDS_TIME_KEYS = ("timestamp",)


def _first_key(keys: tuple[str, ...], available: dict[str, Any]) -> str | None:
    """Returns the first of ``keys`` present in ``available``."""
    return next((key for key in keys if key in available), None)


def _as_token(value: Any) -> str:
    """Converts a TFDS feature value (bytes or number) to a token string."""
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def read_tfds(name: str, grouper: Grouper) -> None:
    """Reads the ``train`` split of a TensorFlow Datasets interaction dataset."""
    try:
        import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
    except ImportError:
        raise DataError(f"{name}: format 'tfds' needs tensorflow_datasets; install it with: pip install -e .[tfds]") from None
    try:
        dataset = tfds.load(name, split="train")
    except Exception as err:  # tfds raises many types (DatasetNotFoundError, download errors)
        raise DataError(f"{name}: cannot load the TFDS dataset: {err}") from None
    spec = dataset.element_spec
    user_key, item_key = _first_key(_TFDS_USER_KEYS, spec), _first_key(_TFDS_ITEM_KEYS, spec)
    if user_key is None or item_key is None:
        raise DataError(f"{name}: TFDS features {sorted(spec)} lack a user id {_TFDS_USER_KEYS} or item id {_TFDS_ITEM_KEYS}")
    rating_key, time_key = _first_key(_TFDS_RATING_KEYS, spec), _first_key(_TFDS_TIME_KEYS, spec)
    grouper.set_columns(has_timestamps=time_key is not None, has_ratings=rating_key is not None, where=f"TFDS dataset {name}")
    for row in tfds.as_numpy(dataset):
        grouper.lines_read += 1
        grouper.add(
            _as_token(row[user_key]),
            _as_token(row[item_key]),
            None if time_key is None else float(row[time_key]),
            None if rating_key is None else float(row[rating_key]),
        )
