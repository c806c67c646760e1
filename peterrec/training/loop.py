"""The one training loop: :class:`Trainer`, its settings and inputs, and the result of a run.

See :mod:`peterrec.training` for the loop's contract (loss normalisation across
replicas, callbacks, checkpoints, multi-worker, reliability).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import time
from typing import Callable

from absl import logging
import keras
import numpy as np
import tensorflow as tf

from peterrec import distribute
from peterrec.eval import ranking
from peterrec.training import locking
from peterrec.training.checkpoints import BEST_DIR, CKPT_DIR, CheckpointMixin, _save_checkpoint, make_checkpoint
from peterrec.training.cluster import ClusterMixin, is_chief, is_multi_worker
from peterrec.training.evaluation import evaluate, monitor_mode, monitor_sign
from peterrec.training.faults import FaultMixin, _DivergenceMonitor, _StopSignals
from peterrec.training.schedules import learning_rate_schedule

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
    steps_per_execution: int = 1  # training steps per call of the compiled step (Keras' name): one Python round trip per call
    eval_protocol: str = "full"  # "full" ranking or "sampled" (1 target + num_negatives)
    num_negatives: int = 99
    ks: tuple = ranking.DEFAULT_KS
    seed: int = 42
    verbose: int = 1
    deterministic: bool = False  # tf.config.experimental.enable_op_determinism(): bit-identical reruns and resumes
    divergence_factor: float = 5.0  # stop when the smoothed loss exceeds this multiple of its minimum (0 = off)
    optimizer_factory: Callable | None = None  # () -> Keras optimizer (built in the strategy scope); None: Adam(learning_rate, epsilon=1e-8)
    lr_schedule: str = "constant"  # "constant" (the originals) or "cosine": decay to 0 over ``epochs`` epochs of steps
    warmup_epochs: float = 0.0  # linear warm-up from 0 to ``learning_rate`` over this many epochs of steps (then the schedule)
    weight_decay: float = 0.0  # > 0: AdamW's decoupled weight decay instead of Adam


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


class Trainer(CheckpointMixin, FaultMixin, ClusterMixin):
    """Runs the loop for one task under one strategy; see the :mod:`peterrec.training` docstring.

    Checkpoint/history, fault/stop and cross-worker methods come from the mixins of
    :mod:`~peterrec.training.checkpoints`, :mod:`~peterrec.training.faults` and :mod:`~peterrec.training.cluster`.
    """

    def __init__(self, task_fn, inputs: TrainInputs, model_dir, config: TrainConfig, strategy=None, callbacks=(), metric_fn=None):
        self.metric_fn = metric_fn  # metric_fn(task, split) -> metrics: a job's own validation metric set (ATRank's AUC)
        self.strategy = strategy or tf.distribute.get_strategy()
        self.inputs = inputs
        self._eval_datasets = {}  # split -> distributed evaluation dataset
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
                rate = learning_rate_schedule(config, inputs.steps_per_epoch)
                if config.weight_decay > 0:
                    self.optimizer = keras.optimizers.AdamW(learning_rate=rate, weight_decay=config.weight_decay, epsilon=1e-8)
                else:
                    self.optimizer = keras.optimizers.Adam(learning_rate=rate, epsilon=1e-8)
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
            grads = task.transform_gradients(grads, task.trainable_variables)
            return loss_sum, grads

        compute = tf.function(grads_of, jit_compile=True, autograph=False) if use_jit else grads_of

        def replica_step(batch):
            count = task.loss_count(batch)
            ctx = tf.distribute.get_replica_context()
            global_count = ctx.all_reduce(tf.distribute.ReduceOp.SUM, count)
            loss_sum, grads = compute(batch, 1.0 / tf.maximum(global_count, 1.0))
            if loss_scaled and num_replicas > 1:
                grads = _skip_together(grads, ctx)
            optimizer.apply_gradients(zip(grads, task.trainable_variables))
            return loss_sum, count, task.position_count(batch)

        def one_step(iterator):
            loss_sum, count, positions = strategy.run(replica_step, args=(next(iterator),))
            loss_sum, count, positions = (strategy.reduce(tf.distribute.ReduceOp.SUM, x, axis=None) for x in (loss_sum, count, positions))
            self.global_step.assign_add(1)
            return loss_sum / tf.maximum(count, 1.0), count, positions

        @tf.function(autograph=False)  # graph code written with tf.cond/while: AutoGraph's source rewrite is a third of tracing
        def train_step(iterator):
            return one_step(iterator)

        @tf.function(autograph=False)
        def train_steps(iterator, n):
            """``n`` steps in one call (a tensor: one trace for every n); per-step losses, counts and positions ``[n]``."""

            def body(i, *arrays):
                return (i + 1, *(a.write(i, x) for a, x in zip(arrays, one_step(iterator))))

            arrays = tuple(tf.TensorArray(tf.float32, size=n) for _ in range(3))
            _, *arrays = tf.while_loop(lambda i, *_: i < n, body, (tf.constant(0), *arrays))
            return tuple(a.stack() for a in arrays)

        self._train_steps = train_steps
        return train_step

    def _run_steps(self, iterator, n):
        """``n`` training steps; ``(losses, counts, positions)`` as lists of Python floats, one per step (``counts``:
        the loss normaliser, ``task.loss_count``; ``positions``: the trained positions, ``task.position_count``)."""
        if n == 1:
            return tuple([float(x)] for x in self._train_step(iterator))
        return tuple(x.numpy().tolist() for x in self._train_steps(iterator, tf.constant(n, tf.int32)))

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, split, scorer=None):
        """Metrics of ``scorer`` (default: the task) on an evaluation split.

        With ``metric_fn`` and no ``scorer`` (per-epoch validation, the selected task), the job's own metric set.
        """
        if scorer is None and self.metric_fn is not None:
            return self.metric_fn(self.task, split)
        if split not in self._eval_datasets:  # built once: every epoch and every scorer iterates the same rows
            self._eval_datasets[split] = self.strategy.distribute_datasets_from_function(lambda ctx: self.inputs.evaluate(split, ctx))
        return evaluate(
            scorer or self.task,
            self._eval_datasets[split],
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
            logging.info(f"Resuming from {resumed}: epoch {start_epoch + 1}, step {skip} of {steps}")
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
            t0, epoch_positions, epoch_count, epoch_loss = time.perf_counter(), 0.0, 0.0, 0.0
            batch_index, per_call = skip, max(1, int(cfg.steps_per_execution))
            every = int(cfg.checkpoint_every_steps or 0)
            while batch_index < steps:
                n = min(per_call, steps - batch_index)
                if every:  # a call ends on every checkpoint step
                    n = min(n, every - int(self.global_step.numpy()) % every)
                callbacks.on_train_batch_begin(batch_index)
                losses, counts, positions = self._run_steps(iterator, n)
                first_step = int(self.global_step.numpy()) - n + 1 if n > 1 else None
                for j, (loss, count, trained) in enumerate(zip(losses, counts, positions)):
                    if j:
                        callbacks.on_train_batch_begin(batch_index + j)
                    epoch_positions, epoch_count, epoch_loss = epoch_positions + trained, epoch_count + count, epoch_loss + loss * count
                    callbacks.on_train_batch_end(batch_index + j, {"loss": loss})
                    failure = self._loss_fault(loss, divergence, None if first_step is None else first_step + j)
                    if failure is not None:
                        break
                batch_index += n
                if failure is None and every and int(self.global_step.numpy()) % every == 0:
                    failure = self._save()
                if failure is None and self._stop_requested(signals):
                    self._interrupt(signals.received, epoch, batch_index)
                if failure is not None:
                    break
            elapsed = time.perf_counter() - t0
            skip = 0
            if failure is not None:
                failure = self._failure_message(failure)
                logging.error(failure)
                break
            train_seconds += elapsed
            trained_positions += epoch_positions
            valid = self.evaluate("valid")
            # the epoch's mean loss over its (weighted) positions (the progress bar shows the running mean)
            logs = {"loss": epoch_loss / max(epoch_count, 1e-9), **{f"val_{k}": v for k, v in valid.items() if k != "users"}}
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
                logging.error(failure)
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
