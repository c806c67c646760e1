"""Benchmark: CASR augmentation (heuristic, learning, ad) vs the anchor alone, paired over seeds.

    python benchmarks/casr.py [--data ../shared/data/ml-100k/ml-100k.inter] [--seeds 1,2,3,4,5]
                              [--pairs narm:stamp] [--methods heuristic,learning,ad] [--work_dir /tmp/bench-casr]
                              [--data_name default] (the embedded default data: --data Data/synthetic/source.inter)

For each seed and sampler:anchor pair: trains the sampler (``pipelines.train``'s
library call), the anchor alone, then ``pipelines.casr`` with each method on
that seed's sampler export (``--sampler_dir``), every job with the same seed,
data (leave-one-out) and budget: at most ``--epochs`` epochs with early
stopping on validation MRR@10 (``--patience``), so with and without
augmentation the anchor trains to convergence. Every selected model is also
evaluated with the sampled protocol (1 target + 99 uniform negatives) next to
full ranking. Writes benchmarks/results/<name>.{md,json,png}: per-seed test
metrics, mean ± sd over seeds, and the paired difference (augmented − alone,
per seed) with its standard error and a verdict (helps / hurts when the
difference is more than 2 standard errors from 0, else no effect). Finished
jobs in --work_dir are reused. Skips (exit 0) when the data file is absent.
"""

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from benchmarks.protocol import RESULTS, cached_job, fmt, mean_sd, paired, verdict, write_markdown  # noqa: E402
DEFAULT_DATA = os.path.join(os.path.dirname(ROOT), "shared", "data", "ml-100k", "ml-100k.inter")
METHODS = ("heuristic", "learning", "ad")
METRICS = ("hr@10", "ndcg@10", "mrr@10")


def _sampled(model_dir, data, tfrecord_dir):
    """Test metrics of the job's export under the sampled protocol (1 + 99), cached in <model_dir>/eval/sampled.json."""
    from peterrec import evaluation

    out = os.path.join(model_dir, "eval", "sampled.json")
    if not os.path.exists(out):
        evaluation.evaluate_export(os.path.join(model_dir, "export"), data=data, split="test", protocol="sampled",
                                   tfrecord_dir=tfrecord_dir, output=out)
    with open(out) as f:
        return json.load(f)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=DEFAULT_DATA)
    parser.add_argument("--data_name", default=None, help="name of the data in the table (default: the file name)")
    parser.add_argument("--work_dir", default="/tmp/bench-casr")
    parser.add_argument("--pairs", default="narm:stamp")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--seeds", default="1,2,3,4,5")
    parser.add_argument("--epochs", type=int, default=30, help="the seed's example command (--epochs 30)")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--learning_rate", type=float, default=0.01, help="the seed's example command (--learning_rate 0.01)")
    parser.add_argument("--max_len", type=int, default=50)
    parser.add_argument("--stride", type=int, default=10)
    parser.add_argument("--patience", type=int, default=3)
    parser.add_argument("--sample", type=float, default=None, help="default: pipelines.casr's")
    parser.add_argument("--beta", type=float, default=None, help="default: pipelines.casr's")
    parser.add_argument("--index", type=int, default=None, help="default: pipelines.casr's")
    parser.add_argument("--name", default="casr")
    args = parser.parse_args()
    if not os.path.exists(args.data) and not args.data.startswith(os.path.join("Data", "synthetic")):
        print(f"skipped: {args.data} is absent")
        return 0
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from peterrec import pretraining
    from peterrec.recipes import casr as casr_recipe

    knobs = {k: getattr(args, k) for k in ("sample", "beta", "index") if getattr(args, k) is not None}
    defaults = casr_recipe.CASRConfig()
    args.resolved = {k: knobs.get(k, getattr(defaults, k)) for k in ("sample", "beta", "index")}
    tfrecord_dir = os.path.join(args.work_dir, "tfrecords")
    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        common = dict(data=args.data, tfrecord_dir=tfrecord_dir, epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.learning_rate,
                      seed=seed, verbose=2, patience=args.patience, num_shards=4, max_len=args.max_len, stride=args.stride)
        for pair in args.pairs.split(","):
            sampler, anchor = pair.split(":")
            sampler_dir, sampler_metrics = _train_sampler(os.path.join(args.work_dir, f"seed{seed}"), sampler, common)
            anchor_dir = os.path.join(args.work_dir, f"seed{seed}", f"anchor-{anchor}")
            jobs = [("anchor alone", anchor_dir, lambda: pretraining.run(pretraining.PretrainConfig(backbone=anchor, model_dir=anchor_dir, **common)))]
            for method in args.methods.split(","):
                job_dir = os.path.join(args.work_dir, f"seed{seed}", f"casr-{sampler}-{anchor}-{method}")
                cfg = casr_recipe.CASRConfig(model_dir=job_dir, sampler_dir=os.path.join(sampler_dir, "export"), anchor_model=anchor,
                                             learning=method, **knobs, **common)
                jobs.append((method, job_dir, lambda cfg=cfg: casr_recipe.run(cfg)))
            for method, job_dir, job in jobs:
                metrics = cached_job(job_dir, job)
                rows.append({"seed": seed, "sampler": sampler, "anchor": anchor, "method": method, "metrics": metrics,
                             "sampler_learning_rate": sampler_metrics["sampler_learning_rate"],
                             "sampled": _sampled(job_dir, args.data, tfrecord_dir), "sampler_test": sampler_metrics["test"]})
        write_results(args, rows)  # after every seed: the tables so far
    return 0


