"""CASR: counterfactual data augmentation with a sampler and an anchor model.

    python -m pipelines.casr --sampler_model narm --anchor_model stamp --learning learning
    python -m pipelines.casr --learning heuristic --index 1 --sample 0.5 --beta 0.1
    python -m pipelines.casr --learning ad --sampler_dir checkpoints/train-narm/export

Stage 1 trains the sampler (into <model_dir>/sampler/) unless --sampler_dir
names an export; stage 2 generates counterfactual sequences from the training
prefixes (heuristic, learning) or selects the prefixes the anchor's training
step intervenes on (ad); stage 3 trains the anchor on observed + generated
samples (generated loss weighted by --beta) and exports it. Outputs in
checkpoints/casr-<sampler>-<anchor>-<learning>/ unless --model_dir: sampler/,
generated/ (TFRecords), generated_samples.tsv, export/<version>/ (the anchor),
logs/ (TensorBoard, logs/casr: generated samples, share, flip rate), ckpt/,
metrics.json, curves.png. See peterrec/recipes/casr.py and docs/fidelity.md (CASR).
"""

from absl import flags

from pipelines import flags as common

common.define_data_flags()
common.define_train_flags()
common.define_model_flags()
common.define_zoo_flags()
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
FLAGS = flags.FLAGS


def main(argv):
    del argv
    from peterrec import recipes

    recipe = recipes.get("casr")
    cfg = common.config_from_flags(recipe)
    metrics = recipe.run(cfg)
    common.print_summary(cfg.resolved_model_dir(), metrics)
    generation, ad = metrics["casr"]["generation"], metrics["casr"]["ad"]
    flip_rate = ad["flip_rate"] if ad else generation["flip_rate"]
    print(f"casr: {generation['generated']} generated samples ({generation['generated_share']:.1%} of the training prefixes), "
          f"flip rate {'n/a' if flip_rate is None else f'{flip_rate:.3f}'}")


if __name__ == "__main__":
    common.run(main)
