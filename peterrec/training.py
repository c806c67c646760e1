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
  ``model_dir`` (:mod:`peterrec.locking`); SIGTERM/SIGINT save a checkpoint
  after the current step and raise :class:`TrainingInterrupted` (under
  multi-worker the signal flag is all-reduced after every step, so all
  workers save the same step and stop together: preemption); a NaN/Inf
  loss or weights, or a loss that diverges (``divergence_factor``), stop
  training with the step and the last good checkpoint named (non-finite
  weights are never checkpointed); ``deterministic`` enables TF op
  determinism, so a run killed and resumed ends bit-identical to an
  uninterrupted one.

A task is any ``keras.Model`` with ``loss_sum(batch, training)``,
``loss_count(batch)`` and ``eval_scores(batch)`` (scores over all ids,
``[batch, V]``, for the target in ``batch["labels"]``).
"""

from __future__ import annotations

import dataclasses
import glob
import json
import math
import os
import shutil
import signal
import tempfile
import time
import weakref
from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from peterrec import locking
from peterrec.errors import PeterRecError
from peterrec import distribute
from peterrec.eval import ranking
from peterrec.features import LABELS

CKPT_DIR = "ckpt"
BEST_DIR = "ckpt/best"
LOG_DIR = "logs"


@dataclasses.dataclass
class TrainConfig:
    """Settings of one training run (plain values; pipelines fill them from flags)."""

    epochs: int = 20
    learning_rate: float = 1e-3
    patience: int = 5
    monitor: str = "mrr@10"  # a validation metric; one ending in "loss" (e.g. "log_loss") is minimised, any other maximised
    eval_log_loss: bool = False  # validation/test also report "log_loss" (softmax cross-entropy over the real ids, full protocol)
    jit_compile: bool = False
    mixed_precision: bool | str = False  # True: mixed_float16 on GPU, mixed_bfloat16 on CPU/TPU; or a Keras policy name
    checkpoint_every_steps: int = 500
    eval_protocol: str = "full"  # "full" ranking or "sampled" (1 target + num_negatives)
    num_negatives: int = 99
    ks: tuple = ranking.DEFAULT_KS
    seed: int = 42
    verbose: int = 1
    deterministic: bool = False  # tf.config.experimental.enable_op_determinism(): bit-identical reruns and resumes
    divergence_factor: float = 5.0  # stop when the smoothed loss exceeds this multiple of its minimum (0 = off)
    optimizer_factory: Callable | None = None  # () -> Keras optimizer (built in the strategy scope); None: Adam(learning_rate, epsilon=1e-8)


@dataclasses.dataclass
class TrainInputs:
    """Where the data comes from.

    ``train(epoch, skip_steps, input_context)`` returns one epoch of exactly
    ``steps_per_epoch`` global batches minus the skipped ones;
    ``evaluate(split, input_context)`` returns a finite dataset of evaluation
    rows. ``targets_per_epoch`` is the number of positions with loss in an epoch.
    """

    train: Callable
    evaluate: Callable
    steps_per_epoch: int
    targets_per_epoch: int


@dataclasses.dataclass
class TrainResult:
    best_epoch: int
    best_valid: dict
    epochs_run: int
    global_step: int
    train_seconds: float
    positions_per_second: float
    history: list
    stopped_early: bool
    stopped_on_nan: bool  # NaN/Inf loss or weights, or a diverging loss: see ``failure``
    failure: str | None = None  # why training stopped early on a numerical fault (names the step and last good checkpoint)


def _cluster(strategy):
    """The strategy's cluster resolver when it spans a multi-worker cluster, else None."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "cluster_spec", None) or not resolver.cluster_spec().as_dict():
        return None
    return resolver


def is_multi_worker(strategy):
    """Whether the strategy is a ``MultiWorkerMirroredStrategy`` over a ``TF_CONFIG`` cluster (several processes)."""
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and _cluster(strategy) is not None


