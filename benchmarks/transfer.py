"""Transfer benchmark: PeterRec vs FineAll / FineLast / FineCLS / scratch on the embedded default data.

    python benchmarks/transfer.py --pretrained checkpoints/pretrain-nextitnet/export \
        --seeds 1,2,3 --tasks items,classify

Pretrains once (or takes --pretrained exports, one per backbone), finetunes every
backbone x mode (x insertion for PeterRec) x task x seed combination through
peterrec.finetuning (the library behind `python -m pipelines.finetune`), and writes
benchmarks/results/<name>.md, .json and .png: test MRR@5 / HR@5 (sampled 1 + 99, the
paper's protocol) for target items, accuracy / macro-F1 for profile classes, trainable
parameters, the ratio to the pretrained backbone, and wall time, as mean ± sd over seeds.
"""

import argparse
import json
import os
import sys
import time

import keras

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root: benchmarks.*

from benchmarks.protocol import RESULTS, fmt, mean_sd, previous_results, write_markdown  # noqa: E402
from peterrec import finetuning, pretraining  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# Named variants beyond (mode, insertion): extra FinetuneConfig fields and a label suffix.
VARIANT_OPTIONS = {
    "noid": {"parallel_identity": False, "patch_zero_init": True},  # parallel: conv(x) + f(x), f = 0 at init (fidelity f9)
    "warmup3": {"head_warmup_epochs": 3},  # fineall/scratch: 3 epochs of head only, then everything (LP-FT)
    "sep": {"pooling": "sep", "user_norm": False},  # the original's user vector: the separator's output, no norm (fidelity f11)
    "meannorm": {"pooling": "mean", "user_norm": True},  # mean over the source items' outputs + LayerNorm (classify default)
    "src49": {"max_len": 51},  # non-causal: [MASK, 49 source items, MASK] from a max_len-50 export (before issue #19: one item fewer)
    "lr5e-4": {"learning_rate": 5e-4},  # the original PeterRec_cau_serial's learning rate (fidelity f14)
}
MODE_ORDER = ["peterrec", "fineall", "finelast", "finecls", "scratch"]


def variants(modes, insertions):
    """Yield (mode, insertion, option) for ``--modes`` entries such as ``fineall`` or ``fineall+warmup3``
    and ``--insertions`` entries such as ``serial`` or ``parallel+noid``."""
    for entry in modes:
        mode, _, option = entry.partition("+")
        if mode == "peterrec":
            for ins in insertions:
                insertion, _, ins_option = ins.partition("+")
                yield mode, insertion, ins_option or option
        else:
            yield mode, "serial", option


def label(mode, insertion, option):
    base = insertion if mode == "peterrec" else "—"
    return base if not option else (f"{base} +{option}" if mode == "peterrec" else f"+{option}")


