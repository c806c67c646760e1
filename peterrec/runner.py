"""The run boilerplate every training job shares (pretraining, Caser, CASR, side-information and finetuning jobs).

A job resolves its data and configuration record, then:

1. :func:`open_job`: creates ``model_dir``, locks it and checks (or writes)
   ``job_config.json``, and returns the ``tf.distribute`` strategy;
2. builds a ``peterrec.training.Trainer``; :func:`fit_and_evaluate` trains it
   and evaluates the selected checkpoint (with the popularity baseline);
3. assembles ``metrics.json`` from its own fields plus :func:`fit_metrics`,
   :func:`param_counts`, :func:`data_summary` and :func:`versions`;
4. :func:`finish`: on the chief only, fails on a numerical fault (after
   writing the metrics so far), exports, writes ``metrics.json`` and
   ``curves.png``.

:class:`DataConfig` holds the data settings (the ``define_data_flags`` names)
that the jobs reading interaction data share.
"""

from __future__ import annotations

import dataclasses
import os

import tensorflow as tf

import peterrec
from peterrec import distribute, export, io
from peterrec.jobs import JobConfig, check_job_config, count_params, evaluate_splits, plot_history, raise_if_failed


@dataclasses.dataclass
class DataConfig(JobConfig):
    """Data settings of a training job on interaction data (field = flag name; see ``pretraining.prepare_data``)."""

    data: str = "Data/synthetic/source.inter"
    format: str = "auto"
    tfrecord_dir: str = "tfrecords"
    vocab_from: str | None = None
    model_dir: str | None = None  # default: the job's, under checkpoints/
    # data preparation (used when --data is a raw file)
    num_shards: int = 8
    split: str = "loo"
    valid_fraction: float = 0.1
    test_fraction: float = 0.1
    min_seq_len: int = 3
    k_core: int = 0
    dedup: bool = False
    rating_threshold: float | None = None


# DataConfig fields that say how a raw file becomes a TFRecord set (``convert.resolve_data``'s settings)
CONVERSION_FIELDS = (
    "num_shards", "split", "valid_fraction", "test_fraction", "seed", "min_seq_len", "k_core", "dedup", "rating_threshold",
    "max_skipped_share",
)


def resolve_set(cfg, vocab=None, **fixed):
    """``cfg.data`` as a TFRecord set directory (converted once under ``cfg.tfrecord_dir``).

    The conversion settings are the :data:`CONVERSION_FIELDS` that ``cfg`` has
    (others take ``convert.resolve_data``'s defaults); ``fixed`` replaces or adds
    settings (e.g. a finetuning job's ``split="random", targets=...``).
    """
    from peterrec.data import convert

    settings = {name: getattr(cfg, name) for name in CONVERSION_FIELDS if hasattr(cfg, name)} | fixed
    return convert.resolve_data(cfg.data, cfg.format, cfg.tfrecord_dir, vocab=vocab, **settings)


def data_identity(set_dir, vocab):
    """The job-config fields that pin the data: the vocabulary hash and the content-hashed TFRecord set name."""
    return {"data_vocab_hash": vocab.hash, "data_set": os.path.basename(set_dir)}


def open_model_dir(model_dir, record):
    """Create and lock ``model_dir``; refuse one holding an incompatible run, else write ``job_config.json``."""
    os.makedirs(model_dir, exist_ok=True)
    check_job_config(model_dir, record)


def strategy_for(cfg):
    """The ``tf.distribute`` strategy of ``cfg`` (its ``strategy``, ``tpu`` and ``tf_config`` settings)."""
    return distribute.get_strategy(cfg.strategy, cfg.tpu, cfg.tf_config)


def open_job(cfg, model_dir, record):
    """:func:`open_model_dir`, then the job's strategy."""
    open_model_dir(model_dir, record)
    return strategy_for(cfg)


def fit_and_evaluate(trainer, popularity_counts):
    """Train, then evaluate the selected checkpoint and popularity on the same rows.

    Returns ``(result, {"valid", "test", "popularity"}, eval_seconds)``.
    """
    result = trainer.fit()
    valid, test, popularity, seconds = evaluate_splits(trainer, popularity_counts)
    return result, {"valid": valid, "test": test, "popularity": popularity}, seconds


def fit_metrics(result, eval_seconds):
    """The metrics.json fields describing the fit (``result``: ``Trainer.fit``'s) and the evaluation time."""
    return {
        "selected_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "global_step": result.global_step,
        "stopped_early": result.stopped_early,
        "stopped_on_nan": result.stopped_on_nan,
        "train_wall_seconds": round(result.train_seconds, 2),
        "eval_wall_seconds": round(eval_seconds, 2),
        "trained_positions_per_second": round(result.positions_per_second, 1),
    }


def param_counts(model):
    """``{"total_params", "trainable_params"}`` of a Keras model or layer."""
    return {"total_params": count_params(model.weights), "trainable_params": count_params(model.trainable_weights)}


def data_summary(set_dir, vocab, metadata):
    """metrics.json's ``data``: the TFRecord set, its vocabulary and counts."""
    return {"set_dir": set_dir, "vocab_size": vocab.size, "vocab_hash": vocab.hash, "counts": metadata.get("counts", {})}


def versions():
    """The library versions a metrics.json records."""
    return {"peterrec": peterrec.__version__, "tensorflow": tf.__version__}


def finish(trainer, result, model_dir, metrics, *, export_kwargs, after_export=None, monitor="mrr@10"):
    """The end of a run: on the chief, export and write ``metrics.json`` and ``curves.png``; returns ``metrics``.

    A numerical fault (NaN/Inf, divergence) writes the metrics so far and raises
    ConfigError naming the step. ``export_kwargs`` are
    :func:`peterrec.export.export_model`'s arguments besides ``model_dir`` and
    ``metrics`` (its result is ``metrics["export_dir"]``); ``after_export(metrics)``
    runs after the export, before metrics.json is written (e.g. to add a patch).
    """
    if not trainer.is_chief:
        return metrics  # multi-worker: only the chief exports and writes metrics
    raise_if_failed(result, model_dir, metrics)
    metrics["export_dir"] = export.export_model(model_dir=model_dir, metrics=metrics, **export_kwargs)
    if after_export is not None:
        after_export(metrics)
    io.write_json(os.path.join(model_dir, export.METRICS_FILE), metrics)
    plot_history(result.history, os.path.join(model_dir, "curves.png"), monitor=monitor)
    return metrics
