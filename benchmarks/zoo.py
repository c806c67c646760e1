"""The RecBole-protocol benchmark of the model zoo (``python -m benchmarks.zoo``, run from the repository root).

    python -m benchmarks.zoo --models nextitnet,sasrec,narm,stamp,gru4rec --seeds 1,2,3
    python -m benchmarks.zoo --models nextitnet --seeds 1 --epochs 2        # a smoke run
    python -m benchmarks.zoo --models nextitnet --recbole                   # + time one RecBole epoch here

Runs models x seeds sequentially under RecBole 1.2.1's protocol for sequential
models (leave-one-out by time, 50 items of context, full ranking over every
item with history items not masked, HR/NDCG/MRR@5/10/20, the epoch with the
best validation MRR@10 selected; see ``PROTOCOL``) and writes
``<results_dir>/<name>.md``, ``.json`` and ``.png``:

* accuracy: test metrics of the selected epoch, mean ± sd over seeds, beside
  RecBole's reference rows (``REFERENCE``) and the popularity baseline;
* time to target: the training wall time up to the validation-selected
  epoch (the per-epoch ``seconds`` of ``history.jsonl``, evaluation excluded);
* speed: trained positions per second beside the model's FLOPs per trained
  position (:func:`flop_estimate`), as a fraction of the machine's fp32 GEMM
  rate measured in the same run (:func:`measure_gemm`); full-ranking
  evaluation throughput in users per second;
* optionally the wall time of one RecBole NextItNet epoch on the same machine
  in the same run (:func:`time_recbole_epoch`, when ``recbole`` and ``torch``
  import);
* a PNG of validation MRR@10 against cumulative training time per model.

Each run trains in ``<work_dir>/<model>-<configuration>-<hash>/seed<seed>/``
(the hash is over the run's resolved settings); a run whose ``metrics.json``
exists is not rerun, and an interrupted run resumes from its checkpoints.

Command line: ``--data`` (default ``../shared/data/ml-100k/ml-100k.inter``,
never copied into the repository); ``--configuration fast`` (default: the
documented fast settings per model, ``FAST``) or ``default`` (each model's
faithful defaults); flags given explicitly (``--epochs``, ``--batch_size``,
``--dropout``, ...) apply to every model that has that setting; ``--set
model.field=value`` (or ``field=value``) sets anything else; runs live in
``--model_dir`` (default ``checkpoints/benchmark-<dataset>/``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import platform
import time

import numpy as np

if __package__ in (None, ""):  # ``python benchmarks/zoo.py``: the repository root on the path, as for ``-m``
    import sys

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.protocol import (  # noqa: E402, F401  (re-exported)
    AHEAD_MARGIN, CONFIGURATIONS, FAST, KS, ML100K, TUNED, configuration_settings, NEXTITNET_TARGET_SPEEDUP, PROTOCOL, REFERENCE, fmt, mean_sd,
)
from benchmarks.recbole_timing import recbole_layout, time_recbole_epoch  # noqa: E402, F401  (re-exported)
from benchmarks.report import plot_curves, results_markdown, write_results  # noqa: E402, F401  (re-exported)
from absl import flags  # noqa: E402

from peterrec import export, tuning  # noqa: E402
from peterrec.errors import ConfigError, DataError  # noqa: E402
from pipelines import flags as common  # noqa: E402

FLAGS = flags.FLAGS

# --- machine and model measurements --------------------------------------------------------------


def measure_gemm(n=2048, repeats=5):
    """The machine's fp32 GEMM rate: best of ``repeats`` numpy ``n x n`` matmuls, in GFLOP/s (2 n^3 FLOPs each)."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((n, n), dtype=np.float32), rng.standard_normal((n, n), dtype=np.float32)
    a @ b  # warm-up (thread pool start)
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 / best / 1e9


