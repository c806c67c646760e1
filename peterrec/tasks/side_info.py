"""The side-information training jobs, ATRank and MIIR: settings, data + item features, metrics, the run.

:class:`SideInfoConfig` holds the data settings of ``pipelines.pretrain``
(same names, so the same flags fill them) plus the item-feature settings
(``item_data``, ``item_format``, ``item_fields``, ``max_bad_share``).
:func:`prepare` resolves ``data`` to a TFRecord set (``pretraining.prepare_data``)
and builds (once, cached in the set) the item-feature tables aligned to its
vocabulary. A job builder returns a :class:`SideInfoJob`; :func:`run_job`
trains it with the one loop (``peterrec.training.Trainer``, with the job's
per-epoch metric set, :class:`JobTrainer`), evaluates, exports (with
``item_features.json``/``.npz``) and writes ``metrics.json``,
``job_config.json`` and ``curves.png`` like every training job.

:class:`ATRankConfig` / :func:`build_atrank_job` / :func:`run_atrank` and
:class:`MIIRConfig` / :func:`build_miir_job` / :func:`run_miir` are the two
jobs (the networks are in ``peterrec.models.atrank`` / ``.miir``, the tasks
and input pipelines in ``peterrec.tasks.atrank`` / ``.miir``; those modules
import nothing of the job machinery). The recipes ``peterrec/recipes/atrank.py``
and ``miir.py`` register the two jobs.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
import weakref
from typing import Callable, ClassVar, NamedTuple

import keras
import numpy as np
import tensorflow as tf

from peterrec import export, runner
from peterrec.data import dataset
from peterrec.data import item_features as item_features_lib
from peterrec.data import item_sources
from peterrec.errors import ConfigError, DataError
from peterrec.eval import ranking
from peterrec.features import LABELS
from peterrec.jobs import check
from peterrec.models.atrank import CANDIDATE_PROJECTIONS, NUM_TIME_BUCKETS, ATRank
from peterrec.models.miir import ATTENTIONS, MIIR
from peterrec.tasks import atrank as atrank_tasks
from peterrec.tasks import miir as miir_tasks
from peterrec.training import PopularityScorer, Trainer, TrainConfig, TrainInputs


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
    print(
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


class JobTrainer(Trainer):
    """``Trainer`` whose per-epoch validation (and ``evaluate(split)``) is the job's own metric set."""

    def __init__(self, *args, metric_fn=None, **kwargs):
        self.metric_fn = metric_fn
        super().__init__(*args, **kwargs)

    def evaluate(self, split, scorer=None):
        if scorer is None and self.metric_fn is not None:
            return self.metric_fn(self.task, split)
        return super().evaluate(split, scorer)


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
        cache[key] = tf.function(step, input_signature=[relaxed, tf.TensorSpec([], tf.int32)])
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
    trainer = JobTrainer(job.task_factory, job.inputs, model_dir, job.train_config, strategy, metric_fn=job.metric_fn)
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


# ================================================================ ATRank

OPTIMIZERS = ("sgd", "adam")
EVAL_PROTOCOLS = ("full", "sampled")


