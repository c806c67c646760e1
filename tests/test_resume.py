"""Kill-and-resume (issue #9): a job killed mid-epoch resumes from its last checkpoint and, with op
determinism, ends bit-identical to an uninterrupted run; SIGTERM/SIGINT save a checkpoint first; one
job per --model_dir; a NaN or diverging loss names the step and the last good checkpoint.

Every job here is a real ``python -m pipelines.<job>`` command line in a process of its own (a fork of the ``cli``
fixture's server, which imported TensorFlow once) on a tiny configuration; the data is converted once in-process so
the jobs only train.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf

from peterrec import export, finetuning, pretraining
from peterrec.data import synthetic
from peterrec.errors import ConfigError
from peterrec.features import LABELS
from peterrec.jobs import raise_if_failed
from peterrec.training import Trainer, TrainConfig, TrainingInterrupted, TrainInputs, _DivergenceMonitor, locking, seed_states
from peterrec.tasks.base import Task

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO)
TINY = ["--epochs", "2", "--batch_size", "32", "--checkpoint_every_steps", "3", "--deterministic", "--verbose", "2", "--num_shards", "2"]
PRETRAIN = [*TINY, "--embedding_dim", "8", "--dilations", "1,2", "--max_len", "20", "--stride", "10"]
FINETUNE = [*TINY, "--insertion", "serial"]  # the default task: target items, BCE with sampled negatives


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """300 users; the TFRecord set every pretraining job reads, and the sizes of their runs."""
    root = tmp_path_factory.mktemp("resume")
    synthetic.generate(str(root / "world"), seed=3, n_users=300, n_items=200, n_target_items=100, length_median=20.0)
    cfg = pretraining.PretrainConfig(data=str(root / "world" / "source.inter"), tfrecord_dir=str(root / "tfr"), num_shards=2,
                                     max_len=20, stride=10, batch_size=32)
    set_dir, metadata, _ = pretraining.prepare_data(cfg)
    steps = pretraining.build_inputs(set_dir, metadata, cfg).steps_per_epoch
    return {"root": root, "set": set_dir, "steps": steps}


def _start(cli, job, args, model_dir):
    return cli.start(f"pipelines.{job}", [*args, "--model_dir", model_dir], cwd=REPO)


def _finish(proc, timeout=300):
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def _latest(model_dir):
    """``(path, global step)`` of the newest training checkpoint, or ``(None, None)``."""
    path = tf.train.latest_checkpoint(os.path.join(model_dir, "ckpt"))
    return (path, int(tf.train.load_variable(path, "global_step/.ATTRIBUTES/VARIABLE_VALUE"))) if path else (None, None)


def _stop_mid_epoch(proc, model_dir, steps_per_epoch, sig=signal.SIGKILL, timeout=240):
    """Send ``sig`` as soon as a mid-epoch checkpoint exists; returns that checkpoint's step."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the job ended before a checkpoint was seen: {proc.communicate()[1][-2000:]}"
        _, step = _latest(model_dir)
        if step and step % steps_per_epoch:
            proc.send_signal(sig)
            return step
        time.sleep(0.005)
    proc.kill()
    raise AssertionError("no checkpoint within the time limit")


def _checkpoint_values(model_dir):
    """Every variable of the newest training checkpoint (model, optimizer, global step, early stopping)."""
    reader = tf.train.load_checkpoint(os.path.join(model_dir, "ckpt"))
    return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map() if "OBJECT_GRAPH" not in k}


def _h5_values(path):
    values = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: values.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return values


def _assert_bit_identical(a, b):
    assert a.keys() == b.keys() and a
    for key in a:
        assert a[key].dtype == b[key].dtype and np.array_equal(a[key], b[key]), key  # exact, NaN-free by construction


