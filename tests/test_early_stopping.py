"""Early stopping and best-checkpoint selection: patience stops the run, the best validation epoch's weights and
metrics are what a job reports and exports, ``selected_epoch`` agrees with ``history.jsonl``, and a resumed run
keeps its patience counter.

The Trainer tests script the validation metric per epoch (``metric_fn``) on a toy task, so which epoch is best
is known in advance; the job test scripts it through ``Trainer.evaluate`` around a real tiny pretraining run.
"""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from peterrec import export, pretraining
from peterrec.features import LABELS
from peterrec.tasks.base import Task
from peterrec.training import Trainer, TrainConfig, TrainInputs

STEPS = 3
# Validation mrr@10 after epochs 1..6 (patience 2): best at epoch 2, no gain at 3 and 4 -> stop after epoch 4.
# A run that forgot its patience counter would train epoch 5 (and a longer one reach the better epoch 6).
SCRIPT = [0.1, 0.5, 0.3, 0.2, 0.4, 0.9]


class _Linear(Task):
    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(3, name="scores")
        self.dense.build((None, 2))

    def loss_sum(self, batch, training=True, static_shapes=False):
        return tf.reduce_sum(tf.square(self.dense(batch["x"]) - 1.0))

    def loss_count(self, batch):
        return tf.cast(tf.shape(batch["x"])[0], tf.float32)

    def eval_scores(self, batch):
        return self.dense(batch["x"])


def _inputs():
    x = np.random.default_rng(0).normal(size=(4 * STEPS, 2)).astype("float32")
    rows = {"x": x, LABELS: np.zeros(4 * STEPS, np.int32)}
    return TrainInputs(
        train=lambda epoch, skip, ctx: tf.data.Dataset.from_tensor_slices(rows).batch(4).take(STEPS).skip(skip),
        evaluate=lambda split, ctx: tf.data.Dataset.from_tensor_slices(rows).batch(8),
        steps_per_epoch=STEPS,
        targets_per_epoch=4 * STEPS,
    )


def _scripted(monitor="mrr@10", script=SCRIPT):
    def metric_fn(task, split):
        epoch = int(task.optimizer.iterations.numpy()) // STEPS  # 1-based: validation runs after the epoch's steps
        return {monitor: script[epoch - 1], "users": 1}

    return metric_fn


class _Snapshots(keras.callbacks.Callback):
    def __init__(self, task_of):
        super().__init__()
        self.task_of, self.weights = task_of, {}

    def on_epoch_end(self, epoch, logs=None):
        self.weights[epoch + 1] = [w.numpy() for w in self.task_of().weights]