@dataclasses.dataclass
class ATRankConfig(SideInfoConfig):
    """ATRank's settings (defaults: the TF original's Amazon configuration) plus the data settings.

    ``batch_size`` counts rows (history, candidate, label) as the original
    does; a position's positive and negative rows travel in the same batch,
    so a batch holds ``batch_size / 2`` positions. ``max_len`` keeps the most
    recent items of each history (0 = all, the original). The learning rate
    drops by ``lr_drop_factor`` after ``lr_drop_fraction`` of the total steps
    (the original: 1.0 -> 0.1 at step 336,000, ≈ 0.41 of its 10 epochs of
    ~81.5 k steps on Amazon Electronics); ``clip_norm`` is the global-norm
    clip (5); ``optimizer="adam"`` uses Adam at ``learning_rate`` (give a
    smaller one, e.g. 1e-3). Validation each epoch: AUC (one positive vs
    one negative per user, the original's metric, ``monitor="auc"``); at the
    end also ranking metrics over every item (``eval_protocol="full"``) or
    1 + ``num_negatives`` sampled items.

    Multi-behaviour ATRank: ``behaviour_field`` names the token column of the
    ``.inter`` ``data`` file holding each interaction's behaviour type; each
    type gets its own history projection (with a ``behaviour_dim`` type
    embedding), the candidates go through the projection of
    ``candidate_behaviour`` (default: the most frequent type) unless
    ``candidate_projection="none"`` (see ``peterrec.models.atrank``).
    """

    MODEL = "atrank"

    item_fields: tuple | None = ("category",)
    embedding_dim: int = 64
    field_dim: int = 64
    num_heads: int = 8
    num_layers: int = 1
    dropout: float = 0.0
    time_depth: int = NUM_TIME_BUCKETS
    max_len: int = 0
    reg_rate: float = 5e-5
    optimizer: str = "sgd"
    learning_rate: float = 1.0
    lr_drop_fraction: float = 0.41
    lr_drop_factor: float = 0.1
    clip_norm: float = 5.0
    batch_size: int = 32
    eval_batch_size: int = 128
    epochs: int = 10
    candidate_chunk: int = 512
    eval_protocol: str = "full"
    num_negatives: int = 99
    patience: int = 10  # the original trains all its epochs (and keeps the best checkpoint)
    behaviour_field: str | None = None
    behaviour_dim: int = 16
    candidate_behaviour: str | None = None
    candidate_projection: str = "type"

    def validate(self):
        self.validate_data()
        check(self.behaviour_dim >= 1, "behaviour_dim", f"must be >= 1, got {self.behaviour_dim}")
        check(self.candidate_projection in CANDIDATE_PROJECTIONS, "candidate_projection",
              f"{self.candidate_projection!r} is not one of {', '.join(CANDIDATE_PROJECTIONS)}")
        check(self.behaviour_field or not self.candidate_behaviour, "candidate_behaviour", "needs --behaviour_field")
        if self.behaviour_field:
            columns = item_features_lib.inter_columns(self.data)
            check(bool(columns), "behaviour_field", f"needs a RecBole .inter --data file with a behaviour column, got {self.data!r}")
            check(self.behaviour_field in columns, "behaviour_field", f"{self.data} has no column {self.behaviour_field!r} (its columns: {', '.join(columns)})")
        check(self.batch_size >= 2 and self.batch_size % 2 == 0, "batch_size", f"must be even (each position's positive and negative row), got {self.batch_size}")
        check(self.optimizer in OPTIMIZERS, "optimizer", f"{self.optimizer!r} is not one of {', '.join(OPTIMIZERS)}")
        check(self.time_depth in (12, NUM_TIME_BUCKETS), "time_depth", f"must be 13 (every bucket) or 12 (the TF original), got {self.time_depth}")
        check(self.max_len >= 0, "max_len", f"must be >= 0 (0 = the whole history), got {self.max_len}")
        for name in ("embedding_dim", "field_dim", "num_heads", "num_layers", "candidate_chunk", "eval_batch_size", "num_negatives"):
            check(getattr(self, name) >= 1, name, f"must be >= 1, got {getattr(self, name)}")
        check(0.0 <= self.dropout < 1.0, "dropout", f"must be in [0, 1), got {self.dropout}")
        check(self.reg_rate >= 0.0, "reg_rate", f"must be >= 0, got {self.reg_rate}")
        check(0.0 <= self.lr_drop_fraction <= 1.0, "lr_drop_fraction", f"must be in [0, 1], got {self.lr_drop_fraction}")
        check(self.lr_drop_factor > 0.0, "lr_drop_factor", f"must be > 0, got {self.lr_drop_factor}")
        check(self.clip_norm >= 0.0, "clip_norm", f"must be >= 0 (0 = off), got {self.clip_norm}")
        check(self.eval_protocol in EVAL_PROTOCOLS, "eval_protocol", f"{self.eval_protocol!r} is not one of {', '.join(EVAL_PROTOCOLS)}")
        return self

    def make_optimizer(self, total_steps):
        """The optimizer factory: SGD (or Adam) with the step-drop schedule and global-norm clipping."""
        drop_step = int(round(self.lr_drop_fraction * total_steps))
        clip = {"global_clipnorm": self.clip_norm} if self.clip_norm > 0 else {}

        def factory():
            schedule = keras.optimizers.schedules.PiecewiseConstantDecay(
                [max(drop_step, 0)], [float(self.learning_rate), float(self.learning_rate * self.lr_drop_factor)]
            )
            if self.optimizer == "adam":
                return keras.optimizers.Adam(learning_rate=schedule, epsilon=1e-8, **clip)
            return keras.optimizers.SGD(learning_rate=schedule, **clip)

        return factory, drop_step


