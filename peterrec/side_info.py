"""What the side-information jobs (ATRank, MIIR) share: settings, data + item features, metrics, the run.

:class:`SideInfoConfig` holds the data settings of ``pipelines.pretrain``
(same names, so the same flags fill them) plus the item-feature settings
(``item_data``, ``item_format``, ``item_fields``, ``max_bad_share``).
:func:`prepare` resolves ``data`` to a TFRecord set (``pretraining.prepare_data``)
and builds (once, cached in the set) the item-feature tables aligned to its
vocabulary. A job builder returns a :class:`SideInfoJob`; :func:`run_job`
trains it with the one loop (``peterrec.training.Trainer``, with the job's
per-epoch metric set as ``metric_fn``), evaluates, exports (with
``item_features.json``/``.npz``) and writes ``metrics.json``,
``job_config.json`` and ``curves.png`` like every training job.

:mod:`peterrec.recipes.atrank` and :mod:`peterrec.recipes.miir` are the two
jobs (their configs, job builders and runs); the networks are in
``peterrec.models.atrank`` / ``.miir``, the tasks and input pipelines in
``peterrec.tasks.atrank`` / ``.miir``.
"""

from __future__ import annotations

from typing import Callable, ClassVar, NamedTuple
import dataclasses
import json
import os
import time
import weakref

from absl import logging
import keras
import numpy as np
import tensorflow as tf

from peterrec import runner
from peterrec.data import item_features as item_features_lib
from peterrec.data import item_sources
from peterrec.errors import DataError
from peterrec.eval import ranking
from peterrec.features import LABELS
from peterrec.jobs import check
from peterrec.training import Trainer, TrainConfig, TrainInputs


@dataclasses.dataclass
class SideInfoConfig(runner.DataConfig):
    """Data (``runner.DataConfig``'s) and item-feature settings shared by ATRank and MIIR (field = flag name)."""

    MODEL: ClassVar[str] = ""

    # item side information (peterrec.data.item_features)
    item_data: str = "Data/synthetic/source.item"  # comma-separated: .item files and/or Amazon meta_*.json
    item_format: str = "auto"
    item_fields: tuple | None = None  # None: the model's default
    max_bad_share: float = 0.05  # meta lines that are not a dict with an asin: skipped and counted up to this share

    def resolved_model_dir(self):
        return self.model_dir or os.path.join("checkpoints", f"train-{self.MODEL}")

    def validate_data(self):
        self.validate_common()
        check(self.item_format in item_sources.FORMATS, "item_format", f"{self.item_format!r} is not one of {', '.join(item_sources.FORMATS)}")
        check(0.0 <= self.max_bad_share <= 1.0, "max_bad_share", f"must be in [0, 1], got {self.max_bad_share}")
        check(bool(item_sources.split_paths(self.item_data)), "item_data", "needs at least one side-information file")


def prepare(cfg: SideInfoConfig, fields):
    """``(set_dir, metadata, vocab, item_features)`` for ``cfg`` (``fields``: the item fields to read).

    Raises:
        DataError: the side-information files share no item with the data.
    """
    from peterrec.pretraining import prepare_data

    set_dir, metadata, vocab = prepare_data(cfg)
    features = item_features_lib.for_set(
        set_dir, vocab, cfg.item_data, fields, fmt=cfg.item_format, max_bad_share=cfg.max_bad_share
    )
    stats = features.stats
    if stats["items"] and stats["items_without_features"] >= stats["items"]:
        raise DataError(
            f"--item_data {cfg.item_data}: none of its {stats['feature_rows']} rows names an item of --data {cfg.data} "
            "(item ids must match the interaction file's)"
        )
    logging.info(
        f"item features {', '.join(features.fields)}: {stats['items'] - stats['items_without_features']} of {stats['items']} items "
        f"have a row; missing shares {stats['missing_share']}"
        + (f"; {stats['feature_rows_unknown_items']} rows of items not in the data ignored" if stats["feature_rows_unknown_items"] else "")
    )
    return set_dir, metadata, vocab, features


class SideInfoJob(NamedTuple):
    """What a side-information job builder returns.

    ``task_factory()`` builds the task (inside the strategy scope);
    ``inputs`` the ``TrainInputs``; ``metric_fn(task, split)`` the per-epoch
    validation metrics (``train_config.monitor`` is one of them);
    ``report_fn(trainer)`` the final ``{"valid", "test", "popularity", ...}``
    of metrics.json; ``train_config`` the loop's settings (optimizer
    included); ``max_len`` what the export's serving signature keeps;
    ``record`` the job's resolved settings (job_config.json);
    ``item_features`` the tables the model holds (after any discard).
    """

    task_factory: Callable
    inputs: TrainInputs
    metric_fn: Callable
    report_fn: Callable
    train_config: TrainConfig
    max_len: int
    record: dict
    item_features: item_features_lib.ItemFeatures


