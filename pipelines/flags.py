"""Flags shared by every pipeline: one name per concept, defined once here.

Each pipeline calls the ``define_*`` groups it needs (each group is defined at
most once per process) and ``run(main)``. Library code never reads flags: a
pipeline turns them into plain arguments.
"""

from __future__ import annotations

import errno
import os
import re
import sys

from absl import app, flags

import peterrec
from peterrec.errors import PeterRecError

FLAGS = flags.FLAGS
DEFAULT_DATA = "Data/synthetic/source.inter"
FORMATS = ["auto", "inter", "peterrec", "caser", "tfds"]
_defined: set[str] = set()


def _once(group):
    def wrapper():
        if group.__name__ not in _defined:
            _defined.add(group.__name__)
            group()

    wrapper.__name__ = group.__name__
    return wrapper


@_once
def define_data_flags():
    flags.DEFINE_string("data", DEFAULT_DATA, "Interaction file (or TFRecord directory written by pipelines.convert).")
    flags.DEFINE_enum("format", "auto", FORMATS, "Format of --data; auto picks by extension (.inter, .csv, .txt).")
    flags.DEFINE_string("tfrecord_dir", "tfrecords", "Root of cached TFRecord sets (raw --data is converted here once).")
    flags.DEFINE_string("vocab_from", None, "Existing export directory or vocab.json to encode the data with.")
    flags.DEFINE_integer("num_shards", 8, "Number of TFRecord shards.", lower_bound=1)
    flags.DEFINE_enum("split", "loo", ["loo", "random"], "loo: leave-one-out by time; random: seeded split by user.")
    flags.DEFINE_float("valid_fraction", 0.1, "Share of users for validation (--split random).", lower_bound=0.0, upper_bound=0.9)
    flags.DEFINE_float("test_fraction", 0.1, "Share of users for test (--split random).", lower_bound=0.0, upper_bound=0.9)
    flags.DEFINE_integer("min_seq_len", 3, "Users with fewer interactions are skipped (and counted).", lower_bound=1)
    flags.DEFINE_float(
        "max_skipped_share", 0.5, "Fail when --min_seq_len skips more than this share of the users (1 = never).",
        lower_bound=0.0, upper_bound=1.0,
    )
    flags.DEFINE_integer("k_core", 0, "Iteratively drop users and items with fewer interactions (0 = off).", lower_bound=0)
    flags.DEFINE_bool("dedup", False, "Drop repeated consecutive interactions of a user with the same item.")
    flags.DEFINE_float("rating_threshold", None, "Keep only interactions with rating >= this (formats with ratings).")
    flags.DEFINE_integer("seed", 42, "Random seed for splits, shuffling and initialisation.")
    flags.DEFINE_string(
        "targets", None, "Per-user finetuning targets: a RecBole file with user_id and item_id (target items) or label (classes)."
    )


# Errors of the output file system (read-only, full disk, file too large, quota, permission): one line, not a traceback.
WRITE_ERRNOS = {errno.EROFS, errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EACCES, errno.EPERM}


def write_failure(err):
    """``"<path>: <reason>"`` when ``err`` is a file-system failure of ``WRITE_ERRNOS``, else None.

    Python raises ``OSError``; TensorFlow's file writers (TFRecord, checkpoints,
    SavedModel) raise an ``OpError`` whose message is ``"<path>; <strerror>"``;
    h5py an ``OSError`` without errno whose message holds the strerror.
    """
    reasons = [os.strerror(code) for code in WRITE_ERRNOS]
    if isinstance(err, OSError) and err.errno in WRITE_ERRNOS:
        return f"{err.filename or 'the output'}: {os.strerror(err.errno)}"
    text = str(getattr(err, "message", None) or err)
    for reason in reasons:
        if reason in text:
            path = re.search(r"(/[^\s;,']+)[^/]*" + re.escape(reason), text)
            return f"{path.group(1) if path else 'the output'}: {reason}"
    return None


_OWN_CODE = tuple(os.path.dirname(os.path.abspath(m.__file__)) + os.sep for m in (peterrec, sys.modules[__name__]))


def _own_info_only(record) -> bool:
    """Logging filter: TensorFlow's INFO lines would drown the job's own messages and progress bar."""
    return record.levelno >= 30 or record.pathname.startswith(_OWN_CODE)  # 30: WARNING