def flop_estimate(task):
    """FLOPs per trained position of a next-item task (full softmax), by weight counting.

    Every weight matrix (rank >= 2) of the network other than the embedding
    tables is used once per position in a multiply-add, so the forward pass
    costs ``2 x`` their size per position: for NextItNet ``2 x (sum over blocks
    of 2 convs x k C^2) + 2 C V`` (the C x V output layer). A tied output layer
    (scores = h E^T, no output matrix of its own) adds ``2 C V``. Training
    costs about 3x the forward pass (backward: two matmuls per forward one).
    Attention's L^2 terms, norms, biases and activations are left out.

    Returns:
        ``{"forward": F, "train": 3F, "matmul_weights": M, "output": 2CV-part, "tied_output": bool}``,
        or None for a model that is not a per-position sequence encoder (Caser scores whole windows).
    """
    backbone = task.backbone
    if not hasattr(backbone, "embedding_dim"):
        return None
    vocab = int(backbone.vocabulary_size)
    channels = int(getattr(backbone, "output_dim", backbone.embedding_dim))
    matrices = [w for w in task.weights if len(w.shape) >= 2 and not _is_embedding(w)]
    matmul = int(sum(np.prod(w.shape) for w in matrices))
    tied = not any(vocab in tuple(w.shape) for w in matrices)
    forward = 2 * matmul + (2 * channels * vocab if tied else 0)
    return {"forward": forward, "train": 3 * forward, "matmul_weights": matmul, "output": 2 * channels * vocab, "tied_output": tied}


def _is_embedding(weight):
    parts = (getattr(weight, "path", None) or weight.name).split("/")
    return parts[-1].startswith("embeddings") or any("embedding" in p for p in parts[-2:-1])


def computed_per_trained(cfg, set_dir):
    """Positions the network computes per trained position (overlapping windows, padding); None if unknown."""
    from peterrec.data import cloze, dataset, tfrecord

    if not all(hasattr(cfg, k) for k in ("max_len", "batch_size")):
        return None
    metadata = tfrecord.load_metadata(set_dir)
    if getattr(cfg, "backbone", None) == "grec":
        steps = cloze.cloze_steps_per_epoch(metadata, cfg.max_len, cfg.batch_size)
        targets = cloze.num_cloze_targets(metadata, cfg.max_len, cfg.mask_prob, cfg.max_predictions)
    elif hasattr(cfg, "stride"):
        steps = dataset.steps_per_epoch(metadata, cfg.max_len, cfg.stride, cfg.batch_size)
        targets = dataset.num_train_targets(metadata)
    else:
        return None
    return steps * cfg.batch_size * cfg.max_len / max(targets, 1)


# --- RecBole timing ------------------------------------------------------------------------------

# Runs in a separate interpreter (torch and TensorFlow stay out of each other's process). Prints one JSON line.
@dataclasses.dataclass
class BenchmarkSpec:
    """What to run: models x seeds on one data file, with per-model settings."""

    models: list
    data: str = ML100K
    seeds: tuple = (1, 2, 3)
    configuration: str = "fast"
    overrides: dict = dataclasses.field(default_factory=dict)  # settings for every model (e.g. epochs)
    model_overrides: dict = dataclasses.field(default_factory=dict)  # model -> settings
    work_dir: str | None = None  # default checkpoints/benchmark-<name>
    results_dir: str = os.path.join("benchmarks", "results")
    name: str | None = None  # default: the data file's stem (ml-100k)
    tfrecord_dir: str = "tfrecords"
    recbole: bool = False
    recbole_python: str | None = None
    merge: bool = False  # keep the other models' runs of the results file this spec writes
    verbose: int = 2

    def resolved_name(self):
        stem = os.path.splitext(os.path.basename(self.data.rstrip("/")))[0]
        return self.name or (stem if self.configuration == "fast" else f"{stem}-{self.configuration}")

    def resolved_work_dir(self):
        return self.work_dir or os.path.join("checkpoints", f"benchmark-{self.resolved_name()}")


def run_settings(spec: BenchmarkSpec, job):
    """The config overrides of one model's runs: protocol, configuration, then the caller's settings."""
    fields = {f.name for f in dataclasses.fields(job.config_class)}
    settings = {k: v for k, v in PROTOCOL.items() if k in fields and k not in job.own_defaults}
    settings |= configuration_settings(spec.configuration, job.name)
    settings |= {"tfrecord_dir": spec.tfrecord_dir, "verbose": spec.verbose}
    # settings for every model apply where the model has them (RecBole names such as embedding_size included)
    # typed as the model's field (``--set patience=5`` is the int 5: the same run directory as a configuration's 5)
    def typed(name, value, where):
        field = name if name in fields else tuning.RECBOLE_NAMES.get(name)
        return field in fields, tuning.coerce(job.config_class, field, value, where) if field in fields else value

    for name, value in spec.overrides.items():
        known, value = typed(name, value, f"--set {name}")
        if known:
            settings[name] = value
    for name, value in spec.model_overrides.get(job.name, {}).items():
        settings[name] = typed(name, value, f"--set {job.name}.{name}")[1]
    return settings


