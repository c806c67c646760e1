"""The benchmark's results: ``<name>.md`` (tables beside RecBole's reference numbers), ``.json`` and the ``.png`` curves."""

from __future__ import annotations

import json
import os

import numpy as np

from peterrec import io, tuning
from benchmarks.protocol import KS, REFERENCE, fmt
from peterrec.features import NUM_RESERVED


def write_results(results, results_dir, name):
    """``<name>.json``, ``<name>.md`` and ``<name>.png`` in ``results_dir`` (each written atomically)."""
    os.makedirs(results_dir, exist_ok=True)
    io.write_json(os.path.join(results_dir, f"{name}.json"), results)
    tuning.write_text(os.path.join(results_dir, f"{name}.md"), results_markdown(results))
    plot_curves(results["runs"], os.path.join(results_dir, f"{name}.png"), title=name)


def _label(model):
    return REFERENCE.get(model, {}).get("label", model)


def _merged_note(results):
    """A sentence naming the models whose rows an earlier invocation ran (``--merge``), with their GEMM rate."""
    earlier = {}
    for r in results["runs"]:
        if r.get("gemm_gflops") not in (None, results["gemm_gflops"]):
            earlier.setdefault(r["model"], r["gemm_gflops"])
    if not earlier:
        return ""
    rows = ", ".join(f"{m} ({g:.1f} GFLOP/s)" for m, g in earlier.items())
    return f" Rows kept from an earlier run of this benchmark (`--merge`), with the GEMM rate measured there: {rows}."


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
        "excluded) up to the validation-selected epoch." + _merged_note(results),
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
        "", "Speed (train FLOPs per trained position: see `benchmarks.zoo.flop_estimate`; useful GFLOP/s = positions/s × "
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
