"""--mixed_precision: Keras dtype policies in the one loop; float16 through the LossScaleOptimizer."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from peterrec import distribute, export, pretraining
from peterrec.errors import ConfigError
from peterrec.training import Trainer, TrainConfig, _skip_together

TINY = dict(embedding_dim=8, dilations=(1, 2), batch_size=32, max_len=12, stride=6, verbose=0, num_shards=2, eval_batch_size=128)


def _config(tmp_path, data, name, **overrides):
    return pretraining.PretrainConfig(
        **(TINY | dict(data=str(data), tfrecord_dir=str(tmp_path / "tfr"), model_dir=str(tmp_path / name)) | overrides)
    )


def test_policy_choice_and_scope():
    assert distribute.precision_policy(False) is None
    on_gpu = bool(tf.config.list_logical_devices("GPU"))
    assert distribute.precision_policy(True) == ("mixed_float16" if on_gpu else "mixed_bfloat16")  # float16 + loss scaling on GPUs
    assert distribute.precision_policy("mixed_float16") == "mixed_float16"
    with pytest.raises(ConfigError, match="mixed_float32"):
        distribute.precision_policy("mixed_float32")
    before = keras.config.dtype_policy().name
    with distribute.dtype_policy("mixed_float16"):
        layer = keras.layers.Dense(2)
    assert layer.compute_dtype == "float16" and layer.variable_dtype == "float32"
    assert keras.config.dtype_policy().name == before


def test_mixed_bfloat16_job_trains_and_exports(small_world, tmp_path, monkeypatch):
    """What ``--mixed_precision`` does on a CPU: bfloat16 compute, float32 variables, no loss scaling.
    (On a GPU machine the job would pick float16; the test hides the GPUs from the policy choice so it tests bfloat16 there too.)"""
    real_devices = tf.config.list_logical_devices
    monkeypatch.setattr(tf.config, "list_logical_devices", lambda kind=None: [] if kind == "GPU" else real_devices(kind))
    assert distribute.precision_policy(True) == "mixed_bfloat16"
    cfg = _config(tmp_path, small_world / "source.inter", "bf16", epochs=3, mixed_precision=True, learning_rate=3e-3)
    metrics = pretraining.run(cfg)
    history = [json.loads(line) for line in open(os.path.join(cfg.model_dir, "history.jsonl"))]
    losses = [row["loss"] for row in history]
    assert len(losses) == 3 and losses[-1] < losses[0] - 0.1, losses
    assert metrics["test"]["mrr@10"] > 1.5 * metrics["popularity"]["test"]["mrr@10"]
    loaded = export.load_export(cfg.model_dir)
    assert all(w.dtype == "float32" and np.isfinite(w.numpy()).all() for w in loaded.task.weights)
    served = tf.saved_model.load(metrics["export_dir"])
    out = served.signatures["serving_default"](item_ids=tf.constant([loaded.vocab.tokens[:2] + [""]]))
    assert out["top_k_scores"].dtype == tf.float32 and np.isfinite(out["top_k_scores"].numpy()).all()
    with pytest.raises(ConfigError, match="mixed_precision"):  # a float32 re-run of a mixed run is refused
        pretraining.run(_config(tmp_path, small_world / "source.inter", "bf16", epochs=4, learning_rate=3e-3))


def test_mixed_float16_trains_with_loss_scaling(small_world, tmp_path):
    """The GPU path (on a CPU-only machine too): float16 compute, the loss scaled and unscaled by the optimizer."""
    cfg = _config(tmp_path, small_world / "source.inter", "fp16", learning_rate=3e-3)
    set_dir, metadata, vocab = pretraining.prepare_data(cfg)
    inputs = pretraining.build_inputs(set_dir, metadata, cfg)
    keras.utils.set_random_seed(0)
    train = TrainConfig(epochs=2, verbose=0, checkpoint_every_steps=0, mixed_precision="mixed_float16", patience=0)
    trainer = Trainer(lambda: pretraining.build_task(cfg, vocab), inputs, cfg.model_dir, train)
    assert isinstance(trainer.optimizer, keras.optimizers.LossScaleOptimizer)
    assert trainer.task.backbone.compute_dtype == "float16"
    result = trainer.fit()
    losses = [row["loss"] for row in result.history]
    assert not result.stopped_on_nan and losses[-1] < losses[0] - 0.05, losses
    assert all(w.dtype == "float32" and np.isfinite(w.numpy()).all() for w in trainer.task.weights)
    scale = float(trainer.optimizer.dynamic_scale.numpy())
    assert np.isfinite(scale) and scale >= 1.0
    assert trainer.optimizer.iterations.numpy() >= 1  # steps were applied, not all skipped
    # the loss scale is part of the checkpoint (a resumed run continues with it)
    reader = tf.train.load_checkpoint(trainer.manager.latest_checkpoint)
    assert any(key.startswith("loss_scale/dynamic_scale") for key in reader.get_variable_to_shape_map())


def test_an_overflow_on_one_replica_skips_the_step_on_all():
    finite = [tf.constant([1.0, 2.0]), tf.IndexedSlices(tf.constant([[1.0]]), tf.constant([0]), tf.constant([3, 1])), None]
    ctx = tf.distribute.get_replica_context()
    kept = _skip_together(finite, ctx)
    np.testing.assert_array_equal(kept[0].numpy(), [1.0, 2.0])
    assert isinstance(kept[1], tf.IndexedSlices) and kept[1].values.numpy().tolist() == [[1.0]] and kept[2] is None
    overflow = [tf.constant([1.0, np.inf]), finite[1], None]
    poisoned = _skip_together(overflow, ctx)
    assert np.isnan(poisoned[0].numpy()).all() and np.isnan(poisoned[1].values.numpy()).all()
