"""MIIR (Yuan et al. 2021): fusion self-attention over items and their side information, MII pretraining.

``pipelines.pretrain --backbone miir`` runs the MII stage (``stage="mii"``);
``pipelines.train --model miir [--pretrained ...]`` the next-item stage. The
settings (:class:`MIIRConfig`) and the job (:func:`build_miir_job`, :func:`run_miir`) are here,
on the shared side-information run of :mod:`peterrec.side_info`.
"""

from __future__ import annotations

import dataclasses
import os

import keras

from peterrec import export
from peterrec import recipes
from peterrec.data import cloze, dataset
from peterrec.errors import ConfigError
from peterrec.jobs import check
from peterrec.models.miir import ATTENTIONS, MIIR
from peterrec.side_info import SideInfoConfig, SideInfoJob, run_job, sampled_metrics
from peterrec.tasks import miir as miir_tasks
from peterrec.training import PopularityScorer, TrainInputs


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
    dropout: float = 0.1  # the original: 0.5 (fidelity m11)
    max_len: int = 20
    max_positions: int = 100
    attention: str = "dfsa"
    mask_prob: float = 0.5
    discard_share: float = 0.5
    learning_rate: float = 1e-3  # the original: 1e-4 (fidelity m11)
    clip_value: float = 5.0
    batch_size: int = 128
    eval_batch_size: int = 256
    epochs: int = 8  # the original: 100 (fidelity m11)
    num_negatives: int = 99
    # None: 3 for stage rec; for stage mii every epoch runs (= epochs), as the original's, because the MII objective
    # is not next-item ranking and its validation MRR stays on the popularity plateau for ~5 epochs (fidelity m11)
    patience: int | None = None

    def __post_init__(self):
        if self.patience is None:
            self.patience = self.epochs if self.stage == "mii" else 3

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
    steps = cloze.cloze_steps_per_epoch(metadata, cfg.max_len, cfg.batch_size)

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
    targets = cloze.num_cloze_chunks(metadata, cfg.max_len)
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


recipes.register(recipes.Recipe(
    "miir", MIIRConfig, run_miir, layout="mii_cells", causal=True, pipeline="train", order=8,
    own_defaults=tuple(field.name for field in dataclasses.fields(MIIRConfig)),  # unset flags keep the original's defaults
    summary="MIIR: item-attribute fusion self-attention with masked item-info (MII) pretraining",
))
