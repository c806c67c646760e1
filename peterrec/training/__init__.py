"""The one training loop, shared by every job and every ``tf.distribute`` strategy.

Keras 3 ``fit`` fails under ``MultiWorkerMirroredStrategy``
(keras-team/keras#20585), so peterrec trains with a custom ``tf.function``
step run through ``strategy.run``:

* the per-replica loss is the task's loss *sum* divided by the all-reduced
  number of positions that carry loss, so the gradient (summed over replicas
  by the optimizer) is the global mean whatever the replica count;
* Keras callbacks are driven through ``keras.callbacks.CallbackList``:
  progress bar, ``TensorBoard``, ``TerminateOnNaN``, ``EarlyStopping``;
* ``tf.train.CheckpointManager`` saves model, optimizer, global step and the
  early-stopping state every ``checkpoint_every_steps`` and at every epoch
  end, so re-running the same job resumes where it stopped, mid-epoch
  included (the epoch's data order is a function of the seed and the epoch,
  and already-trained batches are skipped);
* under multi-worker only the chief writes into ``model_dir``; the other
  workers save into a temporary directory of their own (removed when
  ``fit`` ends) and resume from the chief's checkpoints;
* the weights with the best validation metric (``monitor``, default
  ``mrr@10``) are kept in a separate checkpoint and restored at the end;
* reliability (docs/reliability.md): the chief holds an OS lock on
  ``model_dir`` (:mod:`peterrec.training.locking`); SIGTERM/SIGINT save a checkpoint
  after the current step and raise :class:`TrainingInterrupted` (under
  multi-worker the signal flag is all-reduced after every step, so all
  workers save the same step and stop together: preemption); a NaN/Inf
  loss or weights, or a loss that diverges (``divergence_factor``), stop
  training with the step and the last good checkpoint named (non-finite
  weights are never checkpointed); ``deterministic`` enables TF op
  determinism, so a run killed and resumed ends bit-identical to an
  uninterrupted one.

A task is a :class:`peterrec.tasks.base.Task`: ``loss_sum(batch, training)``,
``loss_count(batch)``, ``eval_scores(batch)`` (scores over all ids,
``[batch, V]``, for the target in ``batch["labels"]``), ``serve_scores`` and
``transform_gradients``.

Modules:

* :mod:`~peterrec.training.loop`: :class:`Trainer`, :class:`TrainConfig`,
  :class:`TrainInputs`, :class:`TrainResult` (the loop and its train step);
* :mod:`~peterrec.training.checkpoints`: the checkpoint contract
  (:func:`make_checkpoint`), resume state, best weights, the epoch history;
* :mod:`~peterrec.training.faults`: signals (:class:`TrainingInterrupted`) and
  NaN/Inf / divergence detection;
* :mod:`~peterrec.training.cluster`: multi-worker chief/worker helpers;
* :mod:`~peterrec.training.evaluation`: :func:`evaluate`, the rank metrics of a scorer;
* :mod:`~peterrec.training.locking`: one job per ``model_dir``.

:class:`PopularityScorer` lives in :mod:`peterrec.eval.popularity` (re-exported here).
"""

from peterrec.eval.popularity import PopularityScorer
from peterrec.training import locking
from peterrec.training.checkpoints import BEST_DIR, CKPT_DIR, _save_checkpoint, make_checkpoint, seed_states, variable_dict
from peterrec.training.cluster import _cluster, is_chief, is_multi_worker
from peterrec.training.evaluation import _EVAL_STEPS, _build_eval_step, _eval_step, _metric_names, evaluate, monitor_mode, monitor_sign
from peterrec.training.faults import TrainingInterrupted, _DivergenceMonitor, _StopSignals
from peterrec.training.loop import LOG_DIR, Trainer, TrainConfig, TrainInputs, TrainResult, _skip_together

__all__ = [
    "BEST_DIR",
    "CKPT_DIR",
    "LOG_DIR",
    "PopularityScorer",
    "TrainConfig",
    "TrainInputs",
    "TrainResult",
    "Trainer",
    "TrainingInterrupted",
    "evaluate",
    "is_chief",
    "is_multi_worker",
    "locking",
    "make_checkpoint",
    "monitor_mode",
    "monitor_sign",
    "seed_states",
    "variable_dict",
    # private helpers, kept importable from peterrec.training as before the split (tests use some)
    "_DivergenceMonitor",
    "_EVAL_STEPS",
    "_StopSignals",
    "_build_eval_step",
    "_cluster",
    "_eval_step",
    "_metric_names",
    "_save_checkpoint",
    "_skip_together",
]
