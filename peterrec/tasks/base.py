"""The task contract: what the one training loop, the evaluator and the export ask of a model.

A task (KerasHub's ``Task``) is a ``keras.Model`` that owns its loss, its
scores and its head around a backbone. :class:`peterrec.training.Trainer`
calls :meth:`Task.loss_sum` / :meth:`Task.loss_count` in its train step and
:meth:`Task.transform_gradients` on the gradients; ``training.evaluate`` ranks
:meth:`Task.eval_scores`; the export's serving signature ranks
:meth:`Task.serve_scores` over inputs shortened by :attr:`Task.context_slots`.
Every task of peterrec derives from it.
"""

from __future__ import annotations

import keras

from peterrec.features import ITEM_IDS, LENGTHS


class Task(keras.Model):
    """Base class of the tasks; subclasses implement the loss and the serving scores."""

    # Input slots the task appends after the items when it scores (GRec's [MASK], PeterRec's [SEP]):
    # serving keeps ``max_len - context_slots`` real items.
    context_slots = 0

    def loss_sum(self, batch, training=True, static_shapes=False):
        """The summed loss of ``batch`` (the loop divides by the all-reduced :meth:`loss_count`)."""
        raise NotImplementedError(f"{type(self).__name__} must implement loss_sum(batch, training, static_shapes)")

    def loss_count(self, batch):
        """How many examples (positions, pairs) of ``batch`` carry loss, as float32."""
        raise NotImplementedError(f"{type(self).__name__} must implement loss_count(batch)")

    def position_count(self, batch):
        """How many positions of ``batch`` are trained, as float32 (the throughput the loop reports); equals
        :meth:`loss_count` unless a task weighs some positions other than 1 (CASR's ``beta``)."""
        return self.loss_count(batch)

    def serve_scores(self, item_ids, lengths):
        """Scores ``[batch, V]`` of every id for right-padded ``item_ids`` with ``lengths`` real items."""
        raise NotImplementedError(f"{type(self).__name__} must implement serve_scores(item_ids, lengths)")

    def eval_scores(self, batch):
        """Scores ``[batch, V]`` for the target in ``batch["labels"]``; default: :meth:`serve_scores` of the row."""
        return self.serve_scores(batch[ITEM_IDS], batch[LENGTHS])

    def uses_candidate_sampler(self):
        """Whether the loss draws sampled-softmax candidates (no XLA kernel: refused with ``jit_compile``)."""
        return False

    def transform_gradients(self, grads, variables):
        """The gradients the optimizer applies (default: unchanged; PeterRec's head warm-up zeroes the backbone's)."""
        del variables
        return grads
