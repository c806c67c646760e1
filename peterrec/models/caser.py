"""Caser (Tang & Wang, WSDM 2018): convolutional sequence embedding with a user embedding.

The network follows caser_pytorch (``graytowne/caser_pytorch`` ``caser.py``,
``/work/shared/docs/other_models.md`` §1.2):

1. item embeddings of the ``L`` most recent items ``[B, L, d]`` (left-padded);
2. ``nv`` vertical filters ``[L x 1]`` (no activation), flattened ``[B, nv*d]``;
3. for every height ``h = 1..L``, ``nh`` horizontal filters ``[h x d]``,
   ``ac_conv``, max-pool over time: ``[B, nh*L]``;
4. concatenation, dropout (``drop_rate``, the only dropout), ``fc1`` to ``d``
   units and ``ac_fc``: ``z``;
5. ``x = [z, P_u]`` with the user embedding ``P_u``;
6. untied output ``score(i) = W2[i] . x + b2[i]`` (``W2 [V, 2d]``, ``b2 [V]``).

Initialisers as the original: user, item and ``W2`` ~ N(0, sd = 1/dim)
(dim = d, d, 2d), ``b2`` = 0, convolutions and ``fc1`` with PyTorch's default
(uniform ±1/sqrt(fan_in) for kernel and bias). Adam's ``weight_decay = l2``
of the original (coupled L2 on every parameter) is the Keras regulariser
``L2(l2 / 2)`` on every weight (same gradient).

``tied=True`` is RecBole's variant: ``fc2`` (``2d -> d``) and ``ac_fc`` give
the sequence vector, scored by dot product with the **input** item embeddings
(no ``W2``/``b2``), trained with softmax cross-entropy over all items,
Linear layers Xavier-normal with zero bias, the pad item's embedding fixed at
zero (``padding_idx=0``), and RecBole's penalty ``reg_weight * sum ||W||_2``
over the user and item tables and the ``conv_v``, ``fc1``, ``fc2`` kernels
instead of ``l2`` (RecBole's ``conv_h`` term is identically 0 in its code, so
there is none).

**Users.** User index 0 (``caser_dataset.UNKNOWN_USER``) stands for any user
without training items (random-split evaluation users, new data) and for the
serving signature, which receives only item ids: its user vector is zero, so
``x = [z, 0]`` and only the sequence half of ``W2`` scores. This is a
deviation from the paper, which always knows the user (docs/fidelity.md).

:class:`CaserConfig` holds the seed's knobs; :func:`build_caser_job` turns a
TFRecord set into the task factory, ``TrainInputs`` and the Caser metric set
that ``pipelines.train --model caser`` runs with ``peterrec.training.Trainer``.
"""

from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf

from peterrec.errors import check
from peterrec.features import ITEM_IDS, PAD_ID, USER_INDEX
from peterrec.models import base


ACTIVATIONS = {"iden": "linear", "relu": "relu", "tanh": "tanh", "sigm": "sigmoid"}

# CaserConfig field -> the flag that sets it (the shared flag where the concept already has one).
FLAG_NAMES = {"L": "max_len", "d": "embedding_dim", "drop_rate": "dropout"}


def _torch_default(fan_in):
    """PyTorch's default Conv/Linear initialisers: kernel and bias ~ U(+-1/sqrt(fan_in))."""
    return base.torch_linear_kernel(), base.torch_uniform(fan_in)


@keras.saving.register_keras_serializable(package="peterrec")
class NormPenalty(keras.regularizers.Regularizer):
    """``weight * ||W||_2`` (Frobenius norm, not squared): RecBole's ``RegLoss``."""

    def __init__(self, weight):
        self.weight = float(weight)

    def __call__(self, x):
        return self.weight * tf.norm(tf.cast(x, tf.float32))

    def get_config(self):
        return {"weight": self.weight}


