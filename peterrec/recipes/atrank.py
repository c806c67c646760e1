"""ATRank (Zhou et al. 2018): attention over the history with item side information and time buckets.

Its settings (:class:`ATRankConfig`, the original's defaults), its job (:func:`build_atrank_job`,
:func:`run_atrank`, on the shared side-information run of :mod:`peterrec.side_info`) and its
export's evaluation rows. ``--behaviour_field`` trains multi-behaviour ATRank.
"""

from __future__ import annotations

import dataclasses
import math

from absl import logging
import keras

from peterrec import recipes
from peterrec.data import dataset
from peterrec.data import item_features as item_features_lib
from peterrec.jobs import check
from peterrec.models.atrank import CANDIDATE_PROJECTIONS, NUM_TIME_BUCKETS, ATRank
from peterrec.side_info import SideInfoConfig, SideInfoJob, pair_auc, run_job
from peterrec.tasks import atrank as atrank_tasks
from peterrec.training import TrainInputs


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
    epochs: int = 3  # the original: 10 (on the default data 2 epochs already give validation AUC 0.87; fidelity a15)
    candidate_chunk: int = 512
    steps_per_execution: int = 16  # 16 of its small steps per call of the compiled step (the loop's Python overhead)
    length_bucket: int = 8  # batch histories of similar length (bands of this many items); 0 = random batches (the original)
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
        check(self.length_bucket >= 0, "length_bucket", f"must be >= 0 (0 = random batches), got {self.length_bucket}")
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
        logging.warning(f"{cfg.data}: no timestamps; every ATRank time bucket is 0")
    behaviours, behaviour_fn, candidate_type = None, None, 0
    if cfg.behaviour_field:
        behaviours = item_features_lib.behaviours_for_set(set_dir, vocab, cfg.data, cfg.behaviour_field, rating_threshold=cfg.rating_threshold)
        candidate_type = behaviours.type_id(cfg.candidate_behaviour) if cfg.candidate_behaviour else 0
        behaviour_fn = behaviours.lookup_fn()
        logging.info(f"behaviours ({cfg.behaviour_field}): {behaviours.stats['interactions']}; candidates use the {behaviours.types[candidate_type]!r} projection"
              + (" (candidate_projection none: unprojected)" if cfg.candidate_projection == "none" else ""))
    else:
        hinted = [c for c in item_features_lib.inter_columns(cfg.data) if c in item_features_lib.BEHAVIOUR_HINTS]
        if hinted:
            logging.warning(f"{cfg.data} has a {hinted[0]!r} column: single-behaviour ATRank ignores it (multi-behaviour: --behaviour_field {hinted[0]})")

    def train_fn(epoch, skip_steps, ctx):
        return tasks.train_dataset(
            set_dir, max_len=width, batch_size=cfg.batch_size, steps=steps, seed=cfg.seed, epoch=epoch,
            skip_steps=skip_steps, vocabulary_size=vocab.size, input_context=ctx, behaviour_fn=behaviour_fn,
            length_bucket=cfg.length_bucket,
        )

    def eval_fn(split, ctx):
        return tasks.eval_dataset(set_dir, split, max_len=width, batch_size=cfg.eval_batch_size, seed=cfg.seed,
                                  vocabulary_size=vocab.size, input_context=ctx, behaviour_fn=behaviour_fn, length_bucket=cfg.length_bucket)

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


def eval_rows(loaded, set_dir, split, batch_size):
    """An export's evaluation rows: the job's history width, time buckets, seeded negatives and behaviours."""
    job = loaded.config["job"]
    behaviour_fn = None
    if job.get("behaviour_field"):
        behaviours = item_features_lib.behaviours_for_set(
            set_dir, loaded.vocab, job["data"], job["behaviour_field"], rating_threshold=job.get("rating_threshold")
        )
        behaviour_fn = behaviours.lookup_fn()
    return lambda ctx: atrank_tasks.eval_dataset(
        set_dir, split, max_len=job["history_width"], batch_size=batch_size, seed=job["seed"], vocabulary_size=loaded.vocab.size,
        input_context=ctx, behaviour_fn=behaviour_fn, length_bucket=job.get("length_bucket", 0),
    )


recipes.register(recipes.Recipe(
    "atrank", ATRankConfig, run_atrank, layout="candidate_pairs", causal=True, pipeline="train", eval_rows=eval_rows, order=7,
    own_defaults=tuple(field.name for field in dataclasses.fields(ATRankConfig)),  # unset flags keep the original's defaults
    summary="ATRank: attention-based user behaviour modelling with item side information",
))
