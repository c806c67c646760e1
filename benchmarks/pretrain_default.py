"""Benchmark: the zero-flag pretraining command on the embedded default data.

    python benchmarks/pretrain_default.py [--model_dir /tmp/bench-pretrain] [--extra "--epochs 5"]

Runs `python -m pipelines.pretrain --backbone nextitnet` (plus --extra flags) in a fresh
--model_dir, then writes benchmarks/results/pretrain_default.{md,json} with the test metrics of
the selected checkpoint, the popularity baseline, wall times, throughput and peak RSS.
"""

import argparse
import json
import os
import resource
import shlex
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from benchmarks.protocol import RESULTS, write_markdown  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model_dir", default="/tmp/bench-pretrain-nextitnet")
    parser.add_argument("--extra", default="", help="extra flags for pipelines.pretrain")
    parser.add_argument("--name", default="pretrain_default")
    args = parser.parse_args()
    shutil.rmtree(args.model_dir, ignore_errors=True)
    cmd = [sys.executable, "-m", "pipelines.pretrain", "--backbone", "nextitnet", "--model_dir", args.model_dir]
    cmd += shlex.split(args.extra)
    start = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    wall = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    metrics = json.load(open(os.path.join(args.model_dir, "metrics.json")))
    row = {
        "command": "python -m pipelines.pretrain --backbone nextitnet " + args.extra,
        "test": metrics["test"],
        "popularity_test": metrics["popularity"]["test"],
        "valid": metrics["valid"],
        "selected_epoch": metrics["selected_epoch"],
        "epochs_run": metrics["epochs_run"],
        "train_wall_seconds": metrics["train_wall_seconds"],
        "job_wall_seconds": round(wall, 1),
        "trained_positions_per_second": metrics["trained_positions_per_second"],
        "eval_users_per_second": metrics["users_per_second_eval"],
        "peak_rss_mib": round(peak_mib),
        "total_params": metrics["total_params"],
        "cpu_count": os.cpu_count(),
    }
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, f"{args.name}.json"), "w") as f:
        json.dump(row, f, indent=2)
    t, p = row["test"], row["popularity_test"]
    lines = [
        f"# {args.name}",
        "",
        f"`{row['command'].strip()}` on {row['cpu_count']} CPU cores.",
        "",
        "| model | test HR@10 | test NDCG@10 | test MRR@10 | epochs (selected) | train s | job s | positions/s | peak RSS MiB |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| NextItNet | {t['hr@10']:.4f} | {t['ndcg@10']:.4f} | {t['mrr@10']:.4f} | {row['epochs_run']} ({row['selected_epoch']}) "
        f"| {row['train_wall_seconds']:.0f} | {row['job_wall_seconds']:.0f} | {row['trained_positions_per_second']:.0f} | {row['peak_rss_mib']} |",
        f"| popularity | {p['hr@10']:.4f} | {p['ndcg@10']:.4f} | {p['mrr@10']:.4f} | — | — | — | — | — |",
        "",
    ]
    write_markdown(lines, args.name, echo=True)


if __name__ == "__main__":
    main()
