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
(peterrec.recipes.atrank / .miir, with item side information --item_data/--item_fields;
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
    "Model to train: a recipe of peterrec/recipes/ (nextitnet, grec, sasrec, narm, stamp, gru4rec, caser, atrank, miir, "
    "and any recipe added there); an unknown name is refused.",
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
flags.DEFINE_integer("length_bucket", None, "atrank: batch histories of similar length, in bands of this many items (8); "
                     "0 = random batches, the original's.", lower_bound=0)
flags.DEFINE_enum("candidate_projection", None, ["type", "none"], "atrank --behaviour_field: type (the original multi-behaviour "
                  "model: the candidate through its type's projection) or none (the candidate embedding as single-behaviour ATRank).")
FLAGS = flags.FLAGS


def trainable_recipes():
    """The recipes this pipeline trains (every model but PeterRec finetuning and CASR)."""
    from peterrec import recipes

    return {name: recipe for name, recipe in recipes.all_recipes().items() if recipe.pipeline in ("train", "pretrain")}


def model_names():
    return tuple(trainable_recipes())


def config_from_flags():
    """The chosen recipe's config from the flags (unset flags keep the model's own defaults)."""
    from peterrec import recipes

    recipe = recipes.get(FLAGS.model, "--model")
    if recipe.name not in trainable_recipes():
        from peterrec.errors import ConfigError

        raise ConfigError(f"--model: {FLAGS.model!r} is trained by python -m pipelines.{recipe.pipeline}, not pipelines.train")
    return recipe, common.config_from_flags(recipe, model_dir=FLAGS.model_dir or os.path.join("checkpoints", f"train-{recipe.name}"))


def main(argv):
    del argv
    recipe, cfg = config_from_flags()
    metrics = recipe.run(cfg)
    common.print_summary(cfg.resolved_model_dir(), metrics)


common.define_recipe_flags(trainable_recipes())  # settings of a recipe that no flag above names

if __name__ == "__main__":
    common.run(main)
