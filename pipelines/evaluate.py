"""Re-evaluate an exported model and write metrics.json.

    python -m pipelines.evaluate --model_dir checkpoints/finetune-nextitnet-serial-peterrec-items

By default the data, targets and split are those the model was trained with,
so this reproduces the job's test metrics; pass --data (and --targets) to
evaluate on other data encoded with the export's vocabulary.
"""

import json

from absl import flags

from pipelines import flags as common

common.define_data_flags()
flags.DEFINE_string("model_dir", "checkpoints/pretrain-nextitnet", "Model directory or export directory.")
flags.DEFINE_enum("eval_split", "test", ["valid", "test"], "Which held-out split to evaluate.")
flags.DEFINE_enum("eval_protocol", None, ["full", "sampled"], "Default: the job's protocol.")
flags.DEFINE_integer("eval_batch_size", 256, "Batch size.", lower_bound=1)
flags.DEFINE_string("output", None, "Where to write the metrics (default <model_dir>/eval/metrics.json).")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    from peterrec.evaluation import evaluate_export

    metrics = evaluate_export(
        FLAGS.model_dir,
        data=FLAGS.data if FLAGS["data"].present else None,
        fmt=FLAGS.format,
        targets=FLAGS.targets,
        split=FLAGS.eval_split,
        protocol=FLAGS.eval_protocol,
        tfrecord_dir=FLAGS.tfrecord_dir,
        batch_size=FLAGS.eval_batch_size,
        output=FLAGS.output,
    )
    print(json.dumps({k: metrics[k] for k in (FLAGS.eval_split, "popularity", "output")}, indent=2))


if __name__ == "__main__":
    common.run(main)
