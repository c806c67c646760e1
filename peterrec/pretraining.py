"""Pretraining (and model-zoo training) jobs: data -> backbone + task -> the one training loop -> export.

Backbones (``PretrainConfig.backbone``):

* ``"nextitnet"``: causal NextItNet, next-item objective at every position
  (:class:`NextItemTask` on :func:`dataset.train_dataset` windows);
* ``"grec"``: the GRec encoder (``NextItNetBackbone(causal=False)``), masked-item
  ("cloze") objective (:class:`MaskedItemTask` on
  :func:`dataset.cloze_train_dataset` chunks, ``mask_prob`` /
  ``max_predictions``), evaluated and served with the "end mask". The
  original GRec uses sampled softmax; peterrec keeps the config's ``loss``
  (full softmax by default) and ``loss="sampled_softmax"`` reproduces it;
* the model zoo (``peterrec.models``): ``"sasrec"``, ``"narm"``, ``"stamp"``,
  ``"gru4rec"``: causal backbones trained exactly as NextItNet (next item at
  every position of the same windows, same losses, evaluation and export),
  with RecBole 1.2.1's defaults (settings left ``None`` take the model
  class's defaults) and the tied output layer. ``python -m pipelines.train``.

``run(PretrainConfig(...))`` is what ``python -m pipelines.pretrain`` calls. It writes into ``model_dir``:

* ``export/<version>/`` (see :mod:`peterrec.export`),
* ``logs/`` TensorBoard scalars and the train-step graph,
* ``ckpt/`` training checkpoints (re-running the same job resumes),
* ``metrics.json`` validation/test metrics of the selected checkpoint, the
  popularity baseline on the same split, timings and parameter counts,
* ``job_config.json`` the resolved configuration (checked on resume),
* ``curves.png`` loss and validation MRR@10 per epoch.
"""

from __future__ import annotations

import dataclasses
import inspect
import os

import keras
import tensorflow as tf

import peterrec
from peterrec import distribute, export, losses
from peterrec.backbones.nextitnet import DEFAULT_DILATIONS, NextItNetBackbone
from peterrec.data import convert, dataset, tfrecord
from peterrec.data.vocab import Vocabulary
from peterrec.errors import ConfigError
from peterrec.tasks.masked_item import MaskedItemTask
from peterrec.models.gru4rec import GRU4RecBackbone
from peterrec.models.narm import NARMBackbone
from peterrec.models.sasrec import SASRecBackbone
from peterrec.models.stamp import STAMPBackbone
from peterrec.tasks.next_item import LOSSES, OUTPUTS, NextItemTask
from peterrec.jobs import JobConfig, check, check_job_config, count_params, evaluate_splits, plot_history, raise_if_failed
from peterrec.training import Trainer, TrainInputs

ZOO_MODELS = {"sasrec": SASRecBackbone, "narm": NARMBackbone, "stamp": STAMPBackbone, "gru4rec": GRU4RecBackbone}
BACKBONES = ("nextitnet", "grec", *ZOO_MODELS)
# Fields only the GRec encoder uses: left out of other backbones' job_config.json (so their old runs still resume).
GREC_FIELDS = ("mask_prob", "max_predictions", "positional_embedding")
# Fields only the NextItNet CNN (nextitnet, grec) uses: left out of the zoo models' job_config.json.
CNN_FIELDS = ("dilations", "kernel_size", "dropout", "pad_as_item")
# Zoo model settings (None = the model's default): job_config.json keeps those the model's constructor takes.
ZOO_FIELDS = ("num_layers", "num_heads", "hidden_size", "inner_size", "embedding_dropout", "hidden_dropout", "attn_dropout", "pre_ln")
MIN_MAX_LEN = 2  # every backbone needs one input and one label per window


