"""PeterRec finetuning jobs: pretrained export -> patched backbone -> target task -> export + patch.

``run(FinetuneConfig(...))`` is what ``python -m pipelines.finetune`` calls.
It rebuilds the backbone from a pretraining export (``config.json`` +
``backbone.weights.h5``) with model patches as constructor settings, freezes
what the finetuning mode says, adds a new target table and trains through the
one training loop. Outputs in ``model_dir``
(default ``checkpoints/finetune-<backbone>-<insertion>-<mode>-<task>``):
``export/<version>/`` (serving SavedModel: raw source ids -> top-k target ids,
or class probabilities), ``patch/<version>/`` (only the trained variables, see
:mod:`peterrec.patches`), ``logs/``, ``ckpt/``, ``metrics.json``, ``curves.png``.
"""

from __future__ import annotations

import dataclasses
import os

from absl import logging
import keras
import numpy as np

from peterrec import export, patches, runner
from peterrec.backbones.nextitnet import NextItNetBackbone
from peterrec.data import convert_write, dataset, finetune_dataset
from peterrec.data.vocab import Vocabulary
from peterrec.errors import DataError, ExportError
from peterrec.features import LABELS, NUM_RESERVED
from peterrec.jobs import JobConfig, check, count_params
from peterrec.tasks.transfer import LOSSES, NO_SEPARATOR, POOLINGS, SAMPLERS, TASK_TYPES, TransferTask
from peterrec.training import Trainer, TrainInputs

MODES = ("peterrec", "fineall", "finelast", "finecls", "scratch")
INSERTIONS = ("serial", "parallel")
DEFAULT_TARGETS = {"items": "Data/synthetic/target.inter", "classify": "Data/synthetic/profile.inter"}
BACKBONE_MODE = {"peterrec": "peterrec", "fineall": "fineall", "finelast": "finelast", "finecls": "frozen", "scratch": "fineall"}


