"""Flags shared by every pipeline: one name per concept, defined once here.

Each pipeline calls the ``define_*`` groups it needs (each group is defined at
most once per process) and ``run(main)``. Library code never reads flags: a
pipeline turns them into plain arguments.
"""

from __future__ import annotations

import sys

from absl import app, flags

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
    flags.DEFINE_integer("k_core", 0, "Iteratively drop users and items with fewer interactions (0 = off).", lower_bound=0)
    flags.DEFINE_bool("dedup", False, "Drop repeated consecutive interactions of a user with the same item.")
    flags.DEFINE_float("rating_threshold", None, "Keep only interactions with rating >= this (formats with ratings).")
    flags.DEFINE_integer("seed", 42, "Random seed for splits, shuffling and initialisation.")
    flags.DEFINE_string(
        "targets", None, "Per-user finetuning targets: a RecBole file with user_id and item_id (target items) or label (classes)."
    )


def run(main):
    """absl.app.run with user-facing errors printed as one line (exit status 2)."""

    def guarded(argv):
        from absl import logging

        if not FLAGS["verbosity"].present:
            logging.set_verbosity(logging.WARNING)  # TensorFlow's INFO lines drown the progress output
        try:
            return main(argv)
        except PeterRecError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)

    app.run(guarded)


@_once
def define_train_flags():
    flags.DEFINE_string("model_dir", None, "Output directory (default depends on the job, under checkpoints/).")
    flags.DEFINE_integer("epochs", 10, "Maximum number of epochs.", lower_bound=1)
    flags.DEFINE_integer("batch_size", 64, "Global batch size (split across replicas).", lower_bound=1)
    flags.DEFINE_integer("eval_batch_size", 256, "Batch size for evaluation.", lower_bound=1)
    flags.DEFINE_float("learning_rate", 1e-3, "Adam learning rate (epsilon 1e-8 as in the original).", lower_bound=0.0)
    flags.DEFINE_integer("max_len", 50, "Items of context per training window and evaluation row.", lower_bound=2)
    flags.DEFINE_integer(
        "stride", 10, "Shift between training windows; each target keeps >= max_len - stride items of context.", lower_bound=1
    )
    flags.DEFINE_integer("patience", 3, "Early stopping: epochs without a better validation MRR@10.", lower_bound=0)
    flags.DEFINE_bool("jit_compile", False, "XLA-compile the training step (not with sampled softmax).")
    flags.DEFINE_integer("checkpoint_every_steps", 500, "Save a resumable checkpoint every N steps (0: epoch ends only).", lower_bound=0)
    flags.DEFINE_enum(
        "eval_protocol", None, ["full", "sampled"],
        "full: rank over all items (pretraining default); sampled: 1 target + 99 uniform negatives (finetuning items default).",
    )
    flags.DEFINE_enum(
        "loss", None, ["full_softmax", "sampled_softmax", "bce", "bpr"],
        "Pretraining: full_softmax (default) or sampled_softmax. Finetuning: bce with 1 negative (default) or bpr "
        "(default with --sampler lambdafm).",
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