def is_chief(strategy):
    """Whether this process writes the job's outputs (always, except non-chief multi-worker tasks)."""
    resolver = _cluster(strategy)
    if resolver is None:
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    return task_type is None or task_type == "chief" or (task_type == "worker" and task_id == 0 and "chief" not in resolver.cluster_spec().as_dict())


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


# ------------------------------------------------------------------ reliability: signals, numerical faults
class TrainingInterrupted(PeterRecError):
    """SIGTERM or SIGINT stopped training after a checkpoint was saved.

    ``exit_code`` is the shell convention 128 + signal number (143 for
    SIGTERM, 130 for SIGINT); ``pipelines.flags.run`` exits with it.
    """

    def __init__(self, message, signum):
        super().__init__(message)
        self.exit_code = 128 + int(signum)


class _StopSignals:
    """While active, SIGTERM and SIGINT only set ``received``; the loop saves and stops at the next step.

    A second signal of either kind gives up waiting (the previous handlers are
    restored and it is re-raised). Off the main thread, where Python cannot
    install handlers, it does nothing.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.received = None
        self._previous = {}

    def _handle(self, signum, frame):
        if self.received is not None:
            self._restore()
            signal.raise_signal(signum)
            return
        self.received = signum
        print(f"\n{signal.Signals(signum).name} received: saving a checkpoint after this step", flush=True)

    def _restore(self):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def __enter__(self):
        try:
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        except ValueError:  # not the main thread
            self._restore()
        return self

    def __exit__(self, *exc):
        self._restore()
        return False


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


class _DivergenceMonitor:
    """Flags a loss that runs away: its moving average above ``factor`` x (and 1.0 above) its lowest moving average.

    The exponential moving average (weight 0.1) starts at the first loss, so
    one noisy batch cannot trip it; ``factor <= 0`` disables the check.
    NaN/Inf losses are ``TerminateOnNaN``'s job.
    """

    def __init__(self, factor, weight=0.1):
        self.factor, self.weight = float(factor), weight
        self.average, self.lowest = None, math.inf

    def update(self, loss):
        """Returns ``(average, lowest)`` when the loss has diverged, else None."""
        if self.factor <= 0 or not math.isfinite(loss):
            return None
        self.average = loss if self.average is None else (1 - self.weight) * self.average + self.weight * loss
        self.lowest = min(self.lowest, self.average)
        if self.average > self.factor * self.lowest and self.average > self.lowest + 1.0:
            return self.average, self.lowest
        return None


def _skip_together(grads, ctx):
    """Mixed float16: when any replica's gradients overflowed, make every replica's non-finite, so
    the LossScaleOptimizer skips the step (and halves the scale) on all of them alike instead of
    some replicas entering the all-reduce without the others."""
    sparse = lambda g: isinstance(g, tf.IndexedSlices)  # noqa: E731  (embedding gradients)
    finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g.values if sparse(g) else g)) for g in grads if g is not None])
    overflowed = ctx.all_reduce(tf.distribute.ReduceOp.SUM, 1.0 - tf.cast(finite, tf.float32))  # replicas with inf/NaN
    factor = tf.where(overflowed > 0, float("nan"), 1.0)
    scale = lambda g: g * tf.cast(factor, g.dtype)  # noqa: E731
    return [
        None if g is None else tf.IndexedSlices(scale(g.values), g.indices, g.dense_shape) if sparse(g) else scale(g)
        for g in grads
    ]


class Trainer:
    """Runs the loop for one task under one strategy; see the module docstring."""

    def __init__(self, task_fn, inputs: TrainInputs, model_dir, config: TrainConfig, strategy=None, callbacks=()):
        self.strategy = strategy or tf.distribute.get_strategy()
        self.inputs = inputs
        self.is_chief = is_chief(self.strategy)
        if self.is_chief:
            locking.acquire(model_dir)  # one job per model_dir (re-entrant: the job may hold it already)
        if config.deterministic:
            tf.config.experimental.enable_op_determinism()
        # Under multi-worker every worker saves (the collectives need it), but only the chief into model_dir;
        # the others write into a temporary directory of their own, removed when fit() ends.
        self.multi_worker = is_multi_worker(self.strategy)
        self.model_dir = model_dir if self.is_chief else tempfile.mkdtemp(prefix="peterrec-worker-")
        self.config = config
        self.extra_callbacks = list(callbacks)
        # --- mixed precision: layers built under the policy; float16 needs loss scaling
        self.precision_policy = distribute.precision_policy(config.mixed_precision, self.strategy)
        with self.strategy.scope(), distribute.dtype_policy(self.precision_policy):
            self.task = task_fn()
            if config.optimizer_factory is not None:
                self.optimizer = config.optimizer_factory()
            else:
                self.optimizer = keras.optimizers.Adam(learning_rate=config.learning_rate, epsilon=1e-8)
            if self.precision_policy == "mixed_float16":
                self.optimizer = keras.optimizers.LossScaleOptimizer(self.optimizer)
        # --- end mixed precision
        with self.strategy.scope():
            self.optimizer.build(self.task.trainable_variables)
            self.global_step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
            self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
            self.best_value = tf.Variable(-np.inf, dtype=tf.float64, trainable=False, name="best_value")
            self.best_epoch = tf.Variable(-1, dtype=tf.int64, trainable=False, name="best_epoch")
            self.wait = tf.Variable(0, dtype=tf.int64, trainable=False, name="wait")
        self.task.compile(optimizer=self.optimizer)  # lets Keras callbacks find the optimizer
        state = dict(global_step=self.global_step, epoch=self.epoch, best_value=self.best_value, best_epoch=self.best_epoch, wait=self.wait)
        self.checkpoint = make_checkpoint(self.task, self.optimizer, seeds=True, **state)
        self._checkpoint_without_seeds = make_checkpoint(self.task, self.optimizer, **state)  # for checkpoints written before seeds were
        # ``manager`` reads (every worker resumes from the chief's checkpoints, on a shared file system) and
        # is the chief's writer; a non-chief worker writes through ``_write_manager`` into its own directory.
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, os.path.join(model_dir, CKPT_DIR), max_to_keep=2, step_counter=self.global_step
        )
        self._write_manager = self.manager if self.is_chief else tf.train.CheckpointManager(
            self.checkpoint, os.path.join(self.model_dir, CKPT_DIR), max_to_keep=1, step_counter=self.global_step
        )
        self.best_checkpoint = make_checkpoint(self.task)
        self._best_read_manager = tf.train.CheckpointManager(self.best_checkpoint, os.path.join(model_dir, BEST_DIR), max_to_keep=1)
        self.best_manager = tf.train.CheckpointManager(self.best_checkpoint, os.path.join(self.model_dir, BEST_DIR), max_to_keep=1)
        self._train_step = self._build_train_step()
        self._agree_step = self._build_agree_step() if self.multi_worker else None
        self._eval_step = None

    # ------------------------------------------------------------------ steps
    def _build_train_step(self):
        task, optimizer, strategy = self.task, self.optimizer, self.strategy
        num_replicas = strategy.num_replicas_in_sync
        use_jit = self.config.jit_compile
        loss_scaled = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)

        def grads_of(batch, inv_count):
            with tf.GradientTape() as tape:
                loss_sum = task.loss_sum(batch, training=True, static_shapes=use_jit)
                loss = loss_sum * inv_count
                if task.losses:
                    loss += tf.add_n(task.losses) / num_replicas
                loss = optimizer.scale_loss(loss)  # mixed precision: the LossScaleOptimizer unscales in apply
            grads = tape.gradient(loss, task.trainable_variables)
            if hasattr(task, "transform_gradients"):
                grads = task.transform_gradients(grads, task.trainable_variables)
            return loss_sum, grads

        compute = tf.function(grads_of, jit_compile=True) if use_jit else grads_of

        def replica_step(batch):
            count = task.loss_count(batch)
            ctx = tf.distribute.get_replica_context()
            global_count = ctx.all_reduce(tf.distribute.ReduceOp.SUM, count)
            loss_sum, grads = compute(batch, 1.0 / tf.maximum(global_count, 1.0))
            if loss_scaled and num_replicas > 1:
                grads = _skip_together(grads, ctx)
            optimizer.apply_gradients(zip(grads, task.trainable_variables))
            return loss_sum, count

        @tf.function
        def train_step(iterator):
            loss_sum, count = strategy.run(replica_step, args=(next(iterator),))
            loss_sum = strategy.reduce(tf.distribute.ReduceOp.SUM, loss_sum, axis=None)
            count = strategy.reduce(tf.distribute.ReduceOp.SUM, count, axis=None)
            self.global_step.assign_add(1)
            return loss_sum / tf.maximum(count, 1.0), count

        return train_step

    def _build_agree_step(self):
        """Multi-worker preemption: a ``tf.function`` that all-reduces a local stop flag, so every worker
        learns at the same step that one of them received SIGTERM/SIGINT (an equivalent of
        ``tf.distribute.experimental.PreemptionCheckpointHandler``, see docs/fidelity.md)."""
        strategy = self.strategy

        def replica_flag(flag):
            flag = tf.identity(flag)  # placed on the replica's device (a bare input has none: no all-reduce destination)
            return tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, flag)

        @tf.function
        def agree(flag):
            return strategy.experimental_local_results(strategy.run(replica_flag, args=(flag,)))[0]

        return agree

    def _stop_requested(self, signals):
        """Whether to save and stop now: this process got a signal, or (multi-worker) any worker did.

        Under multi-worker every worker calls this at the same points (after each step and each
        epoch), so they all save the same step and stop together instead of the others hanging in
        the next collective."""
        if not self.multi_worker:
            return signals.received is not None
        return float(self._agree_step(tf.constant(0.0 if signals.received is None else 1.0))) > 0

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, split, scorer=None):
        """Metrics of ``scorer`` (default: the task) on an evaluation split."""
        return evaluate(
            scorer or self.task,
            lambda ctx: self.inputs.evaluate(split, ctx),
            self.strategy,
            protocol=self.config.eval_protocol,
            num_negatives=self.config.num_negatives,
            ks=self.config.ks,
            seed=self.config.seed,
            log_loss=self.config.eval_log_loss and scorer is None,
        )

    # ------------------------------------------------------------------ loop
    def _callbacks(self, steps):
        cfg = self.config
        self.tensorboard = keras.callbacks.TensorBoard(
            os.path.join(self.model_dir, LOG_DIR), write_graph=False, update_freq="epoch", profile_batch=0
        )
        self.early_stopping = keras.callbacks.EarlyStopping(
            monitor=f"val_{cfg.monitor}", mode=monitor_mode(cfg.monitor), patience=cfg.patience, verbose=0
        )
        return keras.callbacks.CallbackList(
            [keras.callbacks.TerminateOnNaN(), self.tensorboard, self.early_stopping, *self.extra_callbacks],
            add_history=True,
            add_progbar=cfg.verbose > 0,
            model=self.task,
            verbose=cfg.verbose,
            epochs=cfg.epochs,
            steps=steps,
        )

    def _write_graph(self, iterator):
        writer = tf.summary.create_file_writer(os.path.join(self.model_dir, LOG_DIR, "train"))
        with writer.as_default():
            tf.summary.graph(self._train_step.get_concrete_function(iterator).graph)
        writer.close()

    def restore(self):
        """Restore the latest training checkpoint, if any; returns its path."""
        latest = self.manager.latest_checkpoint
        if latest:
            checkpoint = self.checkpoint
            if seed_states(self.task) and not any(name.startswith("seeds/") for name, _ in tf.train.list_variables(latest)):
                checkpoint = self._checkpoint_without_seeds  # an older checkpoint: the dropout masks restart
            checkpoint.restore(latest).assert_existing_objects_matched()
        return latest

    def fit(self) -> TrainResult:
        """Train to ``epochs`` (resuming from the latest checkpoint), early stopping or a numerical fault.

        A NaN/Inf loss or weights, or a diverging loss (``divergence_factor``),
        stops training with ``TrainResult.failure`` naming the step and the
        last good checkpoint. SIGTERM/SIGINT save a checkpoint after the
        current step and raise :class:`TrainingInterrupted`.
        """
        try:
            with _StopSignals() as signals:
                return self._fit(signals)
        finally:
            if not self.is_chief:  # a non-chief worker's checkpoints, logs and best weights are scratch
                shutil.rmtree(self.model_dir, ignore_errors=True)

    def _fit(self, signals) -> TrainResult:
        cfg, steps = self.config, self.inputs.steps_per_epoch
        resumed = self.restore()
        callbacks = self._callbacks(steps)
        failure = None
        divergence = _DivergenceMonitor(cfg.divergence_factor)
        start_epoch = int(self.epoch.numpy())
        skip = int(self.global_step.numpy()) - start_epoch * steps
        if resumed and cfg.verbose:
            print(f"Resuming from {resumed}: epoch {start_epoch + 1}, step {skip} of {steps}")
        self.task.stop_training = False
        callbacks.on_train_begin()
        self.early_stopping.wait = int(self.wait.numpy())
        sign = monitor_sign(cfg.monitor)  # best_value holds sign * metric, so larger is always better
        if self.best_epoch.numpy() >= 0:
            self.early_stopping.best = sign * float(self.best_value.numpy())
            self.early_stopping.best_epoch = int(self.best_epoch.numpy())
        train_seconds, trained_positions, graph_written = 0.0, 0.0, False
        stopped_early = bool(self.wait.numpy() >= cfg.patience > 0)
        epoch = start_epoch
        for epoch in range(start_epoch, cfg.epochs if not stopped_early else start_epoch):
            callbacks.on_epoch_begin(epoch)
            dataset = self.strategy.distribute_datasets_from_function(
                lambda ctx, e=epoch, s=skip: self.inputs.train(e, s, ctx)
            )
            iterator = iter(dataset)
            if not graph_written:
                self._write_graph(iterator)
                graph_written = True
            t0, epoch_positions, epoch_loss = time.perf_counter(), 0.0, 0.0
            for batch_index in range(skip, steps):
                callbacks.on_train_batch_begin(batch_index)
                loss_t, count = self._train_step(iterator)
                loss, count = float(loss_t), float(count)
                epoch_positions, epoch_loss = epoch_positions + count, epoch_loss + loss * count
                callbacks.on_train_batch_end(batch_index, {"loss": loss})
                failure = self._loss_fault(loss, divergence)
                if failure is None and cfg.checkpoint_every_steps and int(self.global_step.numpy()) % cfg.checkpoint_every_steps == 0:
                    failure = self._save()
                if failure is None and self._stop_requested(signals):
                    self._interrupt(signals.received, epoch, batch_index + 1)
                if failure is not None:
                    break
            elapsed = time.perf_counter() - t0
            skip = 0
            if failure is not None:
                failure = self._failure_message(failure)
                print(f"error: {failure}")
                break
            train_seconds += elapsed
            trained_positions += epoch_positions
            valid = self.evaluate("valid")
            # the epoch's mean loss over its positions (the progress bar shows the running mean)
            logs = {"loss": epoch_loss / max(epoch_positions, 1e-9), **{f"val_{k}": v for k, v in valid.items() if k != "users"}}
            logs["positions_per_second"] = epoch_positions / max(elapsed, 1e-9)
            logs["learning_rate"] = float(self.optimizer.learning_rate.numpy())
            improved = sign * valid[cfg.monitor] > float(self.best_value.numpy())
            if improved:
                self.best_value.assign(sign * valid[cfg.monitor])
                self.best_epoch.assign(epoch)
                _save_checkpoint(self.best_manager, checkpoint_number=epoch)
            callbacks.on_epoch_end(epoch, logs)
            self._append_history([{"epoch": epoch + 1, **logs, "seconds": elapsed}])
            self.wait.assign(self.early_stopping.wait)
            self.epoch.assign(epoch + 1)
            failure = self._save()
            if failure is not None:
                failure = self._failure_message(failure)
                print(f"error: {failure}")
                break
            if self._stop_requested(signals):
                self._interrupt(signals.received, epoch + 1, 0)
            if self.task.stop_training:
                stopped_early = True
                break
        callbacks.on_train_end()
        best_epoch = int(self.best_epoch.numpy())
        if best_epoch >= 0:
            own = self.best_manager.latest_checkpoint  # a non-chief worker's own copy when it saved that epoch itself
            best = own if own and own.endswith(f"-{best_epoch}") else self._best_read_manager.latest_checkpoint
            self.best_checkpoint.restore(best).assert_existing_objects_matched()
        return TrainResult(
            best_epoch=best_epoch + 1,
            best_valid={},
            epochs_run=int(self.epoch.numpy()),
            global_step=int(self.global_step.numpy()),
            train_seconds=train_seconds,
            positions_per_second=trained_positions / max(train_seconds, 1e-9),
            history=self._read_history(),
            stopped_early=stopped_early,
            stopped_on_nan=failure is not None,
            failure=failure,
        )

    # ------------------------------------------------------------------ checkpoints and faults
    def _save(self):
        """Save a training checkpoint unless the weights are not finite; returns a fault message or None."""
        if not all(np.all(np.isfinite(w.numpy())) for w in self.task.trainable_weights):
            return f"the weights became NaN/Inf at global step {int(self.global_step.numpy())}"
        _save_checkpoint(self._write_manager, check_interval=False)
        return None

    def _loss_fault(self, loss, divergence):
        """A message when this step's loss is NaN/Inf (TerminateOnNaN stopped the task) or has diverged."""
        step = int(self.global_step.numpy())
        if self.task.stop_training or not math.isfinite(loss):
            return f"the loss became NaN/Inf at global step {step}"
        diverged = divergence.update(loss)
        if diverged:
            average, lowest = diverged
            return (
                f"the training loss diverged at global step {step}: its moving average rose to {average:.4g} from a lowest "
                f"{lowest:.4g} (more than --divergence_factor {self.config.divergence_factor:g} times)"
            )
        return None

    def _failure_message(self, fault):
        last_good = self.manager.latest_checkpoint or "none (no checkpoint was written yet)"
        rate = float(self.optimizer.learning_rate.numpy())
        return (
            f"{fault} with learning rate {rate:g}; training stopped. Last good checkpoint: {last_good}. "
            "Lower --learning_rate (in a new --model_dir) or check the data"
        )

    def _interrupt(self, signum, epoch, step_in_epoch):
        """Save a checkpoint (when the weights are finite) and raise TrainingInterrupted.

        ``signum`` None: another worker of the cluster received the signal (reported as SIGTERM)."""
        fault = self._save()
        where = f"global step {int(self.global_step.numpy())} (epoch {epoch + 1}, step {step_in_epoch} of {self.inputs.steps_per_epoch})"
        if fault is not None:
            saved = f"not saved: {fault}"
        elif self.is_chief:
            saved = f"saved checkpoint {self._write_manager.latest_checkpoint}"
        else:
            saved = f"the chief saved the checkpoint in {self.manager.directory}"
        cause = signal.Signals(signum).name if signum is not None else "SIGTERM/SIGINT on another worker"
        raise TrainingInterrupted(
            f"training interrupted by {cause} at {where}; {saved}; re-run the same command to resume",
            signum if signum is not None else signal.SIGTERM,
        )

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


