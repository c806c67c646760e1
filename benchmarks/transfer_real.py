"""Real-data transfer benchmark: PeterRec and its baselines on tasks built from MovieLens-100K.

    python benchmarks/transfer_real.py --data_dir ../shared/data/ml-100k --seeds 1,2,3

The tasks (benchmarks/ml100k_tasks.py: a source domain of non-action genres pretrained on, a
cold-start target domain of action / adventure / sci-fi / war / western / fantasy movies, and two
user attributes read from the same files) are written into ``--work_dir``, never into the
repository (the ml-100k licence forbids redistribution). Each backbone is pretrained once on the
source domain with the zero-flag settings; every (backbone, mode, insertion, task, seed) is then
finetuned through peterrec.finetuning with the zero-flag settings too, except for the split:
``--valid_fraction`` / ``--test_fraction`` (default 0.2 / 0.3 of the 942 users), since 94 test
users give an accuracy standard error of 0.05. A seed changes the split, the initialisation and
the data order.

Baselines computed in the same run, on each seed's split and rows: popularity and a bag-of-items
logistic regression (benchmarks/bag_of_items.py, C chosen on validation). Results:
benchmarks/results/<name>.md, .json, .png (test metrics, mean ± sd over seeds, and the issue's
checks: PeterRec ≥ logistic regression and ≥ scratch + 2 sd).
"""

import argparse
import json
import os
import sys
import time

import keras

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root: benchmarks.*

import bag_of_items  # noqa: E402
import ml100k_tasks  # noqa: E402
from benchmarks.protocol import RESULTS, fmt, mean_sd, previous_results, write_markdown  # noqa: E402
from transfer import MODE_ORDER, VARIANT_OPTIONS, label, load_or_run, variants  # noqa: E402

from peterrec import finetuning, pretraining, training  # noqa: E402
from peterrec.data import finetune_dataset  # noqa: E402
from peterrec.data.vocab import Vocabulary  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ITEM_KS = (5, 10)
# What each task reports, (key, label); the first is the headline the checks use.
TASK_METRICS = {"items": (("mrr@5", "MRR@5"), ("hr@5", "HR@5")), "classify": (("accuracy", "accuracy"), ("macro_f1", "macro-F1"))}


def kind(task):
    return "items" if task == "items" else "classify"


def pretrain(backbone, source, work_dir):
    cfg = pretraining.PretrainConfig(backbone=backbone, data=source, model_dir=os.path.join(work_dir, f"pretrain-{backbone}"),
                                     tfrecord_dir=os.path.join(work_dir, "tfrecords"), epochs=20, verbose=0)
    path = os.path.join(cfg.model_dir, "metrics.json")
    metrics = json.load(open(path)) if os.path.exists(path) else pretraining.run(cfg)
    return metrics["export_dir"], {k: metrics["test"][k] for k in ("hr@10", "ndcg@10")}


