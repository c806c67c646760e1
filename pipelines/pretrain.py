"""Pretrain a backbone on next-item prediction and export it.

    python -m pipelines.pretrain --backbone nextitnet
    python -m pipelines.pretrain --backbone grec [--loss sampled_softmax]  # GRec encoder, masked items
    python -m pipelines.pretrain --backbone miir                           # MIIR, MII pretraining on item side information

With no flags it trains NextItNet on the embedded default data
(Data/synthetic/source.inter) and writes checkpoints/pretrain-nextitnet/:
export/<version>/ (SavedModel + config + vocab + weights), logs/ (TensorBoard),
ckpt/ (re-running resumes), metrics.json and curves.png. --backbone grec writes
checkpoints/pretrain-grec/; the original GRec uses sampled softmax
(--loss sampled_softmax), peterrec's default is the full softmax.

--backbone miir pretrains MIIR with the MII objective (peterrec.recipes.miir.run_miir,
stage "mii"; the original's defaults: Adam 1e-4, clip by value 5, batch 128, 100 epochs, d 64,
3 layers, 4 heads, --mask_prob 0.5, --discard_share 0.5; here 8 epochs, every one run unless --patience is
given, Adam 1e-3, dropout 0.1: fidelity m11) on --data and its item side information
(--item_data, default Data/synthetic/source.item; --item_fields, --item_format, --attention dfsa|sfsa)
and writes checkpoints/pretrain-miir/; finetune it with
`python -m pipelines.train --model miir --pretrained checkpoints/pretrain-miir` (the same --data,
--item_data, --item_fields, --discard_share and --seed). pipelines.finetune is PeterRec's
(NextItNet/GRec exports) and refuses a MIIR export. Flags left unset keep MIIR's defaults.
"""

from absl import flags

from pipelines import flags as common

common.define_data_flags()
common.define_train_flags()
common.define_model_flags()
common.define_grec_flags()
common.define_zoo_flags()
common.define_side_info_flags()
flags.DEFINE_enum(
    "backbone", "nextitnet", ["nextitnet", "grec", "miir"],
    "Backbone to pretrain. nextitnet: causal, next-item objective; grec: the GRec encoder (non-causal), masked-item objective; "
    "miir: MIIR with the MII objective on item side information (--item_data).",
)
FLAGS = flags.FLAGS


def miir_config():
    """MIIRConfig(stage="mii") from the flags the user set (unset: MIIR's defaults; output checkpoints/pretrain-miir)."""
    from peterrec import recipes

    return common.config_from_flags(recipes.get("miir"), stage="mii", model_dir=FLAGS.model_dir)


def main(argv):
    del argv
    from peterrec import recipes

    recipe = recipes.get(FLAGS.backbone, "--backbone")
    cfg = miir_config() if recipe.name == "miir" else common.config_from_flags(recipe)
    metrics = recipe.run(cfg)
    common.print_summary(cfg.resolved_model_dir(), metrics)


if __name__ == "__main__":
    common.run(main)
