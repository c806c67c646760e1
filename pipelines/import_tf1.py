"""Import a checkpoint of the original TF1 NextItNet / GRec-encoder code as a peterrec export.

    python -m pipelines.import_tf1 \
        --checkpoint ../shared/fixtures/peterrec_demo/Models/model_nextitnet_transfer_pretrain.ckpt \
        --vocab_from ../shared/fixtures/peterrec_demo/Session/history_sequences_20181014_fajie_transfer_pretrain_small.csv \
        --backbone nextitnet --model_dir checkpoints/tf1-nextitnet

--checkpoint is the prefix (without .index / .data-*) or a directory with a
`checkpoint` file; --vocab_from is the CSV the model was trained on (its
vocabulary is rebuilt in the original's first-appearance order). Writes
<model_dir>/export/<version>/ (kind "tf1_import"); the id mapping and the
variable map are in its config.json under "tf1_import" (docs/tf1_import.md).
Bad input (missing checkpoint, wrong --backbone, a CSV of another vocabulary)
prints one line and exits with status 2; nothing is written then.
"""

import json

from absl import flags

from pipelines import flags as common

common.define_train_flags()  # --model_dir, --max_len, --top_k (the other training flags are unused here)
FLAGS = flags.FLAGS
if "checkpoint" not in FLAGS:
    flags.DEFINE_string("checkpoint", None, "TF1 checkpoint prefix (e.g. .../model_nextitnet_cloze) or its directory.")
if "vocab_from" not in FLAGS:
    flags.DEFINE_string("vocab_from", None, "The CSV the TF1 model was trained on (pretraining or finetuning file).")
if "backbone" not in FLAGS:
    flags.DEFINE_enum("backbone", "nextitnet", ["nextitnet", "grec"], "nextitnet: causal convs; grec: the GRec encoder (non-causal).")
if "verify_backbone" not in FLAGS:
    flags.DEFINE_bool("verify_backbone", True, "Refuse a checkpoint that was evidently written by the other --backbone.")


def main(argv):
    del argv
    from peterrec.tf1.importer import export_tf1_checkpoint
    from peterrec.errors import ConfigError

    for name in ("checkpoint", "vocab_from"):
        if not FLAGS[name].value:
            raise ConfigError(f"--{name} is required")
    model_dir = FLAGS.model_dir or f"checkpoints/tf1-{FLAGS.backbone}"
    max_len = FLAGS.max_len if FLAGS["max_len"].present else None  # default: the CSV's sequence length
    path, result = export_tf1_checkpoint(
        FLAGS.checkpoint,
        FLAGS.vocab_from,
        FLAGS.backbone,
        model_dir,
        max_len=max_len,
        top_k=FLAGS.top_k,
        verify_backbone=FLAGS.verify_backbone,
    )
    ckpt = result.checkpoint
    summary = {
        "export_dir": path,
        "checkpoint": ckpt.prefix,
        "backbone": result.backbone,
        "head": ckpt.head,
        "vocabulary_size": {"tf1": result.mapping.tf1.size, "peterrec": result.mapping.vocab.size},
        "tf1_pad_id": result.mapping.tf1.pad_id,
        "model_variables": len(ckpt.model_variables),
        "optimizer_variables_skipped": len(ckpt.optimizer_variables),
        "ignored_variables": sorted(result.ignored),
        "channels": ckpt.channels,
        "kernel_size": ckpt.kernel_size,
        "dilations": list(ckpt.dilations),
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    common.run(main)
