"""Patch artifacts: the trained delta of a finetuning job, applied to a shared backbone export.

``<model_dir>/patch/<version>/`` holds

* ``patch.npz`` — only the variables the finetuning mode trains (for PeterRec:
  the model patches, every block's second LayerNorm and the target table;
  for FineCLS only the separator's embedding row),
* ``patch.json`` — the task config (backbone config with its patch settings
  included), the finetuning mode, and the backbone it belongs to: the
  pretraining export's path and the sha256 of its backbone config and weights
  file,
* ``target_vocab.json`` — the target items / classes.

One backbone, many patches::

    tasks = peterrec.patches.load_patched("checkpoints/pretrain-nextitnet/export",
                                          ["checkpoints/finetune-a/patch", "checkpoints/finetune-b/patch"])
    tasks[0].recommend([["i00042", "i00007"]], top_k=5)

Loading a patch onto a backbone whose hash differs is an error.
"""

from __future__ import annotations

import hashlib
import json
import os

import keras
import numpy as np
import tensorflow as tf

from peterrec import export, io
from peterrec.data.vocab import Vocabulary
from peterrec.errors import ExportError

PATCH_DIR = "patch"
PATCH_FILE = "patch.npz"
PATCH_CONFIG = "patch.json"
SEP_ROW_KEY = "item_embedding/embeddings[separator]"


def backbone_reference(export_dir):
    """``{"config_sha256", "weights_sha256"}`` identifying a pretraining export's backbone."""
    config = export.read_config(export_dir)
    canonical = json.dumps(config["backbone"], sort_keys=True).encode()
    return {
        "config_sha256": hashlib.sha256(canonical).hexdigest(),
        "weights_sha256": io.file_sha256(os.path.join(export_dir, export.BACKBONE_WEIGHTS)),
    }


def trained_arrays(task):
    """``{path: array}`` of what the task's finetuning mode trains."""
    arrays = {}
    table = task.backbone.embedding.embeddings
    for weight in task.trainable_weights:
        if task.finetune_mode == "finecls" and weight.path == table.path:
            arrays[SEP_ROW_KEY] = np.asarray(weight.numpy()[task.separator_id])
        else:
            arrays[weight.path] = np.asarray(weight.numpy())
    return arrays


def save_patch(task, model_dir, backbone_export_dir, target_vocab: Vocabulary, *, max_len, metrics=None):
    """Write ``<model_dir>/patch/<version>/`` atomically; returns its path."""

    def fill(tmp):
        arrays = trained_arrays(task)
        np.savez(os.path.join(tmp, PATCH_FILE), **arrays)
        target_vocab.save(os.path.join(tmp, export.TARGET_VOCAB_FILE))
        config = {
            "schema_version": export.SCHEMA_VERSION,
            "kind": "patch",
            "task": export._plain_config(task),
            "finetune_mode": task.finetune_mode,
            "max_len": int(max_len),
            "backbone_export": os.path.abspath(backbone_export_dir),
            "backbone": backbone_reference(backbone_export_dir),
            "target_vocab_hash": target_vocab.hash,
            "variables": {name: list(a.shape) for name, a in arrays.items()},
            "num_values": int(sum(a.size for a in arrays.values())),
            "metrics": {k: (metrics or {}).get(k) for k in ("test", "trainable_params", "pretrained_backbone_params")},
        }
        io.write_json(os.path.join(tmp, PATCH_CONFIG), config)

    return export.write_version(os.path.join(model_dir, PATCH_DIR), fill)


def _latest(path):
    if os.path.isfile(os.path.join(path, PATCH_CONFIG)):
        return path
    for root in (path, os.path.join(path, PATCH_DIR)):
        found = export.versions(root)
        if found:
            return os.path.join(root, str(found[-1]))
    raise ExportError(f"{path} is not a patch artifact: expected {PATCH_CONFIG} in it or numbered versions under it")


class PatchedModel:
    """A finetuned task rebuilt from a backbone export plus a patch artifact."""

    def __init__(self, task, vocab, target_vocab, max_len, top_k=50):
        self.task = task
        self.vocab = vocab
        self.target_vocab = target_vocab
        self.max_len = max_len
        self._module = export.ServingModule(task, vocab, max_len, top_k, target_vocab)

    def recommend(self, sequences, top_k=10):
        """Top-k ``(target, score)`` lists for raw source-id sequences."""
        width = max(1, max((len(s) for s in sequences), default=1))
        rows = [list(map(str, s)) + [""] * (width - len(s)) for s in sequences]
        out = self._module.serve(tf.constant(rows, dtype=tf.string))
        ids, scores = out["top_k_ids"].numpy()[:, :top_k], out["top_k_scores"].numpy()[:, :top_k]
        return [[(i.decode(), float(s)) for i, s in zip(r_i, r_s)] for r_i, r_s in zip(ids, scores)]


def load_patch(backbone_export, patch_path):
    """Rebuild one finetuned task: the export's frozen backbone + the patch's variables."""
    patch_dir = _latest(patch_path)
    path = os.path.join(patch_dir, PATCH_CONFIG)
    try:
        with open(path) as f:
            config = json.load(f)
        missing = [key for key in ("task", "backbone", "max_len", "finetune_mode") if key not in config]
    except (OSError, json.JSONDecodeError) as err:
        raise ExportError(f"cannot read {path}: {err}") from err
    if missing or config.get("kind") != "patch":
        raise ExportError(f"{path} is not a patch artifact (kind {config.get('kind')!r}, missing {missing})")
    export_dir = export.latest_export(backbone_export)
    reference = backbone_reference(export_dir)
    if reference != config["backbone"]:
        raise ExportError(
            f"{patch_dir} was trained on another backbone (weights sha256 {config['backbone']['weights_sha256'][:12]}), "
            f"not on {export_dir} ({reference['weights_sha256'][:12]})"
        )
    task = export.deserialize_task(config["task"])
    task.backbone.load_pretrained(os.path.join(export_dir, export.BACKBONE_WEIGHTS))
    arrays = dict(np.load(os.path.join(patch_dir, PATCH_FILE)))
    by_path = {w.path: w for w in task.weights}
    for name, value in arrays.items():
        if name == SEP_ROW_KEY:
            table = task.backbone.embedding.embeddings
            table.assign(tf.tensor_scatter_nd_update(table, [[task.separator_id]], value[None, :]))
        elif name in by_path:
            by_path[name].assign(value)
        else:
            raise ExportError(f"{patch_dir}: variable {name!r} does not exist in the rebuilt task")
    vocab = Vocabulary.load(os.path.join(export_dir, export.VOCAB_FILE))
    target_vocab = Vocabulary.load(os.path.join(patch_dir, export.TARGET_VOCAB_FILE))
    return PatchedModel(task, vocab, target_vocab, config["max_len"])


def load_patched(backbone_export, patch_paths):
    """One backbone export, N patch artifacts -> N servable models."""
    return [load_patch(backbone_export, path) for path in patch_paths]