def _train_sampler(seed_dir, sampler, common, retries=3):
    """The seed's sampler (its model_dir and metrics): trained at the common learning rate; a run that stops on a
    numerical fault (NaN or a diverging loss, e.g. NARM at the seed's 0.01) is a result of that seed, so the sampler is
    retrained at half the rate (up to ``retries`` times) in ``sampler-<name>-lr<rate>`` and the table names the rate."""
    from peterrec import pretraining
    from peterrec.errors import ConfigError
    from peterrec.tuning import stopped_on_fault

    rate = common["learning_rate"]
    for attempt in range(retries + 1):
        name = f"sampler-{sampler}" if attempt == 0 else f"sampler-{sampler}-lr{rate:g}"
        sampler_dir = os.path.join(seed_dir, name)
        settings = common | {"learning_rate": rate}
        try:
            metrics = cached_job(sampler_dir, lambda: pretraining.run(
                pretraining.PretrainConfig(backbone=sampler, model_dir=sampler_dir, **settings)))
        except ConfigError:
            if not stopped_on_fault(sampler_dir):
                raise
            metrics = {}
        if metrics.get("export_dir"):
            return sampler_dir, metrics | {"sampler_learning_rate": rate}
        print(f"{sampler_dir}: stopped on a numerical fault at learning rate {rate:g}; retrying at {rate / 2:g}")
        rate /= 2
    raise ConfigError(f"{seed_dir}: the {sampler} sampler stopped on a numerical fault at every learning rate down to {rate * 2:g}")


def _row(entry):
    m, casr_info = entry["metrics"], entry["metrics"].get("casr")
    generation = (casr_info or {}).get("generation") or {}
    ad = (casr_info or {}).get("ad") or {}
    flip = generation.get("flip_rate") if generation.get("flip_rate") is not None else ad.get("flip_rate")
    return {
        "seed": entry["seed"],
        "sampler": entry["sampler"],
        "anchor": entry["anchor"],
        "method": entry["method"],
        **{f"test_{k}": m["test"][k] for k in METRICS},
        **{f"sampled_{k}": entry["sampled"]["test"][k] for k in METRICS},
        "valid_mrr@10": m["valid"]["mrr@10"],
        "selected_epoch": m["selected_epoch"],
        "epochs_run": m["epochs_run"],
        "popularity_test_hr@10": m["popularity"]["test"]["hr@10"],
        "popularity_test_mrr@10": m["popularity"]["test"]["mrr@10"],
        "popularity_sampled_hr@10": entry["sampled"]["popularity"]["hr@10"],
        "generated": generation.get("generated"),
        "generated_share": generation.get("generated_share"),
        "flip_rate": flip,
        "generation_seconds": generation.get("seconds"),
        "train_wall_seconds": m["train_wall_seconds"],
        "job_wall_seconds": m.get("bench_wall_seconds"),
        "sampler_test_hr@10": entry["sampler_test"]["hr@10"],
        "sampler_test_mrr@10": entry["sampler_test"]["mrr@10"],
        "sampler_learning_rate": entry.get("sampler_learning_rate"),
    }