def run(main):
    """absl.app.run with user-facing errors printed as one line.

    Exit status 2 for a ``PeterRecError`` (bad input) and for an ``OSError``
    of the output file system (``WRITE_ERRNOS``, naming the path); an
    interrupted training job exits with its ``exit_code`` (128 + signal).
    """

    def _ensure_default_files():
        """Every flag naming a file of the embedded default dataset (Data/synthetic, not tracked in git) finds it."""
        from peterrec.data import synthetic

        for name in FLAGS:
            value = FLAGS[name].value
            for path in value.split(",") if isinstance(value, str) else ():
                synthetic.ensure_default(path)

    def guarded(argv):
        from absl import logging

        if not FLAGS["verbosity"].present:  # INFO from this project (resuming, files written), warnings from all
            logging.set_verbosity(logging.INFO)
            logging.get_absl_handler().addFilter(_own_info_only)
        try:
            _ensure_default_files()
            return main(argv)
        except PeterRecError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(getattr(err, "exit_code", 2))
        except Exception as err:  # noqa: BLE001 (re-raised unless it is a write failure of the output file system)
            failure = write_failure(err)
            if failure is None:
                raise
            print(f"error: {failure}", file=sys.stderr)
            sys.exit(2)

    app.run(guarded)


@_once
def define_train_flags():
    flags.DEFINE_string("model_dir", None, "Output directory (default depends on the job, under checkpoints/).")
    flags.DEFINE_integer("epochs", 10, "Maximum number of epochs.", lower_bound=1)
    flags.DEFINE_integer("batch_size", 64, "Global batch size (split across replicas).", lower_bound=1)
    flags.DEFINE_integer("eval_batch_size", 256, "Batch size for evaluation.", lower_bound=1)
    flags.DEFINE_float("learning_rate", 1e-3, "Adam learning rate (epsilon 1e-8 as in the original).", lower_bound=0.0)
    flags.DEFINE_enum("lr_schedule", "constant", ["constant", "cosine"],
                      "Learning-rate schedule: constant (the originals) or cosine decay to 0 over --epochs.")
    flags.DEFINE_float("warmup_epochs", 0.0, "Linear learning-rate warm-up from 0 over this many epochs.", lower_bound=0.0)
    flags.DEFINE_float("weight_decay", 0.0, "AdamW decoupled weight decay (0: Adam, as the originals).", lower_bound=0.0)
    flags.DEFINE_integer("max_len", 50, "Items of context per training window and evaluation row (each job checks its minimum).")
    flags.DEFINE_integer(
        "stride", 10, "Shift between training windows; each target keeps >= max_len - stride items of context.", lower_bound=1
    )
    flags.DEFINE_integer("patience", 3, "Early stopping: epochs without a better value of the job's validation metric "
                         "(pretraining: MRR@10; finetuning: MRR@5 for items, log-loss for classes).", lower_bound=0)
    flags.DEFINE_bool("jit_compile", False, "XLA-compile the training step (not with sampled softmax).")
    flags.DEFINE_bool(
        "mixed_precision", False,
        "Keras mixed precision: float16 compute with loss scaling on GPUs, bfloat16 on CPUs and TPUs; variables stay float32.",
    )
    flags.DEFINE_integer("checkpoint_every_steps", 500, "Save a resumable checkpoint every N steps (0: epoch ends only).", lower_bound=0)
    flags.DEFINE_integer("steps_per_execution", None, "Training steps per call of the compiled step (default 1; ATRank 16): "
                         "one Python round trip per call, for models whose steps are small.", lower_bound=1)
    flags.DEFINE_bool("deterministic", False, "Enable TensorFlow op determinism: a rerun, or a run resumed after a kill, "
                      "gives bit-identical weights (slower on GPU).")
    flags.DEFINE_float("divergence_factor", 5.0, "Stop when the smoothed training loss exceeds this multiple of its lowest "
                       "value (a diverging learning rate); 0 = off.", lower_bound=0.0)
    flags.DEFINE_enum(
        "eval_protocol", None, ["full", "sampled"],
        "full: rank over all items (pretraining default; finetuning with --sampler lambdafm); sampled: 1 target + 99 uniform "
        "negatives (finetuning items default).",
    )
    flags.DEFINE_enum(
        "loss", None, ["full_softmax", "sampled_softmax", "bce", "bpr"],
        "Pretraining / train: full_softmax (default), sampled_softmax, or bce / bpr with one uniform negative per position. "
        "Finetuning: bce with 1 negative (default) or bpr (default with --sampler lambdafm).",
    )
    flags.DEFINE_enum(
        "shuffle", None, ["epoch", "once"],
        "NextItNet / GRec / zoo pretraining and finetuning: epoch (default) reshuffles the training rows every epoch and fills the "
        "last batch from the next pass; once is the original's: one seeded permutation for every epoch, last partial batch dropped.",
    )
    flags.DEFINE_enum("strategy", "auto", ["auto", "default", "mirrored", "multiworker", "tpu"], "tf.distribute strategy.")
    flags.DEFINE_string("tpu", None, "TPU name or grpc address (--strategy tpu).")
    flags.DEFINE_integer("top_k", 50, "Number of items the exported serving signature returns.", lower_bound=1)
    flags.DEFINE_integer(
        "verbose", 1, "0: quiet, 1: progress bar (one line per epoch when stdout is not a terminal), 2: one line per epoch.", lower_bound=0
    )