def run_dir(spec, job, settings):
    """``<work_dir>/<model>-<configuration>-<hash of the settings>``: other settings, other runs."""
    key = {k: v for k, v in settings.items() if k not in ("verbose", "tfrecord_dir")} | {"data": os.path.basename(spec.data)}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return os.path.join(spec.resolved_work_dir(), f"{job.name}-{spec.configuration}-{digest}")


def run_benchmark(spec: BenchmarkSpec):
    """Run (or reuse) every model x seed, then write the results; returns the results dict (also ``<name>.json``)."""
    if spec.configuration not in CONFIGURATIONS:
        raise ConfigError(f"--configuration: {spec.configuration!r} is not one of {', '.join(CONFIGURATIONS)}")
    if not os.path.isfile(spec.data):
        raise DataError(
            f"--data {spec.data}: no such file (the benchmark reads RecBole's ml-100k.inter, which is not shipped "
            "with peterrec: put it at ../shared/data/ml-100k/ml-100k.inter or pass --data)"
        )
    if not spec.models:
        raise ConfigError("--models: name at least one model")
    jobs = [tuning.model_job(m, "--models") for m in spec.models]  # unknown models fail before anything trains
    for name in spec.overrides:
        if not any(name in run_settings(spec, job) for job in jobs):
            raise ConfigError(f"{name}={spec.overrides[name]!r}: no model in --models has a setting {name!r}")
    plans = []
    for job in jobs:
        settings = run_settings(spec, job)
        for seed in spec.seeds:
            model_dir = os.path.join(run_dir(spec, job, settings), f"seed{seed}")
            cfg = job.config(settings | {"data": spec.data, "seed": seed, "model_dir": model_dir}, where=f"--models {job.name}")
            cfg.validate()
            plans.append((job, settings, seed, cfg))

    gemm = measure_gemm()
    print(f"fp32 GEMM 2048^2: {gemm:.1f} GFLOP/s")
    recbole = time_recbole_epoch(spec.data, spec.recbole_python) if spec.recbole else {"skipped": "not requested (--recbole)"}
    if spec.recbole:
        print("RecBole NextItNet epoch: " + (recbole["skipped"] if "skipped" in recbole else f"{recbole['seconds_per_epoch']:.1f} s"))

    runs = []
    for job, settings, seed, cfg in plans:
        metrics_path = os.path.join(cfg.model_dir, export.METRICS_FILE)
        if os.path.exists(metrics_path):
            print(f"{job.name} seed {seed}: done ({cfg.model_dir})")
        else:
            print(f"{job.name} seed {seed}: training in {cfg.model_dir}", flush=True)
            if job.clear_session:
                import keras

                keras.backend.clear_session()
            try:
                job.run(cfg)
            except ConfigError as err:
                if not tuning.stopped_on_fault(cfg.model_dir):
                    raise
                print(f"{job.name} seed {seed}: {err}")  # a diverged run is a result: reported as such
        runs.append(run_record(job.name, seed, settings, cfg, metrics_path))
        runs[-1]["gemm_gflops"] = gemm
    results = summarize(spec, kept_runs(spec) + runs, gemm, recbole)
    write_results(results, spec.results_dir, spec.resolved_name())
    return results


def kept_runs(spec):
    """With ``spec.merge``: the runs of models not in ``spec.models`` from the results file this spec writes
    (an earlier invocation with the same configuration), each keeping the GEMM rate measured in its own run."""
    path = os.path.join(spec.results_dir, f"{spec.resolved_name()}.json")
    if not spec.merge or not os.path.exists(path):
        return []
    with open(path) as f:
        previous = json.load(f)
    if previous.get("configuration") != spec.configuration:
        raise ConfigError(f"--merge: {path} holds configuration {previous.get('configuration')!r}, not {spec.configuration!r}")
    return [r | {"gemm_gflops": r.get("gemm_gflops", previous.get("gemm_gflops"))}
            for r in previous["runs"] if r["model"] not in spec.models]