# ---------------------------------------------------------------- metrics
SAMPLED_NAMES = ("hr@5", "hr@10", "mrr", "auc")


def sampled_metrics(scorer, dataset, num_negatives=99, seed=0):
    """MIIR's metric set on 1 target + ``num_negatives`` uniform negatives (not filtered by history).

    ``rank`` = negatives scoring >= the target (ties count against it);
    ``hr@k = 1[rank < k]``, ``mrr = 1 / (rank + 1)``, ``auc = 1 - rank / num_negatives``
    (the original's ``success / 99``). Negatives come from
    ``ranking.sampled_ranks`` (stateless in ``(seed, batch index)``).
    ``scorer.eval_scores(batch) -> [B, V]``.
    """

    def step(batch, index):
        scores = ranking.exclude_reserved(scorer.eval_scores(batch))
        ranks = tf.cast(ranking.sampled_ranks(scores, batch[LABELS], num_negatives, seed=tf.stack([seed, index])), tf.float32)
        return tf.stack([
            tf.reduce_sum(tf.cast(ranks < 5, tf.float32)),
            tf.reduce_sum(tf.cast(ranks < 10, tf.float32)),
            tf.reduce_sum(1.0 / (ranks + 1.0)),
            tf.reduce_sum(1.0 - ranks / float(num_negatives)),
        ]), tf.cast(tf.size(ranks), tf.float32)

    return _mean_over(scorer, ("sampled", num_negatives, seed), step, dataset, SAMPLED_NAMES)


def pair_auc(scorer, dataset):
    """Share of rows whose target outscores its negative, strictly (ATRank's AUC).

    ``scorer.pair_scores(batch) -> [B, 2]`` (target, negative) scores.
    """

    def step(batch, index):
        scores = scorer.pair_scores(batch)
        wins = tf.cast(scores[:, 0] > scores[:, 1], tf.float32)
        return tf.reduce_sum(wins)[None], tf.cast(tf.size(wins), tf.float32)

    return _mean_over(scorer, ("pair_auc",), step, dataset, ("auc",))


_STEPS = weakref.WeakKeyDictionary()  # scorer -> {key: tf.function}: one trace per scorer and metric set


def _mean_over(scorer, key, step, dataset, names):
    cache = _STEPS.setdefault(scorer, {})
    key = (*key, str(dataset.element_spec))
    if key not in cache:
        relaxed = tf.nest.map_structure(lambda s: tf.TensorSpec([None] * len(s.shape), s.dtype), dataset.element_spec)
        cache[key] = tf.function(step, input_signature=[relaxed, tf.TensorSpec([], tf.int32)], autograph=False)
    fn = cache[key]
    total, count = np.zeros(len(names)), 0.0
    for index, batch in enumerate(dataset):
        sums, n = fn(batch, tf.constant(index, tf.int32))
        total += sums.numpy()
        count += float(n)
    return {name: float(value) / max(count, 1.0) for name, value in zip(names, total)} | {"users": int(count)}


# ---------------------------------------------------------------- the run
def run_job(cfg: SideInfoConfig, build, fields, name):
    """Train, evaluate and export a side-information job; returns the metrics written to metrics.json.

    ``build(cfg, set_dir, metadata, vocab, item_features) -> SideInfoJob``.
    """
    cfg.validate()
    keras.utils.set_random_seed(cfg.seed)
    model_dir = cfg.resolved_model_dir()
    set_dir, metadata, vocab, features = prepare(cfg, fields)
    job = build(cfg, set_dir, metadata, vocab, features)
    features = job.item_features
    record = job.record | runner.data_identity(set_dir, vocab) | {"item_features_hash": features.hash}
    record = json.loads(json.dumps(record))  # tuples -> lists, as job_config.json reads back
    strategy = runner.open_job(cfg, model_dir, record)
    trainer = Trainer(job.task_factory, job.inputs, model_dir, job.train_config, strategy, metric_fn=job.metric_fn)
    result = trainer.fit()
    task = trainer.task
    t0 = time.perf_counter()
    report = job.report_fn(trainer)
    metrics = {
        **report,
        **runner.fit_metrics(result, time.perf_counter() - t0),
        **runner.param_counts(task),
        "data": runner.data_summary(set_dir, vocab, metadata) | {"has_timestamps": bool(metadata.get("has_timestamps"))},
        "item_features": {"fields": features.spec(), "hash": features.hash, "stats": features.stats},
        "versions": runner.versions(),
    }
    export_kwargs = dict(
        task=task, vocab=vocab, max_len=job.max_len, top_k=cfg.top_k,
        extra_config={"job": record, "backbone_name": name, "item_features_hash": features.hash,
                      "layout": {"atrank": "candidate_pairs", "miir": "mii_cells"}[name]},
        extra_files={f"{item_features_lib.FILE_NAME}.json": lambda path: features.save(os.path.dirname(path))},
    )
    return runner.finish(trainer, result, model_dir, metrics, export_kwargs=export_kwargs, monitor=job.train_config.monitor)
