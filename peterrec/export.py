"""Export directories: the contract between pretraining, finetuning and serving.

``<model_dir>/export/<version>/`` (integer versions, as TensorFlow Serving
expects) holds:

* ``saved_model.pb`` + ``variables/``: a SavedModel whose ``serving_default``
  signature takes raw item-id strings ``item_ids: string [batch, length]``
  and returns ``top_k_ids: string [batch, k]`` and ``top_k_scores: float
  [batch, k]``. The vocabulary lookup happens inside the graph; unknown ids
  map to the OOV id; the empty string ``""`` is padding and may stand on
  either side (real items keep their order); only the most recent
  ``max_len`` items are used. ``top_k_exclude_seen`` does the same but never
  returns an item of the input. Reserved ids are never returned.
* ``config.json``: schema version, peterrec / TF / Keras versions, the task
  and backbone configs, the vocabulary hash, reserved ids, max_len, top_k;
  for a training job also ``backbone_name`` (its recipe, ``peterrec.recipes``)
  and ``layout`` (the batch layout it trained on, a key of ``recipes.LAYOUTS``).
* ``vocab.json``: the item vocabulary (peterrec.data.vocab format).
* ``backbone.weights.h5`` and ``task.weights.h5``: Keras weights to rebuild
  (and patch) the backbone and the whole task in Keras from this directory.
* ``metrics.json``: the metrics of the exported weights.

A new version is written under a temporary name and renamed into place, so a
reader never sees a partial export and the previous version stays valid.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

import keras
import tensorflow as tf

import peterrec
from peterrec.data.vocab import Vocabulary
from peterrec.errors import ExportError, VocabularyError
from peterrec.eval.ranking import exclude_reserved
from peterrec.io import file_sha256, write_atomic, write_json  # noqa: F401  (re-exported)
from peterrec.features import NUM_RESERVED, OOV_ID, PAD_ID, RESERVED_IDS, RESERVED_TOKENS, SERVING_PAD

SCHEMA_VERSION = 1
CONFIG_FILE = "config.json"
VOCAB_FILE = "vocab.json"
TARGET_VOCAB_FILE = "target_vocab.json"
BACKBONE_WEIGHTS = "backbone.weights.h5"
TASK_WEIGHTS = "task.weights.h5"
METRICS_FILE = "metrics.json"
EXPORT_DIR = "export"


def versions(export_root):
    """Completed export versions under ``export_root``, ascending."""
    if not os.path.isdir(export_root):
        return []
    return sorted(int(name) for name in os.listdir(export_root) if name.isdigit())


def latest_export(path):
    """Resolve an export root (``.../export``), a model dir or a version dir to a version dir."""
    if os.path.isfile(os.path.join(path, CONFIG_FILE)) and os.path.isfile(os.path.join(path, "saved_model.pb")):
        return path
    for root in (path, os.path.join(path, EXPORT_DIR)):
        found = versions(root)
        if found:
            return os.path.join(root, str(found[-1]))
    raise ExportError(
        f"{path} is not an export directory: expected {CONFIG_FILE} and saved_model.pb in it, "
        f"or numbered versions under it or under {os.path.join(path, EXPORT_DIR)}"
    )


LAYOUTS = ("right", "left")


class _Held:
    """Keeps the Keras task out of the SavedModel's object graph (a plain object is not tracked): saving then writes
    the variables the serving functions capture (``ServingModule.task_variables``) and does not trace the Keras
    model's own call signatures a second and third time (that tracing was most of an export's time)."""

    def __init__(self, task):
        self.task = task


class ServingModule(tf.Module):
    """Raw item-id strings in, top-k item-id strings and scores out.

    ``layout`` is how the model reads a sequence: "right" (every peterrec model: the real items
    first, right-padded, padding masked) or "left" (an imported TF1 model, which treats the pad
    token as an item: the real items end at the window's last position behind ``max_len`` minus
    their count pad ids, the original's fixed-length left-padded rows). ``pad_tokens``: the input
    strings that are padding (``""`` always; an imported TF1 model also takes its CSV's ``"0"``).
    """

    def __init__(self, task, vocab: Vocabulary, max_len, top_k, output_vocab: Vocabulary | None = None, layout="right",
                 pad_tokens=(SERVING_PAD,)):
        super().__init__()
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        self._held = _Held(task)
        self.task_variables = list(task.variables)
        self.layout = layout
        output_vocab = output_vocab or vocab
        # Finetuning tasks add separator tokens around the source items.
        self.max_len = int(max_len) - int(task.context_slots)
        self.top_k = int(min(top_k, output_vocab.size - NUM_RESERVED))
        pads = [SERVING_PAD, *(t for t in pad_tokens if t != SERVING_PAD)]
        keys = [*pads, *vocab.tokens]
        values = [PAD_ID] * len(pads) + list(range(NUM_RESERVED, vocab.size))
        self.table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(tf.constant(keys), tf.constant(values, tf.int64)), default_value=OOV_ID
        )
        self.id_to_token = tf.constant(list(RESERVED_TOKENS) + list(output_vocab.tokens))

    @property
    def task(self):
        return self._held.task

    def encode(self, item_ids):
        """Strings ``[B, T]`` -> int ids ``[B, L]`` and lengths ``[B]``: the most recent ``L`` real
        items in order, padding dropped wherever the caller put it. Layout "right": real items
        first (left-aligned, right-padded), ``lengths`` their count, ``L = min(T, max_len)``.
        Layout "left": ``L = max_len``, real items last behind pad ids, ``lengths = max_len``
        (the pads are items to such a model)."""
        ids = tf.cast(self.table.lookup(item_ids), tf.int32)
        is_pad = tf.cast(tf.equal(ids, PAD_ID), tf.int32)
        if self.layout == "left":
            ids = tf.gather(ids, tf.argsort(1 - is_pad, axis=1, stable=True), batch_dims=1)  # pads first, items in order
            ids = tf.pad(ids, [[0, 0], [self.max_len, 0]], constant_values=PAD_ID)[:, -self.max_len:]
            return ids, tf.fill([tf.shape(ids)[0]], self.max_len)
        ids = tf.gather(ids, tf.argsort(is_pad, axis=1, stable=True), batch_dims=1)  # real items first, in order
        lengths = tf.reduce_sum(1 - is_pad, axis=1)
        width = tf.minimum(tf.shape(ids)[1], self.max_len)
        offset = tf.maximum(lengths - self.max_len, 0)
        cols = tf.range(width)[None, :]
        idx = tf.minimum(offset[:, None] + cols, tf.maximum(tf.shape(ids)[1] - 1, 0))
        kept = tf.minimum(lengths, self.max_len)
        window = tf.where(cols < kept[:, None], tf.gather(ids, idx, batch_dims=1), PAD_ID)
        return window, kept

    def _top_k(self, item_ids, exclude_seen):
        ids, lengths = self.encode(item_ids)
        all_ids = tf.cast(self.table.lookup(item_ids), tf.int32)  # every input item, not only the context window
        ids = tf.pad(ids, [[0, 0], [0, 1]])  # a free slot: tasks may write [MASK]/[SEP] at `lengths`
        scores = self.scores(ids, lengths)
        if exclude_seen:
            rows = tf.broadcast_to(tf.range(tf.shape(all_ids)[0])[:, None], tf.shape(all_ids))
            seen = tf.scatter_nd(tf.stack([rows, all_ids], axis=-1), tf.ones_like(all_ids), tf.shape(scores)) > 0
            scores = tf.where(seen, tf.fill(tf.shape(scores), -3.0e38), scores)
        top = tf.math.top_k(scores, k=self.top_k)
        return {"top_k_ids": tf.gather(self.id_to_token, top.indices), "top_k_scores": top.values}

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32), tf.TensorSpec([None], tf.int32)], autograph=False)
    def scores(self, ids, lengths):
        """The task's serving scores ``[B, V]`` (reserved ids at -inf) of encoded windows with a free slot: one
        trace of the model that both signatures call."""
        return exclude_reserved(self.task.serve_scores(ids, lengths))

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.string, name="item_ids")], autograph=False)
    def serve(self, item_ids):
        return self._top_k(item_ids, exclude_seen=False)

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.string, name="item_ids")], autograph=False)
    def serve_exclude_seen(self, item_ids):
        return self._top_k(item_ids, exclude_seen=True)


def write_version(root, fill):
    """Create ``<root>/<next integer>/`` atomically: ``fill(tmp_dir)`` writes into a temporary
    sibling, which is renamed into place only when it returns; on any error nothing is left."""
    os.makedirs(root, exist_ok=True)
    version = (versions(root) or [0])[-1] + 1
    tmp = tempfile.mkdtemp(dir=root, prefix=f".tmp-{version}-")
    try:
        fill(tmp)
        final = os.path.join(root, str(version))
        os.rename(tmp, final)
        return final
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def export_model(
    task, vocab: Vocabulary, model_dir, *, max_len, top_k=50, extra_config=None, metrics=None, kind="pretrain", output_vocab=None,
    extra_files=None, layout="right", pad_tokens=(SERVING_PAD,),
):
    """Write a new numbered export version under ``<model_dir>/export``; returns its path.

    ``output_vocab`` (finetuning): the vocabulary of what the task scores
    (target items or classes), saved as ``target_vocab.json``; the serving
    signature then returns its tokens and has no ``top_k_exclude_seen``.
    ``extra_files``: ``{name: writer(path)}`` written into the version
    before it is renamed into place (e.g. item-feature tables).
    ``layout``, ``pad_tokens``: see :class:`ServingModule` (recorded under ``serving`` in config.json).
    """
    def fill(tmp):
        module = ServingModule(task, vocab, max_len, top_k, output_vocab, layout=layout, pad_tokens=pad_tokens)
        signatures = {"serving_default": module.serve}
        if output_vocab is None:
            signatures["top_k_exclude_seen"] = module.serve_exclude_seen
        else:
            output_vocab.save(os.path.join(tmp, TARGET_VOCAB_FILE))
        tf.saved_model.save(module, tmp, signatures=signatures)
        task.backbone.save_weights(os.path.join(tmp, BACKBONE_WEIGHTS))
        task.save_weights(os.path.join(tmp, TASK_WEIGHTS))
        vocab.save(os.path.join(tmp, VOCAB_FILE))
        config = {
            "schema_version": SCHEMA_VERSION,
            "kind": kind,
            "versions": {"peterrec": peterrec.__version__, "tensorflow": tf.__version__, "keras": keras.__version__},
            "backbone": _plain_config(task.backbone),
            "task": _plain_config(task),
            "vocab_hash": vocab.hash,
            "vocab_size": vocab.size,
            "reserved_ids": RESERVED_IDS,
            "max_len": int(max_len),
            "serving": {
                "signatures": sorted(signatures),
                "input": "item_ids: string [batch, length]; '' is padding, on either side",
                "top_k": module.top_k,
                "layout": layout,
                "pad_tokens": sorted(set(pad_tokens) | {SERVING_PAD}),
            },
            **(extra_config or {}),
        }
        write_json(os.path.join(tmp, CONFIG_FILE), config)
        write_json(os.path.join(tmp, METRICS_FILE), metrics or {})
        for name, writer in (extra_files or {}).items():
            writer(os.path.join(tmp, name))

    return write_version(os.path.join(model_dir, EXPORT_DIR), fill)


def _plain_config(model):
    """Serialised config without the compile/build state (not part of the contract)."""
    config = keras.saving.serialize_keras_object(model)
    config.pop("compile_config", None)
    return config


def read_config(export_dir):
    path = os.path.join(export_dir, CONFIG_FILE)
    try:
        with open(path) as f:
            config = json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise ExportError(f"cannot read {path}: {err}") from err
    if config.get("schema_version") != SCHEMA_VERSION:
        raise ExportError(f"{path}: schema_version {config.get('schema_version')!r}, expected {SCHEMA_VERSION}")
    return config


def deserialize_task(config):
    """The Keras task an export or patch config names, rebuilt from its config (weights not loaded).

    Every recipe module is imported first (:func:`peterrec.recipes.all_recipes`), which registers every
    serialisable peterrec class with Keras, those of a recipe added later included.
    """
    from peterrec import recipes

    recipes.all_recipes()
    return keras.saving.deserialize_keras_object(config)


class LoadedExport:
    """An export rebuilt in Keras: ``task``, ``backbone``, ``vocab``, ``config``.

    ``recommend`` ranks next items for raw id sequences in Python; the same
    answers come from the SavedModel signature.
    """

    def __init__(self, path):
        self.path = latest_export(path)
        self.config = read_config(self.path)
        self.vocab = Vocabulary.load(os.path.join(self.path, VOCAB_FILE))
        if self.vocab.hash != self.config["vocab_hash"]:
            raise VocabularyError(
                f"{self.path}: vocab.json has hash {self.vocab.hash[:12]}, config.json expects {self.config['vocab_hash'][:12]}"
            )
        self.task = deserialize_task(self.config["task"])
        self.task.load_weights(os.path.join(self.path, TASK_WEIGHTS))
        self.backbone = self.task.backbone
        self.max_len = int(self.config["max_len"])
        target_path = os.path.join(self.path, TARGET_VOCAB_FILE)
        self.target_vocab = Vocabulary.load(target_path) if os.path.exists(target_path) else None
        serving = self.config["serving"]
        self._module = ServingModule(self.task, self.vocab, self.max_len, serving["top_k"], self.target_vocab,
                                     layout=serving.get("layout", "right"), pad_tokens=serving.get("pad_tokens", [SERVING_PAD]))

    def recommend(self, sequences, top_k=10, exclude_seen=False):
        """Top-k ``(item, score)`` lists for raw item-id sequences (lists of strings)."""
        width = max(1, max((len(s) for s in sequences), default=1))
        rows = [list(map(str, s)) + [SERVING_PAD] * (width - len(s)) for s in sequences]
        if exclude_seen and self.target_vocab is not None:
            raise ExportError(f"{self.path}: exclude_seen applies to next-item exports, not to finetuned target scorers")
        fn = self._module.serve_exclude_seen if exclude_seen else self._module.serve
        out = fn(tf.constant(rows, dtype=tf.string))
        ids = out["top_k_ids"].numpy()[:, :top_k]
        scores = out["top_k_scores"].numpy()[:, :top_k]
        return [[(i.decode(), float(s)) for i, s in zip(r_ids, r_scores)] for r_ids, r_scores in zip(ids, scores)]


def load_export(path):
    """Load an export directory (root, model dir or version dir) into Keras."""
    return LoadedExport(path)
