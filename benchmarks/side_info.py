"""Benchmark: the side-information models on ml-100k with its genres as the categorical field.

    python benchmarks/side_info.py [--data ../shared/data/ml-100k/ml-100k.inter] [--item_data ...ml-100k.item]
                                   [--atrank_epochs 3] [--miir_epochs 20] [--mii_epochs 10] [--out_dir /tmp/bench-side-info]

Runs, in this process, through the CLI-free runners of ``peterrec.recipes.atrank`` / ``.miir``:

* ATRank (``run_atrank``): genres (``class``, a token_seq field, summed) as the category,
  time buckets from the timestamps; SGD 1.0 -> 0.1 with global-norm clip 5 (the original's),
  histories cut to the most recent ``--atrank_max_len`` items, ``--atrank_batch_size`` rows;
  test AUC (1 positive vs 1 negative outside the user's sequence) and full-ranking HR/NDCG/MRR.
* MIIR (``run_miir``): without and with MII pretraining (``stage="mii"`` then ``"rec"`` from its
  export), each with all side information ("before discard", ``discard_share=0``) and with 50 %
  of it discarded (``discard_share=0.5``, the original's default); the 1 + 99 metric set
  (HR@5, HR@10, MRR, AUC) and full ranking.

Writes ``benchmarks/results/<name>.{json,md,png}``. Skips (exit 0) when the data is absent.
"""

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from benchmarks.protocol import RESULTS, cached_job, fmt, mean_sd, paired, previous_results, verdict, write_markdown  # noqa: E402
ML100K = os.path.join(os.path.dirname(ROOT), "shared", "data", "ml-100k")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.path.join(ML100K, "ml-100k.inter"))
    parser.add_argument("--item_data", default=os.path.join(ML100K, "ml-100k.item"))
    parser.add_argument("--fields", default="class")
    parser.add_argument("--out_dir", default="/tmp/bench-side-info", help="finished runs here are reused (<out_dir>/seed<k>/<run>/metrics.json)")
    parser.add_argument("--seeds", default="1,2,3,4,5")
    parser.add_argument("--discards", default="0,0.5", help="discard shares of the MIIR runs (0 = before discard, 0.5 = the original's after)")
    parser.add_argument("--atrank_epochs", type=int, default=0, help="also run ATRank (SGD, the original's) for this many epochs (0: not)")
    parser.add_argument("--atrank_batch_size", type=int, default=128)
    parser.add_argument("--atrank_max_len", type=int, default=50)
    parser.add_argument("--atrank_adam_epochs", type=int, default=0, help="also run ATRank with Adam for this many epochs (0: not)")
    parser.add_argument("--atrank_adam_learning_rate", type=float, default=1e-3)
    parser.add_argument("--miir_epochs", type=int, default=20)
    parser.add_argument("--mii_epochs", type=int, default=10)
    parser.add_argument("--miir_learning_rate", type=float, default=1e-3)
    parser.add_argument("--miir_dropout", type=float, default=None, help="default: MIIRConfig's")
    parser.add_argument("--patience", type=int, default=3, help="early stopping on validation (the same budget with and without MII)")
    parser.add_argument("--name", default="side_info")
    parser.add_argument("--merge", action="store_true",
                        help="keep the rows of benchmarks/results/<name>.json whose run this invocation does not produce "
                             "(e.g. add --discards 0 to a finished --discards 0.5 table)")
    args = parser.parse_args()
    if not (os.path.isfile(args.data) and os.path.isfile(args.item_data)):
        print(f"{args.data} or {args.item_data} is absent: nothing to do")
        return
    from peterrec.recipes.atrank import ATRankConfig, run_atrank
    from peterrec.recipes.miir import MIIRConfig, run_miir

    fields = tuple(args.fields.split(","))
    tfrecord_dir = os.path.join(args.out_dir, "tfrecords")
    miir_knobs = dict(learning_rate=args.miir_learning_rate, **({} if args.miir_dropout is None else {"dropout": args.miir_dropout}))
    rows = []
    kept = previous_results(args.name, "rows") if args.merge else []

    def run(seed, name, model, variant, job):
        """One job, reused from <out_dir>/seed<k>/<name>/metrics.json when it finished before."""
        model_dir = os.path.join(args.out_dir, f"seed{seed}", name)
        metrics = cached_job(model_dir, lambda: job(model_dir))
        rows.append({"seed": seed, "run": name, "model": model, "variant": variant, "seconds": metrics.get("bench_wall_seconds"), **_summary(metrics)})
        return model_dir

    for seed in [int(s) for s in args.seeds.split(",")]:
        common = dict(data=args.data, item_data=args.item_data, item_fields=fields, tfrecord_dir=tfrecord_dir, seed=seed,
                      patience=args.patience, verbose=2)
        atrank = dict(batch_size=args.atrank_batch_size, max_len=args.atrank_max_len, **common)
        if args.atrank_epochs:
            run(seed, "atrank", "ATRank", f"SGD 1.0→0.1, clip 5, batch {args.atrank_batch_size}, history ≤ {args.atrank_max_len}",
                lambda d: run_atrank(ATRankConfig(model_dir=d, epochs=args.atrank_epochs, **atrank)))
        if args.atrank_adam_epochs:
            run(seed, "atrank_adam", "ATRank", f"Adam {args.atrank_adam_learning_rate:g}, clip 5, batch {args.atrank_batch_size}, history ≤ {args.atrank_max_len}",
                lambda d: run_atrank(ATRankConfig(model_dir=d, epochs=args.atrank_adam_epochs, optimizer="adam",
                                                  learning_rate=args.atrank_adam_learning_rate, **atrank)))
        for discard in [float(x) for x in args.discards.split(",")]:
            suffix = "" if discard == 0 else f"_discard{discard:g}"
            settings = dict(common, discard_share=discard, **miir_knobs)
            run(seed, f"miir{suffix}", "MIIR", f"no MII pretraining, discard {discard:.0%}",
                lambda d: run_miir(MIIRConfig(model_dir=d, epochs=args.miir_epochs, **settings)))
            pre_dir = run(seed, f"mii{suffix}", "MIIR (MII stage only)", f"MII pretraining, discard {discard:.0%}",
                          lambda d: run_miir(MIIRConfig(model_dir=d, stage="mii", epochs=args.mii_epochs, **settings)))
            run(seed, f"miir_mii{suffix}", "MIIR", f"MII pretraining + finetuning, discard {discard:.0%}",
                lambda d: run_miir(MIIRConfig(model_dir=d, epochs=args.miir_epochs, pretrained=pre_dir, **settings)))
        write(args, _merged(kept, rows))  # after every seed: the tables so far