def run_record(model, seed, settings, cfg, metrics_path):
    """One finished run: its metrics, history, time to the selected epoch and FLOP estimate."""
    with open(metrics_path) as f:
        metrics = json.load(f)
    history = read_history(os.path.join(cfg.model_dir, "history.jsonl"))
    selected = metrics.get("selected_epoch") or 0
    record = {
        "model": model,
        "seed": seed,
        "settings": json.loads(json.dumps(settings, default=str)),
        "model_dir": cfg.model_dir,
        "valid": metrics["valid"],
        "test": metrics["test"],
        "popularity": metrics["popularity"]["test"],
        "selected_epoch": selected,
        "epochs_run": metrics.get("epochs_run"),
        "stopped_on_nan": metrics.get("stopped_on_nan", False),
        "train_wall_seconds": metrics["train_wall_seconds"],
        "time_to_selected_seconds": time_to_epoch(history, selected),
        "trained_positions_per_second": metrics["trained_positions_per_second"],
        "users_per_second_eval": metrics.get("users_per_second_eval"),
        "total_params": metrics.get("total_params"),
        "num_items": metrics.get("data", {}).get("vocab_size"),
        "history": [{k: row.get(k) for k in ("epoch", "seconds", "loss", "val_mrr@10", "val_hr@10", "val_ndcg@10")} for row in history],
        "flops": None,
        "computed_per_trained": None,
    }
    if metrics.get("export_dir"):
        from peterrec.export import load_export

        record["flops"] = flop_estimate(load_export(metrics["export_dir"]).task)
    set_dir = metrics.get("data", {}).get("set_dir")
    if set_dir and os.path.isdir(set_dir):
        record["computed_per_trained"] = computed_per_trained(cfg, set_dir)
    return record


def read_history(path):
    """The per-epoch rows of a run's history.jsonl (the last row per epoch, in epoch order)."""
    if not os.path.exists(path):
        return []
    rows = {}
    with open(path) as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                rows[row["epoch"]] = row
    return [rows[e] for e in sorted(rows)]


def time_to_epoch(history, epoch):
    """Training seconds of epochs 1..epoch (evaluation excluded)."""
    return round(sum(row.get("seconds", 0.0) for row in history if row["epoch"] <= epoch), 2)


# --- summaries ----------------------------------------------------------------------------------


def summarize(spec, runs, gemm, recbole):
    """The results dict: runs, per-model means and the checks against RecBole's reference."""
    models = list(dict.fromkeys(r["model"] for r in runs))
    summary = {}
    for model in models:
        rows = [r for r in runs if r["model"] == model]
        flops = rows[0]["flops"]
        pps = mean_sd([r["trained_positions_per_second"] for r in rows])[0]
        entry = {
            "seeds": [r["seed"] for r in rows],
            "test": {k: mean_sd([r["test"][k] for r in rows]) for k in rows[0]["test"] if k != "users"},
            "valid_mrr@10": mean_sd([r["valid"]["mrr@10"] for r in rows]),
            "time_to_selected_seconds": mean_sd([r["time_to_selected_seconds"] for r in rows]),
            "train_wall_seconds": mean_sd([r["train_wall_seconds"] for r in rows]),
            "trained_positions_per_second": pps,
            "users_per_second_eval": mean_sd([r["users_per_second_eval"] for r in rows])[0],
            "train_flops_per_position": flops["train"] if flops else None,
        }
        if flops and pps:
            entry["useful_gflops"] = pps * flops["train"] / 1e9
            entry["useful_fraction_of_gemm"] = entry["useful_gflops"] / mean_sd([r.get("gemm_gflops") or gemm for r in rows])[0]
        summary[model] = entry
    return {
        "name": spec.resolved_name(),
        "data": spec.data,
        "protocol": PROTOCOL,
        "configuration": spec.configuration,
        "fast_settings": FAST,
        "tuned_settings": TUNED,
        "seeds": list(spec.seeds),
        "gemm_gflops": gemm,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "recbole_epoch": recbole,
        "reference": REFERENCE,
        "summary": summary,
        "checks": checks(summary, recbole),
        "runs": runs,
    }