@dataclasses.dataclass
class PretrainConfig(JobConfig):
    """Settings of a pretraining job (``pipelines.pretrain`` flags map 1:1 onto these fields)."""

    data: str = "Data/synthetic/source.inter"
    format: str = "auto"
    tfrecord_dir: str = "tfrecords"
    vocab_from: str | None = None
    model_dir: str | None = None  # default checkpoints/pretrain-<backbone>
    backbone: str = "nextitnet"
    # data preparation (used when --data is a raw file)
    num_shards: int = 8
    split: str = "loo"
    valid_fraction: float = 0.1
    test_fraction: float = 0.1
    min_seq_len: int = 3
    k_core: int = 0
    dedup: bool = False
    rating_threshold: float | None = None
    # model
    embedding_dim: int = 64
    dilations: tuple = DEFAULT_DILATIONS
    kernel_size: int = 3
    dropout: float = 0.0
    loss: str = "full_softmax"
    sampled_fraction: float = 0.2
    pad_as_item: bool = False
    # GRec encoder (backbone "grec") masking: share of each chunk's items masked, at most max_predictions
    mask_prob: float = 0.3
    max_predictions: int = 30
    positional_embedding: bool = False  # GRec only: concatenated learned positions (the original's flag, default off)
    output_layer: str | None = None  # NextItemTask(output=...): "dense" (default for nextitnet/grec) or "tied" (default for the zoo)
    # zoo models (None = the model's RecBole default; see peterrec.models)
    num_layers: int | None = None  # sasrec 2, narm 1, gru4rec 1
    num_heads: int | None = None  # sasrec 2
    hidden_size: int | None = None  # narm 128, gru4rec 128 (GRU width)
    inner_size: int | None = None  # sasrec 256
    embedding_dropout: float | None = None  # narm 0.25, gru4rec 0.3
    hidden_dropout: float | None = None  # sasrec 0.5, narm 0.5
    attn_dropout: float | None = None  # sasrec 0.5
    pre_ln: bool | None = None  # sasrec False (RecBole's post-LN); True: the original SASRec's layers
    # training (the shared settings are JobConfig's)
    max_len: int = 50
    stride: int = 10
    eval_protocol: str = "full"

    @property
    def is_zoo(self):
        return self.backbone in ZOO_MODELS

    def resolved_model_dir(self):
        return self.model_dir or os.path.join("checkpoints", f"{'train' if self.is_zoo else 'pretrain'}-{self.backbone}")

    def resolved_output(self):
        return self.output_layer or ("tied" if self.is_zoo else "dense")

    def model_settings(self):
        """The zoo model's constructor settings: the given values, else the model's defaults ({} for nextitnet/grec)."""
        if not self.is_zoo:
            return {}
        params = inspect.signature(ZOO_MODELS[self.backbone].__init__).parameters
        return {
            name: params[name].default if getattr(self, name) is None else getattr(self, name)
            for name in ZOO_FIELDS
            if name in params
        }

    def validate(self):
        self.validate_common()
        check(self.backbone in BACKBONES, "backbone", f"{self.backbone!r} is not one of {', '.join(BACKBONES)}")
        check(self.loss in LOSSES, "loss", f"{self.loss!r} is not one of {', '.join(LOSSES)}")
        check(self.output_layer in (None, *OUTPUTS), "output_layer", f"{self.output_layer!r} is not one of {', '.join(OUTPUTS)}")
        check(self.max_len >= MIN_MAX_LEN, "max_len", f"must be >= {MIN_MAX_LEN} for {self.backbone}, got {self.max_len}")
        check(1 <= self.stride <= self.max_len, "stride", f"must be in [1, max_len={self.max_len}], got {self.stride}")
        check(self.embedding_dim >= 1, "embedding_dim", f"must be >= 1, got {self.embedding_dim}")
        check(len(self.dilations) >= 1 and min(self.dilations) >= 1, "dilations", f"need positive ints, got {self.dilations}")
        check(0.0 <= self.dropout < 1.0, "dropout", f"must be in [0, 1), got {self.dropout}")
        check(self.eval_protocol in ("full", "sampled"), "eval_protocol", f"{self.eval_protocol!r} is not full or sampled")
        if self.backbone == "grec":
            check(0.0 < self.mask_prob <= 1.0, "mask_prob", f"must be in (0, 1], got {self.mask_prob}")
            check(self.max_predictions >= 1, "max_predictions", f"must be >= 1, got {self.max_predictions}")
            check(not self.pad_as_item, "pad_as_item", "is not supported with --backbone grec (cloze chunks are right-padded)")
        else:
            check(not self.positional_embedding, "positional_embedding", "is a GRec option (NextItNet has no positional embedding)")
        check(
            not (self.resolved_output() == "tied" and self.positional_embedding),
            "output_layer",
            "tied needs hidden states as wide as the item embeddings (not with --positional_embedding)",
        )
        if self.is_zoo:
            self._validate_zoo()
        else:
            for name in ZOO_FIELDS:
                check(getattr(self, name) is None, name, f"is a setting of the zoo models ({', '.join(ZOO_MODELS)}), not of {self.backbone}")
        losses.check_jit_compatible(self.loss, self.jit_compile)

    def _validate_zoo(self):
        model, settings = self.backbone, self.model_settings()
        takes = ", ".join(f"--{name}" for name in settings) or "no model settings besides --embedding_dim"
        for name in ZOO_FIELDS:
            check(getattr(self, name) is None or name in settings, name, f"is not a {model} setting ({model} takes {takes})")
        cnn_defaults = {"dilations": DEFAULT_DILATIONS, "kernel_size": 3, "dropout": 0.0, "pad_as_item": False}
        for name, default in cnn_defaults.items():
            value = tuple(self.dilations) if name == "dilations" else getattr(self, name)
            check(value == default, name, f"is a NextItNet setting; {model} takes {takes}")
        for name in ("num_layers", "num_heads", "hidden_size", "inner_size"):
            if name in settings:
                check(settings[name] >= 1, name, f"must be >= 1, got {settings[name]}")
        for name in ("embedding_dropout", "hidden_dropout", "attn_dropout"):
            if name in settings:
                check(0.0 <= settings[name] < 1.0, name, f"must be in [0, 1), got {settings[name]}")
        if "num_heads" in settings:
            check(
                self.embedding_dim % settings["num_heads"] == 0,
                "num_heads",
                f"must divide --embedding_dim {self.embedding_dim}, got {settings['num_heads']}",
            )


