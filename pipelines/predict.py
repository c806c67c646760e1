"""Each user's top-k next items from an exported model, as CSV.

    python -m pipelines.predict --export checkpoints/pretrain-nextitnet/export \
        --data Data/synthetic/source.inter --top_k 10 --exclude_seen
"""

import json

import keras
from absl import flags

from pipelines import flags as common

common.define_data_flags()
flags.DEFINE_string("export", "checkpoints/pretrain-nextitnet/export", "Export directory (root, model dir or version).")
flags.DEFINE_integer("top_k", 10, "Items per user.", lower_bound=1)
flags.DEFINE_bool("exclude_seen", False, "Never recommend an item already in the user's history.")
flags.DEFINE_string("output", None, "Output CSV (default: predictions.csv next to the export root).")
flags.DEFINE_integer("batch_size", 256, "Users per batch.", lower_bound=1)
flags.DEFINE_list("patches", None, "Patch artifacts (finetuning jobs' patch/ dirs) to apply to --export, the shared backbone; "
                  "writes one predictions-<i>.csv per patch into the directory of --output.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    import os

    from peterrec.inference import predict_file

    output = FLAGS.output or os.path.join(os.path.dirname(os.path.abspath(FLAGS.export.rstrip("/"))), "predictions.csv")
    if FLAGS.patches:
        from peterrec.inference import predict_patches

        result = predict_patches(FLAGS.export, FLAGS.patches, FLAGS.data, FLAGS.format, output_dir=os.path.dirname(output),
                                 top_k=FLAGS.top_k, batch_size=FLAGS.batch_size)
        print(json.dumps(result, indent=2))
        return
    bar = keras.utils.Progbar(None, unit_name="user")
    result = predict_file(
        FLAGS.export,
        FLAGS.data,
        FLAGS.format,
        output=output,
        top_k=FLAGS.top_k,
        exclude_seen=FLAGS.exclude_seen,
        batch_size=FLAGS.batch_size,
        progress=bar.update,
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    common.run(main)
