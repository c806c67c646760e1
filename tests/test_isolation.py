"""Process-wide TensorFlow settings that one test turns on do not leak into the next (tests/conftest.py)."""

from tensorflow.python.framework import config as tf_config

from peterrec.training import Trainer, TrainConfig, TrainInputs


def test_a_deterministic_trainer_turns_op_determinism_on(tmp_path):
    assert not tf_config.is_op_determinism_enabled()
    inputs = TrainInputs(train=None, evaluate=None, steps_per_epoch=1, targets_per_epoch=1)
    try:
        Trainer(lambda: None, inputs, str(tmp_path), TrainConfig(deterministic=True))
    except Exception:  # noqa: BLE001 (no task to build: only the switch matters here)
        pass
    assert tf_config.is_op_determinism_enabled()


def test_the_next_test_runs_without_it():
    assert not tf_config.is_op_determinism_enabled()
