"""The import job: a :class:`~peterrec.tasks.next_item.NextItemTask` holding a TF1 checkpoint's weights, and its export."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from peterrec.errors import ConfigError, VocabularyError
from peterrec.tf1.checkpoint import (
    EMBEDDING,
    HEAD_LOGITS,
    CheckpointError,
    TF1Checkpoint,
    backbone_evidence,
    inspect_checkpoint,
    open_reader,
    preview,
)
from peterrec.tf1.vocab import TF1_PAD_TOKEN, IdMapping, build_id_mapping, read_tf1_vocabulary

BACKBONES = ("nextitnet", "grec")


# --------------------------------------------------------------------------------------
# Import
# --------------------------------------------------------------------------------------
@dataclass
class ImportResult:
    """A checkpoint imported into Keras.

    Attributes:
        task: the :class:`NextItemTask` holding the imported weights.
        mapping: the :class:`IdMapping` (``mapping.vocab`` is peterrec's vocabulary).
        checkpoint: the :class:`TF1Checkpoint`.
        backbone: ``"nextitnet"`` or ``"grec"``.
        variable_map: ``{tf1 name: keras weight path}`` for every tensor used.
        ignored: ``{tf1 name: reason}`` for non-optimizer tensors deliberately
            not imported (GRec's untrained ``softmax_w``/``b`` next to a
            ``logits`` head).
    """

    task: object
    mapping: IdMapping
    checkpoint: TF1Checkpoint
    backbone: str
    variable_map: dict
    ignored: dict

    def report(self):
        """The ``tf1_import`` section of the export's config.json."""
        ckpt = self.checkpoint
        return {
            "checkpoint": os.path.abspath(ckpt.prefix),
            "vocab_from": os.path.abspath(self.mapping.tf1.path),
            "backbone": self.backbone,
            "causal": self.backbone == "nextitnet",
            "head": ckpt.head,
            "loss": ckpt.loss,
            "channels": ckpt.channels,
            "kernel_size": ckpt.kernel_size,
            "dilations": list(ckpt.dilations),
            "tf1_sequence_length": self.mapping.tf1.sequence_length,
            "model_variables": len(ckpt.model_variables),
            "optimizer_variables_skipped": len(ckpt.optimizer_variables),
            "ignored_variables": dict(self.ignored),
            "variable_map": dict(self.variable_map),
            "transforms": {
                "dilated_conv*/weight": "[1, k, Cin, Cout] -> Conv1D kernel [k, Cin, Cout] (leading 1 dropped, taps unchanged)",
                "logits/weight": "[1, 1, C, V] -> Dense kernel [C, V], columns gathered with our_to_tf1",
                "allitem_embeddings, softmax_w, softmax_b, logits/bias": "rows gathered with our_to_tf1",
            },
            "id_mapping": self.mapping.to_json(),
            "mask_padding": False,
        }


def check_backbone(backbone):
    if backbone not in BACKBONES:
        raise ConfigError(f"--backbone must be one of {', '.join(BACKBONES)}, got {backbone!r}")


def import_checkpoint(checkpoint, vocab_from, backbone, *, verify_backbone=True):
    """Build a :class:`NextItemTask` holding the weights of a TF1 checkpoint.

    Args:
        checkpoint: the checkpoint prefix (``.../model_nextitnet_cloze``) or a
            directory with a ``checkpoint`` file.
        vocab_from: the data CSV the model was trained on (pretraining file,
            or a finetuning file with the same source sequences).
        backbone: ``"nextitnet"`` (causal convs) or ``"grec"`` (the GRec
            encoder: non-causal, "same" padding).
        verify_backbone: refuse a checkpoint that :func:`backbone_evidence`
            says was written by the other model.

    The backbone is ``NextItNetBackbone(..., causal=(backbone == "nextitnet"),
    mask_padding=False)`` (the original treats the pad token as an item); the
    task uses ``loss="full_softmax"`` for a ``logits`` head and
    ``"sampled_softmax"`` for ``softmax_w``/``softmax_b``.

    Raises:
        CheckpointError: unreadable checkpoint, wrong backbone, a tensor left
            unused or a Keras weight left unassigned (all listed).
        VocabularyError: the CSV's vocabulary size differs from the checkpoint's.
        DataError: the CSV cannot be parsed.
    """
    check_backbone(backbone)
    ckpt = inspect_checkpoint(checkpoint)
    tf1_vocab = read_tf1_vocabulary(vocab_from)
    if tf1_vocab.size != ckpt.vocabulary_size:
        raise VocabularyError(
            f"{vocab_from}: gives a vocabulary of {tf1_vocab.size} ids (<UNK> + {tf1_vocab.size - 1} tokens in order of "
            f"first appearance), but {ckpt.prefix} was trained with {ckpt.vocabulary_size} "
            f"('{EMBEDDING}' is {list(ckpt.shapes[EMBEDDING])}); pass the CSV the checkpoint was trained on"
        )
    reader = open_reader(ckpt.prefix)
    if verify_backbone:
        reasons = backbone_evidence(ckpt, tf1_vocab, reader)[backbone]
        if reasons:
            other = "grec" if backbone == "nextitnet" else "nextitnet"
            raise CheckpointError(
                f"{ckpt.prefix} is not a {backbone} checkpoint: {'; '.join(reasons)}. "
                f"Use --backbone {other} (or --noverify_backbone to import it anyway)"
            )
    mapping = build_id_mapping(tf1_vocab)
    task = _build_task(ckpt, backbone, mapping.vocab.size)
    plan, ignored = _plan(task, ckpt)
    _check_coverage(task, ckpt, plan, ignored)
    gather = mapping.our_to_tf1
    values = []
    for name, weight, transform in plan:
        array = np.asarray(reader.get_tensor(name), dtype=np.float32)
        value = transform(array, gather)
        if tuple(value.shape) != tuple(weight.shape):
            raise CheckpointError(f"{ckpt.prefix}: '{name}' gives shape {list(value.shape)}, {weight.path} needs {list(weight.shape)}")
        values.append((weight, value))
    for weight, value in values:
        weight.assign(value.astype(weight.dtype))
    return ImportResult(
        task=task,
        mapping=mapping,
        checkpoint=ckpt,
        backbone=backbone,
        variable_map={name: weight.path for name, weight, _ in plan},
        ignored=ignored,
    )


def _build_task(ckpt, backbone, vocabulary_size):
    from peterrec.backbones.nextitnet import NextItNetBackbone
    from peterrec.tasks.next_item import NextItemTask

    model = NextItNetBackbone(
        vocabulary_size,
        ckpt.channels,
        list(ckpt.dilations),
        ckpt.kernel_size,
        causal=(backbone == "nextitnet"),
        dropout=0.0,
        mask_padding=False,
    )
    if backbone == "grec":
        from peterrec.tasks.masked_item import MaskedItemTask

        return MaskedItemTask(model, loss=ckpt.loss)  # end-mask scoring, like GRec pretraining exports
    return NextItemTask(model, loss=ckpt.loss)


def _squeeze_kernel(array, gather):
    return array[0]  # [1, k, Cin, Cout] -> [k, Cin, Cout]


def _same(array, gather):
    return array


def _rows(array, gather):
    return array[gather]


def _logits_kernel(array, gather):
    return array[0, 0][:, gather]  # [1, 1, C, V] -> [C, V], class columns permuted


def _plan(task, ckpt):
    """``[(tf1 name, keras variable, transform)]`` and the ignored tensors."""
    backbone = task.backbone
    plan = [(EMBEDDING, backbone.embedding.embeddings, _rows)]
    for i, block in enumerate(backbone.blocks):
        scope = ckpt.block_scope(i)
        for n, conv, norm in ((1, block.conv1, block.ln1), (2, block.conv2, block.ln2)):
            plan += [
                (f"{scope}/dilated_conv{n}/weight", conv.kernel, _squeeze_kernel),
                (f"{scope}/dilated_conv{n}/bias", conv.bias, _same),
                (f"{scope}/layer_norm{n}/gamma", norm.gamma, _same),
                (f"{scope}/layer_norm{n}/beta", norm.beta, _same),
            ]
    ignored = {}
    if ckpt.head == HEAD_LOGITS:
        plan += [("logits/weight", task.head.kernel, _logits_kernel), ("logits/bias", task.head.bias, _rows)]
        for name in ("softmax_w", "softmax_b"):
            if name in ckpt.shapes:
                ignored[name] = "created but not trained by the GRec encoder when it uses the full-softmax 'logits' head"
    else:
        plan += [("softmax_w", task.softmax_w, _rows), ("softmax_b", task.softmax_b, _rows)]
    return plan, ignored


def _check_coverage(task, ckpt, plan, ignored):
    """Every non-optimizer tensor used (or ignored by rule), every Keras weight assigned once."""
    used = [name for name, _, _ in plan]
    unused = sorted(set(ckpt.model_variables) - set(used) - set(ignored))
    absent = sorted(set(used) - set(ckpt.shapes))
    counts = {}
    for _, weight, _ in plan:
        counts[id(weight)] = counts.get(id(weight), 0) + 1
    unassigned = [w.path for w in task.weights if counts.get(id(w), 0) == 0]
    twice = [w.path for w in task.weights if counts.get(id(w), 0) > 1]
    problems = []
    if unused:
        problems.append(f"{len(unused)} checkpoint tensor(s) would not be used: {preview(unused)}")
    if absent:
        problems.append(f"{len(absent)} tensor(s) needed but missing: {preview(absent)}")
    if unassigned:
        problems.append(f"{len(unassigned)} Keras weight(s) would stay unassigned: {preview(unassigned)}")
    if twice:
        problems.append(f"{len(twice)} Keras weight(s) assigned more than once: {preview(twice)}")
    if problems:
        raise CheckpointError(f"{ckpt.prefix}: cannot import it exactly: {'; '.join(problems)}")


def export_tf1_checkpoint(checkpoint, vocab_from, backbone, model_dir, *, max_len=None, top_k=50, verify_backbone=True):
    """Import a TF1 checkpoint and write ``<model_dir>/export/<version>/``.

    Args:
        max_len: context length of the serving signature; ``None`` = the
            CSV's sequence length (9 in the demo).

    Returns:
        ``(export_dir, ImportResult)``. The export's config.json has
        ``kind: "tf1_import"`` and a ``tf1_import`` section
        (:meth:`ImportResult.report`).
    """
    from peterrec.export import export_model

    result = import_checkpoint(checkpoint, vocab_from, backbone, verify_backbone=verify_backbone)
    if max_len is None:
        max_len = result.mapping.tf1.sequence_length
    path = export_model(
        result.task,
        result.mapping.vocab,
        model_dir,
        max_len=int(max_len),
        top_k=top_k,
        extra_config={"tf1_import": result.report()},
        kind="tf1_import",
        layout="left",  # the original reads fixed-length rows left-padded with its pad item
        pad_tokens=("", TF1_PAD_TOKEN) if result.mapping.tf1.pad_id is not None else ("",),
    )
    return path, result