def _discards(rows):
    """The discard shares the MIIR rows hold, as --discards spells them (rows of several --merge runs)."""
    shares = {r["run"].partition("_discard")[2] or "0" for r in rows if r["model"].startswith("MIIR")}
    return ",".join(sorted(shares, key=float))


def _merged(kept, rows):
    """Earlier rows whose run this invocation does not produce, then this invocation's rows."""
    fresh = {r["run"] for r in rows}
    return [r for r in kept if r["run"] not in fresh] + rows


def _summary(metrics):
    test, pop = metrics["test"], metrics["popularity"]["test"]
    keys = ("auc", "hr@10", "ndcg@10", "mrr@10", "sampled_hr@5", "sampled_hr@10", "sampled_mrr", "sampled_auc")
    return {
        "test": {k: round(test[k], 4) for k in keys if k in test},
        "popularity_test": {k: round(pop[k], 4) for k in keys if k in pop},
        "valid_monitor": {k: round(v, 4) for k, v in metrics["valid"].items() if k in ("auc", "sampled_mrr")},
        "selected_epoch": metrics["selected_epoch"],
        "epochs_run": metrics["epochs_run"],
        "train_wall_seconds": metrics["train_wall_seconds"],
        "trainable_params": metrics["trainable_params"],
    }


COLUMNS = (("auc", "test AUC"), ("sampled_hr@10", "sampled HR@10"), ("sampled_mrr", "sampled MRR"), ("hr@10", "full HR@10"),
           ("ndcg@10", "full NDCG@10"), ("mrr@10", "full MRR@10"))


