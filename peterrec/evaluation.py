"""Re-evaluate an exported model on a dataset (``python -m pipelines.evaluate``)."""

from __future__ import annotations

import os

from absl import logging

from peterrec import export, io, recipes
from peterrec.data import convert, dataset, finetune_dataset
from peterrec.data.vocab import Vocabulary
from peterrec.errors import ConfigError, DataError
from peterrec.features import LABELS, OOV_ID
from peterrec.training import PopularityScorer, evaluate


def evaluate_export(
    path,
    *,
    data=None,
    fmt="auto",
    targets=None,
    split="test",
    protocol=None,
    num_negatives=99,
    tfrecord_dir="tfrecords",
    batch_size=256,
    output=None,
):
    """Metrics of the latest export under ``path`` on ``split`` of ``data``.

    ``data`` (and ``targets`` for finetuned models) default to what the model
    was trained on; the split options are the training job's, so the default
    call reproduces the job's own test metrics. The vocabulary is the
    export's: items it does not know map to OOV. Writes ``output`` (default
    ``<model_dir>/eval/metrics.json``) and returns the metrics.
    """
    if split not in ("valid", "test"):
        raise ConfigError(f"--split {split!r}: evaluate takes valid or test")
    loaded = export.load_export(path)
    job = loaded.config.get("job", {})
    finetuned = loaded.config.get("kind") == "finetune"
    data = data or job.get("data")
    if not data:
        raise ConfigError(f"--data is required: {loaded.path} does not record the data it was trained on")
    same_data = data == job.get("data")
    fmt = job.get("format", fmt) if same_data and fmt == "auto" else fmt
    options = dict(
        num_shards=job.get("num_shards", 8),
        seed=job.get("seed", 42),
        valid_fraction=job.get("valid_fraction", 0.1),
        test_fraction=job.get("test_fraction", 0.1),
    )
    # The job's filters, so the default call re-creates exactly the job's split.
    options.update({k: job[k] for k in ("k_core", "dedup", "rating_threshold") if k in job})
    conversion = dict(loaded.config.get("conversion", {}))  # jobs whose record does not hold them (Caser) export them here
    job = {**job, **{k: conversion.pop(k) for k in ("split", "min_seq_len") if k in conversion}}
    options.update({k: v for k, v in conversion.items() if k != "max_skipped_share"})
    if finetuned:
        target_vocab = loaded.target_vocab
        targets = targets or job.get("targets") or _default_targets(job)
        set_dir = convert.resolve_data(
            data, fmt, tfrecord_dir, vocab=loaded.vocab, target_vocab=target_vocab, split="random", min_seq_len=1, targets=targets, **options
        )
        context_len = loaded.max_len - loaded.task.context_slots
        dataset_fn = lambda ctx: finetune_dataset.eval_pairs(set_dir, split, context_len=context_len, batch_size=batch_size, input_context=ctx)  # noqa: E731
        classify = loaded.task.task_type == "classify"
        protocol = protocol or job.get("eval_protocol") or ("full" if classify else "sampled")
        ks = (1,) if classify else (5, 10)
        log_loss = classify and protocol == "full"  # as the job reports it
        counts = target_vocab.counts
    else:
        set_dir = convert.resolve_data(
            data, fmt, tfrecord_dir, vocab=loaded.vocab, split=job.get("split", "loo"), min_seq_len=job.get("min_seq_len", 3), **options
        )
        recipe = recipes.all_recipes().get(loaded.config.get("backbone_name"))
        if recipe is not None and recipe.eval_rows is not None:
            dataset_fn = recipe.eval_rows(loaded, set_dir, split, batch_size)
        else:
            dataset_fn = lambda ctx: dataset.eval_dataset(set_dir, split, max_len=loaded.max_len, batch_size=batch_size, input_context=ctx)  # noqa: E731
        protocol = protocol or job.get("eval_protocol", "full")
        ks = (5, 10, 20)
        log_loss = False
        counts = Vocabulary.load(set_dir).counts
    seed = job.get("seed", 42)
    unknown, total = unknown_targets(dataset_fn)
    if total and unknown == total:
        raise DataError(f"{targets if finetuned else data}: none of the {total} {split} targets is known to {loaded.path}'s vocabulary")
    if unknown:
        logging.warning(f"{targets if finetuned else data}: {unknown} of {total} {split} targets are unknown to the model's vocabulary; "
              "they rank last (counted as misses)")
    metrics = {
        "unknown_targets": unknown,
        split: evaluate(loaded.task, dataset_fn, protocol=protocol, num_negatives=num_negatives, ks=ks, seed=seed, log_loss=log_loss),
        "popularity": evaluate(PopularityScorer(counts), dataset_fn, protocol=protocol, num_negatives=num_negatives, ks=ks, seed=seed),
        "export_dir": loaded.path,
        "data": data,
        "set_dir": set_dir,
        "protocol": protocol,
    }
    if finetuned and loaded.task.task_type == "classify":
        from peterrec.finetuning import macro_f1

        metrics[split].update(macro_f1(loaded.task, dataset_fn(None)))
    root = os.path.dirname(os.path.dirname(loaded.path))
    output = output or os.path.join(root, "eval", "metrics.json")
    io.write_json(output, metrics)
    metrics["output"] = output
    return metrics


def unknown_targets(dataset_fn):
    """``(targets the vocabulary does not know (OOV labels), all targets)`` of an evaluation dataset."""
    unknown = total = 0
    for batch in dataset_fn(None):
        labels = batch[LABELS].numpy()
        unknown, total = unknown + int((labels == OOV_ID).sum()), total + labels.size
    return unknown, total


def _default_targets(job):
    from peterrec.finetuning import FinetuneConfig

    fields = {k: job[k] for k in ("data", "targets", "task") if k in job}
    return FinetuneConfig(**fields).resolved_targets()
