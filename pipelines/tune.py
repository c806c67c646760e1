"""Hyper-parameter search over a RecBole / CASR ``hyper.test`` file (Optuna TPE).

    python -m pipelines.tune --model nextitnet --params_file benchmarks/hyper.test --trials 20

Each line of the params file is ``name loguniform a,b`` (exp of a uniform draw
in [a, b]), ``name uniform a,b``, ``name quniform a,b,q`` or ``name choice
[...]`` (a Python literal list); see peterrec/tuning.py. The other settings
come from the usual flags (--data, --epochs, --embedding_dim, ...); a searched
parameter overrides its flag. Every trial trains in
<model_dir>/trial-NNN/ (default model_dir: checkpoints/tune-<model>/) and is
scored by its validation MRR@10; trials.json and results.md (one row per
trial, the best marked) are rewritten after each trial. --trial_seeds 1,2,3
trains every trial once per seed (``trial-NNN-seed-S/``) and scores it by the
mean over them. Re-running the same
command resumes: finished trials are kept, an interrupted one continues from
its checkpoints, and --trials can be raised to search further.
"""

import dataclasses
import os

from absl import flags

from pipelines import flags as common

common.define_any_model_flags()
flags.DEFINE_string("model", "nextitnet", "Model to tune (a pretraining backbone or a registered model).")
flags.DEFINE_string("params_file", "benchmarks/hyper.test", "Search space: one 'name distribution arguments' line per parameter.")
flags.DEFINE_list("trial_seeds", None, "Training seeds of every trial, scored by the mean validation MRR@10 over them "
                  "(default: --seed; more seeds can be added to a finished search, only the missing runs train).")
flags.DEFINE_integer("trials", 10, "Total number of trials (finished ones in --model_dir count).", lower_bound=1)
FLAGS = flags.FLAGS


def base_overrides(job):
    """The settings every trial shares: the flags that name a field of the model's config (an unset flag
    leaves the model's own defaults, ``job.own_defaults``, alone)."""
    names = [
        f.name for f in dataclasses.fields(job.config_class)
        if f.name in FLAGS and f.name not in ("model_dir", "seed") and (FLAGS[f.name].present or f.name not in job.own_defaults)
    ]
    out = common.common_kwargs(names)
    if "dilations" in out:
        out["dilations"] = tuple(common.int_list(FLAGS.dilations, "dilations"))
    return out


def main(argv):
    del argv
    from peterrec import tuning

    specs = tuning.parse_params_file(FLAGS.params_file)  # a malformed file fails before TensorFlow loads
    job = tuning.model_job(FLAGS.model)
    tuning.check_specs(specs, job)
    model_dir = FLAGS.model_dir or os.path.join("checkpoints", f"tune-{FLAGS.model}")
    print(f"Searching {len(specs)} parameters for {FLAGS.model} ({FLAGS.trials} trials, objective valid MRR@10):")
    for line in tuning.describe_specs(specs):
        print(f"  {line}")
    trial_seeds = common.int_list(FLAGS.trial_seeds, "trial_seeds") if FLAGS.trial_seeds else None
    records = tuning.tune(FLAGS.model, specs, base_overrides(job), FLAGS.trials, model_dir, FLAGS.seed, trial_seeds=trial_seeds)
    best = tuning.best_trial(records)
    print(f"results: {os.path.join(model_dir, tuning.RESULTS_FILE)}")
    if best is not None:
        print(f"best: trial {best['number']} valid MRR@10 {best['value']:.4f} ({best['model_dir']})")


if __name__ == "__main__":
    common.run(main)