def monitor_mode(monitor):
    """"min" for a loss (a metric name ending in "loss"), else "max"."""
    return "min" if monitor.endswith("loss") else "max"


def monitor_sign(monitor):
    return -1.0 if monitor_mode(monitor) == "min" else 1.0


def evaluate(scorer, dataset_fn, strategy=None, *, protocol="full", num_negatives=99, ks=ranking.DEFAULT_KS, seed=0, log_loss=False):
    """Mean rank metrics of ``scorer.eval_scores`` over a finite dataset.

    Args:
        scorer: object with ``eval_scores(batch) -> [batch, V]`` scores.
        dataset_fn: ``input_context -> tf.data.Dataset`` of evaluation rows.
        protocol: "full" (rank over every non-reserved id) or "sampled"
            (rank among the target and ``num_negatives`` uniform negatives).
        log_loss: also report ``log_loss``, the mean softmax cross-entropy of the
            target over the real ids (full protocol only).
    """
    if log_loss and protocol != "full":
        raise ValueError("log_loss needs the full protocol")
    strategy = strategy or tf.distribute.get_strategy()
    names = _metric_names(ks, log_loss)
    dataset = strategy.distribute_datasets_from_function(dataset_fn)
    step = _eval_step(scorer, strategy, protocol, num_negatives, tuple(ks), seed, log_loss)
    total, count = np.zeros(len(names)), 0.0
    for i, batch in enumerate(dataset):
        sums, n = step(batch, tf.constant(i, tf.int32))
        total += sums.numpy()
        count += float(n)
    return ranking.summarise(dict(zip(names, total)), count) | {"users": int(count)}


