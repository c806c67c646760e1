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
import shutil
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from benchmarks.protocol import RESULTS, write_markdown  # noqa: E402
ML100K = os.path.join(os.path.dirname(ROOT), "shared", "data", "ml-100k")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.path.join(ML100K, "ml-100k.inter"))
    parser.add_argument("--item_data", default=os.path.join(ML100K, "ml-100k.item"))
    parser.add_argument("--fields", default="class")
    parser.add_argument("--out_dir", default="/tmp/bench-side-info")
    parser.add_argument("--atrank_epochs", type=int, default=3)
    parser.add_argument("--atrank_batch_size", type=int, default=128)
    parser.add_argument("--atrank_max_len", type=int, default=50)
    parser.add_argument("--atrank_adam_epochs", type=int, default=0, help="also run ATRank with Adam (run atrank_adam) for this many epochs")
    parser.add_argument("--atrank_adam_learning_rate", type=float, default=1e-3)
    parser.add_argument("--miir_epochs", type=int, default=20)
    parser.add_argument("--mii_epochs", type=int, default=10)
    parser.add_argument("--miir_learning_rate", type=float, default=1e-3)
    parser.add_argument("--patience", type=int, default=100, help="early-stopping patience (default: off; MIIR from scratch plateaus for several epochs)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--skip", default="", help="comma-separated run names to skip (atrank, miir, miir_discard, ...)")
    parser.add_argument("--reuse", default=None, help="rows.json of an earlier run: rows of the --skip runs are taken from it")
    parser.add_argument("--name", default="side_info")
    args = parser.parse_args()
    if not (os.path.isfile(args.data) and os.path.isfile(args.item_data)):
        print(f"{args.data} or {args.item_data} is absent: nothing to do")
        return
    from peterrec.recipes.atrank import ATRankConfig, run_atrank
    from peterrec.recipes.miir import MIIRConfig, run_miir

    shutil.rmtree(args.out_dir, ignore_errors=True)
    os.makedirs(args.out_dir)
    fields = tuple(args.fields.split(","))
    common = dict(data=args.data, item_data=args.item_data, item_fields=fields, tfrecord_dir=os.path.join(args.out_dir, "tfrecords"),
                  seed=args.seed, patience=args.patience, verbose=2)
    skip = set(filter(None, args.skip.split(",")))
    rows = []
    if args.reuse:
        with open(args.reuse) as f:
            rows = [row for row in json.load(f) if row["run"] in skip]

    def record(name, model, variant, metrics, seconds):
        rows.append({"run": name, "model": model, "variant": variant, "seconds": round(seconds, 1), **_summary(metrics)})
        with open(os.path.join(args.out_dir, "rows.json"), "w") as f:
            json.dump(rows, f, indent=2)

    if "atrank" not in skip:
        t0 = time.perf_counter()
        metrics = run_atrank(ATRankConfig(model_dir=os.path.join(args.out_dir, "atrank"), epochs=args.atrank_epochs,
                                          batch_size=args.atrank_batch_size, max_len=args.atrank_max_len, **common))
        record("atrank", "ATRank", f"SGD 1.0→0.1, clip 5, batch {args.atrank_batch_size}, history ≤ {args.atrank_max_len}",
               metrics, time.perf_counter() - t0)
    if args.atrank_adam_epochs and "atrank_adam" not in skip:
        t0 = time.perf_counter()
        metrics = run_atrank(ATRankConfig(model_dir=os.path.join(args.out_dir, "atrank_adam"), epochs=args.atrank_adam_epochs,
                                          batch_size=args.atrank_batch_size, max_len=args.atrank_max_len, optimizer="adam",
                                          learning_rate=args.atrank_adam_learning_rate, **common))
        record("atrank_adam", "ATRank", f"Adam {args.atrank_adam_learning_rate:g}, clip 5, batch {args.atrank_batch_size}, "
               f"history ≤ {args.atrank_max_len}", metrics, time.perf_counter() - t0)
    for discard in (0.0, 0.5):
        suffix = "" if discard == 0 else "_discard"
        settings = dict(common, discard_share=discard, learning_rate=args.miir_learning_rate)
        name = f"miir{suffix}"
        if name not in skip:
            t0 = time.perf_counter()
            metrics = run_miir(MIIRConfig(model_dir=os.path.join(args.out_dir, name), epochs=args.miir_epochs, **settings))
            record(name, "MIIR", f"no MII pretraining, discard {discard:.0%}", metrics, time.perf_counter() - t0)
        name = f"miir_mii{suffix}"
        if name not in skip:
            t0 = time.perf_counter()
            pre_dir = os.path.join(args.out_dir, f"mii{suffix}")
            pretrained = run_miir(MIIRConfig(model_dir=pre_dir, stage="mii", epochs=args.mii_epochs, **settings))
            record(f"mii{suffix}", "MIIR (MII stage only)", f"MII pretraining, discard {discard:.0%}", pretrained, time.perf_counter() - t0)
            metrics = run_miir(MIIRConfig(model_dir=os.path.join(args.out_dir, name), epochs=args.miir_epochs, pretrained=pre_dir, **settings))
            record(name, "MIIR", f"MII pretraining + finetuning, discard {discard:.0%}", metrics, time.perf_counter() - t0)
    write(args, rows)


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