def write(args, rows):
    os.makedirs(RESULTS, exist_ok=True)
    payload = {"data": args.data, "item_data": args.item_data, "fields": args.fields, "cpu_count": os.cpu_count(), "args": vars(args), "rows": rows}
    with open(os.path.join(RESULTS, f"{args.name}.json"), "w") as f:
        json.dump(payload, f, indent=2)
    seeds = sorted({r["seed"] for r in rows})
    runs = list(dict.fromkeys(r["run"] for r in rows))
    by = {(r["run"], r["seed"]): r for r in rows}
    cell = lambda run, key: fmt([by[run, s]["test"].get(key) for s in seeds if (run, s) in by])  # noqa: E731
    lines = [
        f"# {args.name}: ATRank and MIIR on ml-100k (genres as the categorical field), {len(seeds)} seeds",
        "",
        f"`python benchmarks/side_info.py --seeds {args.seeds} --discards {_discards(rows) or args.discards} --miir_epochs {args.miir_epochs} --mii_epochs {args.mii_epochs} "
        f"--patience {args.patience}{f' --atrank_epochs {args.atrank_epochs}' if args.atrank_epochs else ''}"
        f"{f' --atrank_adam_epochs {args.atrank_adam_epochs}' if args.atrank_adam_epochs else ''}` on {os.cpu_count()} CPU cores. "
        f"Leave-one-out split, 943 test users; every job stops after {args.patience} epochs without a better validation score and exports "
        f"its best epoch (MIIR: Adam {args.miir_learning_rate:g}, dropout {args.miir_dropout if args.miir_dropout is not None else 'MIIRConfig default'}). "
        "AUC (ATRank): 1 positive vs 1 negative outside the user's sequence; sampled (MIIR, the paper's protocol): 1 target + 99 uniform items; "
        "full: rank over all 1,682 items (ties against the target). Mean ± sd over seeds.",
        "",
        "| model | variant | " + " | ".join(label for _, label in COLUMNS) + " | epochs (selected) | job s |",
        "|---|---|" + "---|" * (len(COLUMNS) + 2),
    ]
    for run in runs:
        mine = [by[run, s] for s in seeds if (run, s) in by]
        lines.append(f"| {mine[0]['model']} | {mine[0]['variant']} | " + " | ".join(cell(run, key) for key, _ in COLUMNS)
                     + f" | {mean_sd([r['epochs_run'] for r in mine])[0]:.1f} ({mean_sd([r['selected_epoch'] for r in mine])[0]:.1f}) | "
                     f"{mean_sd([r['seconds'] for r in mine])[0] or 0:.0f} |")
    if rows:
        pop = {}
        for r in rows:
            pop.update({k: v for k, v in r["popularity_test"].items() if k not in pop})
        lines.append("| popularity | training counts | " + " | ".join(f"{pop[k]:.4f}" if k in pop else "—" for k, _ in COLUMNS) + " | — | — |")
    lines += ["", "Paired effect of MII pretraining (MII + finetuning − no MII, per seed; mean ± standard error; verdict at 2 SE):", "",
              "| discard | Δ sampled HR@10 | Δ sampled MRR | Δ full HR@10 | Δ full NDCG@10 | verdict (sampled MRR) | verdict (full NDCG@10) |",
              "|---|---|---|---|---|---|---|"]
    for run in runs:
        if not run.startswith("miir_mii"):
            continue
        base = run.replace("miir_mii", "miir")
        cells, words = [], []
        for key in ("sampled_hr@10", "sampled_mrr", "hr@10", "ndcg@10"):
            treated = {s: by[run, s]["test"].get(key) for s in seeds if (run, s) in by}
            control = {s: by[base, s]["test"].get(key) for s in seeds if (base, s) in by}
            d, se, n = paired(treated, control)
            cells.append("—" if d is None else f"{d:+.4f} ± {se:.4f} (n={n})")
            if key in ("sampled_mrr", "ndcg@10"):
                words.append(verdict(d, se, mean_sd(list(control.values()))[0]))
        variant = by[run, next(s for s in seeds if (run, s) in by)]["variant"].split("discard ")[-1]
        lines.append(f"| {variant} | " + " | ".join(cells) + f" | {words[0]} | {words[1]} |")
    lines += ["", "Per seed (sampled MRR / full NDCG@10):", "", "| run | " + " | ".join(f"seed {s}" for s in seeds) + " |",
              "|---|" + "---|" * len(seeds)]
    for run in runs:
        lines.append(f"| {run} | " + " | ".join(
            (f"{by[run, s]['test'].get('sampled_mrr', float('nan')):.4f} / {by[run, s]['test']['ndcg@10']:.4f}" if (run, s) in by else "—")
            for s in seeds) + " |")
    lines += ["", "Runs: `miir` = no MII pretraining, `mii` = the MII stage alone, `miir_mii` = MII pretraining + finetuning from it, "
              "`_discard0.5` = 50 % of the genres discarded (the original's default setting), no suffix = all genres."]
    write_markdown(lines, args.name)
    _plot(rows, os.path.join(RESULTS, f"{args.name}.png"))


def _plot(rows, path):
    if not rows:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = list(dict.fromkeys(r["run"] for r in rows))
    labels = runs + ["popularity"]  # the variants are spelled out in the .md table

    def stats(key):
        out = [mean_sd([r["test"].get(key) for r in rows if r["run"] == run]) for run in runs]
        pop = next((r["popularity_test"][key] for r in rows if key in r["popularity_test"]), None)
        return [m if m is not None else float("nan") for m, _ in out] + [pop if pop is not None else float("nan")], [sd or 0 for _, sd in out] + [0]

    full, full_sd = stats("hr@10")
    sampled, sampled_sd = stats("sampled_hr@10")
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(labels)), 3.6))
    x = range(len(labels))
    ax.bar([i - 0.2 for i in x], full, width=0.4, yerr=full_sd, label="full-ranking HR@10")
    ax.bar([i + 0.2 for i in x], sampled, width=0.4, yerr=sampled_sd, label="sampled (1+99) HR@10")
    ax.set_xticks(list(x))
    ax.set_xticklabels(labels, fontsize=8, rotation=20, ha="right")
    ax.set_ylabel("test HR@10 (mean ± sd over seeds)")
    ax.set_title("ml-100k, genres as side information")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