def load_or_run(cfg, model_dir):
    """A finished run's metrics.json is reused (the benchmark resumes); otherwise finetune."""
    path = os.path.join(model_dir, "metrics.json")
    if os.path.exists(path) and os.path.exists(os.path.join(model_dir, "job_config.json")):
        with open(path) as f:
            metrics = json.load(f)
        if "test" in metrics and "export_dir" in metrics:
            return metrics, None
    start = time.perf_counter()
    metrics = finetuning.run(cfg)
    return metrics, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--backbones", default="nextitnet")
    parser.add_argument("--pretrained", default="", help="comma-separated exports, one per backbone (default: pretrain here)")
    parser.add_argument("--modes", default="peterrec,fineall,fineall+warmup3,finelast,finecls,scratch,scratch+warmup3",
                        help="modes, each optionally +<variant> (see VARIANT_OPTIONS)")
    parser.add_argument("--insertions", default="serial,parallel,parallel+noid")
    parser.add_argument("--tasks", default="items,classify")
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--patience", type=int, default=3)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--mode_learning_rates", default="", help="per-mode overrides, e.g. fineall=1e-4,scratch=1e-4")
    parser.add_argument("--work_dir", default="/tmp/peterrec-transfer")
    parser.add_argument("--name", default="transfer")
    args = parser.parse_args()
    os.chdir(ROOT)  # the default data and checkpoints paths are relative to the repository
    mode_lr = {k: float(v) for k, v in (item.split("=") for item in args.mode_learning_rates.split(",") if item)}
    backbones = args.backbones.split(",")
    exports = dict(zip(backbones, [p for p in args.pretrained.split(",") if p])) if args.pretrained else {}
    for backbone in backbones:
        if backbone not in exports:
            cfg = pretraining.PretrainConfig(backbone=backbone, model_dir=os.path.join(args.work_dir, f"pretrain-{backbone}"))
            exports[backbone] = pretraining.run(cfg)["export_dir"]
    raw = previous_records(args.name, backbones)  # other backbones' rows of an earlier invocation stay in the table
    for backbone in backbones:
        for mode, insertion, option in variants(args.modes.split(","), args.insertions.split(",")):
            for task in args.tasks.split(","):
                for seed in [int(s) for s in args.seeds.split(",")]:
                    keras.backend.clear_session()
                    suffix = f"-{option}" if option else ""
                    model_dir = os.path.join(args.work_dir, f"{backbone}-{mode}-{insertion}{suffix}-{task}-{seed}")
                    cfg = finetuning.FinetuneConfig(
                        pretrained=exports[backbone], task=task, finetune_mode=mode, insertion=insertion, seed=seed,
                        epochs=args.epochs, patience=args.patience, learning_rate=mode_lr.get(mode, args.learning_rate), model_dir=model_dir,
                        verbose=0, **VARIANT_OPTIONS.get(option, {}),
                    )
                    m, job_seconds = load_or_run(cfg, model_dir)
                    record = {"backbone": backbone, "mode": mode, "insertion": label(mode, insertion, option), "task": task, "seed": seed,
                              "test": m["test"], "popularity": m["popularity"]["test"], "trainable_params": m["trainable_params"],
                              "pretrained_backbone_params": m["pretrained_backbone_params"], "trainable_ratio": m["trainable_ratio"],
                              "train_wall_seconds": m["train_wall_seconds"], "job_wall_seconds": job_seconds,
                              "selected_epoch": m["selected_epoch"], "learning_rate": cfg.learning_rate}
                    raw.append(record)
                    print(json.dumps({k: record[k] for k in ("backbone", "mode", "insertion", "task", "seed")}),
                          {k: round(v, 4) for k, v in m["test"].items() if k in ("mrr@5", "hr@5", "accuracy")}, flush=True)
                    write_results(raw, args, quiet=True)  # the table grows as runs finish
    write_results(raw, args)


def previous_records(name, backbones):
    return [r for r in previous_results(name) if r["backbone"] not in backbones]