class _StopBefore(keras.callbacks.Callback):
    """Interrupts at the start of ``epoch`` (1-based): the checkpoint holds the epochs before it."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch + 1 == self.epoch:
            raise KeyboardInterrupt


def _trainer(model_dir, callbacks=(), monitor="mrr@10", script=SCRIPT, epochs=6):
    keras.utils.set_random_seed(1)
    config = TrainConfig(epochs=epochs, patience=2, monitor=monitor, checkpoint_every_steps=0, verbose=0, learning_rate=0.05)
    holder = {}
    snapshots = _Snapshots(lambda: holder["trainer"].task)
    trainer = Trainer(_Linear, _inputs(), str(model_dir), config, callbacks=[snapshots, *callbacks], metric_fn=_scripted(monitor, script))
    holder["trainer"] = trainer
    return trainer, snapshots


def _history(model_dir):
    return [json.loads(line) for line in open(os.path.join(model_dir, "history.jsonl"))]


@pytest.mark.parametrize("monitor, script", [("mrr@10", SCRIPT), ("log_loss", [round(1 - v, 3) for v in SCRIPT])], ids=["maximised", "minimised"])
def test_patience_stops_the_run_and_the_best_epochs_weights_are_kept(tmp_path, monitor, script):
    trainer, snapshots = _trainer(tmp_path, monitor=monitor, script=script)
    result = trainer.fit()
    assert result.stopped_early and result.epochs_run == 4 and result.global_step == 4 * STEPS
    assert result.best_epoch == 2
    for kept, best, last in zip(trainer.task.weights, snapshots.weights[2], snapshots.weights[4]):
        np.testing.assert_array_equal(kept.numpy(), best)  # the selected epoch's weights, restored from the best checkpoint
        assert not np.array_equal(best, last)  # (training went on after epoch 2)
    history = _history(tmp_path)
    assert [row["epoch"] for row in history] == [1, 2, 3, 4]
    values = [row[f"val_{monitor}"] for row in history]
    assert values == script[:4]
    best_row = (np.argmax if monitor == "mrr@10" else np.argmin)(values)
    assert history[best_row]["epoch"] == result.best_epoch


def test_a_resumed_run_keeps_its_patience_counter_and_its_best_epoch(tmp_path):
    whole, _ = _trainer(tmp_path / "whole")
    whole_result = whole.fit()
    first, _ = _trainer(tmp_path / "resumed", callbacks=[_StopBefore(4)])
    with pytest.raises(KeyboardInterrupt):
        first.fit()  # epochs 1-3 done: best epoch 2, one epoch without a gain
    assert int(first.wait.numpy()) == 1 and int(first.best_epoch.numpy()) == 1
    resumed, _ = _trainer(tmp_path / "resumed")
    result = resumed.fit()
    assert result.stopped_early and result.epochs_run == 4 and result.best_epoch == 2  # a reset counter would train epoch 5
    for a, b in zip(resumed.task.weights, whole.task.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert [row["epoch"] for row in _history(tmp_path / "resumed")] == [1, 2, 3, 4]
    again, _ = _trainer(tmp_path / "resumed")
    stopped = again.fit()  # a stopped run rerun: no more epochs, the same selection
    assert stopped.stopped_early and stopped.epochs_run == 4 and stopped.global_step == whole_result.global_step and stopped.best_epoch == 2


def test_a_job_reports_and_exports_the_selected_epoch(tiny_inter, tmp_path, monkeypatch):
    """pretraining.run with the validation mrr@10 scripted: metrics.json and the export are the best epoch's."""
    real_evaluate, real_fit = Trainer.evaluate, Trainer.fit
    state = {"fitting": False, "weights": {}, "real": {}}

    def evaluate(self, split, scorer=None):
        metrics = real_evaluate(self, split, scorer)
        if state["fitting"] and split == "valid" and scorer is None:
            epoch = int(self.epoch.numpy()) + 1  # the epoch just trained (the counter moves after validation)
            state["weights"][epoch] = {w.path: w.numpy() for w in self.task.weights}
            state["real"][epoch] = dict(metrics)
            metrics = dict(metrics, **{"mrr@10": SCRIPT[epoch - 1]})
        return metrics

    def fit(self):
        state["fitting"] = True
        try:
            return real_fit(self)
        finally:
            state["fitting"] = False

    monkeypatch.setattr(Trainer, "evaluate", evaluate)
    monkeypatch.setattr(Trainer, "fit", fit)
    cfg = pretraining.PretrainConfig(data=str(tiny_inter), tfrecord_dir=str(tmp_path / "tfr"), model_dir=str(tmp_path / "run"), epochs=6,
                                     patience=2, embedding_dim=8, dilations=(1, 2), max_len=10, stride=5, batch_size=32, verbose=0,
                                     num_shards=2, learning_rate=5e-3)
    metrics = pretraining.run(cfg)
    written = json.load(open(os.path.join(cfg.model_dir, "metrics.json")))
    assert written["selected_epoch"] == metrics["selected_epoch"] == 2
    assert written["epochs_run"] == 4 and written["stopped_early"] is True
    history = _history(cfg.model_dir)
    assert history[int(np.argmax([row["val_mrr@10"] for row in history]))]["epoch"] == written["selected_epoch"]
    for key in ("hr@10", "ndcg@10", "hr@5"):  # the re-evaluated validation metrics are those of epoch 2's weights
        assert written["valid"][key] == pytest.approx(state["real"][2][key], abs=1e-6), key
    exported = {w.path: w.numpy() for w in export.load_export(metrics["export_dir"]).task.weights}
    best, last = state["weights"][2], state["weights"][4]
    assert exported.keys() == best.keys()
    for path, value in exported.items():
        np.testing.assert_array_equal(value, best[path], err_msg=path)
    assert any(not np.array_equal(best[p], last[p]) for p in best)