def _kill_resume_compare(cli, job, args, runs_dir, steps):
    """Uninterrupted run || run killed mid-epoch -> same command again; both end bit-identical."""
    whole, killed = runs_dir / "whole", runs_dir / "killed"
    reference = _start(cli, job, args, whole)
    victim = _start(cli, job, args, killed)
    step = _stop_mid_epoch(victim, killed, steps)
    victim.wait(timeout=60)
    assert victim.returncode == -signal.SIGKILL
    total = 2 * steps
    path, after_kill = _latest(killed)
    assert 0 < after_kill < total and after_kill % steps, (after_kill, steps)  # a checkpoint exists, mid-epoch
    assert not os.path.exists(killed / "export") and not os.path.exists(killed / "metrics.json")  # the job did not finish
    rc, _, err = _finish(_start(cli, job, args, killed))
    assert rc == 0, err[-3000:]
    epoch, in_epoch = divmod(after_kill, steps)
    assert f"Resuming from {path}: epoch {epoch + 1}, step {in_epoch} of {steps}" in err  # logged (absl, stderr)
    rc, _, err = _finish(reference)
    assert rc == 0, err[-3000:]
    resumed_metrics, whole_metrics = (json.load(open(d / "metrics.json")) for d in (killed, whole))
    assert resumed_metrics["global_step"] == whole_metrics["global_step"] == total  # the step went on from the checkpoint
    _assert_bit_identical(_checkpoint_values(whole), _checkpoint_values(killed))  # weights, Adam moments, step
    exports = [export.latest_export(str(d)) for d in (whole, killed)]
    _assert_bit_identical(*(_h5_values(os.path.join(e, export.TASK_WEIGHTS)) for e in exports))
    assert resumed_metrics["test"] == whole_metrics["test"]
    history = [json.loads(line) for line in open(killed / "history.jsonl")]
    assert [row["epoch"] for row in history] == [1, 2]  # one row per epoch, none repeated by the resumption
    return step, exports[0]


@pytest.fixture(scope="module")
def pretrained(world, cli):
    """Pretraining: SIGKILL mid-epoch, resume, compare; the uninterrupted export serves the finetuning test."""
    args = ["--data", world["set"], *PRETRAIN]
    _, export_dir = _kill_resume_compare(cli, "pretrain", args, world["root"] / "pre", world["steps"])
    return export_dir


def test_pretraining_killed_mid_epoch_resumes_bit_identical(pretrained):
    assert os.path.isdir(pretrained)


def test_finetuning_killed_mid_epoch_resumes_bit_identical(world, pretrained, cli):
    data, targets = world["root"] / "world" / "source.inter", world["root"] / "world" / "target.inter"
    tfr = str(world["root"] / "tfr")
    cfg = finetuning.FinetuneConfig(pretrained=pretrained, data=str(data), targets=str(targets), tfrecord_dir=tfr, num_shards=2,
                                    batch_size=32)
    _, _, vocab = finetuning.load_backbone_export(pretrained)
    _, metadata, _, _ = finetuning.prepare_data(cfg, vocab)  # convert once, before the jobs race for it
    from peterrec.data import finetune_dataset

    steps = finetune_dataset.steps_per_epoch(metadata, 32)
    args = ["--pretrained", pretrained, "--data", str(data), "--targets", str(targets), "--tfrecord_dir", tfr, *FINETUNE]
    _kill_resume_compare(cli, "finetune", args, world["root"] / "fine", steps)
    # the patch artifact of the resumed run holds the same trained variables
    fine = world["root"] / "fine"
    patches = [np.load(os.path.join(d, "patch", "1", "patch.npz")) for d in (fine / "whole", fine / "killed")]
    _assert_bit_identical(dict(patches[0]), dict(patches[1]))


def test_sigterm_saves_a_checkpoint_and_exits_143(world, tmp_path, cli):
    proc = _start(cli, "pretrain", ["--data", world["set"], *PRETRAIN], tmp_path / "run")
    seen = _stop_mid_epoch(proc, tmp_path / "run", world["steps"], sig=signal.SIGTERM)
    rc, _, err = _finish(proc, timeout=120)
    assert rc == 128 + signal.SIGTERM, err[-3000:]
    last = err.strip().splitlines()[-1]
    match = re.fullmatch(rf"error: training interrupted by SIGTERM at global step (\d+) \(epoch \d+, step \d+ of {world['steps']}\); "
                         r"saved checkpoint (\S+); re-run the same command to resume", last)
    assert match, last
    step, path = int(match.group(1)), match.group(2)
    assert step >= seen and _latest(tmp_path / "run") == (path, step)  # the checkpoint it names is the newest, at that step
    assert not os.path.exists(tmp_path / "run" / "export")


def test_a_second_job_on_the_same_model_dir_is_refused(world, tmp_path, cli):
    model_dir = tmp_path / "busy"
    locking.acquire(str(model_dir))  # this pytest process plays the first job
    try:
        rc, _, err = _finish(_start(cli, "pretrain", ["--data", world["set"], *PRETRAIN], model_dir))
    finally:
        locking.release(str(model_dir))
    assert rc == 2, err[-3000:]
    assert err.strip().splitlines()[-1].startswith(f"error: --model_dir {model_dir} is in use by pid {os.getpid()} on ")
    assert "Traceback" not in err and sorted(os.listdir(model_dir)) == [".lock"]  # nothing written by the refused job