def write_results(raw, args, quiet=False):
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, f"{args.name}.json"), "w") as f:
        json.dump(raw, f, indent=2)
    keys = sorted({(r["backbone"], r["mode"], r["insertion"]) for r in raw}, key=lambda k: (k[0], MODE_ORDER.index(k[1]), k[2]))
    lrs = f"lr {args.learning_rate}" + (f" ({args.mode_learning_rates})" if args.mode_learning_rates else "")
    lines = [f"# {args.name}", "", f"Seeds {args.seeds}; epochs ≤ {args.epochs} (patience {args.patience}), {lrs}. "
             "Items: sampled 1 + 99 (MRR@5, HR@5). Classes: accuracy, macro-F1. mean ± sd over seeds. "
             "Variants: `parallel +noid` = parallel patches without the in-patch identity, zero-initialised (`--noparallel_identity "
             "--patch_zero_init`); `+warmup3` = 3 epochs training only the new target table before everything unfreezes "
             "(`--head_warmup_epochs 3`). Train seconds are wall times on a shared 2-core machine.", "",
             "| backbone | mode | insertion | items MRR@5 | items HR@5 | class accuracy | class macro-F1 | trainable params (items) | ratio | train s (items) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    summary = {}
    for key in keys:
        items = [r for r in raw if (r["backbone"], r["mode"], r["insertion"]) == key and r["task"] == "items"]
        classes = [r for r in raw if (r["backbone"], r["mode"], r["insertion"]) == key and r["task"] == "classify"]
        summary[key] = (mean_sd([r["test"]["mrr@5"] for r in items]), mean_sd([r["test"].get("accuracy") for r in classes]))
        lines.append(
            f"| {key[0]} | {key[1]} | {key[2]} | {fmt([r['test']['mrr@5'] for r in items])} | {fmt([r['test']['hr@5'] for r in items])} "
            f"| {fmt([r['test'].get('accuracy') for r in classes])} | {fmt([r['test'].get('macro_f1') for r in classes])} "
            f"| {items[0]['trainable_params'] if items else '—'} | {items[0]['trainable_ratio']:.3f} | {fmt([r['train_wall_seconds'] for r in items], 0)} |"
            if items else f"| {key[0]} | {key[1]} | {key[2]} | — | — | {fmt([r['test'].get('accuracy') for r in classes])} | {fmt([r['test'].get('macro_f1') for r in classes])} | — | — | — |"
        )
    pops = [r for r in raw if r["task"] == "items"]
    if pops:
        lines.append(f"| popularity | — | — | {fmt([r['popularity']['mrr@5'] for r in pops])} | {fmt([r['popularity']['hr@5'] for r in pops])} | — | — | 0 | 0 | — |")
    lines += ["", "Checks (issue: PeterRec within 0.03 of FineAll, both beat scratch by more than 2 sd; "
              "each FineAll variant against the scratch run with the same recipe):", ""]
    for backbone in sorted({k[0] for k in keys}):
        for fa_key in [k for k in keys if k[0] == backbone and k[1] == "fineall"]:
            sc_key = (backbone, "scratch", fa_key[2])
            if sc_key not in summary:
                continue
            for key in [k for k in keys if k[0] == backbone and k[1] == "peterrec"]:
                for idx, metric in ((0, "items MRR@5"), (1, "class accuracy")):
                    p, fa, sc = summary[key][idx], summary[fa_key][idx], summary[sc_key][idx]
                    if None in (p[0], fa[0], sc[0]):
                        continue
                    lines.append(
                        f"- {backbone} PeterRec {key[2]} vs FineAll {fa_key[2]}, {metric}: PeterRec − FineAll = {p[0] - fa[0]:+.4f} "
                        f"({'ok' if p[0] >= fa[0] - 0.03 else 'NOT within 0.03'}); PeterRec − scratch = {p[0] - sc[0]:+.4f} vs 2 sd = {2 * max(p[1], sc[1]):.4f} "
                        f"({'ok' if p[0] - sc[0] > 2 * max(p[1], sc[1]) else 'NOT above'}); FineAll − scratch = {fa[0] - sc[0]:+.4f} vs 2 sd = {2 * max(fa[1], sc[1]):.4f} "
                        f"({'ok' if fa[0] - sc[0] > 2 * max(fa[1], sc[1]) else 'NOT above'})"
                    )
    write_markdown(lines, args.name)
    plot(summary, keys, os.path.join(RESULTS, f"{args.name}.png"))
    if not quiet:
        print("\n".join(lines))


def plot(summary, keys, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{b}\n{m}" + (f"\n{i}" if i != "—" else "") for b, m, i in keys]
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 1.3 * len(keys)), 3.8))
    for ax, idx, title in ((axes[0], 0, "target items: test MRR@5"), (axes[1], 1, "profile classes: test accuracy")):
        means = [summary[k][idx][0] or 0 for k in keys]
        sds = [summary[k][idx][1] or 0 for k in keys]
        ax.bar(range(len(keys)), means, yerr=sds, capsize=3, color=["tab:green" if k[1] == "peterrec" else "tab:gray" for k in keys])
        ax.set_xticks(range(len(keys)), labels, fontsize=7)
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
