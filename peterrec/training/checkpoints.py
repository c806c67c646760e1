"""Checkpoints: the variable-path contract, resumable training state, best weights and the epoch history.

``tf.train.CheckpointManager`` saves model, optimizer, global step and the
early-stopping state (under ``ckpt/``) every ``checkpoint_every_steps`` and at
every epoch end, so re-running the same job resumes where it stopped,
mid-epoch included. The weights with the best validation metric are kept in a
separate checkpoint (``ckpt/best``) and restored at the end. Non-finite
weights are never checkpointed. ``history.jsonl`` holds one row per epoch.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import tempfile

import keras
import numpy as np
import tensorflow as tf

CKPT_DIR = "ckpt"
BEST_DIR = "ckpt/best"


def variable_dict(variables, strip_scope=False):
    """``{path: tf.Variable}`` with unique, stable keys (the checkpoint contract).

    ``strip_scope`` drops the first path component (an optimizer's name,
    which Keras numbers per process: ``adam``, ``adam_1``...).
    """
    out = {}
    for v in variables:
        key = getattr(v, "path", None) or v.name
        if strip_scope and "/" in key:
            key = key.split("/", 1)[1]
        if key in out:
            raise ValueError(f"two variables share the path {key!r}: name every layer uniquely")
        out[key] = getattr(v, "value", v)
    return out


def seed_states(model):
    """The states of the model's Keras seed generators (dropout masks), in creation order.

    Not among ``model.weights``, and their paths carry per-process counters,
    so a checkpoint keys them by position.
    """
    weights = {id(w) for w in model.weights}
    return {str(i): getattr(v, "value", v) for i, v in enumerate(v for v in model.variables if id(v) not in weights)}


def make_checkpoint(model, optimizer=None, seeds=False, **state):
    """A ``tf.train.Checkpoint`` over the model's (and optimizer's) variables by path.

    ``seeds``: also the dropout seed generators' states (:func:`seed_states`),
    so a resumed run draws the masks an uninterrupted one would.
    """
    parts = {"model": variable_dict(model.weights)}
    if seeds and seed_states(model):
        parts["seeds"] = seed_states(model)
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):  # mixed float16: the inner optimizer + the loss scale
        parts["loss_scale"] = {"step_counter": optimizer.step_counter, "dynamic_scale": optimizer.dynamic_scale}
        optimizer = optimizer.inner_optimizer
    if optimizer is not None:
        parts["optimizer"] = variable_dict(optimizer.variables, strip_scope=True)
    return tf.train.Checkpoint(**parts, **state)


def _save_checkpoint(manager, **kwargs):
    """``manager.save``; on failure (full disk...) TensorFlow's half-written ``<name>_temp`` directory is removed.

    The ``checkpoint`` pointer only names complete checkpoints, so readers never see a partial one.
    """
    try:
        return manager.save(**kwargs)
    except BaseException:
        for leftover in glob.glob(os.path.join(glob.escape(manager.directory), "*_temp")):
            shutil.rmtree(leftover, ignore_errors=True)
        raise


class CheckpointMixin:
    """:class:`~peterrec.training.Trainer`'s checkpoint and history methods (its managers, task and ``model_dir``)."""

    def restore(self):
        """Restore the latest training checkpoint, if any; returns its path."""
        latest = self.manager.latest_checkpoint
        if latest:
            checkpoint = self.checkpoint
            if seed_states(self.task) and not any(name.startswith("seeds/") for name, _ in tf.train.list_variables(latest)):
                checkpoint = self._checkpoint_without_seeds  # an older checkpoint: the dropout masks restart
            checkpoint.restore(latest).assert_existing_objects_matched()
        return latest

    def _save(self):
        """Save a training checkpoint unless the weights are not finite; returns a fault message or None."""
        if not all(np.all(np.isfinite(w.numpy())) for w in self.task.trainable_weights):
            return f"the weights became NaN/Inf at global step {int(self.global_step.numpy())}"
        _save_checkpoint(self._write_manager, check_interval=False)
        return None

    def _history_path(self):
        return os.path.join(self.model_dir, "history.jsonl")

    def _append_history(self, rows):
        """Add epoch rows, replacing rows of the same or later epochs (a resumed epoch), atomically."""
        if not self.is_chief:
            return
        first = min(row["epoch"] for row in rows)
        kept = [row for row in self._read_history() if row["epoch"] < first]
        path = self._history_path()
        fd, tmp = tempfile.mkstemp(dir=self.model_dir, prefix=".tmp-", suffix=".jsonl")
        try:
            with os.fdopen(fd, "w") as f:
                f.writelines(json.dumps(row) + "\n" for row in kept + list(rows))
            os.replace(tmp, path)
        except BaseException:
            os.remove(tmp)
            raise

    def _read_history(self):
        if not os.path.exists(self._history_path()):
            return []
        with open(self._history_path()) as f:
            return [json.loads(line) for line in f if line.strip()]