def test_the_lock_dies_with_its_holder(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from peterrec.training import locking; locking.acquire(sys.argv[1]); "
                               "print('held', flush=True); time.sleep(600)", str(tmp_path)], env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ConfigError, match=rf"in use by pid {holder.pid} on .*command: -c"):
            locking.acquire(str(tmp_path))
    finally:
        holder.kill()
        holder.wait()
    assert locking.acquire(str(tmp_path)).endswith(".lock")  # SIGKILL released it
    assert locking.holds(str(tmp_path))
    locking.release(str(tmp_path))
    assert not locking.holds(str(tmp_path))


class _ToyTask(Task):
    """A linear scorer whose loss turns NaN from optimizer step ``nan_from`` on (the Trainer's task contract)."""

    def __init__(self, nan_from=10**9, dropout=0.0):
        super().__init__()
        self.dense = keras.layers.Dense(3, name="scores")
        self.dense.build((None, 2))
        self.dropout = keras.layers.Dropout(dropout, seed=7)
        self.nan_from = nan_from

    def loss_sum(self, batch, training=True, static_shapes=False):
        loss = tf.reduce_sum(tf.square(self.dropout(self.dense(batch["x"]), training=training) - 1.0))
        return loss * tf.where(tf.cast(self.optimizer.iterations, tf.int32) >= self.nan_from, np.nan, 1.0)

    def loss_count(self, batch):
        return tf.cast(tf.shape(batch["x"])[0], tf.float32)

    def eval_scores(self, batch):
        return self.dense(batch["x"])


def _toy_inputs(steps):
    x = np.random.default_rng(0).normal(size=(4 * steps, 2)).astype("float32")
    rows = {"x": x, LABELS: np.zeros(4 * steps, np.int32)}
    return TrainInputs(
        train=lambda epoch, skip, ctx: tf.data.Dataset.from_tensor_slices(rows).batch(4).take(steps).skip(skip),
        evaluate=lambda split, ctx: tf.data.Dataset.from_tensor_slices(rows).batch(8),
        steps_per_epoch=steps,
        targets_per_epoch=4 * steps,
    )


def test_nan_loss_names_the_step_and_the_last_good_checkpoint(tmp_path, caplog):
    trainer = Trainer(lambda: _ToyTask(nan_from=4), _toy_inputs(10), str(tmp_path), TrainConfig(epochs=2, checkpoint_every_steps=2, verbose=0))
    result = trainer.fit()
    last_good = os.path.join(str(tmp_path), "ckpt", "ckpt-2")  # saved at global step 4, the step before the NaN
    assert result.stopped_on_nan and result.global_step == 5
    assert result.failure == (f"the loss became NaN/Inf at global step 5 with learning rate 0.001; training stopped. Last good checkpoint: "
                              f"{last_good}. Lower --learning_rate (in a new --model_dir) or check the data")
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == [result.failure]  # logged once, as an error
    assert tf.train.latest_checkpoint(os.path.join(str(tmp_path), "ckpt")) == last_good  # the NaN weights were never saved
    assert int(tf.train.load_variable(last_good, "global_step/.ATTRIBUTES/VARIABLE_VALUE")) == 4
    reader = tf.train.load_checkpoint(last_good)
    weights = [k for k in reader.get_variable_to_shape_map() if k.startswith(("model/", "optimizer/"))]
    assert weights and all(np.all(np.isfinite(reader.get_tensor(k))) for k in weights)
    with pytest.raises(ConfigError, match=r"at global step 5 .*Last good checkpoint: .*ckpt-2.*; metrics so far in"):
        raise_if_failed(result, str(tmp_path), {"stopped_on_nan": True})


def test_divergence_monitor_flags_a_runaway_loss_not_noise():
    noisy = _DivergenceMonitor(5.0)
    losses = [8.0 - 0.05 * i + (3.0 if i % 7 == 0 else 0.0) for i in range(100)]  # decreasing, with spikes of +3
    assert not any(noisy.update(loss) for loss in losses)
    runaway = _DivergenceMonitor(5.0)
    flagged = [runaway.update(loss) for loss in [5.0, 4.0, 3.0] + [3.0 * 2 ** k for k in range(1, 12)]]
    first = next(i for i, f in enumerate(flagged) if f)
    average, lowest = flagged[first]
    assert lowest == pytest.approx(4.71) and average > 5 * lowest  # EMA 5 -> 4.9 -> 4.71, then the runaway
    assert 8 <= first < len(flagged) - 1  # a few doublings in: the moving average lags single batches
    assert all(_DivergenceMonitor(0.0).update(loss) is None for loss in [1.0, 1e9])  # 0 = off