def checks(summary, recbole):
    """The issue's targets, one dict per check (``ok`` None where not measurable)."""
    out = []
    for model, s in summary.items():
        ref = REFERENCE.get(model)
        if ref is None:
            continue
        time_taken = s["time_to_selected_seconds"][0]
        hr = s["test"].get("hr@10", (None, None))[0]
        out.append({
            "check": f"{model}: test HR@10 >= RecBole's {ref['hr@10']} within RecBole's {ref['train_seconds']:.0f} s",
            "value": hr, "seconds": time_taken,
            "ok": None if hr is None else bool(hr >= ref["hr@10"] and time_taken <= ref["train_seconds"]),
        })
        for metric in ("hr@10", "ndcg@10"):  # issue #17: ahead of RecBole by AHEAD_MARGIN (about 2 SE of a 5-seed mean)
            value = s["test"].get(metric, (None, None))[0]
            target = ref[metric] + AHEAD_MARGIN
            out.append({
                "check": f"{model}: test {metric.upper()} >= RecBole's {ref[metric]} + {AHEAD_MARGIN} = {target:.4f} within RecBole's "
                f"{ref['train_seconds']:.0f} s",
                "value": value, "seconds": time_taken,
                "ok": None if value is None else bool(value >= target and time_taken <= ref["train_seconds"]),
            })
        if model == "nextitnet":
            ndcg = s["test"].get("ndcg@10", (None, None))[0]
            budget = ref["train_seconds"] / NEXTITNET_TARGET_SPEEDUP
            entry = {
                "check": f"nextitnet: test NDCG@10 >= RecBole's 7-epoch {ref['ndcg@10']} within 1/{NEXTITNET_TARGET_SPEEDUP} "
                f"of RecBole's {ref['train_seconds']:.0f} s ({budget:.1f} s)",
                "value": ndcg, "seconds": time_taken, "speedup_vs_reference": ref["train_seconds"] / max(time_taken, 1e-9),
                "ok": None if ndcg is None else bool(ndcg >= ref["ndcg@10"] and time_taken <= budget),
            }
            if "seconds_per_epoch" in recbole:
                measured = ref["epochs"] * recbole["seconds_per_epoch"]
                entry["recbole_7_epochs_measured_seconds"] = measured
                entry["speedup_vs_measured"] = measured / max(time_taken, 1e-9)
            out.append(entry)
    return out


# --- the command line (python -m benchmarks.zoo) -------------------------------------------------


def define_flags():
    """The benchmark's flags (defined when it runs, so importing this module defines none)."""
    common.define_any_model_flags()
    flags.DEFINE_list("models", ["nextitnet"], "Models to run, in order (pretraining backbones or registered models).")
    flags.DEFINE_list("seeds", ["1", "2", "3"], "Seeds; accuracy is reported as mean ± sd over them.")
    flags.DEFINE_enum("configuration", "fast", list(CONFIGURATIONS), "fast: the documented fast settings per model; default: "
                      "faithful defaults; tuned: fast + the validation-selected settings of benchmarks.protocol.TUNED "
                      "(results in <data>-<configuration>.md).")
    flags.DEFINE_multi_string("set", [], "model.field=value or field=value: any other setting (repeatable).")
    flags.DEFINE_string("results_dir", "benchmarks/results", "Where <name>.md/.json/.png are written.")
    flags.DEFINE_string("name", None, "Results file name (default: the data file's stem, e.g. ml-100k).")
    flags.DEFINE_bool("recbole", False, "Also time one RecBole 1.2.1 NextItNet epoch on the same data (needs recbole + torch).")
    flags.DEFINE_bool("merge", False, "Keep the rows of models not in --models from the results file this run writes "
                      "(an earlier run of the same --configuration and --name), beside the ones run now.")
    flags.DEFINE_string("recbole_python", None, "Python interpreter that has recbole and torch (default: this one).")
    FLAGS.set_default("data", ML100K)


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
    jobs = [tuning.model_job(name, "--models") for name in FLAGS.models]
    shared, per_model = parse_set(FLAGS.set, FLAGS.models)
    spec = BenchmarkSpec(
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
        merge=FLAGS.merge,
        verbose=common.common_kwargs(["verbose"])["verbose"],
    )
    results = run_benchmark(spec)
    print(results_markdown(results))


if __name__ == "__main__":
    define_flags()
    common.run(main)