@_once
def define_model_flags():
    flags.DEFINE_integer("embedding_dim", 64, "Channel width C of the CNN (and the item embeddings).", lower_bound=1)
    flags.DEFINE_list("dilations", ["1", "4", "1", "4", "1", "4", "1", "4"], "First dilation of each residual block.")
    flags.DEFINE_integer("kernel_size", 3, "Convolution kernel width.", lower_bound=1)
    flags.DEFINE_float("dropout", 0.0, "Dropout on embeddings and residual branches (0 = original).", lower_bound=0.0, upper_bound=0.99)
    flags.DEFINE_float("sampled_fraction", 0.2, "Share of the vocabulary drawn per batch by sampled softmax.", lower_bound=0.0)
    flags.DEFINE_bool("pad_as_item", False, "Fidelity: left-pad windows and train on pad positions as the original does.")


def int_list(values, flag):
    """Parse a list flag of positive integers, naming the flag on error."""
    from peterrec.errors import ConfigError

    try:
        out = [int(v) for v in values]
    except ValueError as err:
        raise ConfigError(f"--{flag}: expected comma-separated integers, got {','.join(values)}") from err
    if not out or min(out) < 1:
        raise ConfigError(f"--{flag}: expected positive integers, got {','.join(values)}")
    return out


def common_kwargs(names):
    """``{name: FLAGS.name}`` for the given flag names (those a config dataclass accepts).

    Flags left at a ``None`` default are omitted, so the config's own default applies.
    """
    out = {name: FLAGS[name].value for name in names if FLAGS[name].value is not None or FLAGS[name].present}
    if out.get("verbose") == 1 and not sys.stdout.isatty():
        out["verbose"] = 2  # a progress bar redrawn with \r floods logs
    return out


@_once
def define_grec_flags():
    flags.DEFINE_bool("positional_embedding", False, "--backbone grec: concatenate learned positional embeddings (original's option).")
    flags.DEFINE_float("mask_prob", 0.3, "--backbone grec: share of each chunk's items masked.", lower_bound=0.0, upper_bound=1.0)
    flags.DEFINE_integer("max_predictions", 30, "--backbone grec: most masked items per chunk.", lower_bound=1)


@_once
def define_zoo_flags():
    """Settings of the model zoo (pipelines.train); unset = the model's RecBole 1.2.1 default."""
    flags.DEFINE_enum(
        "output_layer", None, ["dense", "tied"],
        "Output layer: dense (NextItNet's ReLU + Dense head; default for nextitnet/grec) or tied (scores = h . item "
        "embeddings; default for sasrec, narm, stamp, gru4rec).",
    )
    flags.DEFINE_integer("num_layers", None, "Transformer layers (sasrec, 2) or stacked GRUs (narm 1, gru4rec 1).")
    flags.DEFINE_integer("num_heads", None, "sasrec: attention heads (2); must divide --embedding_dim.")
    flags.DEFINE_integer("hidden_size", None, "narm, gru4rec: GRU state width (128).")
    flags.DEFINE_integer("inner_size", None, "sasrec: feed-forward width (256).")
    flags.DEFINE_float("embedding_dropout", None, "narm (0.25), gru4rec (0.3): dropout on the input item embeddings.")
    flags.DEFINE_float("hidden_dropout", None, "sasrec (0.5): embedding and residual dropout; narm (0.5): dropout before the projection.")
    flags.DEFINE_float("attn_dropout", None, "sasrec: dropout on the attention probabilities (0.5).")
    flags.DEFINE_bool("pre_ln", None, "sasrec: the original SASRec's pre-LN layers (with --loss bce) instead of RecBole's post-LN.")


