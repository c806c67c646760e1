"""Masked-item ("cloze") pretraining task: the GRec encoder's objective.

docs/peterrec.md section 3. The backbone is the non-causal NextItNet
(``NextItNetBackbone(causal=False)``); training batches come from
:func:`peterrec.data.cloze.cloze_train_dataset`.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from peterrec.features import MASK_ID, PAD_ID
from peterrec.tasks.next_item import NextItemTask


def end_mask(item_ids, lengths):
    """Put ``MASK_ID`` in the slot after the last real item of each right-padded row.

    Args:
        item_ids: int ``[batch, L]``, right-padded with ``PAD_ID``.
        lengths: int ``[batch]``, number of real items per row.

    Returns:
        ``(masked_ids [batch, L], mask_position [batch])``. A row with fewer
        than ``L`` items gets the mask at position ``lengths``; a full row
        drops its oldest item first, so it keeps its ``L - 1`` most recent
        items followed by the mask at ``L - 1``.
    """
    item_ids = tf.convert_to_tensor(item_ids)
    width = tf.shape(item_ids)[1]
    lengths = tf.clip_by_value(tf.cast(lengths, tf.int32), 0, width)
    full = lengths >= width
    shifted = tf.concat([item_ids[:, 1:], tf.fill([tf.shape(item_ids)[0], 1], tf.constant(PAD_ID, item_ids.dtype))], axis=1)
    ids = tf.where(full[:, None], shifted, item_ids)
    position = tf.minimum(lengths, width - 1)
    cols = tf.range(width)[None, :]
    ids = tf.where(cols == position[:, None], tf.constant(MASK_ID, item_ids.dtype), ids)
    return ids, position


@keras.saving.register_keras_serializable(package="peterrec")
class MaskedItemTask(NextItemTask):
    """A (non-causal) backbone plus the output head, trained to recover masked items.

    The heads are :class:`NextItemTask`'s (full softmax: ``Dense(ReLU(h))``;
    sampled softmax: ``h W^T + b``, 20 % of the vocabulary as negatives, no
    ReLU), and so is the loss code: training batches hold ``item_ids`` (the
    masked input), ``labels`` (the original ids) and ``sample_weight`` (1 at
    the masked positions, 0 elsewhere), so the loss is the mean cross-entropy
    over the masked positions, as in the original.

    Evaluation and serving use the original's "end mask": ``MASK_ID`` is put
    in the slot after the last real item (:func:`end_mask`) and the hidden
    state there is scored over the whole vocabulary.

    Args:
        backbone: a sequence encoder returning ``[batch, length, C]``, usually
            ``NextItNetBackbone(causal=False)``.
        loss: "full_softmax" or "sampled_softmax" (the original GRec's default).
        item_counts: training count per id (sampled softmax's unigram sampler).
        sampled_fraction: share of the vocabulary drawn as negatives.

    Example:
        >>> import numpy as np
        >>> from peterrec.backbones.nextitnet import NextItNetBackbone
        >>> backbone = NextItNetBackbone(vocabulary_size=50, embedding_dim=8, dilations=[1, 2], causal=False)
        >>> task = MaskedItemTask(backbone)
        >>> task.score_last(np.array([[5, 6, 0]]), np.array([2])).shape
        TensorShape([1, 50])
    """


    # Serving keeps max_len - 1 real items so the [MASK] slot fits (peterrec.export).
    context_slots = 1

    def __init__(self, backbone, loss="full_softmax", item_counts=None, sampled_fraction=0.2, **kwargs):
        kwargs.setdefault("name", "masked_item_task")
        super().__init__(backbone, loss=loss, item_counts=item_counts, sampled_fraction=sampled_fraction, **kwargs)

    def score_last(self, item_ids, lengths, training=False):
        """Logits ``[batch, V]`` for the item after each row's last real item (end mask)."""
        ids, position = end_mask(tf.cast(item_ids, tf.int32), lengths)
        hidden = self(ids, training=training)
        return self.logits(tf.gather(hidden, position, axis=1, batch_dims=1))