def prepare_data(cfg):
    """Resolve ``--data`` to a TFRecord set; returns ``(set_dir, metadata, vocab)``."""
    vocab = Vocabulary.load(cfg.vocab_from) if cfg.vocab_from else None
    set_dir = convert.resolve_data(
        cfg.data,
        cfg.format,
        cfg.tfrecord_dir,
        vocab=vocab,
        num_shards=cfg.num_shards,
        split=cfg.split,
        valid_fraction=cfg.valid_fraction,
        test_fraction=cfg.test_fraction,
        seed=cfg.seed,
        min_seq_len=cfg.min_seq_len,
        k_core=cfg.k_core,
        dedup=cfg.dedup,
        rating_threshold=cfg.rating_threshold,
        max_skipped_share=cfg.max_skipped_share,
    )
    metadata = tfrecord.load_metadata(set_dir)
    oov = metadata.get("counts", {}).get("oov_interactions", 0)
    if oov:
        total = max(metadata["counts"].get("interactions", 1), 1)
        print(f"{cfg.data}: {oov} of {total} interactions ({oov / total:.2%}) are unknown to --vocab_from and map to OOV")
    set_vocab = Vocabulary.load(set_dir)
    if set_vocab.hash != metadata["vocab_hash"]:
        raise ConfigError(f"{set_dir}: vocab.json hash {set_vocab.hash[:12]} differs from metadata.json's {metadata['vocab_hash'][:12]}")
    if vocab is not None and vocab.hash != set_vocab.hash:
        raise ConfigError(f"--vocab_from {cfg.vocab_from}: vocabulary hash {vocab.hash[:12]} differs from the data's {set_vocab.hash[:12]}")
    return set_dir, metadata, set_vocab


def build_inputs(set_dir, metadata, cfg):
    if cfg.backbone == "grec":
        return _build_cloze_inputs(set_dir, metadata, cfg)
    steps = dataset.steps_per_epoch(metadata, cfg.max_len, cfg.stride, cfg.batch_size)

    def train_fn(epoch, skip_steps, ctx):
        return dataset.train_dataset(
            set_dir,
            max_len=cfg.max_len,
            stride=cfg.stride,
            batch_size=cfg.batch_size,
            steps=steps,
            seed=cfg.seed,
            epoch=epoch,
            skip_steps=skip_steps,
            pad_as_item=cfg.pad_as_item,
            input_context=ctx,
        )

    def eval_fn(split, ctx):
        return dataset.eval_dataset(set_dir, split, max_len=cfg.max_len, batch_size=cfg.eval_batch_size, input_context=ctx)

    return TrainInputs(train=train_fn, evaluate=eval_fn, steps_per_epoch=steps, targets_per_epoch=dataset.num_train_targets(metadata))


