"""PeterRec finetuning task: a (patched) backbone, a user vector and a new target table."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from peterrec.features import ITEM_IDS, LABELS, LENGTHS, MASK_ID, NUM_RESERVED, PAD_ID, SEP_ID
from peterrec.layers.initializers import conv_initializer
from peterrec.tasks.base import Task

LOSSES = ("bce", "bpr")
SAMPLERS = ("uniform", "lambdafm")
TASK_TYPES = ("items", "classify")
POOLINGS = ("sep", "mean", "last", "mean_nosep")
NO_SEPARATOR = ("last", "mean_nosep")  # poolings that feed the source items alone, as the original's FineAll scripts


def lambdafm_probabilities(counts, rho=0.3):
    """LambdaFM's static popularity-rank sampler over target ids.

    Items are ranked by descending training count (rank 0 = most popular,
    ties by id); item of rank r gets weight ``exp(-(r + 1) / (rho * T))`` with T
    the original's ``len(target_dict)``: the real targets plus its one reserved
    id (``<UNK>``), not peterrec's ``NUM_RESERVED`` ids; normalised. The rank -> id mapping is
    explicit (the original's ``dict.values()`` ordering bug cannot happen):
    ``probs[id]`` is the probability of that id; reserved ids get 0.
    """
    counts = np.asarray(counts, dtype=np.float64)
    size = len(counts)
    real = np.arange(NUM_RESERVED, size)
    order = real[np.argsort(-counts[real], kind="stable")]  # ids sorted by popularity
    probs = np.zeros(size)
    table = len(real) + 1  # the original's T: its targets and <UNK>
    probs[order] = np.exp(-(np.arange(len(order)) + 1) / (rho * table))
    return probs / probs.sum()


@keras.saving.register_keras_serializable(package="peterrec")
class TransferTask(Task):
    """User vector from a pretrained backbone, scored against a new target table.

    Causal backbones read ``[src_1..src_n, SEP]`` and take the output at SEP;
    non-causal ones read ``[SEP, src_1..src_n, SEP]`` and sum the outputs at
    both separators (peterrec.md §4.4). The original's FineAll scripts feed
    the source items alone: ``last`` (NextitNet_TF_FineAll) takes the output
    at the last real item, ``mean_nosep`` (GRec_TF_FineAll) the mean over the
    source positions. ``score(u, j) = <u, E_target[j]>``.

    Losses (per (user, target) example): ``bce`` = -log σ(s⁺) - log(1 - σ(s⁻))
    with one uniform negative target; ``bpr`` = -log σ(s⁺ - s⁻) with the
    negative from ``sampler``; ``classify`` tasks use every other class as a
    negative (BCE). L2 ``l2 * Σ E_target²`` on the whole table (the original's
    ``l2_regularizer(0.02)``).

    Args:
        backbone: an encoder with ``causal`` and ``output_dim`` (its hidden width).
        num_targets: target table size (reserved ids included).
        task_type: "items" (cold-start / cross-domain items) or "classify".
        loss, sampler, rho: see above; ``target_counts`` feeds the lambdafm sampler.
        l2: weight of the L2 penalty on the target table.
        finetune_mode: "finecls" restricts the backbone's trainable part to the
            SEP embedding row (the other modes are set on the backbone).
        pooling: "sep" (the original PeterRec scripts: the output at the separator(s), see above),
            "mean" (the mean of the outputs at the source items' positions, separators in the input),
            "last" (no separator: the output at the last real item, the original NextItNet FineAll) or
            "mean_nosep" (no separator: the mean over the source items' outputs, the original GRec FineAll).
        user_norm: a LayerNormalization (trained with the head) on the user vector before
            scoring. The pooled output of a deep residual CNN has a large norm and a large
            component shared by every user, so an unnormalised dot-product head takes steps
            of several logits per update and a small task hardly learns; False = the original.
        head_warmup_steps: for the first this many optimizer steps the backbone's
            gradients are zeroed, so only the task side (target table) learns
            ("linear probing, then finetuning"; 0 = the original, everything from
            step 0). With Adam a zero gradient leaves a never-updated variable
            exactly unchanged, so the backbone is frozen until the step count
            (``optimizer.iterations``, checkpointed, so resuming keeps the phase)
            reaches the value.
        negative_seed: seed of the in-training negative draws; None draws one from the global
            seed (``keras.utils.set_random_seed``). Saved in the config, so a task rebuilt from
            it draws the same negatives.
    """

    def __init__(
        self,
        backbone,
        num_targets,
        task_type="items",
        loss="bce",
        sampler="uniform",
        rho=0.3,
        l2=0.01,
        target_counts=None,
        finetune_mode="peterrec",
        head_warmup_steps=0,
        pooling="sep",
        user_norm=False,
        negative_seed=None,
        **kwargs,
    ):
        kwargs.setdefault("name", "transfer_task")
        super().__init__(**kwargs)
        checks = ((task_type, TASK_TYPES, "task_type"), (loss, LOSSES, "loss"), (sampler, SAMPLERS, "sampler"), (pooling, POOLINGS, "pooling"))
        for value, allowed, what in checks:
            if value not in allowed:
                raise ValueError(f"{what} must be one of {allowed}, got {value!r}")
        self.backbone = backbone
        self.num_targets = int(num_targets)
        self.task_type = task_type
        self.loss_name = loss
        self.sampler = sampler
        self.rho = float(rho)
        self.l2 = float(l2)
        # the seed of the negative draws (_negatives): drawn once (seeded by keras.utils.set_random_seed), then saved in the config
        self._negative_seed = int(np.random.randint(2**31 - 1)) if negative_seed is None else int(negative_seed)
        self.finetune_mode = finetune_mode
        self.head_warmup_steps = int(head_warmup_steps)
        self.pooling = pooling
        self.user_norm = bool(user_norm)
        width = getattr(backbone, "output_dim", backbone.embedding_dim)
        self.user_layer_norm = None
        if self.user_norm:
            self.user_layer_norm = keras.layers.LayerNormalization(epsilon=1e-6, name="user_norm")
            self.user_layer_norm.build((None, width))
        self.target_embedding = keras.layers.Embedding(
            self.num_targets,
            width,
            embeddings_initializer=conv_initializer(),
            embeddings_regularizer=keras.regularizers.L2(self.l2) if self.l2 else None,
            name="target_embedding",
        )
        self.target_embedding.build((None,))
        probs = None
        if sampler == "lambdafm":
            counts = target_counts if target_counts is not None else np.ones(self.num_targets)
            probs = lambdafm_probabilities(counts, rho)
        self.negative_log_probs = None if probs is None else tf.constant(np.log(np.maximum(probs, 1e-300))[None, :], tf.float32)

    # ------------------------------------------------------------------ user vectors
    @property
    def separator_id(self):
        """The pooled token: SEP after the items (causal, never seen in pretraining, as the
        original's [TCL]); GRec's trained [MASK] before and after them (non-causal, as the original's id 0)."""
        return SEP_ID if self.backbone.causal else MASK_ID

    @property
    def context_slots(self):
        """Separator tokens the task adds around the source items (1 causal, 2 non-causal, 0 without separator)."""
        if self.pooling in NO_SEPARATOR:
            return 0
        return 1 if self.backbone.causal else 2

    def user_vector(self, item_ids, lengths, training=False):
        item_ids = tf.cast(item_ids, tf.int32)
        lengths = tf.cast(lengths, tf.int32)
        if self.pooling in NO_SEPARATOR:
            user = self._plain_user_vector(item_ids, lengths, training)
        else:
            user = self._separator_user_vector(item_ids, lengths, training)
        if self.user_layer_norm is not None:
            user = self.user_layer_norm(user)
        return user

    def _plain_user_vector(self, item_ids, lengths, training):
        """The source items alone (right-padded): the last real item's output, or the mean over the real items'."""
        hidden = self.backbone(item_ids, training=training)
        if self.pooling == "last":
            return tf.gather(hidden, tf.maximum(lengths - 1, 0), axis=1, batch_dims=1)
        real = tf.cast(tf.range(tf.shape(item_ids)[1])[None, :] < lengths[:, None], hidden.dtype)[..., None]
        return tf.reduce_sum(hidden * real, axis=1) / tf.maximum(tf.reduce_sum(real, axis=1), 1.0)

    def _separator_user_vector(self, item_ids, lengths, training):
        batch = tf.shape(item_ids)[0]
        pad = tf.fill([batch, 1], PAD_ID)
        if self.backbone.causal:
            ids = tf.concat([item_ids, pad], axis=1)
            sep_at = lengths
        else:
            ids = tf.concat([tf.fill([batch, 1], self.separator_id), item_ids, pad], axis=1)
            sep_at = lengths + 1
        positions = tf.range(tf.shape(ids)[1])[None, :]
        ids = tf.where(positions == sep_at[:, None], self.separator_id, ids)
        hidden = self.backbone(ids, training=training)
        if self.pooling == "mean":
            first = 0 if self.backbone.causal else 1  # the source items stand at [first, first + length)
            at = positions - first
            real = tf.cast((at >= 0) & (at < lengths[:, None]), hidden.dtype)[..., None]
            user = tf.reduce_sum(hidden * real, axis=1) / tf.maximum(tf.reduce_sum(real, axis=1), 1.0)
        else:
            user = tf.gather(hidden, sep_at, axis=1, batch_dims=1)
            if not self.backbone.causal:
                user = user + hidden[:, 0]
        return user

    def call(self, item_ids, lengths=None, training=None):
        if lengths is None:
            lengths = tf.reduce_sum(tf.cast(tf.not_equal(item_ids, PAD_ID), tf.int32), axis=1)
        return self.scores(self.user_vector(item_ids, lengths, training=training))

    def scores(self, user):
        return ops.matmul(user, ops.transpose(self.target_embedding.embeddings))

    # ------------------------------------------------------------------ training-loop contract
    def loss_count(self, batch):
        return tf.cast(tf.size(batch[LABELS]), tf.float32)

    def _negatives(self, positives):
        """Negative targets drawn statelessly from (task seed, optimizer step, replica): a run resumed from a
        checkpoint draws exactly what the uninterrupted run would have drawn."""
        n = tf.shape(positives)[0]
        ctx = tf.distribute.get_replica_context()
        replica = tf.cast(ctx.replica_id_in_sync_group if ctx is not None else 0, tf.int64)
        optimizer = getattr(self, "optimizer", None)
        step = tf.cast(optimizer.iterations, tf.int64) if optimizer is not None else tf.constant(0, tf.int64)
        seed = tf.stack([tf.constant(self._negative_seed, tf.int64), step * (ctx.num_replicas_in_sync if ctx else 1) + replica])
        if self.sampler == "lambdafm":
            draws = tf.random.stateless_categorical(tf.tile(self.negative_log_probs, [n, 1]), 1, seed, dtype=tf.int32)[:, 0]
            return draws  # may equal the positive, as in the original
        draws = tf.random.stateless_uniform([n], seed, NUM_RESERVED, self.num_targets - 1, dtype=tf.int32)
        return draws + tf.cast(draws >= positives, tf.int32)  # uniform over the other real targets

    def loss_sum(self, batch, training=True, static_shapes=False):
        del static_shapes
        positives = tf.cast(batch[LABELS], tf.int32)
        user = self.user_vector(batch[ITEM_IDS], batch[LENGTHS], training=training)
        if self.task_type == "classify":
            logits = self.scores(user)
            real = tf.range(self.num_targets) >= NUM_RESERVED
            labels = tf.one_hot(positives, self.num_targets)
            per_class = tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits)
            return tf.reduce_sum(tf.where(real[None, :], per_class, 0.0))
        table = self.target_embedding.embeddings
        s_pos = tf.reduce_sum(user * tf.gather(table, positives), axis=-1)
        s_neg = tf.reduce_sum(user * tf.gather(table, self._negatives(positives)), axis=-1)
        if self.loss_name == "bpr":
            return -tf.reduce_sum(tf.math.log_sigmoid(s_pos - s_neg))
        return -tf.reduce_sum(tf.math.log_sigmoid(s_pos) + tf.math.log_sigmoid(-s_neg))

    def transform_gradients(self, grads, variables):
        """FineCLS: of the source embeddings only the separator's row learns.
        Head warm-up: the backbone's gradients are zero for the first steps."""
        if self.finetune_mode != "finecls" and not self.head_warmup_steps:
            return grads
        table = self.backbone.embedding.embeddings
        backbone_paths = {v.path for v in self.backbone.trainable_variables}
        gate = None
        if self.head_warmup_steps:
            gate = tf.cast(self.optimizer.iterations >= self.head_warmup_steps, tf.float32)
        out = []
        for grad, var in zip(grads, variables):
            if grad is not None and self.finetune_mode == "finecls" and var.path == table.path:
                grad = tf.convert_to_tensor(grad)
                keep = tf.cast(tf.range(tf.shape(grad)[0]) == self.separator_id, grad.dtype)[:, None]
                grad = grad * keep
            if grad is not None and gate is not None and var.path in backbone_paths:
                if isinstance(grad, tf.IndexedSlices):
                    grad = tf.IndexedSlices(grad.values * tf.cast(gate, grad.values.dtype), grad.indices, grad.dense_shape)
                else:
                    grad = grad * tf.cast(gate, grad.dtype)
            out.append(grad)
        return out

    def eval_scores(self, batch):
        return self(batch[ITEM_IDS], batch[LENGTHS])

    def serve_scores(self, item_ids, lengths):
        """Serving scores: target scores, or class probabilities for ``classify``."""
        scores = self(item_ids, lengths)
        if self.task_type != "classify":
            return scores
        real = tf.range(self.num_targets) >= NUM_RESERVED
        return tf.where(real[None, :], tf.nn.softmax(tf.where(real[None, :], scores, -1e9)), 0.0)

    def get_config(self):
        return {
            "name": self.name,
            "backbone": keras.saving.serialize_keras_object(self.backbone),
            "num_targets": self.num_targets,
            "task_type": self.task_type,
            "loss": self.loss_name,
            "sampler": self.sampler,
            "rho": self.rho,
            "l2": self.l2,
            "finetune_mode": self.finetune_mode,
            "head_warmup_steps": self.head_warmup_steps,
            "negative_seed": self._negative_seed,
            **({"pooling": self.pooling} if self.pooling != "sep" else {}),
            **({"user_norm": True} if self.user_norm else {}),
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        return cls(**config)