@dataclasses.dataclass
class FinetuneConfig(JobConfig):
    """Settings of a finetuning job (``pipelines.finetune`` flags map onto these fields)."""

    pretrained: str = "checkpoints/pretrain-nextitnet/export"
    data: str = "Data/synthetic/source.inter"
    targets: str | None = None  # default: DEFAULT_TARGETS[task] when data is the embedded default
    format: str = "auto"
    tfrecord_dir: str = "tfrecords"
    model_dir: str | None = None
    task: str = "items"
    insertion: str | None = None  # default: serial on a causal backbone, parallel on a non-causal one (the original's scripts)
    finetune_mode: str = "peterrec"
    patch_dim: int | None = None
    patch_zero_init: bool = False
    parallel_identity: bool = True  # the original's identity inside parallel patches (False: conv(x) + f(x))
    # User vector. Default: the original's for items (PeterRec modes: the output at the separator(s), no norm; FineAll: the
    # last real item's output (causal) or the mean over the source items (non-causal), no separator); for classes the mean
    # over the source items' outputs with a LayerNorm, which learns on small real data where the original's head does not
    # (fidelity f11).
    pooling: str | None = None  # "sep" | "mean" | "last" | "mean_nosep"
    user_norm: bool | None = None
    head_warmup_epochs: int = 0  # epochs in which only the task side learns before the backbone unfreezes (0 = original)
    loss: str | None = None  # default: bce with uniform negatives, bpr with the lambdafm sampler
    sampler: str = "uniform"
    rho: float = 0.3
    l2: float = 0.01
    eval_protocol: str | None = None  # items: sampled (the paper's), full with --sampler lambdafm (the original's); classify: full over classes
    num_negatives: int = 99
    epochs: int = 20
    max_len: int | None = None  # default: the export's max_len + the separator slots (the original's L source items)
    shuffle: str = "epoch"  # "once": the original's one permutation for every epoch, last partial batch dropped
    valid_fraction: float = 0.1
    test_fraction: float = 0.1
    num_shards: int = 8
    max_oov_share: float = 0.5

    def validate(self):
        self.validate_common()
        check(self.task in TASK_TYPES, "task", f"{self.task!r} is not one of {', '.join(TASK_TYPES)}")
        check(self.insertion is None or self.insertion in INSERTIONS, "insertion", f"{self.insertion!r} is not one of {', '.join(INSERTIONS)}")
        check(self.finetune_mode in MODES, "finetune_mode", f"{self.finetune_mode!r} is not one of {', '.join(MODES)}")
        check(self.loss is None or self.loss in LOSSES, "loss", f"{self.loss!r} is not one of {', '.join(LOSSES)} for finetuning")
        check(self.pooling is None or self.pooling in POOLINGS, "pooling", f"{self.pooling!r} is not one of {', '.join(POOLINGS)}")
        check(self.sampler in SAMPLERS, "sampler", f"{self.sampler!r} is not one of {', '.join(SAMPLERS)}")
        check(self.shuffle in dataset.SHUFFLES, "shuffle", f"{self.shuffle!r} is not one of {', '.join(dataset.SHUFFLES)}")
        check(
            not (self.finetune_mode == "finecls" and self.pooling in NO_SEPARATOR),
            "pooling",
            f"{self.pooling} feeds no separator, and finecls trains only the separator's embedding",
        )
        check(self.eval_protocol in (None, "sampled", "full"), "eval_protocol", f"{self.eval_protocol!r} is not sampled or full")
        check(0.0 <= self.max_oov_share <= 1.0, "max_oov_share", f"must be in [0, 1], got {self.max_oov_share}")
        check(self.max_len is None or self.max_len >= 3, "max_len", f"must be >= 3, got {self.max_len}")
        check(self.rho > 0, "rho", f"must be > 0, got {self.rho}")
        check(self.head_warmup_epochs >= 0, "head_warmup_epochs", f"must be >= 0, got {self.head_warmup_epochs}")
        check(
            not self.head_warmup_epochs or self.finetune_mode in ("fineall", "finelast", "scratch"),
            "head_warmup_epochs",
            f"applies to fineall, finelast and scratch (the backbone is trained), not {self.finetune_mode}",
        )

    def resolved_targets(self):
        if self.targets is not None:
            return self.targets
        if self.data == FinetuneConfig.data:
            return DEFAULT_TARGETS[self.task]
        return None  # the targets are in the data file (PeterRec ",," CSV)

    def resolved_loss(self):
        return self.loss or ("bpr" if self.sampler == "lambdafm" else "bce")

    def resolved_insertion(self, causal=True):
        """serial on a causal backbone; parallel on a non-causal one (the original has no non-causal serial script)."""
        return self.insertion or ("serial" if causal else "parallel")

    def resolved_pooling(self, causal=True):
        if self.pooling:
            return self.pooling
        if self.task == "classify":
            return "mean"
        if self.finetune_mode == "fineall":  # NextitNet_TF_FineAll / GRec_TF_FineAll feed the source items alone
            return "last" if causal else "mean_nosep"
        return "sep"

    def context_slots(self, causal=True):
        """Separator tokens around the source items (as ``TransferTask.context_slots``)."""
        if self.resolved_pooling(causal) in NO_SEPARATOR:
            return 0
        return 1 if causal else 2

    def resolved_user_norm(self):
        return self.task == "classify" if self.user_norm is None else bool(self.user_norm)

    def resolved_protocol(self):
        """classes: full; items: sampled (the paper's), but full with the lambdafm sampler (its original script ranks all items)."""
        return self.eval_protocol or ("full" if self.task == "classify" or self.sampler == "lambdafm" else "sampled")


def load_backbone_export(path):
    """``(export_dir, config, vocab)`` of a pretraining export, with clear errors."""
    export_dir = export.latest_export(path)
    config = export.read_config(export_dir)
    if "backbone" not in config or not os.path.exists(os.path.join(export_dir, export.BACKBONE_WEIGHTS)):
        raise ExportError(f"--pretrained {path}: {export_dir} has no backbone to finetune (config kind {config.get('kind')!r})")
    if config["backbone"].get("class_name") != "NextItNetBackbone":
        raise ExportError(f"--pretrained {path}: backbone {config['backbone'].get('class_name')!r} cannot be patched (NextItNet/GRec only)")
    if config.get("kind") == "finetune":
        raise ExportError(f"--pretrained {path}: {export_dir} is a finetuned model; pass the pretraining export instead")
    vocab = Vocabulary.load(os.path.join(export_dir, export.VOCAB_FILE))
    if vocab.hash != config["vocab_hash"]:
        raise ExportError(f"{export_dir}: vocab.json does not match config.json's vocab_hash")
    return export_dir, config, vocab


def build_backbone(backbone_config, cfg, weights_path):
    """The pretrained backbone rebuilt with this job's patches and freezing."""
    config = dict(backbone_config["config"])
    config.pop("name", None)
    peterrec_mode = cfg.finetune_mode == "peterrec"
    config.update(
        patch_mode=cfg.resolved_insertion(config.get("causal", True)) if peterrec_mode else None,
        patch_dim=cfg.patch_dim if peterrec_mode else None,
        patch_zero_init=cfg.patch_zero_init if peterrec_mode else False,
        parallel_identity=cfg.parallel_identity,
    )
    backbone = NextItNetBackbone(**config)
    if cfg.finetune_mode != "scratch":
        backbone.load_pretrained(weights_path)
    backbone.set_finetune_mode(BACKBONE_MODE[cfg.finetune_mode])
    if cfg.finetune_mode == "finecls":
        backbone.embedding.trainable = True  # the task keeps only the SEP row's gradient
    return backbone