def _build_cloze_inputs(set_dir, metadata, cfg):
    """GRec encoder: masked chunks for training, the same evaluation views (scored with the end mask)."""
    vocabulary_size = int(metadata["vocab_size"])
    steps = dataset.cloze_steps_per_epoch(metadata, cfg.max_len, cfg.batch_size)

    def train_fn(epoch, skip_steps, ctx):
        return dataset.cloze_train_dataset(
            set_dir,
            max_len=cfg.max_len,
            batch_size=cfg.batch_size,
            steps=steps,
            seed=cfg.seed,
            epoch=epoch,
            skip_steps=skip_steps,
            vocabulary_size=vocabulary_size,
            mask_prob=cfg.mask_prob,
            max_predictions=cfg.max_predictions,
            input_context=ctx,
        )

    def eval_fn(split, ctx):
        return dataset.eval_dataset(set_dir, split, max_len=cfg.max_len, batch_size=cfg.eval_batch_size, input_context=ctx)

    targets = dataset.num_cloze_targets(metadata, cfg.max_len, cfg.mask_prob, cfg.max_predictions)
    return TrainInputs(train=train_fn, evaluate=eval_fn, steps_per_epoch=steps, targets_per_epoch=targets)


def build_backbone(cfg, vocabulary_size):
    """The backbone ``cfg`` describes (zoo models with their resolved settings)."""
    if cfg.is_zoo:
        extra = {"max_positions": cfg.max_len} if cfg.backbone == "sasrec" else {}  # SASRec's position table = max_len rows
        return ZOO_MODELS[cfg.backbone](vocabulary_size=vocabulary_size, embedding_dim=cfg.embedding_dim, **cfg.model_settings(), **extra)
    grec = cfg.backbone == "grec"
    return NextItNetBackbone(
        vocabulary_size=vocabulary_size,
        embedding_dim=cfg.embedding_dim,
        dilations=list(cfg.dilations),
        kernel_size=cfg.kernel_size,
        causal=not grec,
        dropout=cfg.dropout,
        mask_padding=not cfg.pad_as_item,
        max_positions=cfg.max_len + 1 if cfg.positional_embedding else 0,
    )


def build_task(cfg, vocab):
    backbone = build_backbone(cfg, vocab.size)
    task_class = MaskedItemTask if cfg.backbone == "grec" else NextItemTask
    return task_class(
        backbone, loss=cfg.loss, item_counts=vocab.counts, sampled_fraction=cfg.sampled_fraction, output=cfg.resolved_output()
    )


def job_record(cfg):
    """``cfg`` as job_config.json stores it: the fields the backbone uses (zoo settings resolved)."""
    record = dataclasses.asdict(cfg)
    record["dilations"] = list(cfg.dilations)
    dropped = list(ZOO_FIELDS) + ["output_layer"] + ([] if cfg.backbone == "grec" else list(GREC_FIELDS))
    if cfg.is_zoo:
        dropped += CNN_FIELDS
    for key in dropped:
        record.pop(key)
    record.update(cfg.model_settings())
    if cfg.is_zoo or cfg.resolved_output() != "dense":  # nextitnet/grec runs from before the zoo still resume
        record["output_layer"] = cfg.resolved_output()
    return record


