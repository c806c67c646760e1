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

from absl import flags

from pipelines import flags as common

common.define_data_flags()
common.define_train_flags()
common.define_model_flags()
common.define_grec_flags()
flags.DEFINE_enum(
    "backbone", "nextitnet", ["nextitnet", "grec"],
    "Backbone to pretrain. nextitnet: causal, next-item objective; grec: the GRec encoder (non-causal), masked-item objective.",
)
FLAGS = flags.FLAGS


def config_from_flags():
    from peterrec.pretraining import PretrainConfig

    return common.job_config_from_flags(PretrainConfig)


def main(argv):
    del argv
    from peterrec import pretraining

    cfg = config_from_flags()
    metrics = pretraining.run(cfg)
    common.print_summary(cfg.resolved_model_dir(), metrics)


if __name__ == "__main__":
    common.run(main)