def build_atrank_job(cfg, set_dir, metadata, vocab, item_features) -> SideInfoJob:
    """Data + item features -> the ATRank task factory, ``TrainInputs`` and metric sets for ``Trainer``.

    Raises:
        ConfigError: a bad setting (naming the flag), a non-categorical field.
    """
    tasks = atrank_tasks
    cfg = cfg.validate()
    width = cfg.max_len or max([n for n, users in dataset.training_lengths(metadata).items() if users] + [2])
    positions = max(1, cfg.batch_size // 2)
    targets = dataset.num_train_targets(metadata)
    steps = max(1, math.ceil(targets / positions))
    spec = [s for s in item_features.spec() if s["name"] in item_features.fields]
    has_times = bool(metadata.get("has_timestamps"))
    if not has_times:
        print(f"{cfg.data}: no timestamps; every ATRank time bucket is 0")
    behaviours, behaviour_fn, candidate_type = None, None, 0
    if cfg.behaviour_field:
        behaviours = item_features_lib.behaviours_for_set(set_dir, vocab, cfg.data, cfg.behaviour_field, rating_threshold=cfg.rating_threshold)
        candidate_type = behaviours.type_id(cfg.candidate_behaviour) if cfg.candidate_behaviour else 0
        behaviour_fn = behaviours.lookup_fn()
        print(f"behaviours ({cfg.behaviour_field}): {behaviours.stats['interactions']}; candidates use the {behaviours.types[candidate_type]!r} projection"
              + (" (candidate_projection none: unprojected)" if cfg.candidate_projection == "none" else ""))
    else:
        hinted = [c for c in item_features_lib.inter_columns(cfg.data) if c in item_features_lib.BEHAVIOUR_HINTS]
        if hinted:
            print(f"{cfg.data} has a {hinted[0]!r} column: single-behaviour ATRank ignores it (multi-behaviour: --behaviour_field {hinted[0]})")

    def train_fn(epoch, skip_steps, ctx):
        return tasks.train_dataset(
            set_dir, max_len=width, batch_size=cfg.batch_size, steps=steps, seed=cfg.seed, epoch=epoch,
            skip_steps=skip_steps, vocabulary_size=vocab.size, input_context=ctx, behaviour_fn=behaviour_fn,
        )

    def eval_fn(split, ctx):
        return tasks.eval_dataset(set_dir, split, max_len=width, batch_size=cfg.eval_batch_size, seed=cfg.seed,
                                  vocabulary_size=vocab.size, input_context=ctx, behaviour_fn=behaviour_fn)

    def task_factory():
        network = ATRank(
            vocab.size, spec, embedding_dim=cfg.embedding_dim, field_dim=cfg.field_dim, num_heads=cfg.num_heads,
            num_layers=cfg.num_layers, dropout=cfg.dropout, time_depth=cfg.time_depth, candidate_chunk=cfg.candidate_chunk,
            behaviours=behaviours.types if behaviours else (), behaviour_dim=cfg.behaviour_dim, candidate_behaviour=candidate_type,
            candidate_projection=cfg.candidate_projection,
        )
        network.features.assign(item_features)
        return tasks.ATRankTask(network, reg_rate=cfg.reg_rate)

    def metric_fn(task, split):
        return pair_auc(task, eval_fn(split, None))

    popularity = tasks.PopularityPairs(vocab.counts)

    def report_fn(trainer):
        out = {"protocol": {"auc": "1 positive vs 1 negative not in the user's sequence", "ranking": cfg.eval_protocol}}
        for split in ("valid", "test"):
            out[split] = trainer.evaluate(split, trainer.task) | trainer.evaluate(split)
            out.setdefault("popularity", {})[split] = pair_auc(popularity, eval_fn(split, None)) | trainer.evaluate(split, popularity)
        return out

    factory, drop_step = cfg.make_optimizer(steps * cfg.epochs)
    train_config = cfg.train_config(
        monitor="auc", eval_protocol=cfg.eval_protocol, num_negatives=cfg.num_negatives, optimizer_factory=factory,
    )
    record = dataclasses.asdict(cfg) | {"item_fields": list(item_features.fields), "history_width": width, "lr_drop_step": drop_step}
    if behaviours:
        record |= {"behaviour_types": behaviours.types, "candidate_behaviour_type": behaviours.types[candidate_type]}
    inputs = TrainInputs(train=train_fn, evaluate=eval_fn, steps_per_epoch=steps, targets_per_epoch=2 * targets)
    return SideInfoJob(task_factory, inputs, metric_fn, report_fn, train_config, width or 50, record, item_features)


def run_atrank(cfg: ATRankConfig):
    """Train, evaluate and export ATRank (``checkpoints/train-atrank`` by default); returns metrics.json's content."""
    return run_job(cfg, build_atrank_job, list(cfg.item_fields) if cfg.item_fields else None, "atrank")


# ================================================================ MIIR


@dataclasses.dataclass
class MIIRConfig(SideInfoConfig):
    """MIIR's settings (defaults: the original's) plus the data settings.

    ``stage="mii"`` pretrains with the MII loss (``checkpoints/pretrain-miir``),
    ``stage="rec"`` trains (or, with ``pretrained``, finetunes an MII export
    in full, no head swap, no freezing) with the cloze recommendation loss
    (``checkpoints/train-miir``). ``item_fields=None`` takes every field of
    ``item_data``. ``discard_share`` drops that share of the present side
    values once (seeded, ``ItemFeatures.discard``): the original's default
    "after discard" setting is 0.5; 0 is its "before discard". Adam at
    ``learning_rate`` with gradients clipped by value at ``clip_value``.
    Validation each epoch: 1 target + ``num_negatives`` uniform items
    (HR@5, HR@10, MRR, AUC; ``monitor="mrr"``); at the end also full ranking.
    """

    MODEL = "miir"

    stage: str = "rec"
    pretrained: str | None = None
    embedding_dim: int = 64
    num_layers: int = 3
    num_heads: int = 4
    inner_size: int = 256
    dropout: float = 0.5
    max_len: int = 20
    max_positions: int = 100
    attention: str = "dfsa"
    mask_prob: float = 0.5
    discard_share: float = 0.5
    learning_rate: float = 1e-4
    clip_value: float = 5.0
    batch_size: int = 128
    eval_batch_size: int = 256
    epochs: int = 100
    num_negatives: int = 99
    patience: int = 100  # the original trains all its epochs and selects the best validation epoch

    def resolved_model_dir(self):
        return self.model_dir or f"checkpoints/{'pretrain' if self.stage == 'mii' else 'train'}-miir"

    def validate(self):
        self.validate_data()
        check(self.stage in ("mii", "rec"), "stage", f"{self.stage!r} is not mii or rec")
        check(self.attention in ATTENTIONS, "attention", f"{self.attention!r} is not one of {', '.join(ATTENTIONS)}")
        check(self.stage == "rec" or not self.pretrained, "pretrained", "finetuning (stage rec) starts from an MII export; stage mii trains from scratch")
        for name in ("embedding_dim", "num_layers", "num_heads", "inner_size", "eval_batch_size", "num_negatives"):
            check(getattr(self, name) >= 1, name, f"must be >= 1, got {getattr(self, name)}")
        check(self.max_len >= 2, "max_len", f"must be >= 2, got {self.max_len}")
        check(self.max_positions >= self.max_len, "max_positions", f"must be >= --max_len {self.max_len}, got {self.max_positions}")
        check(self.embedding_dim % self.num_heads == 0, "num_heads", f"must divide --embedding_dim {self.embedding_dim}, got {self.num_heads}")
        check(0.0 <= self.dropout < 1.0, "dropout", f"must be in [0, 1), got {self.dropout}")
        check(0.0 < self.mask_prob <= 1.0, "mask_prob", f"must be in (0, 1], got {self.mask_prob}")
        check(0.0 <= self.discard_share < 1.0, "discard_share", f"must be in [0, 1), got {self.discard_share}")
        check(self.clip_value >= 0.0, "clip_value", f"must be >= 0 (0 = off), got {self.clip_value}")
        check(not self.jit_compile, "jit_compile", "MIIR gathers the masked cells before its output layers (dynamic shapes): XLA is not supported")
        return self


def _pretrained_network(cfg, vocab, item_features):
    """The MII export's network (architecture and weights), checked against this job's vocabulary and features."""
    path = export.latest_export(cfg.pretrained)
    config = export.read_config(path)
    if config.get("backbone", {}).get("class_name") != "MIIR":
        raise ConfigError(f"--pretrained {cfg.pretrained}: not a MIIR export (backbone {config.get('backbone', {}).get('class_name')!r})")
    if config["vocab_hash"] != vocab.hash:
        raise ConfigError(f"--pretrained {cfg.pretrained}: vocabulary {config['vocab_hash'][:12]} differs from the data's {vocab.hash[:12]}")
    if config.get("item_features_hash") != item_features.hash:
        raise ConfigError(
            f"--pretrained {cfg.pretrained}: it was trained on other item features (hash {str(config.get('item_features_hash'))[:12]}, "
            f"this job's {item_features.hash[:12]}): use the same --item_data, --item_fields, --discard_share and --seed"
        )
    network = keras.saving.deserialize_keras_object(config["backbone"])
    network.load_weights(os.path.join(path, export.BACKBONE_WEIGHTS))
    return network


def _prefixed(sampled):
    """The 1 + 99 metric set under ``sampled_*`` names (next to the full-ranking ones)."""
    return {f"sampled_{k}": v for k, v in sampled.items() if k != "users"}


def build_miir_job(cfg, set_dir, metadata, vocab, item_features) -> SideInfoJob:
    """Data + item features -> the MIIR task factory, ``TrainInputs`` and metric sets for ``Trainer``.

    The features are discarded (``discard_share``, seeded by ``seed``) and
    scalar float fields z-scored before they become the model's tables.
    """
    tasks = miir_tasks
    cfg = cfg.validate()
    features = item_features.discard(cfg.discard_share, cfg.seed).standardized()
    spec = features.spec()
    steps = dataset.cloze_steps_per_epoch(metadata, cfg.max_len, cfg.batch_size)

    def train_fn(epoch, skip_steps, ctx):
        return tasks.train_dataset(
            set_dir, stage=cfg.stage, max_len=cfg.max_len, num_fields=1 + len(spec), mask_prob=cfg.mask_prob,
            batch_size=cfg.batch_size, steps=steps, seed=cfg.seed, epoch=epoch, skip_steps=skip_steps, input_context=ctx,
        )

    def eval_fn(split, ctx):
        return dataset.eval_dataset(set_dir, split, max_len=cfg.max_len, batch_size=cfg.eval_batch_size, input_context=ctx)

    def task_factory():
        if cfg.pretrained:
            network = _pretrained_network(cfg, vocab, features)
        else:
            network = MIIR(
                vocab.size, spec, embedding_dim=cfg.embedding_dim, num_layers=cfg.num_layers, num_heads=cfg.num_heads,
                inner_size=cfg.inner_size, dropout=cfg.dropout, max_positions=cfg.max_positions, attention=cfg.attention,
            )
            network.features.assign(features)
        return tasks.MIIRTask(network, stage=cfg.stage)

    def metric_fn(task, split):
        return sampled_metrics(task, eval_fn(split, None), cfg.num_negatives, cfg.seed)

    popularity = PopularityScorer(vocab.counts)

    def report_fn(trainer):
        out = {"protocol": {"sampled": f"1 target + {cfg.num_negatives} uniform items (not history-filtered)", "ranking": "full"}}
        for split in ("valid", "test"):
            sampled = sampled_metrics(popularity, eval_fn(split, None), cfg.num_negatives, cfg.seed)
            out[split] = trainer.evaluate(split, trainer.task) | _prefixed(trainer.evaluate(split))
            out.setdefault("popularity", {})[split] = trainer.evaluate(split, popularity) | _prefixed(sampled)
        return out

    def optimizer():
        clip = {"clipvalue": cfg.clip_value} if cfg.clip_value > 0 else {}
        return keras.optimizers.Adam(learning_rate=cfg.learning_rate, epsilon=1e-8, **clip)

    train_config = cfg.train_config(monitor="mrr", eval_protocol="full", optimizer_factory=optimizer)
    record = dataclasses.asdict(cfg) | {"item_fields": list(features.fields)}
    targets = dataset.num_cloze_chunks(metadata, cfg.max_len)
    inputs = TrainInputs(train=train_fn, evaluate=eval_fn, steps_per_epoch=steps, targets_per_epoch=targets)
    return SideInfoJob(task_factory, inputs, metric_fn, report_fn, train_config, cfg.max_len, record, features)


def run_miir(cfg: MIIRConfig):
    """MII pretraining (``stage="mii"``) or recommendation training/finetuning (``"rec"``); returns metrics.json's content.

    With ``pretrained`` and no ``vocab_from``, the data is encoded with the
    pretrained export's vocabulary.
    """
    if cfg.pretrained and not cfg.vocab_from:
        cfg = dataclasses.replace(cfg, vocab_from=cfg.pretrained)
    fields = list(cfg.item_fields) if cfg.item_fields else None
    return run_job(cfg, build_miir_job, fields, "miir")