_EVAL_STEPS = weakref.WeakKeyDictionary()  # scorer -> {settings: tf.function}, so each epoch reuses one trace


def _metric_names(ks, log_loss):
    return ranking.metric_names(ks) + (["log_loss"] if log_loss else [])


def _eval_step(scorer, strategy, protocol, num_negatives, ks, seed, log_loss=False):
    cache = _EVAL_STEPS.setdefault(scorer, {})
    key = (id(strategy), protocol, num_negatives, ks, seed, log_loss)
    if key not in cache:
        cache[key] = _build_eval_step(scorer, strategy, protocol, num_negatives, ks, seed, log_loss)
    return cache[key]


def _build_eval_step(scorer, strategy, protocol, num_negatives, ks, seed, log_loss):
    names = _metric_names(ks, log_loss)

    def metric_sums(batch, batch_index):
        scores = ranking.exclude_reserved(scorer.eval_scores(batch))
        targets = batch[LABELS]
        if protocol == "sampled":
            ranks = ranking.sampled_ranks(scores, targets, num_negatives, seed=tf.stack([seed, batch_index]))
        else:
            ranks = ranking.target_ranks(scores, targets)
        values = ranking.rank_metrics(ranks, ks)
        if log_loss:
            values["log_loss"] = ranking.log_loss(scores, targets)
        return tf.stack([tf.reduce_sum(values[n]) for n in names])

    def replica_step(batch, batch_index):
        # The last global batch can leave a replica with no rows; convs reject empty batches.
        size = tf.size(batch[LABELS])
        sums = tf.cond(size > 0, lambda: metric_sums(batch, batch_index), lambda: tf.zeros([len(names)]))
        return sums, tf.cast(size, tf.float32)

    @tf.function(reduce_retracing=True)
    def step(batch, batch_index):
        sums, count = strategy.run(replica_step, args=(batch, batch_index))
        return (
            strategy.reduce(tf.distribute.ReduceOp.SUM, sums, axis=None),
            strategy.reduce(tf.distribute.ReduceOp.SUM, count, axis=None),
        )

    return step


class PopularityScorer:
    """Scores every id by its training count: the popularity baseline."""

    def __init__(self, counts):
        self.counts = tf.constant(np.asarray(counts, dtype=np.float32))

    def eval_scores(self, batch):
        n = tf.shape(batch[LABELS])[0]
        return tf.tile(self.counts[None, :], [n, 1])
