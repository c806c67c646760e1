"""What every training job shares: common settings, the model_dir contract, reporting helpers."""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time

import numpy as np

from peterrec import io
from peterrec.errors import ConfigError, check  # noqa: F401  (check: re-exported)
from peterrec.training import TrainConfig, locking
from peterrec.training.schedules import LR_SCHEDULES

JOB_CONFIG = "job_config.json"
# Fields newer than some job_config.json files: a missing key there means this default (the run still resumes).
ADDED_FIELDS = {"mixed_precision": False, "shuffle": "epoch", "lr_schedule": "constant", "warmup_epochs": 0.0, "weight_decay": 0.0}
# Fields that may change between a run and its resumption without invalidating checkpoints.
# (the data's identity is compared through the content-hashed TFRecord set name and the vocabulary hash,
# not through the path it was given by)
RESUMABLE_FIELDS = {
    "epochs", "patience", "verbose", "checkpoint_every_steps", "steps_per_execution", "strategy", "tpu", "tf_config", "eval_batch_size",
    "top_k", "data", "tfrecord_dir", "model_dir", "pretrained",
    "deterministic", "divergence_factor", "max_skipped_share",
}


@dataclasses.dataclass
class JobConfig:
    """Training settings shared by pretraining and finetuning jobs (one name per flag)."""

    epochs: int = 10
    batch_size: int = 64
    eval_batch_size: int = 256
    learning_rate: float = 1e-3
    lr_schedule: str = "constant"  # "cosine": decay to 0 over the run's epochs (the originals: constant)
    warmup_epochs: float = 0.0  # linear warm-up to learning_rate over this many epochs
    weight_decay: float = 0.0  # > 0: AdamW (decoupled weight decay) instead of Adam
    patience: int = 3
    seed: int = 42
    jit_compile: bool = False
    mixed_precision: bool = False  # Keras mixed policy: float16 + loss scaling on GPU, bfloat16 on CPU/TPU
    checkpoint_every_steps: int = 500
    steps_per_execution: int = 1  # training steps per call of the compiled step (fewer Python round trips for small steps)
    strategy: str = "auto"
    tpu: str | None = None
    tf_config: str | None = None
    top_k: int = 50
    verbose: int = 2
    deterministic: bool = False  # enable TF op determinism: a rerun or a resumed run gives bit-identical weights
    divergence_factor: float = 5.0  # stop when the smoothed training loss exceeds this multiple of its lowest (0 = off)
    max_skipped_share: float = 0.5  # fail when --min_seq_len skips more than this share of the users

    def validate_common(self):
        check(self.epochs >= 1, "epochs", f"must be >= 1, got {self.epochs}")
        check(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        check(self.steps_per_execution >= 1, "steps_per_execution", f"must be >= 1, got {self.steps_per_execution}")
        check(self.learning_rate > 0, "learning_rate", f"must be > 0, got {self.learning_rate}")
        check(self.lr_schedule in LR_SCHEDULES, "lr_schedule", f"{self.lr_schedule!r} is not one of {', '.join(LR_SCHEDULES)}")
        check(self.warmup_epochs >= 0, "warmup_epochs", f"must be >= 0, got {self.warmup_epochs}")
        check(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}")
        check(self.divergence_factor >= 0, "divergence_factor", f"must be >= 0 (0 = off), got {self.divergence_factor}")
        check(0.0 <= self.max_skipped_share <= 1.0, "max_skipped_share", f"must be in [0, 1], got {self.max_skipped_share}")

    def train_config(self, **overrides):
        """The loop's TrainConfig from these settings (job-specific fields as overrides)."""
        fields = {f.name for f in dataclasses.fields(TrainConfig)}
        values = {k: v for k, v in dataclasses.asdict(self).items() if k in fields}
        return TrainConfig(**(values | overrides))


def evaluate_splits(trainer, popularity_counts):
    """Validation and test metrics of the trainer's (best) task and of popularity on the same rows."""
    from peterrec.training import PopularityScorer

    t0 = time.perf_counter()
    valid, test = trainer.evaluate("valid"), trainer.evaluate("test")
    seconds = time.perf_counter() - t0
    popularity = PopularityScorer(popularity_counts)
    baseline = {"valid": trainer.evaluate("valid", popularity), "test": trainer.evaluate("test", popularity)}
    return valid, test, baseline, seconds


def check_job_config(model_dir, record):
    """Lock ``model_dir`` for this job and refuse one that holds a run with an incompatible configuration.

    Only the chief locks it and writes ``job_config.json``; another multi-worker task only checks an
    existing one (it never writes into ``model_dir``).
    """
    chief = locking.is_chief_task(record.get("tf_config"))
    if chief:
        locking.acquire(model_dir)
    path = os.path.join(model_dir, JOB_CONFIG)
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
        diffs = [
            f"{key}: {old.get(key)!r} -> {record.get(key)!r}"
            for key in sorted(set(old) | set(record))
            if key not in RESUMABLE_FIELDS and old.get(key, ADDED_FIELDS.get(key)) != record.get(key)
        ]
        if diffs:
            raise ConfigError(
                f"--model_dir {model_dir} holds a run with a different configuration ({'; '.join(diffs)}). "
                "Use another --model_dir, or delete that directory to start over."
            )
    if chief:
        io.write_json(path, record)


def raise_if_failed(result, model_dir, metrics):
    """After a numerical fault (NaN/Inf, divergence): write metrics.json, then raise ConfigError naming step and checkpoint."""
    if not result.stopped_on_nan:
        return
    path = os.path.join(model_dir, "metrics.json")
    io.write_json(path, metrics)
    raise ConfigError(f"{result.failure or f'training diverged at step {result.global_step}'}; metrics so far in {path}")


def count_params(weights):
    return int(sum(np.prod(w.shape) for w in weights))


def plot_history(history, path, monitor="mrr@10"):
    """Training loss and validation metrics per epoch as a PNG."""
    if not history:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.2))
    ax1.plot(epochs, [row["loss"] for row in history], marker="o")
    ax1.set(xlabel="epoch", ylabel="training loss", title="loss")
    keys = [f"val_{monitor}"] + [k for k in ("val_hr@10", "val_hr@1") if k != f"val_{monitor}" and k in history[0]]
    for key in keys:
        ax2.plot(epochs, [row.get(key, np.nan) for row in history], marker="o", label=key[4:])
    ax2.set(xlabel="epoch", title="validation")
    ax2.legend()
    fig.tight_layout()
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=".tmp-", suffix=".png")
    try:
        with os.fdopen(fd, "wb") as stream:
            fig.savefig(stream, format="png", dpi=100)
        os.replace(tmp, path)
    except BaseException:
        os.remove(tmp)
        raise
    finally:
        plt.close(fig)