def logistic_regression(metrics, task, seed, context_len):
    """The bag-of-items baseline on the finetuning run's own split: test metrics and the chosen C."""
    set_dir = metrics["data"]["set_dir"]
    num_items = Vocabulary.load(os.path.join(metrics["pretrained_export"], "vocab.json")).size
    num_targets = metrics["data"]["target_vocab_size"]

    def rows(split):
        return finetune_dataset.eval_pairs(set_dir, split, context_len=context_len, batch_size=256)

    def ranking(scorer, split):  # the finetuning job's own protocol: same rows, negatives and seed
        return training.evaluate(scorer, lambda ctx: rows(split), protocol="sampled", num_negatives=99, ks=ITEM_KS, seed=seed)

    if kind(task) == "items":
        score = lambda scorer: ranking(scorer, "valid")["mrr@5"]  # noqa: E731
    else:
        score = lambda scorer: finetuning.macro_f1(scorer, rows("valid"))["accuracy"]  # noqa: E731
    scorer, c, _ = bag_of_items.fit(rows("train"), rows("valid"), num_items, num_targets, score)
    test = ranking(scorer, "test") if kind(task) == "items" else finetuning.macro_f1(scorer, rows("test"))
    return test, c


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data_dir", default=os.path.join(ROOT, "..", "shared", "data", "ml-100k"))
    parser.add_argument("--backbones", default="nextitnet")
    parser.add_argument("--modes", default="peterrec,fineall,fineall+warmup3,finelast,finecls,scratch")
    parser.add_argument("--insertions", default="serial,parallel")
    parser.add_argument("--tasks", default="items,generous,action_share")
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--valid_fraction", type=float, default=0.2)
    parser.add_argument("--test_fraction", type=float, default=0.3)
    parser.add_argument("--work_dir", default="/tmp/peterrec-transfer-real")
    parser.add_argument("--name", default="transfer_real")
    parser.add_argument("--cached_only", action="store_true", help="only collect the finished runs in --work_dir into the table")
    parser.add_argument("--skip_baselines", action="store_true", help="no logistic regression (another invocation computes it on the same splits)")
    args = parser.parse_args()
    tasks_dir = os.path.join(args.work_dir, "tasks")
    paths, stats = ml100k_tasks.build(os.path.join(args.data_dir, "ml-100k.inter"), os.path.join(args.data_dir, "ml-100k.item"), tasks_dir)
    raw = previous_results(args.name, "runs")  # the runs of earlier invocations (a run of this one replaces the same row's)
    baselines_path = os.path.join(args.work_dir, "baselines.json")  # per (task, seed): the same split for every backbone
    cached = json.load(open(baselines_path)) if os.path.exists(baselines_path) else {}
    baselines = {(v["task"], v["seed"]): {k: x for k, x in v.items() if k not in ("task", "seed")} for v in cached.values()}
    pretrained = {}
    for backbone in args.backbones.split(","):
        keras.backend.clear_session()
        export_dir, pre_test = pretrain(backbone, paths["source"], args.work_dir)
        pretrained[backbone] = pre_test
        for mode, insertion, option in variants(args.modes.split(","), args.insertions.split(",")):
            for task in args.tasks.split(","):
                for seed in [int(s) for s in args.seeds.split(",")]:
                    keras.backend.clear_session()
                    suffix = f"-{option}" if option else ""
                    model_dir = os.path.join(args.work_dir, "runs", f"{backbone}-{mode}-{insertion}{suffix}-{task}-{seed}")
                    cfg = finetuning.FinetuneConfig(
                        pretrained=export_dir, data=paths["source"], targets=paths[task], task=kind(task), finetune_mode=mode,
                        insertion=insertion, seed=seed, valid_fraction=args.valid_fraction, test_fraction=args.test_fraction,
                        tfrecord_dir=os.path.join(args.work_dir, "tfrecords"), model_dir=model_dir, verbose=0,
                        **VARIANT_OPTIONS.get(option, {}),
                    )
                    causal = backbone == "nextitnet"
                    if option in ("sep", "meannorm"):
                        plain = finetuning.FinetuneConfig(task=kind(task), finetune_mode=mode)
                        if (cfg.resolved_pooling(causal), cfg.resolved_user_norm()) == (plain.resolved_pooling(causal), plain.resolved_user_norm()):
                            continue  # the task's default user vector: the row without the option is this run
                    if args.cached_only and not os.path.exists(os.path.join(model_dir, "metrics.json")):
                        continue
                    m, job_seconds = load_or_run(cfg, model_dir)
                    if (task, seed) not in baselines and not args.skip_baselines:
                        t0 = time.perf_counter()
                        job_max_len = int(json.load(open(os.path.join(model_dir, "job_config.json")))["max_len"])
                        context_len = job_max_len - cfg.context_slots(causal)
                        test, c = logistic_regression(m, task, seed, context_len)
                        baselines[(task, seed)] = {"logistic_regression": test, "C": c, "lr_seconds": time.perf_counter() - t0,
                                                   "popularity": m["popularity"]["test"], "test_users": m["test"]["users"]}
                        if os.path.exists(baselines_path):  # another invocation may have added other tasks meanwhile
                            cached.update(json.load(open(baselines_path)))
                        cached[f"{task}-{seed}"] = {"task": task, "seed": seed, **baselines[(task, seed)]}
                        with open(baselines_path, "w") as f:
                            json.dump(cached, f, indent=2)
                    key = (backbone, mode, label(mode, insertion, option), task, seed)
                    raw = [r for r in raw if (r["backbone"], r["mode"], r["insertion"], r["task"], r["seed"]) != key]
                    raw.append({"backbone": backbone, "mode": mode, "insertion": label(mode, insertion, option), "task": task,
                                "seed": seed, "test": m["test"], "trainable_params": m["trainable_params"],
                                "train_wall_seconds": m["train_wall_seconds"], "job_wall_seconds": job_seconds,
                                "selected_epoch": m["selected_epoch"], "epochs_run": m.get("epochs_run")})
                    print(json.dumps({k: raw[-1][k] for k in ("backbone", "mode", "insertion", "task", "seed")}),
                          {k: round(v, 4) for k, v in m["test"].items() if k in ("mrr@5", "hr@5", "accuracy")}, flush=True)
                    write_results(raw, baselines, stats, pretrained, args, quiet=True)
    write_results(raw, baselines, stats, pretrained, args)


