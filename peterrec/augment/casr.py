"""CASR stages (Wang et al., SIGIR 2021): the sampler (stage 1), generation (stage 2) and the anchor's inputs (stage 3).

The job that runs them in order, its settings and its outputs are
:mod:`peterrec.recipes.casr` (``python -m pipelines.casr``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os

from absl import logging
import keras
import tensorflow as tf

from peterrec import export, io, pretraining
from peterrec.augment import counterfactual, generate
from peterrec.augment.embeddings import item_embedding_layer
from peterrec.augment.task import GENERATED
from peterrec.data.tfrecord import graph_fn
from peterrec.errors import ExportError, VocabularyError
from peterrec.pretraining import sequence_models
from peterrec.tasks.next_item import NextItemTask
from peterrec.training import TrainInputs



def causal_models():
    """The sampler/anchor models: causal recipes on next-item windows (GRec and BERT4Rec-style cloze models are not)."""
    return tuple(name for name, recipe in sequence_models().items() if recipe.causal and recipe.layout == "windows")


def __getattr__(name):  # MODELS: the former table, now read from the recipe registry
    if name == "MODELS":
        return causal_models()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


SAMPLER_DIR = "sampler"
GENERATED_DIR = "generated"
GENERATION_FILE = "generation.json"
SAMPLER_FILE = "sampler.json"
TSV_FILE = "generated_samples.tsv"
CASR_LOG_DIR = os.path.join("logs", "casr")


def read_export_config(path):
    return export.read_config(export.latest_export(path))


def job_record(cfg):
    """job_config.json of a CASR job: every field, resolved."""
    record = dataclasses.asdict(cfg)
    record["dilations"] = list(cfg.dilations)
    record.pop("backbone")
    record.update(
        learning=cfg.resolved_learning(),
        sampler_model=cfg.resolved_sampler_model(),
        anchor_model=str(cfg.anchor_model).lower(),
        filter=cfg.resolved_filter(),
    )
    return record


# ------------------------------------------------------------------ stage 1
def load_sampler(path, vocab, data_description):
    """The frozen sampler rebuilt in Keras from an export; its vocabulary must be ``vocab``.

    Raises:
        ExportError: not a causal next-item export (with an item embedding layer).
        VocabularyError: the export's vocabulary differs from the data's.
    """
    loaded = export.load_export(path)
    name = loaded.config.get("backbone_name", type(loaded.backbone).__name__)
    if not isinstance(loaded.task, NextItemTask) or loaded.config.get("kind") != "pretrain" or not getattr(loaded.backbone, "causal", True):
        raise ExportError(f"--sampler_dir {loaded.path}: a {name} export is not a causal next-item model (train one with pipelines.train)")
    if name not in causal_models():
        raise ExportError(f"--sampler_dir {loaded.path}: backbone {name!r} is not one of {', '.join(causal_models())}")
    item_embedding_layer(loaded.backbone)
    if loaded.vocab.hash != vocab.hash:
        raise VocabularyError(
            f"--sampler_dir {loaded.path}: the sampler's vocabulary (hash {loaded.vocab.hash[:12]}, {loaded.vocab.size} ids) differs "
            f"from the anchor's data vocabulary (hash {vocab.hash[:12]}, {vocab.size} ids, {data_description}); encode the data "
            f"with --vocab_from {loaded.path}"
        )
    loaded.task.trainable = False
    return loaded


def stage_sampler(cfg, vocab, set_dir):
    """Load ``sampler_dir``, or train (or reuse) the sampler; returns ``(LoadedExport, its metrics)``."""
    if cfg.sampler_dir:
        path = cfg.sampler_dir
    else:
        sampler_cfg = cfg.model_config("sampler")
        job_dir = sampler_cfg.resolved_model_dir()
        if not (os.path.exists(os.path.join(job_dir, "metrics.json")) and export.versions(os.path.join(job_dir, export.EXPORT_DIR))):
            if cfg.verbose:
                logging.info(f"casr stage 1: training the sampler ({sampler_cfg.backbone}) in {job_dir}")
            pretraining.run(sampler_cfg)
        path = os.path.join(job_dir, export.EXPORT_DIR)
    loaded = load_sampler(path, vocab, f"data {set_dir}")
    metrics_path = os.path.join(loaded.path, export.METRICS_FILE)
    with open(metrics_path) as f:
        metrics = json.load(f)
    return loaded, metrics


# ------------------------------------------------------------------ stage 2
def stage_generate(cfg, sampler, set_dir, vocab, model_dir):
    """Generate (or reuse) the samples; returns the statistics."""
    out_dir = os.path.join(model_dir, GENERATED_DIR)
    stats_path = os.path.join(model_dir, GENERATION_FILE)
    identity = {
        "sampler_export": os.path.abspath(sampler.path),
        "sampler_weights_sha256": io.file_sha256(os.path.join(sampler.path, export.TASK_WEIGHTS)),
        "data_set": os.path.basename(set_dir),
        "intervention": dataclasses.asdict(cfg.intervention()),
        "sample": cfg.sample,
        "n_per_seq": cfg.n_per_seq,
        "seed": cfg.seed,
        "max_len": cfg.max_len,
        "record_format": 2,  # 2: ad records start their targets with the sampler's top-1
    }
    if os.path.exists(stats_path):
        with open(stats_path) as f:
            previous = json.load(f)
        if previous.get("identity") == identity and os.path.exists(os.path.join(out_dir, "metadata.json")):
            return previous["stats"]
    if cfg.verbose:
        logging.info(f"casr stage 2: {cfg.resolved_learning()} generation over the training prefixes of {set_dir}")
    stats = generate.generate(
        sampler.task,
        set_dir,
        out_dir,
        vocab,
        max_len=cfg.max_len,
        seed=cfg.seed,
        sample=cfg.sample,
        n_per_seq=cfg.n_per_seq,
        intervention=cfg.intervention(),
        batch_size=cfg.generation_batch_size,
        num_shards=min(cfg.num_shards, 8),
        tsv_path=os.path.join(model_dir, TSV_FILE),
        inspect_rows=cfg.inspect_rows,
        metadata_extra={"sampler_export": identity["sampler_export"]},
        verbose=cfg.verbose,
    )
    if stats["selected"] and not stats["generated"] and cfg.verbose:
        logging.info(f"casr stage 2: none of {stats['selected']} candidates passed --filter {cfg.resolved_filter()}")
    io.write_json(stats_path, {"identity": identity, "stats": stats})
    _write_scalars(model_dir, 0, {"generated_samples": stats["generated"], "generated_share": stats["generated_share"],
                                  "flip_rate": stats["flip_rate"], "generation_seconds": stats["seconds"]})
    return stats


def _write_scalars(model_dir, step, values):
    writer = tf.summary.create_file_writer(os.path.join(model_dir, CASR_LOG_DIR))
    with writer.as_default():
        for name, value in values.items():
            if value is not None:
                tf.summary.scalar(f"casr/{name}", float(value), step=step)
    writer.close()


class AdversarialStats(keras.callbacks.Callback):
    """TensorBoard scalars of the in-step (ad) generation per epoch: samples and flip rate."""

    def __init__(self, model_dir):
        super().__init__()
        self.model_dir = model_dir
        self.last = (0.0, 0.0)

    def on_train_begin(self, logs=None):
        self.last = (float(self.model.ad_generated.numpy()), float(self.model.ad_flipped.numpy()))

    def on_epoch_end(self, epoch, logs=None):
        generated, flipped = float(self.model.ad_generated.numpy()), float(self.model.ad_flipped.numpy())
        new, flips = generated - self.last[0], flipped - self.last[1]
        self.last = (generated, flipped)
        _write_scalars(self.model_dir, epoch + 1, {"ad_generated_samples": new, "ad_flip_rate": flips / max(new, 1.0)})


# ------------------------------------------------------------------ stage 3
def anchor_inputs(cfg, anchor_cfg, set_dir, metadata, gen_dir, generated, replicas):
    """The plain anchor's TrainInputs, with a batch of generated rows zipped into every step when they weigh anything.

    Generated rows per step: ``ceil(generated / steps)`` (a multiple of the
    replica count), so every generated sample is seen about once per epoch.
    Returns ``(inputs, rows_per_step)``.
    """
    inputs = pretraining.build_inputs(set_dir, metadata, anchor_cfg)
    if cfg.beta == 0 or generated == 0:
        return inputs, 0
    steps = inputs.steps_per_epoch
    per_step = math.ceil(math.ceil(generated / steps) / replicas) * replicas
    method = cfg.resolved_learning()

    def train_fn(epoch, skip_steps, ctx):
        observed = inputs.train(epoch, skip_steps, ctx)
        extra = generate.generated_batches(
            gen_dir, max_len=cfg.max_len, beta=cfg.beta, method=method, batch_size=per_step, steps=steps,
            seed=cfg.seed, epoch=epoch, skip_steps=skip_steps, input_context=ctx,
        )
        return tf.data.Dataset.zip(observed, extra).map(graph_fn(lambda o, g: {**o, GENERATED: g}))

    targets = inputs.targets_per_epoch + int(cfg.beta * per_step * steps)
    return TrainInputs(train=train_fn, evaluate=inputs.evaluate, steps_per_epoch=steps, targets_per_epoch=targets), per_step


def write_ad_samples(cfg, task, sampler, gen_dir, vocab, path):
    """``generated_samples.tsv`` for ad: the final anchor's counterfactuals of the first stored prefixes."""
    rows = []
    tokens = ["[PAD]", "[OOV]", "[MASK]", "[SEP]", *vocab.tokens]
    ds = generate.read_records(gen_dir).map(graph_fn(
        lambda r: {**generate.generated_row(r, max_len=cfg.max_len, beta=cfg.beta, method="ad"), "user": r["user"]}
    ))
    intervention = cfg.intervention()
    seed = tf.random.Generator.from_seed(cfg.seed)
    for batch in ds.take(cfg.inspect_rows).batch(256):
        ids, lengths = batch["item_ids"], batch["lengths"]
        uniforms = seed.uniform((int(tf.shape(ids)[0]), intervention.uniforms))
        new_ids, labels, flipped = counterfactual.adversarial_samples(
            task.anchor, sampler, ids, lengths, batch[counterfactual.HELDOUT], uniforms, intervention, y0=batch[generate.SAMPLER_TOP1])
        ids, new_ids, lengths, users = ids.numpy(), new_ids.numpy(), lengths.numpy(), batch["user"].numpy()
        for b in range(len(lengths)):
            n = lengths[b]
            changed = [k for k in range(n) if ids[b, k] != new_ids[b, k]]
            k = changed[0] if changed else -1
            rows.append((users[b].decode(), "", k + 1, n - k, tokens[ids[b, k]], tokens[new_ids[b, k]], tokens[int(labels[b])], "", "",
                         int(flipped[b]), "", " ".join(tokens[i] for i in ids[b, :n]), " ".join(tokens[i] for i in new_ids[b, :n])))
    generate.write_tsv(path, generate.TSV_COLUMNS, rows)
