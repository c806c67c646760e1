"""Caser (Tang & Wang 2018): convolutional sequence embedding with user embeddings, its own windows and BCE.

``pipelines.train --model caser`` and tune/benchmark train :class:`CaserTrainConfig`
through :func:`run_caser_job`: the shared data path, the one training loop and
evaluation, the same export, plus Caser's own metric set (Prec/Recall@1,5,10,
MAP) under ``metrics["caser_metrics"]``. Unset shared flags keep Caser's own
defaults (:data:`CASER_DEFAULTS`).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable, NamedTuple

import keras

from peterrec import pretraining, recipes, runner
from peterrec.data import caser_dataset
from peterrec.eval import caser_metrics
from peterrec.models.caser import Caser, CaserConfig
from peterrec.tasks.caser import CaserTask
from peterrec.training import Trainer, TrainInputs


_CASER = CaserConfig()  # the seed's defaults
# Caser's own defaults of the shared settings (caser_pytorch's L, d, drop_rate and batch size).
CASER_DEFAULTS = {"max_len": _CASER.L, "embedding_dim": _CASER.d, "dropout": _CASER.drop_rate, "batch_size": _CASER.batch_size}


@dataclasses.dataclass
class CaserTrainConfig(runner.DataConfig):
    """``--model caser`` for tune/benchmark: the shared data/training settings plus Caser's knobs (flag names).

    ``max_len`` is Caser's ``L``, ``embedding_dim`` its ``d``, ``dropout`` its
    ``drop_rate``, ``caser_l2`` its ``l2``; defaults are Caser's own (as
    ``pipelines.train --model caser`` gives them), the rest are the shared
    training defaults. :meth:`caser` is the :class:`~peterrec.models.caser.CaserConfig`.
    """

    max_len: int = CASER_DEFAULTS["max_len"]
    embedding_dim: int = CASER_DEFAULTS["embedding_dim"]
    dropout: float = CASER_DEFAULTS["dropout"]
    batch_size: int = CASER_DEFAULTS["batch_size"]
    T: int = _CASER.T
    nv: int = _CASER.nv
    nh: int = _CASER.nh
    ac_conv: str = _CASER.ac_conv
    ac_fc: str = _CASER.ac_fc
    neg_samples: int = _CASER.neg_samples
    caser_l2: float = _CASER.l2
    tied: bool = _CASER.tied

    def caser(self):
        return CaserConfig(
            L=self.max_len, T=self.T, d=self.embedding_dim, nv=self.nv, nh=self.nh, ac_conv=self.ac_conv, ac_fc=self.ac_fc,
            drop_rate=self.dropout, neg_samples=self.neg_samples, l2=self.caser_l2, tied=self.tied, batch_size=self.batch_size,
            eval_batch_size=self.eval_batch_size, learning_rate=self.learning_rate, epochs=self.epochs, seed=self.seed,
        )

    def resolved_model_dir(self):
        return self.model_dir or os.path.join("checkpoints", "train-caser")

    def validate(self):
        self.validate_common()
        self.caser().validate()


def run_caser_job(cfg: CaserTrainConfig):
    """:func:`run_caser` from one :class:`CaserTrainConfig` (what tune/benchmark call for ``caser``)."""
    return run_caser(dataclasses.replace(cfg, model_dir=cfg.resolved_model_dir()), cfg.caser())


def run_caser(cfg, caser):
    """``pipelines.train --model caser``: Caser through the same data path, loop, evaluation and export.

    ``cfg`` carries the shared data/training settings (its ``backbone`` field is
    ignored); ``caser`` is a :class:`peterrec.models.caser.CaserConfig` with the
    seed's knobs (``L`` = the window length, ``--max_len``). Writes the same
    outputs as :func:`run` plus Caser's own metric set (Prec/Recall@1,5,10, MAP)
    under ``metrics["caser_metrics"]``.
    """
    cfg.validate_common()
    keras.utils.set_random_seed(cfg.seed)
    model_dir = cfg.model_dir or os.path.join("checkpoints", "train-caser")
    set_dir, metadata, vocab = pretraining.prepare_data(cfg)
    job = build_caser_job(caser, set_dir, metadata, vocab)  # validates the knobs against the data
    record = {"model": "caser", "caser": dataclasses.asdict(caser), "data": cfg.data, "split": cfg.split,
              **runner.data_identity(set_dir, vocab)}
    strategy = runner.open_job(cfg, model_dir, record)
    train_cfg = cfg.train_config(epochs=caser.epochs, learning_rate=caser.learning_rate, seed=caser.seed)
    trainer = Trainer(job.task_factory, job.inputs, model_dir, train_cfg, strategy)
    result, evaluation, eval_seconds = runner.fit_and_evaluate(trainer, vocab.counts)
    task = trainer.task
    metrics = {
        **evaluation,
        "caser_metrics": {split: job.caser_metrics(task, split) for split in ("valid", "test")},
        **runner.fit_metrics(result, eval_seconds),
        **runner.param_counts(task),
        "data": runner.data_summary(set_dir, vocab, metadata),
        "versions": runner.versions(),
    }
    export_kwargs = dict(task=task, vocab=vocab, max_len=caser.L, top_k=cfg.top_k,
                         extra_config={"job": record, "backbone_name": "caser", "layout": "caser_windows",
                                       "conversion": {name: getattr(cfg, name) for name in runner.CONVERSION_FIELDS}})
    return runner.finish(trainer, result, model_dir, metrics, export_kwargs=export_kwargs)


class CaserJob(NamedTuple):
    """What :func:`build_caser_job` returns.

    ``task_factory()`` builds a fresh :class:`~peterrec.tasks.caser.CaserTask`
    (call it inside the strategy scope, as ``Trainer`` does); ``inputs`` are
    the ``TrainInputs``; ``caser_metrics(task, split)`` is Caser's own metric
    set (Prec/Recall@1,5,10 and MAP, ``peterrec.eval.caser_metrics``) on
    ``"valid"`` or ``"test"``; ``users`` the indexed users.
    """

    task_factory: Callable
    inputs: object
    caser_metrics: Callable
    users: object


def build_caser_job(cfg_like, set_dir, metadata, vocab):
    """Data -> Caser task factory + ``TrainInputs`` (+ the Caser metric set) for ``Trainer``.

    Args:
        cfg_like: a :class:`CaserConfig` or any object with its field names.
        set_dir, metadata: a TFRecord set and its metadata (``pretraining.prepare_data``).
        vocab: the set's item vocabulary (its ``size`` is the score width).

    Raises:
        ConfigError: a bad knob, or ``L + T`` longer than every training history.
        DataError: a user trained on every item (no negative can be drawn).
    """
    cfg = CaserConfig.coerce(cfg_like).validate(metadata)
    users = caser_dataset.scan_users(set_dir, vocabulary_size=vocab.size)
    steps = caser_dataset.steps_per_epoch(metadata, cfg.L, cfg.T, cfg.batch_size)

    def train_fn(epoch, skip_steps, ctx):
        return caser_dataset.train_dataset(
            set_dir, users, L=cfg.L, T=cfg.T, neg_samples=cfg.neg_samples, vocabulary_size=vocab.size,
            batch_size=cfg.batch_size, steps=steps, seed=cfg.seed, epoch=epoch, skip_steps=skip_steps,
            shuffle_buffer=cfg.shuffle_buffer, input_context=ctx,
        )

    def eval_fn(split, ctx):
        return caser_dataset.eval_dataset(set_dir, split, users, L=cfg.L, batch_size=cfg.eval_batch_size, input_context=ctx)

    def task_factory():
        return CaserTask(
            Caser(
                vocab.size, users.size, L=cfg.L, d=cfg.d, nv=cfg.nv, nh=cfg.nh, ac_conv=cfg.ac_conv, ac_fc=cfg.ac_fc,
                drop_rate=cfg.drop_rate, tied=cfg.tied, l2=cfg.l2, reg_weight=cfg.reg_weight,
            ),
            neg_samples=cfg.neg_samples,
        )

    def metrics_fn(task, split):
        rows = caser_dataset.eval_dataset(set_dir, split, users, L=cfg.L, batch_size=cfg.eval_batch_size, with_history=True)
        return caser_metrics.evaluate(task, rows)

    inputs = TrainInputs(
        train=train_fn,
        evaluate=eval_fn,
        steps_per_epoch=steps,
        targets_per_epoch=caser_dataset.num_train_targets(metadata, cfg.L, cfg.T),
    )
    return CaserJob(task_factory, inputs, metrics_fn, users)


def eval_rows(loaded, set_dir, split, batch_size):
    """An export's evaluation rows: the last ``L`` items and the user's index (users indexed as in training)."""
    users = caser_dataset.scan_users(set_dir, vocabulary_size=loaded.vocab.size)
    return lambda ctx: caser_dataset.eval_dataset(set_dir, split, users, L=loaded.max_len, batch_size=batch_size, input_context=ctx)


recipes.register(recipes.Recipe(
    "caser", CaserTrainConfig, run_caser_job, own_defaults=tuple(CASER_DEFAULTS), layout="caser_windows", causal=True,
    pipeline="train", eval_rows=eval_rows, order=6, summary="Caser: horizontal/vertical convolutions over the last L items plus a user embedding",
))
