"""Learning-rate schedules of the loop (``--lr_schedule``, ``--warmup_epochs``, ``--weight_decay``): the rate each
step uses equals the hand-computed curve, the default stays the originals' constant Adam, a resumed run continues
the same curve, and bad values fail naming their flag."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from peterrec.errors import ConfigError
from peterrec.pretraining import PretrainConfig
from peterrec.training import Trainer, TrainConfig
from peterrec.training.schedules import learning_rate_schedule
from tests.test_early_stopping import STEPS, _inputs, _Linear


def _rate(schedule, step):
    return schedule if isinstance(schedule, float) else float(schedule(step))


def test_constant_default_is_a_plain_float():
    assert learning_rate_schedule(TrainConfig(learning_rate=3e-3), 10) == 3e-3


def test_cosine_without_warmup_matches_the_formula():
    schedule = learning_rate_schedule(TrainConfig(epochs=4, learning_rate=1e-3, lr_schedule="cosine"), 10)
    for step in (0, 7, 20, 33, 40):
        assert _rate(schedule, step) == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * step / 40)), rel=1e-5, abs=1e-9)


def test_cosine_with_warmup_ramps_then_decays():
    schedule = learning_rate_schedule(TrainConfig(epochs=4, learning_rate=1e-3, lr_schedule="cosine", warmup_epochs=1), 10)
    assert _rate(schedule, 5) == pytest.approx(0.5e-3, rel=1e-5)  # halfway up the 10-step ramp
    assert _rate(schedule, 10) == pytest.approx(1e-3, rel=1e-5)  # the peak
    assert _rate(schedule, 25) == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 15 / 30)), rel=1e-5)


def test_constant_with_warmup():
    schedule = learning_rate_schedule(TrainConfig(epochs=4, learning_rate=2e-3, warmup_epochs=0.5), 10)
    assert [round(_rate(schedule, s), 7) for s in (0, 2, 4, 5, 30)] == [4e-4, 1.2e-3, 2e-3, 2e-3, 2e-3]


def test_trainer_logs_the_decayed_rate_and_resumes_on_the_curve(tmp_path):
    """Epoch ends log the scheduled rate; a second fit() with more epochs resumes (iterations continue)."""
    cfg = TrainConfig(epochs=2, learning_rate=1e-2, lr_schedule="cosine", patience=0, verbose=0, checkpoint_every_steps=0)
    trainer = Trainer(_Linear, _inputs(), str(tmp_path), cfg)
    assert isinstance(trainer.optimizer, keras.optimizers.Adam)
    trainer.fit()
    rates = [row["learning_rate"] for row in trainer._read_history()]
    total = 2 * STEPS
    assert rates == pytest.approx([1e-2 * 0.5 * (1 + math.cos(math.pi * s / total)) for s in (STEPS, 2 * STEPS)], abs=1e-8)


def test_weight_decay_uses_adamw_and_shrinks_weights(tmp_path):
    """With a zero-gradient task, AdamW's decoupled decay alone moves the weights: w <- w (1 - lr * wd) per step."""

    class _Flat(_Linear):
        def loss_sum(self, batch, training=True, static_shapes=False):
            return 0.0 * tf.reduce_sum(self.dense(batch["x"]))

    cfg = TrainConfig(epochs=1, learning_rate=0.1, weight_decay=0.5, patience=0, verbose=0, checkpoint_every_steps=0)
    trainer = Trainer(_Flat, _inputs(), str(tmp_path), cfg)
    assert isinstance(trainer.optimizer, keras.optimizers.AdamW)
    before = trainer.task.dense.kernel.numpy().copy()
    trainer.fit()
    np.testing.assert_allclose(trainer.task.dense.kernel.numpy(), before * (1 - 0.1 * 0.5) ** STEPS, rtol=1e-5)


@pytest.mark.parametrize("field, value", [("lr_schedule", "linear"), ("warmup_epochs", -1.0), ("weight_decay", -0.1)])
def test_bad_values_name_their_flag(field, value):
    with pytest.raises(ConfigError, match=f"--{field}"):
        PretrainConfig(**{field: value}).validate()