@_once
def define_side_info_flags():
    """Item side information and MIIR's settings (pipelines.train --model atrank|miir, pipelines.pretrain --backbone miir).

    Unset flags keep the model's own (the original's) defaults: see :func:`config_from_flags`.
    """
    flags.DEFINE_string("item_data", None, "atrank, miir: item side information (.item files and/or Amazon meta_*.json, "
                        "comma-separated; default Data/synthetic/source.item).")
    flags.DEFINE_string("item_fields", None, "atrank, miir: comma-separated feature fields to use (default: the model's).")
    flags.DEFINE_enum("item_format", None, ["auto", "item", "amazon_meta"], "atrank, miir: format of --item_data (auto: by extension).")
    flags.DEFINE_float("max_bad_share", None, "atrank, miir: largest share of unparseable meta lines skipped (and counted) (0.05).",
                       lower_bound=0.0, upper_bound=1.0)
    flags.DEFINE_float("discard_share", None, "miir: share of the present side values dropped once, seeded (0.5 = the original's "
                       "'after discard'; 0 = 'before discard').", lower_bound=0.0, upper_bound=0.99)
    flags.DEFINE_enum("attention", None, ["dfsa", "sfsa"], "miir: dense or sparse fusion self-attention.")


def define_recipe_flags(recipes_by_name):
    """One flag per config field of the given recipes that no pipeline flag names yet (call it last).

    The flag's default is None (unset: the recipe's own default applies); its help names the recipes
    that have the field and their defaults, or the field's ``metadata["help"]``.
    """
    import dataclasses
    import typing

    fields = {}
    for name, recipe in recipes_by_name.items():
        for field in dataclasses.fields(recipe.config_class):
            if field.name not in FLAGS and field.default is not dataclasses.MISSING:
                fields.setdefault(field.name, []).append((name, field))
    for flag, owners in fields.items():
        field = owners[0][1]
        kind = type(field.default) if field.default is not None else None
        if kind is None:  # Optional[...]: the annotation's first type
            hints = typing.get_type_hints(recipes_by_name[owners[0][0]].config_class)
            kind = next((t for t in typing.get_args(hints.get(flag)) if t is not type(None)), str)
        help_text = field.metadata.get("help") or ", ".join(f"{name} ({f.default!r})" for name, f in owners)
        help_text = f"{help_text}; unset: the model's own default."
        define = {bool: flags.DEFINE_bool, int: flags.DEFINE_integer, float: flags.DEFINE_float}.get(kind)
        if define is not None:
            define(flag, None, help_text)
        elif kind in (tuple, list):
            flags.DEFINE_list(flag, None, help_text)
        else:
            flags.DEFINE_string(flag, None, help_text)


def config_from_flags(recipe, **fixed):
    """``recipe.config_class`` from the flags that name its fields, then ``recipe.fixed`` and ``fixed``.

    A field in ``recipe.own_defaults`` takes its flag only when the flag was given (an unset shared flag
    keeps the model's own default, e.g. Caser's ``max_len`` 5); other fields take their flag's value
    unless it is an unset ``None``. ``--dilations`` is parsed, tuple fields (``--item_fields``) are split
    on commas, ``TF_CONFIG`` comes from the environment.
    """
    import dataclasses

    fixed = {**recipe.fixed, **fixed}
    fields = {f.name: f for f in dataclasses.fields(recipe.config_class)}
    names = [
        name for name in fields
        if name in FLAGS and name not in fixed and name != "dilations"
        and (FLAGS[name].present or name not in recipe.own_defaults)
    ]
    kwargs = common_kwargs(names)
    for name, value in list(kwargs.items()):
        if isinstance(value, str) and isinstance(fields[name].default, tuple) or (name == "item_fields" and isinstance(value, str)):
            kwargs[name] = tuple(part.strip() for part in value.split(",") if part.strip())
        elif isinstance(value, list):
            kwargs[name] = tuple(value)
    if "dilations" in fields and "dilations" in FLAGS and (FLAGS["dilations"].present or "dilations" not in recipe.own_defaults):
        kwargs["dilations"] = tuple(int_list(FLAGS.dilations, "dilations"))
    if "tf_config" in fields:
        kwargs["tf_config"] = os.environ.get("TF_CONFIG")
    return recipe.config_class(**(recipe.defaults | kwargs | fixed))


