"""Benchmark models under the RecBole protocol (ml-100k by default) against RecBole's reference numbers.

    python -m pipelines.benchmark --models nextitnet,sasrec,narm,stamp,gru4rec --seeds 1,2,3
    python -m pipelines.benchmark --models nextitnet --seeds 1 --epochs 2        # a smoke run
    python -m pipelines.benchmark --models nextitnet --recbole                   # + time one RecBole epoch here

Reads --data (default ../shared/data/ml-100k/ml-100k.inter, RecBole's atomic
file; it is never copied into the repository), trains every model x seed
sequentially under the protocol of peterrec/benchmarking.py (leave-one-out,
50 items of context, full ranking, model selection on validation MRR@10) and
writes benchmarks/results/<dataset>.md, .json and .png (validation MRR@10 vs
training time). --configuration fast (default) applies the documented fast
settings per model (benchmarking.FAST); default keeps each model's faithful
defaults. Flags given explicitly (--epochs, --batch_size, --dropout, ...) apply
to every model that has that setting; --set model.field=value (or
field=value) sets anything else. Runs live in --model_dir (default
checkpoints/benchmark-<dataset>/); a finished run is not rerun.
"""

import dataclasses

from absl import flags

from pipelines import flags as common

common.define_any_model_flags()
flags.DEFINE_list("models", ["nextitnet"], "Models to run, in order (pretraining backbones or registered models).")
flags.DEFINE_list("seeds", ["1", "2", "3"], "Seeds; accuracy is reported as mean ± sd over them.")
flags.DEFINE_enum("configuration", "fast", ["fast", "default"], "fast: the documented fast settings per model; default: faithful defaults.")
flags.DEFINE_multi_string("set", [], "model.field=value or field=value: any other setting (repeatable).")
flags.DEFINE_string("results_dir", "benchmarks/results", "Where <name>.md/.json/.png are written.")
flags.DEFINE_string("name", None, "Results file name (default: the data file's stem, e.g. ml-100k).")
flags.DEFINE_bool("recbole", False, "Also time one RecBole 1.2.1 NextItNet epoch on the same data (needs recbole + torch).")
flags.DEFINE_string("recbole_python", None, "Python interpreter that has recbole and torch (default: this one).")
FLAGS = flags.FLAGS
FLAGS.set_default("data", "../shared/data/ml-100k/ml-100k.inter")
# flags that describe the benchmark itself rather than a model setting
NOT_SETTINGS = {"data", "model_dir", "seed", "verbose", "tfrecord_dir"}


def explicit_settings(jobs):
    """Explicitly given flags that name a setting of at least one model's config."""
    fields = set().union(*({f.name for f in dataclasses.fields(job.config_class)} for job in jobs))
    names = [name for name in sorted(fields - NOT_SETTINGS) if name in FLAGS and FLAGS[name].present]
    out = {name: FLAGS[name].value for name in names}
    if "dilations" in out:
        out["dilations"] = tuple(common.int_list(FLAGS.dilations, "dilations"))
    return out


def parse_set(values, models):
    """``--set`` values as (settings for every model, {model: settings})."""
    from peterrec.errors import ConfigError

    shared, per_model = {}, {}
    for text in values:
        key, sep, value = text.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {text!r}: expected model.field=value or field=value")
        model, dot, field = key.rpartition(".")
        if dot and model not in models:
            raise ConfigError(f"--set {text!r}: {model!r} is not in --models ({','.join(models)})")
        (per_model.setdefault(model, {}) if dot else shared)[field] = value
    return shared, per_model


def main(argv):
    del argv
    from peterrec import benchmarking, tuning

    jobs = [tuning.model_job(name, "--models") for name in FLAGS.models]
    shared, per_model = parse_set(FLAGS.set, FLAGS.models)
    spec = benchmarking.BenchmarkSpec(
        models=list(FLAGS.models),
        data=FLAGS.data,
        seeds=tuple(common.int_list(FLAGS.seeds, "seeds")),
        configuration=FLAGS.configuration,
        overrides=explicit_settings(jobs) | shared,
        model_overrides=per_model,
        work_dir=FLAGS.model_dir,
        results_dir=FLAGS.results_dir,
        name=FLAGS.name,
        tfrecord_dir=FLAGS.tfrecord_dir,
        recbole=FLAGS.recbole,
        recbole_python=FLAGS.recbole_python,
        verbose=common.common_kwargs(["verbose"])["verbose"],
    )
    results = benchmarking.run_benchmark(spec)
    print(benchmarking.results_markdown(results))


if __name__ == "__main__":
    common.run(main)