@keras.saving.register_keras_serializable(package="peterrec")
class Caser(keras.Model):
    """The Caser network (see the module docstring); ``call({"item_ids", "user_index"}) -> x``.

    Args:
        vocabulary_size: item ids including the reserved ones.
        num_users: rows of the user table (index 0 is the unknown user).
        L: items per input window; ``call`` takes exactly ``[B, L]`` item ids, left-padded.
        d: embedding size.
        nv, nh: vertical and horizontal filters (either may be 0, not both).
        ac_conv, ac_fc: ``iden``, ``relu``, ``tanh`` or ``sigm``.
        drop_rate: dropout on the concatenated conv features.
        tied: RecBole's variant (``fc2``, output tied to the item embeddings).
        l2: coupled weight decay on every weight (untied variant).
        reg_weight: RecBole's norm penalty (tied variant).

    ``call`` returns ``x`` ``[B, 2d]`` (untied) or the sequence vector ``[B, d]``
    (tied); :meth:`score_all` and :meth:`score_items` turn it into item scores.
    """

    def __init__(
        self,
        vocabulary_size,
        num_users,
        L=5,
        d=50,
        nv=4,
        nh=16,
        ac_conv="relu",
        ac_fc="relu",
        drop_rate=0.5,
        tied=False,
        l2=0.0,
        reg_weight=0.0,
        **kwargs,
    ):
        kwargs.setdefault("name", "caser")
        super().__init__(**kwargs)
        for name, value in (("ac_conv", ac_conv), ("ac_fc", ac_fc)):
            if value not in ACTIVATIONS:
                raise ValueError(f"{name} must be one of {', '.join(ACTIVATIONS)}, got {value!r}")
        if nv < 0 or nh < 0 or nv + nh == 0:
            raise ValueError(f"need nv >= 0, nh >= 0 and nv + nh > 0, got nv={nv}, nh={nh}")
        self.vocabulary_size, self.num_users = int(vocabulary_size), int(num_users)
        self.L, self.d, self.nv, self.nh = int(L), int(d), int(nv), int(nh)
        self.ac_conv, self.ac_fc, self.drop_rate = ac_conv, ac_fc, float(drop_rate)
        self.tied, self.l2, self.reg_weight = bool(tied), float(l2), float(reg_weight)
        self._act_conv = keras.activations.get(ACTIVATIONS[ac_conv])
        self._act_fc = keras.activations.get(ACTIVATIONS[ac_fc])

        decay = keras.regularizers.L2(self.l2 / 2.0) if self.l2 and not self.tied else None
        norm = NormPenalty(self.reg_weight) if self.reg_weight and self.tied else None
        kernel_penalty, bias_penalty = decay or norm, decay
        L, d = self.L, self.d

        def embedding(rows, name):
            layer = keras.layers.Embedding(
                rows, d, embeddings_initializer=base.normal(1.0 / d),
                embeddings_regularizer=kernel_penalty, name=name,
            )
            layer.build((None,))
            return layer

        self.item_embedding = embedding(self.vocabulary_size, "item_embedding")
        self.user_embedding = embedding(self.num_users, "user_embedding")
        self.conv_v = None
        if self.nv:
            kernel, bias = _torch_default(L)
            self.conv_v = keras.layers.Conv2D(
                self.nv, (L, 1), kernel_initializer=kernel, bias_initializer=bias,
                kernel_regularizer=kernel_penalty, bias_regularizer=bias_penalty, name="conv_v",
            )
            self.conv_v.build((None, L, d, 1))
        self.conv_h = []
        for h in range(1, L + 1) if self.nh else ():
            kernel, bias = _torch_default(h * d)
            conv = keras.layers.Conv1D(
                self.nh, h, kernel_initializer=kernel, bias_initializer=bias,
                kernel_regularizer=decay, bias_regularizer=decay, name=f"conv_h_{h}",
            )
            conv.build((None, L, d))
            self.conv_h.append(conv)
        self.dropout = keras.layers.Dropout(self.drop_rate, name="dropout")
        fc1_in = self.nv * d + self.nh * L
        kernel, bias = (base.xavier_normal(), "zeros") if self.tied else _torch_default(fc1_in)  # RecBole: Xavier, zero bias
        self.fc1 = keras.layers.Dense(
            d, kernel_initializer=kernel, bias_initializer=bias, kernel_regularizer=kernel_penalty,
            bias_regularizer=bias_penalty, name="fc1",
        )
        self.fc1.build((None, fc1_in))
        if self.tied:
            self.fc2 = keras.layers.Dense(d, kernel_initializer=base.xavier_normal(), kernel_regularizer=norm, name="fc2")
            self.fc2.build((None, 2 * d))
        else:
            self.W2 = self.add_weight(
                shape=(self.vocabulary_size, 2 * d), initializer=base.normal(1.0 / (2 * d)),
                regularizer=decay, name="W2",
            )
            self.b2 = self.add_weight(shape=(self.vocabulary_size,), initializer="zeros", regularizer=decay, name="b2")
        self.built = True

    @property
    def output_dim(self):
        return self.d if self.tied else 2 * self.d

    def call(self, inputs, training=None):
        """``inputs``: ``{"item_ids": [B, L] left-padded, "user_index": [B]}`` -> ``x``.

        (One dict argument, so Keras' SavedModel tracing of the model can call it.)
        """
        item_ids = tf.cast(inputs[ITEM_IDS], tf.int32)
        user_ids = tf.cast(inputs[USER_INDEX], tf.int32)
        e = self.item_embedding(item_ids)  # [B, L, d]
        if self.tied:  # RecBole's padding_idx=0: the pad item has a zero embedding
            e = e * tf.cast(tf.not_equal(item_ids, PAD_ID), e.dtype)[..., None]
        parts = []
        if self.conv_v is not None:
            v = self.conv_v(e[..., None])[:, 0]  # [B, d, nv]
            parts.append(tf.reshape(tf.transpose(v, [0, 2, 1]), [-1, self.nv * self.d]))  # PyTorch's (filter, dim) order
        for conv in self.conv_h:
            parts.append(tf.reduce_max(self._act_conv(conv(e)), axis=1))  # [B, nh]
        out = self.dropout(tf.concat(parts, axis=1), training=training)
        z = self._act_fc(self.fc1(out))
        known = tf.cast(tf.not_equal(user_ids, 0), z.dtype)[:, None]  # user 0: unknown, zero vector
        x = tf.concat([z, self.user_embedding(user_ids) * known], axis=1)
        return self._act_fc(self.fc2(x)) if self.tied else x

    def score_all(self, x):
        """Scores ``[B, V]`` of every id for outputs ``x`` of :meth:`call`."""
        if self.tied:
            return tf.matmul(x, self.item_embedding.embeddings, transpose_b=True)
        return tf.matmul(x, self.W2, transpose_b=True) + self.b2

    def score_items(self, x, item_ids):
        """Scores ``[B, N]`` of ``item_ids [B, N]`` only (the original's batched matmul)."""
        item_ids = tf.cast(item_ids, tf.int32)
        table = self.item_embedding.embeddings if self.tied else self.W2
        scores = tf.einsum("bd,bnd->bn", x, tf.gather(table, item_ids))
        return scores if self.tied else scores + tf.gather(self.b2, item_ids)

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "vocabulary_size": self.vocabulary_size,
            "num_users": self.num_users,
            "L": self.L,
            "d": self.d,
            "nv": self.nv,
            "nh": self.nh,
            "ac_conv": self.ac_conv,
            "ac_fc": self.ac_fc,
            "drop_rate": self.drop_rate,
            "tied": self.tied,
            "l2": self.l2,
            "reg_weight": self.reg_weight,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)