def write_results(raw, baselines, stats, pretrained, args, quiet=False):
    os.makedirs(RESULTS, exist_ok=True)
    tasks = [t for t in args.tasks.split(",")]
    base_rows = [{"task": t, "seed": s, **v} for (t, s), v in sorted(baselines.items())]
    with open(os.path.join(RESULTS, f"{args.name}.json"), "w") as f:
        json.dump({"runs": raw, "baselines": base_rows, "data": stats, "pretrained_test": pretrained, "args": vars(args)}, f, indent=2)
    keys = sorted({(r["backbone"], r["mode"], r["insertion"]) for r in raw}, key=lambda k: (k[0], MODE_ORDER.index(k[1]), k[2]))
    head = [f"{t} {name}" for t in tasks for _, name in TASK_METRICS[kind(t)]]
    pretrained_text = ", ".join(f"{b} {v['hr@10']:.4f}" for b, v in pretrained.items())
    lines = [
        f"# {args.name}: transfer on MovieLens-100K", "",
        f"Source domain: {stats['source_items']} non-action movies, {stats['source_interactions']} ratings of {stats['users']} users "
        f"(pretrained on, zero-flag settings; test HR@10 {pretrained_text}). "
        f"Tasks from the source sequence only: `items` = the last {stats['targets_per_user']} or fewer of the user's "
        f"{stats['target_items']} target-domain (action/adventure/sci-fi/war/western/fantasy) movies, sampled 1 + 99; "
        f"`generous` = mean rating above the median user's (2 classes, majority {stats['generous_majority']:.3f}); "
        f"`action_share` = tercile of the user's share of target-domain ratings (3 classes, majority {stats['action_share_majority']:.3f}). "
        f"Users split {1 - args.valid_fraction - args.test_fraction:.0%} / {args.valid_fraction:.0%} / {args.test_fraction:.0%} "
        f"(train / valid / test) per seed; seeds {args.seeds}; test metrics at the validation-selected epoch, mean ± sd over seeds. "
        "Every finetuning run uses the zero-flag `pipelines.finetune` settings.", "",
        "| backbone | mode | insertion | " + " | ".join(head) + " | trainable params (first task run) | train s |",
        "|---|---|---|" + "---|" * len(head) + "---|---|",
    ]
    summary = {}
    for key in keys:
        cells = []
        for t in tasks:
            runs = [r for r in raw if (r["backbone"], r["mode"], r["insertion"]) == key and r["task"] == t]
            for i, (metric, _) in enumerate(TASK_METRICS[kind(t)]):
                values = [r["test"].get(metric) for r in runs]
                cells.append(fmt(values))
                if i == 0:
                    summary[(key, t)] = mean_sd(values)
        any_run = [r for r in raw if (r["backbone"], r["mode"], r["insertion"]) == key]
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | " + " | ".join(cells)
                     + f" | {any_run[0]['trainable_params']} | {fmt([r['train_wall_seconds'] for r in any_run], 0)} |")
    for name, field in (("logistic regression (bag of items)", "logistic_regression"), ("popularity (classes: the training users' majority class)", "popularity")):
        cells = []
        for t in tasks:
            rows = [b for b in base_rows if b["task"] == t]
            for i, (metric, _) in enumerate(TASK_METRICS[kind(t)]):
                source = metric if field == "logistic_regression" or kind(t) == "items" else "hr@1"  # majority class = popularity top-1
                values = [b[field].get(source) for b in rows] if field == "logistic_regression" or i == 0 or kind(t) == "items" else []
                cells.append(fmt(values))
                if i == 0:
                    summary[((field,), t)] = mean_sd(values)
        lines.append(f"| {name} | — | — | " + " | ".join(cells) + " | — | — |")
    lines += ["", "Checks (PeterRec ≥ logistic regression, and ≥ scratch + 2 sd, on the headline metric of every task; "
              "`paired` = the mean ± sd over seeds of the per-seed difference, each seed being one split shared by every row):", ""]
    for key in [k for k in keys if k[1] == "peterrec"]:
        for t in tasks:
            p, lr = summary.get((key, t)), summary.get((("logistic_regression",), t))
            sc = summary.get(((key[0], "scratch", "—"), t))
            if not p or p[0] is None:
                continue
            parts = []
            metric = TASK_METRICS[kind(t)][0][0]
            mine = {r["seed"]: r["test"][metric] for r in raw if (r["backbone"], r["mode"], r["insertion"]) == key and r["task"] == t}
            if lr and lr[0] is not None:
                lr_seed = {b["seed"]: b["logistic_regression"][metric] for b in base_rows if b["task"] == t}
                paired = fmt([mine[s] - lr_seed[s] for s in mine if s in lr_seed])
                parts.append(f"− logistic regression = {p[0] - lr[0]:+.4f} (paired {paired}; {'ok' if p[0] >= lr[0] else 'NOT met'})")
            if sc and sc[0] is not None:
                margin = 2 * max(p[1], sc[1])
                sc_seed = {r["seed"]: r["test"][metric] for r in raw if (r["backbone"], r["mode"], r["insertion"]) == key[:1] + ("scratch", "—") and r["task"] == t}
                paired = fmt([mine[s] - sc_seed[s] for s in mine if s in sc_seed])
                parts.append(f"− scratch = {p[0] - sc[0]:+.4f} vs 2 sd {margin:.4f} (paired {paired}; {'ok' if p[0] - sc[0] >= margin else 'NOT met'})")
            lines.append(f"- {key[0]} PeterRec {key[2]}, {t} {TASK_METRICS[kind(t)][0][1]}: " + "; ".join(parts))
    write_markdown(lines, args.name)
    plot(summary, keys, tasks, os.path.join(RESULTS, f"{args.name}.png"))
    if not quiet:
        print("\n".join(lines))


def plot(summary, keys, tasks, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(keys) + [("logistic_regression",), ("popularity",)]
    labels = ["\n".join(x for x in k if x != "—") for k in rows]
    fig, axes = plt.subplots(len(tasks), 1, figsize=(min(14, max(8, 0.7 * len(rows))), 3.2 * len(tasks)))
    for ax, t in zip(axes if len(tasks) > 1 else [axes], tasks):
        means = [(summary.get((k, t)) or (0, 0))[0] or 0 for k in rows]
        sds = [(summary.get((k, t)) or (0, 0))[1] or 0 for k in rows]
        colors = ["tab:green" if len(k) > 1 and k[1] == "peterrec" else "tab:orange" if len(k) == 1 else "tab:gray" for k in rows]
        ax.bar(range(len(rows)), means, yerr=sds, capsize=3, color=colors)
        ax.set_xticks(range(len(rows)), labels, fontsize=6)
        ax.set_title(f"{t}: test {TASK_METRICS[kind(t)][0][1]}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