def print_summary(model_dir, metrics):
    """The short JSON a training pipeline prints at the end (test and popularity @10, wall time)."""
    import json

    at_10 = lambda split: {k: round(v, 4) for k, v in split.items() if k in ("hr@10", "ndcg@10", "mrr@10")}  # noqa: E731
    summary = {
        "model_dir": model_dir,
        "export_dir": metrics.get("export_dir"),  # None on a non-chief multi-worker task (only the chief exports)
        "test": at_10(metrics["test"]),
        "popularity_test": at_10(metrics["popularity"]["test"]),
        "train_wall_seconds": metrics["train_wall_seconds"],
    }
    print(json.dumps(summary, indent=2))


def define_casr_flags():
    """CASR's knobs (pipelines.casr; pipelines.tune --model casr searches them and takes --sampler_dir, --learning, ...)."""
    # Names are checked by CASRConfig.validate (a bad value is one "error: --flag ..." line, exit 2).
    flags.DEFINE_string("sampler_model", None, "Sampler: nextitnet, sasrec, narm, stamp or gru4rec (default narm, or --sampler_dir's model).")
    flags.DEFINE_string("anchor_model", "stamp", "Anchor (the model trained on observed + generated data): nextitnet, sasrec, narm, stamp, gru4rec.")
    flags.DEFINE_string("learning", "learning", "heuristic (random replacement), learning (data-oriented boundary search) or ad "
                        "(model-oriented, in the anchor's training step); the seed's Heuristic/Learning/AD are accepted.")
    flags.DEFINE_string("sampler_dir", None, "Existing sampler export (its vocabulary must be the data's) instead of training one.")
    flags.DEFINE_integer("sampler_epochs", None, "Epochs of the sampler (default --epochs).")
    flags.DEFINE_integer("index", 2, "Intervention position, 1-based, counted as --position says (from_end: 1 = the most recent item).")
    flags.DEFINE_string("position", "from_end", "from_end, from_start or random (uniform over the prefix; ignores --index).")
    flags.DEFINE_float("sample", 0.1, "Share of training prefixes selected for generation, in [0, 1] (the seed's example: 1).")
    flags.DEFINE_integer("n_per_seq", 1, "Counterfactual candidates per selected prefix.")
    flags.DEFINE_string("replacement", "uniform", "heuristic: uniform or popularity (training counts).")
    flags.DEFINE_float("kappa", 0.0, "Confidence margin of the boundary search's hinge (and threshold of --filter confidence).")
    flags.DEFINE_float("tao", 0.1, "Temperature of the softmax over item similarities that maps a searched embedding back to an item.")
    flags.DEFINE_integer("iter", 1, "Gradient steps of the boundary (learning) or adversarial (ad) search.")
    flags.DEFINE_float("step_size", 0.5, "Search step length, in units of the RMS item-embedding norm.")
    flags.DEFINE_float("closeness", 0.1, "Weight of the L2 closeness ||e' - e||^2 / rms^2 in the search.")
    flags.DEFINE_string("similarity", "cosine", "Item similarity of the map back: cosine, dot or euclidean.")
    flags.DEFINE_integer("candidates", 4, "ad: replacements drawn per prefix; the one with the highest anchor loss is trained on.")
    flags.DEFINE_string("label", "argmax", "Label of a generated sequence: argmax (the sampler's top-1) or sampled (from its softmax).")
    flags.DEFINE_string("filter", "auto", "Keep generated samples: auto (flip for learning, none otherwise), none, flip "
                        "(the sampler's top-1 changed) or confidence (top-1 margin >= --kappa).")
    flags.DEFINE_float("beta", 1.0, "Loss weight of each generated sample (observed samples weigh 1).")
    flags.DEFINE_integer("generation_batch_size", 256, "Prefixes per generation batch.")
    flags.DEFINE_integer("inspect_rows", 1000, "Rows of generated_samples.tsv (originals next to generated sequences).")


def define_any_model_flags():
    """Every model-setting group besides the data and training flags (jobs that take any model: tune, benchmark)."""
    define_data_flags()
    define_train_flags()
    define_model_flags()
    define_grec_flags()
    define_zoo_flags()
    define_casr_flags()