def prepare_data(cfg, vocab):
    targets = cfg.resolved_targets()
    set_dir = runner.resolve_set(cfg, vocab, split="random", min_seq_len=1, targets=targets)
    metadata = finetune_dataset.set_metadata(set_dir)
    where = targets or cfg.data
    if "target_pairs" not in metadata:
        raise DataError(f"{cfg.data}: no finetuning targets (give --targets, or a PeterRec 'source,,targets' CSV)")
    counts = metadata["counts"]
    oov_share = counts["oov_interactions"] / max(counts["interactions"], 1)
    logging.warning(f"{cfg.data}: {counts['oov_interactions']} of {counts['interactions']} source items ({oov_share:.2%}) are unknown "
          f"to the pretrained vocabulary and map to OOV")
    if oov_share > cfg.max_oov_share:
        raise DataError(
            f"{cfg.data}: {oov_share:.1%} of the source items are unknown to the pretrained vocabulary "
            f"(more than --max_oov_share {cfg.max_oov_share:.0%}); was the backbone pretrained on this domain?"
        )
    target_vocab = Vocabulary.load(os.path.join(set_dir, convert_write.TARGET_VOCAB_FILENAME))
    real_targets = target_vocab.size - NUM_RESERVED
    if cfg.task == "classify" and real_targets < 2:
        raise DataError(f"{where}: --task classify needs at least 2 classes, found {real_targets}")
    if real_targets < 2:
        raise DataError(f"{where}: needs at least 2 distinct targets, found {real_targets}")
    if cfg.task == "classify":
        untrained = [t for t, c in zip(target_vocab.tokens, target_vocab.counts[NUM_RESERVED:]) if c == 0]
        if untrained:
            raise DataError(
                f"{where}: class(es) {', '.join(map(repr, untrained[:5]))} belong only to validation/test users, so no training "
                f"user has them; give every class more users, or change --valid_fraction/--test_fraction/--seed"
            )
    for split in ("train", "valid", "test"):
        if finetune_dataset.num_pairs(metadata, split) == 0:
            raise DataError(f"{where}: no (user, target) pairs in the {split} split; check --valid_fraction/--test_fraction")
    return set_dir, metadata, target_vocab, oov_share


def default_model_dir(cfg, backbone_name, causal=True):
    return os.path.join("checkpoints", f"finetune-{backbone_name}-{cfg.resolved_insertion(causal)}-{cfg.finetune_mode}-{cfg.task}")


def macro_f1(task, dataset):
    """Accuracy and macro-F1 of argmax predictions over the real classes."""
    truth, pred = [], []
    for batch in dataset:
        scores = task.eval_scores(batch).numpy()
        scores[:, :NUM_RESERVED] = -np.inf
        pred.append(scores.argmax(axis=1))
        truth.append(batch[LABELS].numpy())
    truth, pred = np.concatenate(truth), np.concatenate(pred)
    f1s = []
    for c in np.unique(truth):
        tp = np.sum((pred == c) & (truth == c))
        precision = tp / max(np.sum(pred == c), 1)
        recall = tp / max(np.sum(truth == c), 1)
        f1s.append(0.0 if tp == 0 else 2 * precision * recall / (precision + recall))
    return {"accuracy": float(np.mean(truth == pred)), "macro_f1": float(np.mean(f1s))}


