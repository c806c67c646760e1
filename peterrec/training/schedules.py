"""Learning-rate schedules of the loop (``TrainConfig.lr_schedule``, ``warmup_epochs``): a float for the originals'
constant rate, else a Keras schedule over the run's optimizer steps (so a resumed run continues the same curve)."""

from __future__ import annotations

import keras
import tensorflow as tf


LR_SCHEDULES = ("constant", "cosine")


def learning_rate_schedule(config, steps_per_epoch: int):
    """The optimizer's learning rate: a float for a constant rate without warm-up, else a Keras schedule over
    ``config.epochs * steps_per_epoch`` steps (optimizer iterations, so a resumed run continues the same curve)."""
    if config.lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule {config.lr_schedule!r} is not one of {', '.join(LR_SCHEDULES)}")
    warmup = int(round(config.warmup_epochs * steps_per_epoch))
    total = max(1, config.epochs * steps_per_epoch)
    if config.lr_schedule == "constant" and not warmup:
        return config.learning_rate
    if config.lr_schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(
            0.0 if warmup else config.learning_rate, decay_steps=max(1, total - warmup), alpha=0.0,
            warmup_target=config.learning_rate if warmup else None, warmup_steps=warmup,
        )
    # constant after a linear warm-up: a piecewise schedule (0 -> lr over ``warmup`` steps, then lr)
    return _WarmupConstant(config.learning_rate, warmup)


@keras.saving.register_keras_serializable(package="peterrec")
class _WarmupConstant(keras.optimizers.schedules.LearningRateSchedule):
    def __init__(self, learning_rate, warmup_steps):
        self.learning_rate, self.warmup_steps = float(learning_rate), int(warmup_steps)

    def __call__(self, step):
        ramp = (tf.cast(step, tf.float32) + 1.0) / float(self.warmup_steps)
        return self.learning_rate * tf.minimum(1.0, ramp)

    def get_config(self):
        return {"learning_rate": self.learning_rate, "warmup_steps": self.warmup_steps}
