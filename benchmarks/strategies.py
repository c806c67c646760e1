"""Benchmark: the same pretraining job under each tf.distribute strategy this machine can run.

    python benchmarks/strategies.py [--epochs 2] [--out_dir /tmp/bench-strategies]

Runs `python -m pipelines.pretrain --backbone nextitnet --epochs N` on the embedded default data
with --strategy default, mirrored (every local device: one CPU replica on a CPU-only machine) and
multiworker (two worker processes on 127.0.0.1, TF_CONFIG set per process, collectives over
loopback, sharing this machine's cores), and writes benchmarks/results/strategies.{md,json}: the
chief's training throughput (trained positions/s, the all-reduced count), training wall time and
the test metrics, so the curves can be compared across strategies.
"""

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results")


def free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def run(strategy, args):
    model_dir = os.path.join(args.out_dir, strategy)
    shutil.rmtree(model_dir, ignore_errors=True)
    cmd = [sys.executable, "-m", "pipelines.pretrain", "--backbone", "nextitnet", "--epochs", str(args.epochs),
           "--model_dir", model_dir, "--strategy", strategy, "--verbose", "0"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("TF_CONFIG", None)
    workers = 2 if strategy == "multiworker" else 1
    envs = [env]
    if strategy == "multiworker":
        cluster = {"worker": [f"127.0.0.1:{p}" for p in free_ports(workers)]}
        envs = [dict(env, TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})) for i in range(workers)]
    start = time.perf_counter()
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=e) for e in envs]
    codes = [p.wait(timeout=args.timeout) for p in procs]
    wall = time.perf_counter() - start
    if any(codes):
        raise SystemExit(f"--strategy {strategy}: exit codes {codes}")
    with open(os.path.join(model_dir, "metrics.json")) as f:
        metrics = json.load(f)
    return {
        "strategy": strategy,
        "processes": workers,
        "trained_positions_per_second": metrics["trained_positions_per_second"],
        "train_wall_seconds": metrics["train_wall_seconds"],
        "job_wall_seconds": round(wall, 1),
        "epochs": metrics["epochs_run"],
        "test": {k: round(v, 4) for k, v in metrics["test"].items() if k in ("hr@10", "ndcg@10", "mrr@10")},
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--out_dir", default="/tmp/bench-strategies")
    parser.add_argument("--strategies", default="default,mirrored,multiworker")
    parser.add_argument("--timeout", type=int, default=1800)
    args = parser.parse_args()
    rows = [run(s, args) for s in args.strategies.split(",")]
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "strategies.json"), "w") as f:
        json.dump({"epochs": args.epochs, "cpu_count": os.cpu_count(), "rows": rows}, f, indent=2)
    lines = [
        "# strategies: one pretraining job under each tf.distribute strategy",
        "",
        f"`python benchmarks/strategies.py --epochs {args.epochs}`: `python -m pipelines.pretrain --backbone nextitnet "
        f"--epochs {args.epochs}` on the embedded default, {os.cpu_count()} CPU cores, no GPU. `mirrored` has one CPU "
        "replica here; `multiworker` is two processes on 127.0.0.1 sharing the same cores (the global batch is split "
        "between them), so this table shows the cost of the collectives, not a speed-up.",
        "",
        "| strategy | processes | trained positions/s | train s | job s | test HR@10 | test NDCG@10 |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['strategy']} | {r['processes']} | {r['trained_positions_per_second']:,.0f} | {r['train_wall_seconds']:.1f} | "
                     f"{r['job_wall_seconds']:.1f} | {r['test']['hr@10']:.4f} | {r['test']['ndcg@10']:.4f} |")
    with open(os.path.join(RESULTS, "strategies.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
