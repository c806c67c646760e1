"""Pretrain a backbone on next-item prediction and export it.

    python -m pipelines.pretrain --backbone nextitnet
    python -m pipelines.pretrain --backbone grec [--loss sampled_softmax]  # GRec encoder, masked items

With no flags it trains NextItNet on the embedded default data
(Data/synthetic/source.inter) and writes checkpoints/pretrain-nextitnet/:
export/<version>/ (SavedModel + config + vocab + weights), logs/ (TensorBoard),
ckpt/ (re-running resumes), metrics.json and curves.png. --backbone grec writes
checkpoints/pretrain-grec/; the original GRec uses sampled softmax
(--loss sampled_softmax), peterrec's default is the full softmax.
"""

import dataclasses
import json
import os

from absl import flags

from pipelines import flags as common

common.define_data_flags()
common.define_train_flags()
common.define_model_flags()
flags.DEFINE_enum(
    "backbone", "nextitnet", ["nextitnet", "grec"],
    "Backbone to pretrain. nextitnet: causal, next-item objective; grec: the GRec encoder (non-causal), masked-item objective.",
)
flags.DEFINE_bool("positional_embedding", False, "--backbone grec: concatenate learned positional embeddings (original's option).")
flags.DEFINE_float("mask_prob", 0.3, "--backbone grec: share of each chunk's items masked.", lower_bound=0.0, upper_bound=1.0)
flags.DEFINE_integer("max_predictions", 30, "--backbone grec: most masked items per chunk.", lower_bound=1)
FLAGS = flags.FLAGS


def config_from_flags():
    from peterrec.pretraining import PretrainConfig

    names = [f.name for f in dataclasses.fields(PretrainConfig) if f.name in FLAGS and f.name != "dilations"]
    kwargs = common.common_kwargs(names)
    kwargs["dilations"] = tuple(common.int_list(FLAGS.dilations, "dilations"))
    kwargs["tf_config"] = os.environ.get("TF_CONFIG")
    return PretrainConfig(**kwargs)


def main(argv):
    del argv
    from peterrec import pretraining

    cfg = config_from_flags()
    metrics = pretraining.run(cfg)
    summary = {
        "model_dir": cfg.resolved_model_dir(),
        "export_dir": metrics["export_dir"],
        "test": {k: round(v, 4) for k, v in metrics["test"].items() if k in ("hr@10", "ndcg@10", "mrr@10")},
        "popularity_test": {k: round(v, 4) for k, v in metrics["popularity"]["test"].items() if k in ("hr@10", "ndcg@10", "mrr@10")},
        "train_wall_seconds": metrics["train_wall_seconds"],
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    common.run(main)
