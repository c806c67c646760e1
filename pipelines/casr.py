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
common.define_casr_flags()
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
