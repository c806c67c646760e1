"""Pretraining (and model-zoo training) jobs: data -> backbone + task -> the one training loop -> export.

Backbones (``PretrainConfig.backbone``):

* ``"nextitnet"``: causal NextItNet, next-item objective at every position
  (:class:`NextItemTask` on :func:`dataset.train_dataset` windows);
* ``"grec"``: the GRec encoder (``NextItNetBackbone(causal=False)``), masked-item
  ("cloze") objective (:class:`MaskedItemTask` on
  :func:`cloze.cloze_train_dataset` chunks, ``mask_prob`` /
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

from absl import logging
import keras

from peterrec import losses, recipes, runner
from peterrec.backbones.nextitnet import DEFAULT_DILATIONS
from peterrec.data import cloze, dataset, tfrecord
from peterrec.data.vocab import Vocabulary
from peterrec.errors import ConfigError
from peterrec.tasks.next_item import LOSSES, OUTPUTS
from peterrec.jobs import check, count_params
from peterrec.training import Trainer, TrainInputs

# Fields only the cloze layout (the GRec encoder) uses: left out of other backbones' job_config.json
# (so their old runs still resume).
GREC_FIELDS = ("mask_prob", "max_predictions", "positional_embedding")
CLOZE_FIELDS = GREC_FIELDS[:2]
# Fields only the NextItNet CNN (nextitnet, grec) uses: left out of the zoo models' job_config.json.
CNN_FIELDS = ("dilations", "kernel_size", "dropout", "pad_as_item")
# Zoo model settings (None = the model's default): job_config.json keeps those the model's constructor takes.
ZOO_FIELDS = ("num_layers", "num_heads", "hidden_size", "inner_size", "embedding_dropout", "hidden_dropout", "attn_dropout", "pre_ln")
MIN_MAX_LEN = 2  # every backbone needs one input and one label per window


def sequence_models():
    """The recipes trained by :func:`run` (the shared sequence config): name -> Recipe, in listing order."""
    return {name: recipe for name, recipe in recipes.all_recipes().items() if recipe.config_class is PretrainConfig}


def zoo_models():
    """name -> backbone class of the zoo recipes (their settings are the shared zoo fields their constructor takes)."""
    return {name: recipe.backbone for name, recipe in sequence_models().items() if recipe.family == "zoo"}


def __getattr__(name):  # the former tables, now read from the recipe registry
    if name == "BACKBONES":
        return tuple(sequence_models())
    if name == "ZOO_MODELS":
        return zoo_models()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclasses.dataclass
class PretrainConfig(runner.DataConfig):
    """Settings of a pretraining job (``pipelines.pretrain`` flags map 1:1 onto these fields).

    The data settings are :class:`peterrec.runner.DataConfig`'s (``model_dir``
    defaults to ``checkpoints/pretrain-<backbone>``, ``train-<model>`` for the zoo).
    """

    backbone: str = "nextitnet"
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
    shuffle: str = "epoch"  # "once": the original's one permutation for every epoch, last partial batch dropped

    @property
    def recipe(self):
        """The backbone's recipe (ConfigError naming --backbone when it is not a sequence model)."""
        recipe = recipes.get(self.backbone, "--backbone")
        check(recipe.config_class is PretrainConfig, "backbone",
              f"{self.backbone!r} is not one of {', '.join(sequence_models())} (train it with python -m pipelines.{recipe.pipeline} --model {self.backbone})")
        return recipe

    @property
    def is_zoo(self):
        return self.recipe.family == "zoo"

    @property
    def is_cloze(self):
        return self.recipe.layout == "cloze"

    def resolved_model_dir(self):
        return self.model_dir or os.path.join("checkpoints", f"{'train' if self.is_zoo else 'pretrain'}-{self.backbone}")

    def resolved_output(self):
        return self.output_layer or ("tied" if self.is_zoo else "dense")

    def model_settings(self):
        """The zoo model's constructor settings: the given values, else the model's defaults ({} for nextitnet/grec)."""
        if not self.is_zoo:
            return {}
        params = inspect.signature(self.recipe.backbone.__init__).parameters
        return {
            name: params[name].default if getattr(self, name) is None else getattr(self, name)
            for name in ZOO_FIELDS
            if name in params
        }

    def validate(self):
        self.validate_common()
        self.recipe  # noqa: B018  (a known sequence model, else ConfigError)
        check(self.loss in LOSSES, "loss", f"{self.loss!r} is not one of {', '.join(LOSSES)}")
        check(self.output_layer in (None, *OUTPUTS), "output_layer", f"{self.output_layer!r} is not one of {', '.join(OUTPUTS)}")
        check(self.max_len >= MIN_MAX_LEN, "max_len", f"must be >= {MIN_MAX_LEN} for {self.backbone}, got {self.max_len}")
        check(1 <= self.stride <= self.max_len, "stride", f"must be in [1, max_len={self.max_len}], got {self.stride}")
        check(self.embedding_dim >= 1, "embedding_dim", f"must be >= 1, got {self.embedding_dim}")
        check(len(self.dilations) >= 1 and min(self.dilations) >= 1, "dilations", f"need positive ints, got {self.dilations}")
        check(0.0 <= self.dropout < 1.0, "dropout", f"must be in [0, 1), got {self.dropout}")
        check(self.eval_protocol in ("full", "sampled"), "eval_protocol", f"{self.eval_protocol!r} is not full or sampled")
        check(self.shuffle in dataset.SHUFFLES, "shuffle", f"{self.shuffle!r} is not one of {', '.join(dataset.SHUFFLES)}")
        if self.is_cloze:
            check(0.0 < self.mask_prob <= 1.0, "mask_prob", f"must be in (0, 1], got {self.mask_prob}")
            check(self.max_predictions >= 1, "max_predictions", f"must be >= 1, got {self.max_predictions}")
            check(not self.pad_as_item, "pad_as_item", f"is not supported with --backbone {self.backbone} (cloze chunks are right-padded)")
        if self.backbone != "grec":
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
                check(getattr(self, name) is None, name, f"is a setting of the zoo models ({', '.join(zoo_models())}), not of {self.backbone}")
        losses.check_jit_compatible(self.loss, self.jit_compile, self.strategy)

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
    set_dir = runner.resolve_set(cfg, vocab)
    metadata = tfrecord.load_metadata(set_dir)
    oov = metadata.get("counts", {}).get("oov_interactions", 0)
    if oov:
        total = max(metadata["counts"].get("interactions", 1), 1)
        logging.warning(f"{cfg.data}: {oov} of {total} interactions ({oov / total:.2%}) are unknown to --vocab_from and map to OOV")
    set_vocab = Vocabulary.load(set_dir)
    if set_vocab.hash != metadata["vocab_hash"]:
        raise ConfigError(f"{set_dir}: vocab.json hash {set_vocab.hash[:12]} differs from metadata.json's {metadata['vocab_hash'][:12]}")
    if vocab is not None and vocab.hash != set_vocab.hash:
        raise ConfigError(f"--vocab_from {cfg.vocab_from}: vocabulary hash {vocab.hash[:12]} differs from the data's {set_vocab.hash[:12]}")
    return set_dir, metadata, set_vocab