def write(args, rows):
    os.makedirs(RESULTS, exist_ok=True)
    payload = {"data": args.data, "item_data": args.item_data, "fields": args.fields, "cpu_count": os.cpu_count(), "args": vars(args), "rows": rows}
    with open(os.path.join(RESULTS, f"{args.name}.json"), "w") as f:
        json.dump(payload, f, indent=2)
    fmt = lambda row, key: f"{row[key]:.4f}" if key in row else "—"  # noqa: E731
    lines = [
        f"# {args.name}: ATRank and MIIR on ml-100k (genres as the categorical field)",
        "",
        f"`python benchmarks/side_info.py --atrank_epochs {args.atrank_epochs} --miir_epochs {args.miir_epochs} "
        f"--mii_epochs {args.mii_epochs}{f' --atrank_adam_epochs {args.atrank_adam_epochs}' if args.atrank_adam_epochs else ''}` on {os.cpu_count()} CPU cores (shared). Leave-one-out split; test users 943.",
        "AUC (ATRank): 1 positive vs 1 negative outside the user's sequence; sampled (MIIR): 1 target + 99 uniform items;",
        "full: rank over all 1,682 items (ties against the target).",
        "",
        "| model | variant | test AUC | sampled HR@5 | sampled HR@10 | sampled MRR | sampled AUC | full HR@10 | full NDCG@10 | full MRR@10 | epochs (selected) | train s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        t = row["test"]
        lines.append(
            f"| {row['model']} | {row['variant']} | {fmt(t, 'auc')} | {fmt(t, 'sampled_hr@5')} | {fmt(t, 'sampled_hr@10')} | "
            f"{fmt(t, 'sampled_mrr')} | {fmt(t, 'sampled_auc')} | {fmt(t, 'hr@10')} | {fmt(t, 'ndcg@10')} | {fmt(t, 'mrr@10')} | "
            f"{row['epochs_run']} ({row['selected_epoch']}) | {row['train_wall_seconds']:.0f} |"
        )
    if rows:
        p = rows[0]["popularity_test"]
        pm = next((r["popularity_test"] for r in rows if "sampled_mrr" in r["popularity_test"]), {})
        lines.append(
            f"| popularity | training counts | {fmt(p, 'auc')} | {fmt(pm, 'sampled_hr@5')} | {fmt(pm, 'sampled_hr@10')} | "
            f"{fmt(pm, 'sampled_mrr')} | {fmt(pm, 'sampled_auc')} | {fmt(p, 'hr@10')} | {fmt(p, 'ndcg@10')} | {fmt(p, 'mrr@10')} | — | — |"
        )
    lines += [
        "",
        "Runs in the plot: `miir` = no MII pretraining, `mii` = the MII stage alone, `miir_mii` = MII pretraining +",
        "finetuning, `_discard` = 50 % of the genres discarded (the original's default setting).",
    ]
    write_markdown(lines, args.name)
    _plot(rows, os.path.join(RESULTS, f"{args.name}.png"))


def _plot(rows, path):
    if not rows:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [r["run"] for r in rows] + ["popularity"]  # the variants are spelled out in the .md table
    full = [r["test"].get("hr@10", 0.0) for r in rows] + [rows[0]["popularity_test"].get("hr@10", 0.0)]
    pm = next((r["popularity_test"] for r in rows if "sampled_hr@10" in r["popularity_test"]), {})
    sampled = [r["test"].get("sampled_hr@10", float("nan")) for r in rows] + [pm.get("sampled_hr@10", float("nan"))]
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(labels)), 3.6))
    x = range(len(labels))
    ax.bar([i - 0.2 for i in x], full, width=0.4, label="full-ranking HR@10")
    ax.bar([i + 0.2 for i in x], sampled, width=0.4, label="sampled (1+99) HR@10")
    ax.set_xticks(list(x))
    ax.set_xticklabels(labels, fontsize=8, rotation=20, ha="right")
    ax.set_ylabel("test HR@10")
    ax.set_title("ml-100k, genres as side information")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
