"""CASR stage 3: the anchor's next-item task trained on observed + generated samples.

:class:`CounterfactualTask` wraps the anchor's :class:`NextItemTask` for the
one training loop (:class:`peterrec.training.Trainer`). A training batch is
the observed windows (exactly the plain anchor's batch) plus, under the key
``"generated"``, a batch of generated rows:

* offline methods (heuristic, learning): counterfactual prefixes labelled by
  the sampler, with ``sample_weight`` = ``beta`` at their last position;
* ``ad``: original prefixes; :func:`peterrec.augment.counterfactual.adversarial_samples`
  turns them into counterfactuals against the *current* anchor inside the
  step (before its update, so generation and anchor updates alternate), and
  they are labelled by the frozen sampler.

The loss is the weighted mean over every position with loss: observed
positions weigh 1, generated ones ``beta`` (``loss_sum`` and ``loss_count``
add both parts). Without a ``"generated"`` part (``beta == 0`` or no
generated samples) the task computes exactly the plain anchor's loss.
Evaluation and serving are the anchor's.
"""

from __future__ import annotations

import types

import keras
import tensorflow as tf

from peterrec.augment import counterfactual
from peterrec.augment.generate import SAMPLER_TOP1
from peterrec.features import ITEM_IDS, LABELS, LENGTHS, SAMPLE_WEIGHT
from peterrec.tasks.base import Task

GENERATED = "generated"


@keras.saving.register_keras_serializable(package="peterrec")
class CounterfactualTask(Task):
    """The anchor task plus generated samples (see the module docstring).

    Args:
        anchor: the anchor's ``NextItemTask`` (trained; exported on its own).
        beta: weight of each generated sample's loss.
        sampler: the frozen sampler's ``NextItemTask`` (``ad`` only). It is
            held outside Keras' tracking, so it is neither trained nor saved
            in the anchor's checkpoints.
        intervention: a :class:`~peterrec.augment.counterfactual.Intervention` (``ad`` only).
        seed: seed of the in-step draws (``ad`` only).
    """

    def __init__(self, anchor, beta=1.0, sampler=None, intervention=None, seed=None, **kwargs):
        kwargs.setdefault("name", "casr_task")
        super().__init__(**kwargs)
        self.anchor = anchor
        self.beta = float(beta)
        self.intervention = intervention
        self.adversarial = intervention is not None and intervention.method == "ad"
        self._frozen = types.SimpleNamespace(sampler=sampler)  # untracked: never trained, never checkpointed here
        if self.adversarial:
            if sampler is None:
                raise ValueError("the ad method needs the sampler")
            self.ad_seed = keras.random.SeedGenerator(seed, name="ad_seed")
            self.ad_generated = self.add_weight(shape=(), initializer="zeros", trainable=False, name="ad_generated", aggregation="sum")
            self.ad_flipped = self.add_weight(shape=(), initializer="zeros", trainable=False, name="ad_flipped", aggregation="sum")

    @property
    def sampler(self):
        return self._frozen.sampler

    def call(self, item_ids, training=None):
        return self.anchor(item_ids, training=training)

    # --- the training-loop contract -------------------------------------------------
    def loss_count(self, batch):
        count = self.anchor.loss_count(_observed(batch))
        if GENERATED in batch:
            generated = batch[GENERATED]
            if self.adversarial:
                count += self.beta * tf.cast(tf.shape(generated[ITEM_IDS])[0], tf.float32)
            else:
                count += self.anchor.loss_count(generated)
        return count

    def position_count(self, batch):
        """The anchor's observed positions plus one per generated row (``loss_count`` weighs those by ``beta``)."""
        count = self.anchor.position_count(_observed(batch))
        if GENERATED in batch:
            count += tf.cast(tf.shape(batch[GENERATED][ITEM_IDS])[0], tf.float32)
        return count

    def loss_sum(self, batch, training=True, static_shapes=False):
        total = self.anchor.loss_sum(_observed(batch), training=training, static_shapes=static_shapes)
        if GENERATED in batch:
            generated = batch[GENERATED]
            if self.adversarial:
                generated = self.adversarial_batch(generated)
            total += self.anchor.last_loss_sum(generated, training=training)
        return total

    def adversarial_batch(self, rows):
        """Counterfactual training rows (one label and weight ``beta`` each, at the last position) from original prefixes."""
        size = tf.shape(rows[ITEM_IDS])[0]
        uniforms = keras.random.uniform((size, self.intervention.uniforms), seed=self.ad_seed)
        item_ids, labels, flipped = counterfactual.adversarial_samples(
            self.anchor, self.sampler, rows[ITEM_IDS], rows[LENGTHS], rows[counterfactual.HELDOUT], uniforms, self.intervention,
            y0=rows.get(SAMPLER_TOP1),
        )
        self.ad_generated.assign_add(tf.cast(size, tf.float32))
        self.ad_flipped.assign_add(tf.reduce_sum(tf.cast(flipped, tf.float32)))
        return {ITEM_IDS: item_ids, LENGTHS: rows[LENGTHS], LABELS: labels, SAMPLE_WEIGHT: tf.fill([size], self.beta)}

    def uses_candidate_sampler(self):
        return self.anchor.uses_candidate_sampler()

    def eval_scores(self, batch):
        return self.anchor.eval_scores(batch)

    def serve_scores(self, item_ids, lengths):
        return self.anchor.serve_scores(item_ids, lengths)

    def get_config(self):
        return {"name": self.name, "anchor": keras.saving.serialize_keras_object(self.anchor), "beta": self.beta}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["anchor"] = keras.saving.deserialize_keras_object(config["anchor"])
        return cls(**config)


def _observed(batch):
    return {key: value for key, value in batch.items() if key != GENERATED}
