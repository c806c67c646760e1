"""Train a next-item model of the zoo and export it.

    python -m pipelines.train --model sasrec
    python -m pipelines.train --model narm --epochs 20 --loss sampled_softmax
    python -m pipelines.train --model sasrec --pre_ln --loss bce      # the original SASRec's layers and loss
    python -m pipelines.train --model nextitnet                       # = pipelines.pretrain --backbone nextitnet

Models: nextitnet, grec (as pipelines.pretrain), sasrec, narm, stamp, gru4rec
(peterrec.models, RecBole 1.2.1 defaults, tied output layer) and caser
(peterrec.models.caser: the seed's knobs --max_len (L, default 5), --T, --nv,
--nh, --ac_conv, --ac_fc, --dropout (drop_rate, 0.5), --embedding_dim (d, 50),
--neg_samples, --caser_l2, --tied; user embeddings, windows of L inputs and T
targets, BCE with negatives outside the user's history), atrank and miir
(peterrec.tasks.side_info, with item side information --item_data/--item_fields;
flags left unset keep the originals' defaults; atrank --behaviour_field for
multi-behaviour ATRank, miir --pretrained checkpoints/pretrain-miir after
pipelines.pretrain --backbone miir). Every
model runs through the same library function as pipelines.pretrain
(peterrec.pretraining.run): the same data path and windows (--max_len,
--stride), the same losses (--loss full_softmax, sampled_softmax, bce, bpr),
the same training loop, evaluation protocol and outputs: export/<version>/
(SavedModel with the raw-id top-k signature), logs/ (TensorBoard), ckpt/
(re-running resumes), metrics.json, curves.png and job_config.json, in
checkpoints/train-<model>/ unless --model_dir says otherwise.
"""

import os

from absl import flags

from pipelines import flags as common

common.define_data_flags()
common.define_train_flags()
common.define_model_flags()
common.define_grec_flags()
common.define_zoo_flags()
flags.DEFINE_string(
    "model", "nextitnet",
    "Model to train: nextitnet, grec, sasrec, narm, stamp, gru4rec, caser, atrank or miir (an unknown name is refused).",
)
flags.DEFINE_integer("T", 3, "caser: targets per window.", lower_bound=1)
flags.DEFINE_integer("nv", 4, "caser: vertical convolution filters.", lower_bound=0)
flags.DEFINE_integer("nh", 16, "caser: horizontal convolution filters per height.", lower_bound=0)
flags.DEFINE_string("ac_conv", "relu", "caser: activation of the convolutions.")
flags.DEFINE_string("ac_fc", "relu", "caser: activation of the fully connected layer.")
flags.DEFINE_integer("neg_samples", 3, "caser: negatives per window (never items of the user's history).", lower_bound=1)
flags.DEFINE_float("caser_l2", 1e-6, "caser: the original's Adam weight decay (as an L2 penalty).", lower_bound=0.0)
flags.DEFINE_bool("tied", False, "caser: RecBole's variant (tied output layer, cross-entropy over all items).")
common.define_side_info_flags()
flags.DEFINE_enum("optimizer", None, ["sgd", "adam"], "atrank: the original's SGD (1.0, dropping to 0.1) or Adam.")
flags.DEFINE_string("pretrained", None, "miir: an MII pretraining export (python -m pipelines.pretrain --backbone miir) to "
                    "finetune from, e.g. checkpoints/pretrain-miir.")
flags.DEFINE_string("behaviour_field", None, "atrank: multi-behaviour ATRank: the token column of the --data .inter file that "
                    "holds each interaction's behaviour type (e.g. behaviour in Data/synthetic/source_behaviour.inter).")
flags.DEFINE_integer("behaviour_dim", None, "atrank --behaviour_field: width of the behaviour-type embedding (16).", lower_bound=1)
flags.DEFINE_string("candidate_behaviour", None, "atrank --behaviour_field: the behaviour type whose projection embeds the "
                    "candidates (and the history at serving time); default: the most frequent type.")
flags.DEFINE_enum("candidate_projection", None, ["type", "none"], "atrank --behaviour_field: type (the original multi-behaviour "
                  "model: the candidate through its type's projection) or none (the candidate embedding as single-behaviour ATRank).")
FLAGS = flags.FLAGS
SIDE_INFO_MODELS = ("atrank", "miir")
CASER_DEFAULTS = {"max_len": 5, "embedding_dim": 50, "dropout": 0.5, "batch_size": 512}


def model_names():
    from peterrec.pretraining import BACKBONES

    return (*BACKBONES, "caser", *SIDE_INFO_MODELS)


def caser_config():
    """The CaserConfig from the flags (shared flags that are not set take Caser's own defaults)."""
    from peterrec.models.caser import CaserConfig

    given = lambda name: FLAGS[name].value if FLAGS[name].present else CASER_DEFAULTS.get(name, FLAGS[name].value)  # noqa: E731
    return CaserConfig(
        L=given("max_len"), T=FLAGS.T, d=given("embedding_dim"), nv=FLAGS.nv, nh=FLAGS.nh, ac_conv=FLAGS.ac_conv, ac_fc=FLAGS.ac_fc,
        drop_rate=given("dropout"), neg_samples=FLAGS.neg_samples, l2=FLAGS.caser_l2, tied=FLAGS.tied, batch_size=given("batch_size"),
        eval_batch_size=FLAGS.eval_batch_size, learning_rate=FLAGS.learning_rate, epochs=FLAGS.epochs, seed=FLAGS.seed,
    ).validate()


def side_info_config(model):
    """ATRankConfig / MIIRConfig from the flags the user set (``common.side_info_config_from_flags``)."""
    from peterrec.tasks import side_info

    config_class = side_info.ATRankConfig if model == "atrank" else side_info.MIIRConfig
    return common.side_info_config_from_flags(config_class, model_dir=FLAGS.model_dir or os.path.join("checkpoints", f"train-{model}"))


def config_from_flags():
    from peterrec.errors import ConfigError
    from peterrec.pretraining import PretrainConfig

    model = FLAGS.model
    if model not in model_names():
        raise ConfigError(f"--model: {model!r} is not one of {', '.join(model_names())}")
    model_dir = FLAGS.model_dir or os.path.join("checkpoints", f"train-{model}")
    return common.job_config_from_flags(PretrainConfig, backbone=model, model_dir=model_dir)


def main(argv):
    del argv
    from peterrec import pretraining

    if FLAGS.model == "caser":
        from peterrec.pretraining import PretrainConfig

        model_dir = FLAGS.model_dir or os.path.join("checkpoints", "train-caser")
        cfg = common.job_config_from_flags(PretrainConfig, backbone="nextitnet", model_dir=model_dir, max_len=max(FLAGS.max_len, 2))
        metrics = pretraining.run_caser(cfg, caser_config())
        common.print_summary(model_dir, metrics)
        return
    if FLAGS.model in SIDE_INFO_MODELS:
        from peterrec.tasks import side_info

        cfg = side_info_config(FLAGS.model)
        metrics = (side_info.run_atrank if FLAGS.model == "atrank" else side_info.run_miir)(cfg)
        common.print_summary(cfg.model_dir, metrics)
        return
    cfg = config_from_flags()
    metrics = pretraining.run(cfg)
    common.print_summary(cfg.resolved_model_dir(), metrics)


if __name__ == "__main__":
    common.run(main)