# ---------------------------------------------------------------- configuration
@dataclasses.dataclass
class CaserConfig:
    """The seed's Caser knobs (defaults: caser_pytorch ``train_caser.py``) plus the data settings.

    ``neg_samples`` negatives per window (untied); ``l2`` the coupled weight
    decay (untied); ``tied`` RecBole's variant with ``reg_weight``. Error
    messages name the flag in :data:`FLAG_NAMES` (``--max_len`` for ``L``,
    ``--embedding_dim`` for ``d``, ``--dropout`` for ``drop_rate``), else the
    field's own name.
    """

    L: int = 5
    T: int = 3
    d: int = 50
    nv: int = 4
    nh: int = 16
    ac_conv: str = "relu"
    ac_fc: str = "relu"
    drop_rate: float = 0.5
    neg_samples: int = 3
    l2: float = 1e-6
    tied: bool = False
    reg_weight: float = 1e-4
    batch_size: int = 512
    eval_batch_size: int = 256
    learning_rate: float = 1e-3
    epochs: int = 50
    seed: int = 1234
    shuffle_buffer: int = 20000

    @classmethod
    def coerce(cls, cfg):
        """A CaserConfig from a CaserConfig or any object with (some of) these attributes."""
        if isinstance(cfg, cls):
            return cfg
        values = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cls) if hasattr(cfg, f.name)}
        return cls(**values)

    def _check(self, ok, field, message):
        check(ok, FLAG_NAMES.get(field, field), message)

    def validate(self, metadata=None):
        """Raise ConfigError naming the flag of the first bad value; returns self.

        With the TFRecord set's ``metadata``: ``L + T`` must not exceed the
        longest training history (else every window would be padded).
        """
        for field in ("L", "T", "d", "neg_samples", "batch_size", "eval_batch_size", "epochs"):
            self._check(getattr(self, field) >= 1, field, f"must be >= 1, got {getattr(self, field)}")
        self._check(self.nv >= 0 and self.nh >= 0, "nv" if self.nv < 0 else "nh", f"must be >= 0, got nv={self.nv}, nh={self.nh}")
        self._check(self.nv + self.nh > 0, "nh", "--nv and --nh are both 0: Caser needs vertical or horizontal filters")
        for field in ("ac_conv", "ac_fc"):
            value = getattr(self, field)
            self._check(value in ACTIVATIONS, field, f"{value!r} is not one of {', '.join(ACTIVATIONS)}")
        self._check(0.0 <= self.drop_rate < 1.0, "drop_rate", f"must be in [0, 1), got {self.drop_rate}")
        self._check(self.l2 >= 0.0, "l2", f"must be >= 0, got {self.l2}")
        self._check(self.reg_weight >= 0.0, "reg_weight", f"must be >= 0, got {self.reg_weight}")
        self._check(self.learning_rate > 0.0, "learning_rate", f"must be > 0, got {self.learning_rate}")
        if metadata is not None:
            from peterrec.data import dataset

            lengths = [n for n, users in dataset.training_lengths(metadata).items() if users > 0]
            longest = max(lengths, default=0)
            self._check(longest >= 1, "L", "no user has training items in this data set")
            self._check(
                self.L + self.T <= longest,
                "L",
                f"Caser windows of L + T = {self.L} + {self.T} = {self.L + self.T} items are longer than every "
                f"training history (the longest has {longest} items): lower --{FLAG_NAMES.get('L', 'L')} or "
                f"--{FLAG_NAMES.get('T', 'T')}",
            )
        return self


# ---------------------------------------------------------------- the job's building blocks