def test_ctrl_c_saves_a_checkpoint_after_the_current_step(tmp_path):
    class CtrlC(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            if batch == 6:
                signal.raise_signal(signal.SIGINT)  # arrives while step 7 runs

    trainer = Trainer(lambda: _ToyTask(nan_from=10**9), _toy_inputs(10), str(tmp_path), TrainConfig(epochs=2, checkpoint_every_steps=4, verbose=0),
                      callbacks=[CtrlC()])
    previous = signal.getsignal(signal.SIGINT)
    with pytest.raises(TrainingInterrupted) as stopped:
        trainer.fit()
    assert stopped.value.exit_code == 130 and signal.getsignal(signal.SIGINT) is previous  # handlers restored
    path = os.path.join(str(tmp_path), "ckpt", "ckpt-2")  # ckpt-1 at step 4, ckpt-2 written on Ctrl-C after step 7
    assert str(stopped.value) == (f"training interrupted by SIGINT at global step 7 (epoch 1, step 7 of 10); saved checkpoint {path}; "
                                  "re-run the same command to resume")
    assert int(tf.train.load_variable(path, "global_step/.ATTRIBUTES/VARIABLE_VALUE")) == 7
    resumed = Trainer(lambda: _ToyTask(nan_from=10**9), _toy_inputs(10), str(tmp_path), TrainConfig(epochs=2, checkpoint_every_steps=4, verbose=0))
    assert resumed.fit().global_step == 20  # 3 steps of epoch 1 and all of epoch 2


def test_dropout_masks_resume_where_they_stopped(tmp_path):
    """The dropout seed generators' states are checkpointed: interrupted + resumed == uninterrupted, bit for bit."""

    class Interrupt(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 5:
                raise KeyboardInterrupt

    config = TrainConfig(epochs=2, checkpoint_every_steps=3, verbose=0)

    def trainer(name, callbacks=()):
        keras.utils.set_random_seed(3)
        return Trainer(lambda: _ToyTask(dropout=0.5), _toy_inputs(10), str(tmp_path / name), config, callbacks=callbacks)

    whole = trainer("whole")
    whole.fit()
    with pytest.raises(KeyboardInterrupt):
        trainer("resumed", [Interrupt()]).fit()  # stops after step 6; the checkpoint holds step 6
    resumed = trainer("resumed")
    assert resumed.fit().global_step == whole.global_step.numpy() == 20
    values = lambda t: [w.numpy() for w in t.task.weights] + [v.numpy() for v in seed_states(t.task).values()]  # noqa: E731
    assert len(seed_states(whole.task)) == 1
    for a, b in zip(values(whole), values(resumed)):
        np.testing.assert_array_equal(a, b)
    tf.train.CheckpointManager(whole._checkpoint_without_seeds, str(tmp_path / "older" / "ckpt"), max_to_keep=1).save()
    older = trainer("older")
    assert older.restore() and older.global_step.numpy() == 20  # a checkpoint from before seed states were saved still restores


def test_several_steps_per_call_train_the_same_steps_and_name_the_nan_step(tmp_path):
    def run(name, per_call, nan_from=10**9):
        keras.utils.set_random_seed(3)
        config = TrainConfig(epochs=2, checkpoint_every_steps=4, verbose=0, steps_per_execution=per_call)
        trainer = Trainer(lambda: _ToyTask(dropout=0.5, nan_from=nan_from), _toy_inputs(10), str(tmp_path / name), config)
        return trainer, trainer.fit()

    one, one_result = run("one", 1)
    three, three_result = run("three", 3)  # calls of 3, 1 (checkpoint at step 4), 3, 3 (step 10: epoch end), ...
    assert three_result.global_step == one_result.global_step == 20
    for a, b in zip(one.task.weights, three.task.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())  # the same updates, in the same order
    assert [h["loss"] for h in three_result.history] == [h["loss"] for h in one_result.history]
    assert sorted(os.listdir(tmp_path / "three" / "ckpt")) == sorted(os.listdir(tmp_path / "one" / "ckpt"))
    _, nan = run("nan", 3, nan_from=4)
    assert nan.stopped_on_nan and nan.failure.startswith("the loss became NaN/Inf at global step 5 ")