def build_inputs(set_dir, metadata, cfg):
    """``TrainInputs``: next-item windows (``max_len`` items every ``stride``), or for the GRec encoder masked
    chunks (scored with the end mask); the same evaluation rows for both."""
    if cfg.is_cloze:
        steps = cloze.cloze_steps_per_epoch(metadata, cfg.max_len, cfg.batch_size, cfg.shuffle)
        targets = cloze.num_cloze_targets(metadata, cfg.max_len, cfg.mask_prob, cfg.max_predictions)
        train_dataset, train_settings = cloze.cloze_train_dataset, dict(
            vocabulary_size=int(metadata["vocab_size"]), mask_prob=cfg.mask_prob, max_predictions=cfg.max_predictions
        )
    else:
        steps = dataset.steps_per_epoch(metadata, cfg.max_len, cfg.stride, cfg.batch_size, cfg.shuffle)
        targets = dataset.num_train_targets(metadata)
        train_dataset, train_settings = dataset.train_dataset, dict(stride=cfg.stride, pad_as_item=cfg.pad_as_item)

    def train_fn(epoch, skip_steps, ctx):
        return train_dataset(
            set_dir, max_len=cfg.max_len, batch_size=cfg.batch_size, steps=steps, seed=cfg.seed, epoch=epoch, skip_steps=skip_steps,
            shuffle=cfg.shuffle, input_context=ctx, **train_settings,
        )

    def eval_fn(split, ctx):
        return dataset.eval_dataset(set_dir, split, max_len=cfg.max_len, batch_size=cfg.eval_batch_size, input_context=ctx)

    return TrainInputs(train=train_fn, evaluate=eval_fn, steps_per_epoch=steps, targets_per_epoch=targets)


def build_backbone(cfg, vocabulary_size):
    """The backbone ``cfg`` describes: its recipe's ``build_backbone`` (zoo models with their resolved settings)."""
    return cfg.recipe.build_backbone(cfg, vocabulary_size)


def build_zoo_backbone(cfg, vocabulary_size, **extra):
    """A zoo recipe's backbone: its class with ``embedding_dim``, the resolved zoo settings and ``extra``."""
    return cfg.recipe.backbone(vocabulary_size=vocabulary_size, embedding_dim=cfg.embedding_dim, **cfg.model_settings(), **extra)


def build_task(cfg, vocab):
    backbone = build_backbone(cfg, vocab.size)
    task_class = cfg.recipe.task_class
    return task_class(
        backbone, loss=cfg.loss, item_counts=vocab.counts, sampled_fraction=cfg.sampled_fraction, output=cfg.resolved_output()
    )


def job_record(cfg):
    """``cfg`` as job_config.json stores it: the fields the backbone uses (zoo settings resolved)."""
    record = dataclasses.asdict(cfg)
    record["dilations"] = list(cfg.dilations)
    dropped = list(ZOO_FIELDS) + ["output_layer"] + [
        name for name in GREC_FIELDS if not (cfg.backbone == "grec" or (cfg.is_cloze and name in CLOZE_FIELDS))
    ]
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
    record = job_record(cfg) | runner.data_identity(set_dir, vocab)
    strategy = runner.open_job(cfg, model_dir, record)
    inputs = build_inputs(set_dir, metadata, cfg)
    trainer = Trainer(lambda: build_task(cfg, vocab), inputs, model_dir, cfg.train_config(), strategy)
    result, evaluation, eval_seconds = runner.fit_and_evaluate(trainer, vocab.counts)
    task = trainer.task
    metrics = {
        **evaluation,
        **runner.fit_metrics(result, eval_seconds),
        "users_per_second_eval": round((evaluation["valid"]["users"] + evaluation["test"]["users"]) / max(eval_seconds, 1e-9), 1),
        **runner.param_counts(task),
        "backbone_params": count_params(task.backbone.weights),
        "eval_protocol": cfg.eval_protocol,
        "data": runner.data_summary(set_dir, vocab, metadata),
        "versions": runner.versions(),
    }
    export_kwargs = dict(task=task, vocab=vocab, max_len=cfg.max_len, top_k=cfg.top_k,
                         extra_config={"job": record, "backbone_name": cfg.backbone, "layout": cfg.recipe.layout})
    return runner.finish(trainer, result, model_dir, metrics, export_kwargs=export_kwargs)
