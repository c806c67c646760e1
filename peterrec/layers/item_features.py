"""The item side-information tables inside a Keras model (:class:`ItemFeatureTables`) and field embeddings.

The tables are built by :class:`peterrec.data.item_features.ItemFeatures`.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from peterrec.data.item_features import CATEGORICAL, PAD_VALUE, ItemFeatures
from peterrec.errors import ConfigError


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
