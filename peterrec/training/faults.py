"""Reliability: signals (SIGTERM/SIGINT, preemption exit codes) and numerical faults (NaN/Inf, divergence).

SIGTERM/SIGINT save a checkpoint after the current step and raise
:class:`TrainingInterrupted` (exit code 128 + signal number); under
multi-worker the signal flag is all-reduced after every step, so all workers
save the same step and stop together. A NaN/Inf loss or weights, or a loss
that diverges (``divergence_factor``), stop training with the step and the
last good checkpoint named.
"""

from __future__ import annotations

import math
import signal

import tensorflow as tf
from absl import logging

from peterrec.errors import PeterRecError


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
        logging.warning("%s received: saving a checkpoint after this step", signal.Signals(signum).name)

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


class FaultMixin:
    """:class:`~peterrec.training.Trainer`'s stop and fault handling (its step counter, managers and config)."""

    def _stop_requested(self, signals):
        """Whether to save and stop now: this process got a signal, or (multi-worker) any worker did.

        Under multi-worker every worker calls this at the same points (after each step and each
        epoch), so they all save the same step and stop together instead of the others hanging in
        the next collective."""
        if not self.multi_worker:
            return signals.received is not None
        return float(self._agree_step(tf.constant(0.0 if signals.received is None else 1.0))) > 0

    def _loss_fault(self, loss, divergence, step=None):
        """A message when this step's loss is NaN/Inf (TerminateOnNaN stopped the task) or has diverged.

        ``step``: the loss's global step (default: the current one)."""
        step = int(self.global_step.numpy()) if step is None else step
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