def run(cfg: PretrainConfig):
    """Train, evaluate and export; returns the metrics dict written to metrics.json."""
    cfg.validate()
    keras.utils.set_random_seed(cfg.seed)
    model_dir = cfg.resolved_model_dir()
    set_dir, metadata, vocab = prepare_data(cfg)
    record = job_record(cfg) | {"data_vocab_hash": vocab.hash, "data_set": os.path.basename(set_dir)}
    os.makedirs(model_dir, exist_ok=True)
    check_job_config(model_dir, record)

    strategy = distribute.get_strategy(cfg.strategy, cfg.tpu, cfg.tf_config)
    inputs = build_inputs(set_dir, metadata, cfg)
    trainer = Trainer(lambda: build_task(cfg, vocab), inputs, model_dir, cfg.train_config(), strategy)
    result = trainer.fit()
    task = trainer.task

    valid, test, popularity, eval_seconds = evaluate_splits(trainer, vocab.counts)
    metrics = {
        "valid": valid,
        "test": test,
        "popularity": popularity,
        "selected_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "global_step": result.global_step,
        "stopped_early": result.stopped_early,
        "stopped_on_nan": result.stopped_on_nan,
        "train_wall_seconds": round(result.train_seconds, 2),
        "eval_wall_seconds": round(eval_seconds, 2),
        "trained_positions_per_second": round(result.positions_per_second, 1),
        "users_per_second_eval": round((valid["users"] + test["users"]) / max(eval_seconds, 1e-9), 1),
        "total_params": count_params(task.weights),
        "trainable_params": count_params(task.trainable_weights),
        "backbone_params": count_params(task.backbone.weights),
        "eval_protocol": cfg.eval_protocol,
        "data": {"set_dir": set_dir, "vocab_size": vocab.size, "vocab_hash": vocab.hash, "counts": metadata.get("counts", {})},
        "versions": {"peterrec": peterrec.__version__, "tensorflow": tf.__version__},
    }
    if not trainer.is_chief:
        return metrics  # multi-worker: only the chief exports and writes metrics
    raise_if_failed(result, model_dir, metrics)  # NaN/Inf or diverged: metrics.json, then an error naming the step
    export_dir = export.export_model(
        task,
        vocab,
        model_dir,
        max_len=cfg.max_len,
        top_k=cfg.top_k,
        metrics=metrics,
        extra_config={"job": record, "backbone_name": cfg.backbone},
    )
    metrics["export_dir"] = export_dir
    export.write_json(os.path.join(model_dir, "metrics.json"), metrics)
    plot_history(result.history, os.path.join(model_dir, "curves.png"))
    return metrics


def run_caser(cfg: PretrainConfig, caser):
    """``pipelines.train --model caser``: Caser through the same data path, loop, evaluation and export.

    ``cfg`` carries the shared data/training settings (its ``backbone`` field is
    ignored); ``caser`` is a :class:`peterrec.models.caser.CaserConfig` with the
    seed's knobs (``L`` = the window length, ``--max_len``). Writes the same
    outputs as :func:`run` plus Caser's own metric set (Prec/Recall@1,5,10, MAP)
    under ``metrics["caser_metrics"]``.
    """
    from peterrec.models.caser import build_caser_job

    cfg.validate_common()
    keras.utils.set_random_seed(cfg.seed)
    model_dir = cfg.model_dir or os.path.join("checkpoints", "train-caser")
    set_dir, metadata, vocab = prepare_data(cfg)
    job = build_caser_job(caser, set_dir, metadata, vocab)  # validates the knobs against the data
    record = {"model": "caser", "caser": dataclasses.asdict(caser), "data": cfg.data, "split": cfg.split,
              "data_vocab_hash": vocab.hash, "data_set": os.path.basename(set_dir)}
    os.makedirs(model_dir, exist_ok=True)
    check_job_config(model_dir, record)
    strategy = distribute.get_strategy(cfg.strategy, cfg.tpu, cfg.tf_config)
    train_cfg = cfg.train_config(epochs=caser.epochs, learning_rate=caser.learning_rate, seed=caser.seed)
    trainer = Trainer(job.task_factory, job.inputs, model_dir, train_cfg, strategy)
    result = trainer.fit()
    task = trainer.task
    valid, test, popularity, eval_seconds = evaluate_splits(trainer, vocab.counts)
    metrics = {
        "valid": valid,
        "test": test,
        "popularity": popularity,
        "caser_metrics": {split: job.caser_metrics(task, split) for split in ("valid", "test")},
        "selected_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "global_step": result.global_step,
        "train_wall_seconds": round(result.train_seconds, 2),
        "eval_wall_seconds": round(eval_seconds, 2),
        "trained_positions_per_second": round(result.positions_per_second, 1),
        "total_params": count_params(task.weights),
        "trainable_params": count_params(task.trainable_weights),
        "data": {"set_dir": set_dir, "vocab_size": vocab.size, "vocab_hash": vocab.hash, "counts": metadata.get("counts", {})},
        "versions": {"peterrec": peterrec.__version__, "tensorflow": tf.__version__},
    }
    if not trainer.is_chief:
        return metrics
    raise_if_failed(result, model_dir, metrics)
    export_dir = export.export_model(task, vocab, model_dir, max_len=caser.L, top_k=cfg.top_k, metrics=metrics,
                                     extra_config={"job": record, "backbone_name": "caser"})
    metrics["export_dir"] = export_dir
    export.write_json(os.path.join(model_dir, "metrics.json"), metrics)
    plot_history(result.history, os.path.join(model_dir, "curves.png"))
    return metrics