def write_results(args, entries):
    rows = [_row(e) for e in entries]
    os.makedirs(RESULTS, exist_ok=True)
    payload = {"settings": {k: v for k, v in vars(args).items()}, "cpu_count": os.cpu_count(), "rows": rows}
    with open(os.path.join(RESULTS, f"{args.name}.json"), "w") as f:
        json.dump(payload, f, indent=2)
    data_name = args.data_name or os.path.basename(args.data)
    seeds = sorted({r["seed"] for r in rows})
    knobs = args.resolved
    lines = [
        f"# {args.name}: CASR on {data_name}, {len(seeds)} seeds, paired",
        "",
        f"`python benchmarks/casr.py --data {args.data} --seeds {args.seeds} --pairs {args.pairs} --methods {args.methods}` on "
        f"{os.cpu_count()} CPU cores. Every job: at most {args.epochs} epochs with early stopping after {args.patience} epochs without a better "
        f"validation MRR@10 (the selected epoch is exported), Adam {args.learning_rate:g}, batch {args.batch_size} windows of {args.max_len} items "
        f"every {args.stride}, leave-one-out; CASR at `--sample {knobs['sample']:g} --beta {knobs['beta']:g} --index {knobs['index']}` and its other "
        "defaults. Per seed: one sampler, the anchor alone and each method on that sampler (same seed, same data order for the observed part). "
        "Full = rank among all items; sampled = among the target + 99 uniform negatives (the 1 + 99 protocol; the CASR paper's own protocol "
        "could not be verified, other_models.md §3). Paired Δ = mean over seeds of (method − anchor alone) ± its standard error.",
        "",
        "| sampler → anchor | method | full HR@10 | full NDCG@10 | full MRR@10 | sampled HR@10 | sampled NDCG@10 | paired Δ full NDCG@10 | "
        "paired Δ sampled NDCG@10 | verdict (full NDCG@10) | epochs (selected) | generated / prefixes | flip rate | job s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    verdicts = []
    for pair in dict.fromkeys((r["sampler"], r["anchor"]) for r in rows):
        group = [r for r in rows if (r["sampler"], r["anchor"]) == pair]
        alone = {r["seed"]: r for r in group if r["method"] == "anchor alone"}
        for method in dict.fromkeys(r["method"] for r in group):
            mine = {r["seed"]: r for r in group if r["method"] == method}
            col = lambda key: [mine[s][key] for s in sorted(mine)]  # noqa: E731
            cells = []
            for key in ("test_ndcg@10", "sampled_ndcg@10"):
                d, se, n = paired({s: r[key] for s, r in mine.items()}, {s: r[key] for s, r in alone.items()})
                cells.append("—" if method == "anchor alone" or d is None else f"{d:+.4f} ± {se:.4f}")
            d, se, _ = paired({s: r["test_ndcg@10"] for s, r in mine.items()}, {s: r["test_ndcg@10"] for s, r in alone.items()})
            base = mean_sd([r["test_ndcg@10"] for r in alone.values()])[0]
            word = "—" if method == "anchor alone" else verdict(d, se, base)
            if method != "anchor alone":
                verdicts.append((pair, method, word, d, se))
            epochs = mean_sd(col("epochs_run"))[0], mean_sd(col("selected_epoch"))[0]
            gen = mean_sd(col("generated_share"))[0] if all(v is not None for v in col("generated_share")) else None
            flip = mean_sd(col("flip_rate"))[0] if all(v is not None for v in col("flip_rate")) else None
            lines.append(
                f"| {pair[0]} → {pair[1]} | {method} | {fmt(col('test_hr@10'))} | {fmt(col('test_ndcg@10'))} | {fmt(col('test_mrr@10'))} | "
                f"{fmt(col('sampled_hr@10'))} | {fmt(col('sampled_ndcg@10'))} | {cells[0]} | {cells[1]} | {word} | "
                f"{epochs[0]:.1f} ({epochs[1]:.1f}) | {'—' if gen is None else f'{gen:.1%}'} | {'—' if flip is None else f'{flip:.3f}'} | "
                f"{mean_sd(col('job_wall_seconds'))[0]:.0f} |"
            )
    samplers = {}
    for r in rows:
        samplers.setdefault(r["sampler"], []).append(r["sampler_test_hr@10"])
    retrained = sorted({(r["seed"], r["sampler"], r["sampler_learning_rate"]) for r in rows
                        if r["sampler_learning_rate"] not in (None, args.learning_rate)})
    note = "".join(f"; seed {s} {name} stopped on a numerical fault at {args.learning_rate:g} and was retrained at {lr:g}" for s, name, lr in retrained)
    lines += ["", "Samplers (full test HR@10, mean ± sd over seeds): " + ", ".join(f"{k} {fmt(v)}" for k, v in samplers.items()) + note
              + f"; popularity test HR@10 {rows[0]['popularity_test_hr@10']:.4f} full, {rows[0]['popularity_sampled_hr@10']:.4f} sampled (the same rows).", "",
              "Per seed (full test NDCG@10):", "", "| sampler → anchor | method | " + " | ".join(f"seed {s}" for s in seeds) + " |",
              "|---|---|" + "---|" * len(seeds)]
    for pair in dict.fromkeys((r["sampler"], r["anchor"]) for r in rows):
        for method in dict.fromkeys(r["method"] for r in rows if (r["sampler"], r["anchor"]) == pair):
            by_seed = {r["seed"]: r["test_ndcg@10"] for r in rows if (r["sampler"], r["anchor"]) == pair and r["method"] == method}
            lines.append(f"| {pair[0]} → {pair[1]} | {method} | " + " | ".join(f"{by_seed[s]:.4f}" if s in by_seed else "—" for s in seeds) + " |")
    write_markdown(lines, args.name)
    args.verdicts = verdicts
    _plot(rows, os.path.join(RESULTS, f"{args.name}.png"))


def _plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = list(dict.fromkeys(f"{r['sampler']}→{r['anchor']}" for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    fig, ax = plt.subplots(figsize=(7, 3.5))
    width = 0.8 / len(methods)
    for i, method in enumerate(methods):
        stats = [mean_sd([r["test_ndcg@10"] for r in rows if f"{r['sampler']}→{r['anchor']}" == p and r["method"] == method]) for p in pairs]
        ax.bar([j + i * width for j in range(len(pairs))], [m or 0 for m, _ in stats], width, yerr=[sd or 0 for _, sd in stats], label=method)
    ax.set_xticks([j + width * (len(methods) - 1) / 2 for j in range(len(pairs))], pairs)
    ax.set(ylabel="full test NDCG@10 (mean ± sd over seeds)", title="CASR: anchor alone vs augmented")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
