"""The RecBole-protocol benchmark (``python -m pipelines.benchmark``).

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
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from peterrec import export, io, tuning
from peterrec.errors import ConfigError, DataError
from peterrec.features import NUM_RESERVED

ML100K = os.path.join("..", "shared", "data", "ml-100k", "ml-100k.inter")
KS = (5, 10, 20)
# RecBole 1.2.1's defaults for sequential models, as peterrec settings.
PROTOCOL = {"split": "loo", "max_len": 50, "eval_protocol": "full", "min_seq_len": 3, "k_core": 0, "dedup": False, "rating_threshold": None}
# RecBole 1.2.1 reference runs on a 2-core CPU (batch 256, Adam 1e-3, embedding 64; /work/shared/docs/benchmark_protocol.md).
# train_seconds: the reference run's training time (NextItNet: 486 s measured; the others epochs x s/epoch).
REFERENCE = {
    "nextitnet": {"label": "NextItNet", "epochs": 7, "best_epoch": 6, "hr@10": 0.1220, "ndcg@10": 0.0552, "mrr@10": 0.0353,
                  "seconds_per_epoch": 68.6, "samples_per_second": 1417, "peak_rss_mib": 1134, "train_seconds": 486.0},
    "sasrec": {"label": "SASRec", "epochs": 5, "best_epoch": 5, "hr@10": 0.1294, "ndcg@10": 0.0623, "mrr@10": 0.0422,
               "seconds_per_epoch": 101.3, "samples_per_second": 959, "peak_rss_mib": 1231},
    "caser": {"label": "Caser (L=5)", "epochs": 20, "best_epoch": 14, "hr@10": 0.1230, "ndcg@10": 0.0581, "mrr@10": 0.0389,
              "seconds_per_epoch": 6.0, "samples_per_second": 16283, "peak_rss_mib": 526},
    "narm": {"label": "NARM", "epochs": 8, "best_epoch": 7, "hr@10": 0.1156, "ndcg@10": 0.0562, "mrr@10": 0.0385,
             "seconds_per_epoch": 71.8, "samples_per_second": 1354, "peak_rss_mib": 911},
    "stamp": {"label": "STAMP", "epochs": 20, "best_epoch": 10, "hr@10": 0.1145, "ndcg@10": 0.0542, "mrr@10": 0.0362,
              "seconds_per_epoch": 11.0, "samples_per_second": 8841, "peak_rss_mib": 768},
    "gru4rec": {"label": "GRU4Rec", "epochs": 8, "best_epoch": 5, "hr@10": 0.1209, "ndcg@10": 0.0571, "mrr@10": 0.0380,
                "seconds_per_epoch": 65.8, "samples_per_second": 1476, "peak_rss_mib": 824},
}
for _ref in REFERENCE.values():
    _ref.setdefault("train_seconds", round(_ref["epochs"] * _ref["seconds_per_epoch"], 1))
# The "fast" configuration: deliberate deviations from each model's faithful default, chosen for accuracy per
# second on ml-100k (docs/fidelity.md). NextItNet: dropout 0.2 on the input embedding and residual branches
# (the original has none; ml-100k overfits after ~5 epochs without it), overlapping windows (stride 20: every
# target keeps >= 30 items of context; 2.1 computed positions per trained one instead of 3.6 at stride 10, with
# the same accuracy: test NDCG@10 0.0566 +- 0.0036 vs 0.0554 +- 0.0022 over 3 seeds), XLA.
FAST = {
    "nextitnet": {"dropout": 0.2, "stride": 20, "jit_compile": True},
    # the attention/RNN models: batches of 16 windows (~800 trained positions, ~440 updates per ml-100k epoch,
    # about RecBole's ~380 at 256 samples); with 64 windows (110 updates per epoch) they are far from converged
    # when the noisy validation MRR@10 stops them (SASRec seed 1: valid HR@10 0.139 vs 0.126 after 9 epochs)
    **{model: {"batch_size": 16} for model in ("sasrec", "stamp", "gru4rec", "narm")},
    # Caser as RecBole 1.2.1 runs it (the reference row): tied output, CE over all items, one target, emb 64,
    # dropout 0.4, nv 4, nh 8, batch 256 (the seed's untied BCE variant is --configuration default)
    "caser": {"tied": True, "T": 1, "embedding_dim": 64, "dropout": 0.4, "nv": 4, "nh": 8, "batch_size": 256},
}
CONFIGURATIONS = ("fast", "default")
NEXTITNET_TARGET_SPEEDUP = 10  # the issue: RecBole's 7-epoch test NDCG@10 in <= 1/10 of its training time


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
    from peterrec.data import dataset, tfrecord

    if not all(hasattr(cfg, k) for k in ("max_len", "batch_size")):
        return None
    metadata = tfrecord.load_metadata(set_dir)
    if getattr(cfg, "backbone", None) == "grec":
        steps = dataset.cloze_steps_per_epoch(metadata, cfg.max_len, cfg.batch_size)
        targets = dataset.num_cloze_targets(metadata, cfg.max_len, cfg.mask_prob, cfg.max_predictions)
    elif hasattr(cfg, "stride"):
        steps = dataset.steps_per_epoch(metadata, cfg.max_len, cfg.stride, cfg.batch_size)
        targets = dataset.num_train_targets(metadata)
    else:
        return None
    return steps * cfg.batch_size * cfg.max_len / max(targets, 1)


# --- RecBole timing ------------------------------------------------------------------------------

# Runs in a separate interpreter (torch and TensorFlow stay out of each other's process). Prints one JSON line.
_RECBOLE_CHILD = r'''
import json, os, resource, sys, time
args = json.loads(sys.argv[1])
try:
    import torch
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.model.sequential_recommender import NextItNet
    from recbole.trainer import Trainer
    from recbole.utils import init_seed
except ImportError as err:
    print(json.dumps({"skipped": f"cannot import recbole/torch ({err})"}))
    sys.exit(0)
config = Config(model="NextItNet", dataset=args["dataset"], config_dict={
    "data_path": args["data_path"], "checkpoint_dir": args["checkpoint_dir"],
    "USER_ID_FIELD": "user_id", "ITEM_ID_FIELD": "item_id", "TIME_FIELD": "timestamp",
    "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
    "MAX_ITEM_LIST_LENGTH": 50, "train_batch_size": 256, "learning_rate": 0.001, "embedding_size": 64,
    "loss_type": "CE", "train_neg_sample_args": None, "epochs": 1,
    "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full", "group_by": "user"},
    "metrics": ["Hit", "NDCG", "MRR"], "topk": [10], "valid_metric": "MRR@10",
    "device": "cpu", "use_gpu": False, "show_progress": False, "seed": args["seed"], "reproducibility": True,
})
init_seed(config["seed"], config["reproducibility"])
dataset = create_dataset(config)
train_data, valid_data, test_data = data_preparation(config, dataset)
model = NextItNet(config, train_data.dataset).to(config["device"])
trainer = Trainer(config, model)
start, cpu_start = time.perf_counter(), time.process_time()
loss = trainer._train_epoch(train_data, 0, show_progress=False)
seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
loss = sum(loss) if isinstance(loss, tuple) else loss
print(json.dumps({
    "seconds_per_epoch": seconds, "cpu_seconds_per_epoch": cpu_seconds, "train_samples": len(train_data.dataset), "loss": float(loss),
    "samples_per_second": len(train_data.dataset) / seconds, "torch": torch.__version__,
    "torch_threads": torch.get_num_threads(), "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
}))
'''


def recbole_layout(data):
    """``(data_path, dataset)`` for RecBole, which reads ``<data_path>/<dataset>/<dataset>.inter``."""
    path = os.path.abspath(data)
    dataset = os.path.splitext(os.path.basename(path))[0]
    if os.path.basename(os.path.dirname(path)) != dataset or not path.endswith(".inter"):
        raise ConfigError(f"--recbole: RecBole reads <dir>/<name>/<name>.inter; {data} is not laid out that way")
    return os.path.dirname(os.path.dirname(path)), dataset


def time_recbole_epoch(data, python=None, seed=1, timeout=7200):
    """Wall time of one RecBole 1.2.1 NextItNet training epoch on ``data`` (batch 256, Adam 1e-3, embedding 64).

    Runs in a child interpreter (``python``, default this one). Returns its
    measurements, or ``{"skipped": reason}`` when recbole or torch do not import
    there (``pip install --no-deps recbole==1.2.1`` plus torch CPU). A child that
    fails otherwise raises ConfigError with its last output lines.
    """
    import importlib.util

    python = python or sys.executable
    if python == sys.executable and not all(importlib.util.find_spec(m) for m in ("recbole", "torch")):
        return {"skipped": "recbole or torch is not installed (pip install --no-deps recbole==1.2.1 plus torch CPU)"}
    data_path, dataset = recbole_layout(data)
    with tempfile.TemporaryDirectory(prefix="recbole-") as work:  # RecBole writes log/ and saved/ into its cwd
        args = {"data_path": data_path, "dataset": dataset, "seed": seed, "checkpoint_dir": os.path.join(work, "saved")}
        try:
            proc = subprocess.run([python, "-c", _RECBOLE_CHILD, json.dumps(args)], cwd=work, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as err:
            raise ConfigError(f"--recbole: one RecBole epoch did not finish within {timeout} s") from err
        except OSError as err:
            raise ConfigError(f"--recbole_python {python}: cannot run ({err.strerror or err})") from err
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
        raise ConfigError(f"--recbole: the RecBole epoch failed (exit {proc.returncode}):\n{tail}")
    return json.loads(lines[-1])


# --- running ------------------------------------------------------------------------------------


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
    verbose: int = 2

    def resolved_name(self):
        return self.name or os.path.splitext(os.path.basename(self.data.rstrip("/")))[0]

    def resolved_work_dir(self):
        return self.work_dir or os.path.join("checkpoints", f"benchmark-{self.resolved_name()}")


def run_settings(spec: BenchmarkSpec, job):
    """The config overrides of one model's runs: protocol, configuration, then the caller's settings."""
    fields = {f.name for f in dataclasses.fields(job.config_class)}
    settings = {k: v for k, v in PROTOCOL.items() if k in fields and k not in job.own_defaults}
    if spec.configuration == "fast":
        settings |= FAST.get(job.name, {})
    settings |= {"tfrecord_dir": spec.tfrecord_dir, "verbose": spec.verbose}
    # settings for every model apply where the model has them (RecBole names such as embedding_size included)
    for name, value in spec.overrides.items():
        if name in fields or tuning.RECBOLE_NAMES.get(name) in fields:
            settings[name] = value
    settings |= dict(spec.model_overrides.get(job.name, {}))
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
    results = summarize(spec, runs, gemm, recbole)
    write_results(results, spec.results_dir, spec.resolved_name())
    return results


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


def mean_sd(values):
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def fmt(values, digits=4):
    m, s = mean_sd(values)
    return "—" if m is None else f"{m:.{digits}f} ± {s:.{digits}f}"


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
            entry["useful_fraction_of_gemm"] = entry["useful_gflops"] / gemm
        summary[model] = entry
    return {
        "name": spec.resolved_name(),
        "data": spec.data,
        "protocol": PROTOCOL,
        "configuration": spec.configuration,
        "fast_settings": FAST,
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


def write_results(results, results_dir, name):
    """``<name>.json``, ``<name>.md`` and ``<name>.png`` in ``results_dir`` (each written atomically)."""
    os.makedirs(results_dir, exist_ok=True)
    io.write_json(os.path.join(results_dir, f"{name}.json"), results)
    tuning.write_text(os.path.join(results_dir, f"{name}.md"), results_markdown(results))
    plot_curves(results["runs"], os.path.join(results_dir, f"{name}.png"), title=name)


def _label(model):
    return REFERENCE.get(model, {}).get("label", model)


def results_markdown(results):
    """The results page: accuracy beside RecBole's reference, all cutoffs, speed, checks."""
    summary, runs, gemm = results["summary"], results["runs"], results["gemm_gflops"]
    seeds = ",".join(str(s) for s in results["seeds"])
    items = next((r["num_items"] for r in runs if r.get("num_items")), None)
    max_len = next((r["settings"]["max_len"] for r in runs if "max_len" in r["settings"]), results["protocol"]["max_len"])
    lines = [
        f"# Benchmark: {results['name']} (RecBole protocol)",
        "",
        f"Data `{results['data']}`; leave-one-out by time, {max_len} items of context, full "
        f"ranking over all {items - NUM_RESERVED if items else '?'} items (history not masked), the epoch with the best validation "
        f"MRR@10 selected and its test metrics reported; mean ± sd over seeds {seeds}. Configuration: "
        f"**{results['configuration']}** (settings below). Machine: {results['machine']['cpus']} CPUs, fp32 GEMM (numpy "
        f"2048²) **{gemm:.1f} GFLOP/s** measured in this run. Time to selected epoch = training wall time (evaluation "
        "excluded) up to the validation-selected epoch.",
        "",
        "| model | test HR@10 | test NDCG@10 | test MRR@10 | epochs (selected), per seed | time to selected epoch (s) | train time (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for model, s in summary.items():
        rows = [r for r in runs if r["model"] == model]
        epochs = f"{','.join(str(r['epochs_run']) for r in rows)} ({','.join(str(r['selected_epoch']) for r in rows)})"
        diverged = sum(bool(r["stopped_on_nan"]) for r in rows)
        note = f", {diverged} diverged" if diverged else ""
        lines.append(
            f"| {_label(model)} (peterrec, {results['configuration']}{note}) | {fmt([r['test']['hr@10'] for r in rows])} "
            f"| {fmt([r['test']['ndcg@10'] for r in rows])} | {fmt([r['test']['mrr@10'] for r in rows])} | {epochs} "
            f"| {fmt([r['time_to_selected_seconds'] for r in rows], 1)} | {fmt([r['train_wall_seconds'] for r in rows], 1)} |"
        )
        ref = REFERENCE.get(model)
        if ref:
            lines.append(
                f"| {ref['label']} (RecBole 1.2.1, reference) | {ref['hr@10']:.4f} | {ref['ndcg@10']:.4f} | {ref['mrr@10']:.4f} "
                f"| {ref['epochs']} ({ref['best_epoch']}) | {ref['best_epoch'] * ref['seconds_per_epoch']:.0f} | {ref['train_seconds']:.0f} |"
            )
    if runs:
        lines.append(
            f"| popularity | {fmt([r['popularity']['hr@10'] for r in runs])} | {fmt([r['popularity']['ndcg@10'] for r in runs])} "
            f"| {fmt([r['popularity']['mrr@10'] for r in runs])} | — | — | — |"
        )
    lines += ["", "All cutoffs (test, mean over seeds):", ""]
    names = [f"{m}@{k}" for k in KS for m in ("hr", "ndcg", "mrr")]
    lines += ["| model | " + " | ".join(n.upper() for n in names) + " |",
              "|---|" + "---|" * len(names)]
    for model, s in summary.items():
        lines.append(f"| {_label(model)} | " + " | ".join(f"{s['test'][n][0]:.4f}" if n in s["test"] else "—" for n in names) + " |")

    lines += [
        "", "Speed (train FLOPs per trained position: see `peterrec.benchmarking.flop_estimate`; useful GFLOP/s = positions/s × "
        "FLOPs per position; computed/trained = positions the network evaluates per position that carries loss, from "
        "overlapping windows and padding):", "",
        "| model | trained positions/s | train MFLOP / position | useful GFLOP/s | of GEMM | computed / trained positions "
        "| eval users/s | parameters |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for model, s in summary.items():
        rows = [r for r in runs if r["model"] == model]
        flops, ratio = s["train_flops_per_position"], rows[0]["computed_per_trained"]
        cells = [f"{s['trained_positions_per_second']:,.0f}", "—", "—", "—", "—"]
        if flops is not None:
            cells[1:4] = [f"{flops / 1e6:.3g}", f"{s['useful_gflops']:.3g}", f"{100 * s['useful_fraction_of_gemm']:.3g} %"]
        if ratio is not None:
            cells[4] = f"{ratio:.2f}"
        cells += [f"{s['users_per_second_eval']:,.0f}" if s["users_per_second_eval"] else "—", f"{rows[0]['total_params'] or 0:,}"]
        lines.append(f"| {_label(model)} | " + " | ".join(cells) + " |")
        ref = REFERENCE.get(model)
        if ref:
            lines.append(f"| {ref['label']} (RecBole reference) | {ref['samples_per_second']:,} samples/s | — | — | — | — | — | — |")
    rb = results["recbole_epoch"]
    lines += ["", "RecBole NextItNet epoch on this machine in this run: " + (
        f"skipped ({rb['skipped']})" if "skipped" in rb else
        f"{rb['seconds_per_epoch']:.1f} s ({rb.get('cpu_seconds_per_epoch', float('nan')):.0f} CPU s; {rb['samples_per_second']:,.0f} "
        f"samples/s, torch {rb['torch']}, {rb['torch_threads']} threads)"
    ) + "."]
    lines += ["", "Checks:", ""]
    for c in results["checks"]:
        status = "n/a" if c["ok"] is None else ("ok" if c["ok"] else "NOT met")
        value = "—" if c["value"] is None else f"{c['value']:.4f}"
        extra = ""
        if "speedup_vs_reference" in c:
            extra = f"; {c['speedup_vs_reference']:.1f}x less time than the reference run"
            if "speedup_vs_measured" in c:
                measured = c["recbole_7_epochs_measured_seconds"]
                extra += f", {c['speedup_vs_measured']:.1f}x less than 7 RecBole epochs measured here ({measured:.0f} s)"
        lines.append(f"- {c['check']}: {value} in {c['seconds']:.1f} s — **{status}**{extra}")
    lines += ["", "Settings per model (on top of each config's defaults):", "", "| model | settings |", "|---|---|"]
    for model in summary:
        settings = next(r["settings"] for r in runs if r["model"] == model)
        shown = {k: v for k, v in settings.items() if k not in ("verbose", "tfrecord_dir")}
        lines.append(f"| {_label(model)} | `{json.dumps(shown, sort_keys=True)}` |")
    return "\n".join(lines) + "\n"


def plot_curves(runs, path, title=""):
    """Validation MRR@10 against cumulative training time, one line per run (colour per model)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    colours = {}
    for run in runs:
        history = [row for row in run["history"] if row.get("val_mrr@10") is not None]
        if not history:
            continue
        colour = colours.setdefault(run["model"], f"C{len(colours)}")
        x = np.cumsum([row.get("seconds") or 0.0 for row in history])
        y = [row["val_mrr@10"] for row in history]
        first = sum(r["model"] == run["model"] for r in runs[: runs.index(run)]) == 0
        ax.plot(x, y, marker=".", color=colour, alpha=0.8, label=_label(run["model"]) if first else None)
        selected = [i for i, row in enumerate(history) if row["epoch"] == run["selected_epoch"]]
        if selected:
            ax.plot([x[selected[0]]], [y[selected[0]]], marker="o", markersize=8, fillstyle="none", color=colour)
    ax.set(xlabel="cumulative training wall time (s)", ylabel="validation MRR@10", title=f"{title}: validation MRR@10 vs training time")
    if colours:
        ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