def run(cfg: FinetuneConfig):
    """Finetune, evaluate, export the serving model and the patch; returns metrics."""
    cfg.validate()
    keras.utils.set_random_seed(cfg.seed)
    export_dir, pre_config, vocab = load_backbone_export(cfg.pretrained)
    causal = pre_config["backbone"]["config"].get("causal", True)
    backbone_name = pre_config.get("backbone_name") or ("nextitnet" if causal else "grec")
    slots = cfg.context_slots(causal)
    max_len = cfg.max_len or int(pre_config["max_len"]) + slots  # the export's max_len source items, as the original's L
    check(max_len - slots >= 1, "max_len", f"leaves no source item beside the {slots} separator(s), got {max_len}")
    model_dir = cfg.model_dir or default_model_dir(cfg, backbone_name, causal)
    set_dir, metadata, target_vocab, oov_share = prepare_data(cfg, vocab)
    weights_path = os.path.join(export_dir, export.BACKBONE_WEIGHTS)
    record = dataclasses.asdict(cfg) | {
        "pretrained_export": os.path.abspath(export_dir),
        "backbone_sha256": patches.backbone_reference(export_dir),
        "data_set": os.path.basename(set_dir),
        "max_len": max_len,
        "insertion": cfg.resolved_insertion(causal),
    }
    record.update(pooling=cfg.resolved_pooling(causal), user_norm=cfg.resolved_user_norm())
    for name, default in (("head_warmup_epochs", 0), ("pooling", "sep"), ("user_norm", False)):
        if record[name] == default:
            record.pop(name)  # runs from before the option still resume
    runner.open_model_dir(model_dir, record)

    def task_fn():
        backbone = build_backbone(pre_config["backbone"], cfg, weights_path)
        return TransferTask(
            backbone,
            num_targets=target_vocab.size,
            task_type=cfg.task,
            loss=cfg.resolved_loss(),
            sampler=cfg.sampler,
            rho=cfg.rho,
            l2=cfg.l2,
            target_counts=target_vocab.counts,
            finetune_mode=cfg.finetune_mode,
            head_warmup_steps=cfg.head_warmup_epochs * steps,
            pooling=cfg.resolved_pooling(causal),
            user_norm=cfg.resolved_user_norm(),
        )

    context_len = max_len - slots
    steps = finetune_dataset.steps_per_epoch(metadata, cfg.batch_size, cfg.shuffle)
    inputs = TrainInputs(
        train=lambda epoch, skip, ctx: finetune_dataset.train_pairs(
            set_dir, context_len=context_len, batch_size=cfg.batch_size, steps=steps, seed=cfg.seed, epoch=epoch, skip_steps=skip,
            shuffle=cfg.shuffle, input_context=ctx,
        ),
        evaluate=lambda split, ctx: finetune_dataset.eval_pairs(set_dir, split, context_len=context_len, batch_size=cfg.eval_batch_size, input_context=ctx),
        steps_per_epoch=steps,
        targets_per_epoch=finetune_dataset.num_pairs(metadata, "train"),
    )
    classify = cfg.task == "classify"
    train_cfg = cfg.train_config(
        # classes: validation log-loss (continuous; accuracy ties at the majority value for many epochs)
        monitor="log_loss" if classify else "mrr@5",
        eval_log_loss=classify,
        eval_protocol=cfg.resolved_protocol(),
        num_negatives=cfg.num_negatives,
        ks=(1,) if classify else (5, 10),
    )
    trainer = Trainer(task_fn, inputs, model_dir, train_cfg, runner.strategy_for(cfg))
    result, evaluation, eval_seconds = runner.fit_and_evaluate(trainer, target_vocab.counts)
    task = trainer.task

    pretrained_params = count_params([w for w in task.backbone.weights if "/patch" not in w.path])
    trainable = sum(int(np.prod(a.shape)) for a in patches.trained_arrays(task).values())  # FineCLS: one embedding row
    metrics = {
        **evaluation,
        "task": cfg.task,
        "finetune_mode": cfg.finetune_mode,
        "insertion": cfg.resolved_insertion(causal) if cfg.finetune_mode == "peterrec" else None,
        "pooling": cfg.resolved_pooling(causal),
        "backbone": backbone_name,
        "eval_protocol": cfg.resolved_protocol(),
        **runner.fit_metrics(result, eval_seconds),
        "total_params": count_params(task.weights),
        "trainable_params": trainable,
        "pretrained_backbone_params": pretrained_params,
        "trainable_ratio": trainable / max(pretrained_params, 1),
        "source_oov_share": oov_share,
        "data": {"set_dir": set_dir, "target_vocab_size": target_vocab.size, "target_pairs": metadata["target_pairs"]},
        "pretrained_export": os.path.abspath(export_dir),
        "versions": runner.versions(),
    }
    if classify:
        metrics["test"].update(macro_f1(task, inputs.evaluate("test", None)))
        metrics["valid"].update(macro_f1(task, inputs.evaluate("valid", None)))

    def save_patch(metrics):
        metrics["patch_dir"] = patches.save_patch(task, model_dir, export_dir, target_vocab, max_len=max_len, metrics=metrics)

    export_kwargs = dict(task=task, vocab=vocab, max_len=max_len, top_k=cfg.top_k, kind="finetune", output_vocab=target_vocab,
                         extra_config={"job": record, "backbone_name": backbone_name, "layout": "target_pairs"})
    return runner.finish(trainer, result, model_dir, metrics, export_kwargs=export_kwargs, after_export=save_patch,
                         monitor=train_cfg.monitor)


__all__ = ["FinetuneConfig", "run", "MODES", "INSERTIONS"]
