"""Benchmark: HTTP serving latency and throughput of `python -m pipelines.serve` on 127.0.0.1.

    python benchmarks/serve_load.py [--export checkpoints/pretrain-nextitnet/export] [--requests 2000]

Starts the server as a subprocess on a free port, sends a bounded number of POST /v1/recommend
requests (k=10, exclude_seen, sequences = the most recent 50 items of random users of the embedded
default data) from 1 and from 8 client threads (one keep-alive connection each), with 1 and 32
sequences per request, and writes benchmarks/results/serving.{md,json}: p50 / p99 latency, requests/s,
sequences/s, the server's peak RSS, and the signature's own latency called in-process (no HTTP)
for comparison. Client and server share the machine's cores.
"""

import argparse
import http.client
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from benchmarks.protocol import RESULTS, write_markdown  # noqa: E402


def _sequences(data, count, length, seed):
    from peterrec.data.readers import read_sequences

    users, _ = read_sequences(data, "auto")
    rng = random.Random(seed)
    return [list(users[rng.randrange(len(users))].items[-length:]) for _ in range(count)]


def _start_server(export, max_batch):
    cmd = [sys.executable, "-m", "pipelines.serve", "--export", export, "--port", "0", "--max_batch", str(max_batch)]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"), start_new_session=True,
    )
    line = proc.stdout.readline()
    if "on http://" not in line:
        proc.kill()
        raise SystemExit(f"the server did not start: {line}{proc.stderr.read()[-3000:]}")
    host_port = line.split("on http://")[1].split(": ")[0]
    host, port = host_port.rsplit(":", 1)
    return proc, host, int(port)


def _peak_rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _load(host, port, bodies, concurrency):
    """Send every body once from ``concurrency`` threads; returns (latencies in s, wall s)."""
    latencies, errors, lock = [], [], threading.Lock()
    queue = list(reversed(bodies))

    def client():
        conn = http.client.HTTPConnection(host, port, timeout=60)
        while True:
            with lock:
                if not queue:
                    break
                body = queue.pop()
            t0 = time.perf_counter()
            conn.request("POST", "/v1/recommend", body=body, headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            payload = response.read()
            elapsed = time.perf_counter() - t0
            with lock:
                latencies.append(elapsed)
                if response.status != 200:
                    errors.append(payload[:200])
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    if errors:
        raise SystemExit(f"{len(errors)} requests failed, e.g. {errors[0]!r}")
    return np.asarray(latencies), wall


def _signature_latency(export, sequences, batch, calls):
    import tensorflow as tf

    from peterrec.export import latest_export

    fn = tf.saved_model.load(latest_export(export)).signatures["top_k_exclude_seen"]
    times = []
    for i in range(calls + 5):
        rows = [sequences[(i * batch + j) % len(sequences)] for j in range(batch)]
        width = max(len(r) for r in rows)
        x = tf.constant([r + [""] * (width - len(r)) for r in rows])
        t0 = time.perf_counter()
        fn(item_ids=x)["top_k_ids"].numpy()
        if i >= 5:
            times.append(time.perf_counter() - t0)
    return np.asarray(times)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--export", default=os.path.join(ROOT, "checkpoints", "pretrain-nextitnet", "export"))
    parser.add_argument("--data", default=os.path.join(ROOT, "Data", "synthetic", "source.inter"))
    parser.add_argument("--requests", type=int, default=2000, help="requests per configuration with 1 sequence each")
    parser.add_argument("--batched_requests", type=int, default=500, help="requests per configuration with 32 sequences each")
    parser.add_argument("--name", default="serving")
    args = parser.parse_args()
    if not os.path.isdir(args.export):
        raise SystemExit(f"{args.export} does not exist: run `python -m pipelines.pretrain` first (the zero-flag export)")
    pool = _sequences(args.data, 4096, 50, seed=0)
    load_before = os.getloadavg()
    proc, host, port = _start_server(args.export, max_batch=64)
    rows = []
    try:
        conn = http.client.HTTPConnection(host, port, timeout=60)
        conn.request("GET", "/v1/health")
        health = json.loads(conn.getresponse().read())
        conn.close()
        for batch, count in ((1, args.requests), (32, args.batched_requests)):
            bodies = [
                json.dumps({"sequences": [pool[(i * batch + j) % len(pool)] for j in range(batch)], "k": 10, "exclude_seen": True})
                for i in range(count)
            ]
            _load(host, port, bodies[: min(50, count)], 1)  # warm-up (traces, caches)
            for concurrency in (1, 8):
                latencies, wall = _load(host, port, bodies, concurrency)
                rows.append({
                    "batch": batch,
                    "concurrency": concurrency,
                    "requests": count,
                    "p50_ms": round(float(np.percentile(latencies, 50)) * 1000, 2),
                    "p99_ms": round(float(np.percentile(latencies, 99)) * 1000, 2),
                    "requests_per_second": round(count / wall, 1),
                    "sequences_per_second": round(count * batch / wall, 1),
                    "wall_seconds": round(wall, 2),
                })
                print(json.dumps(rows[-1]), flush=True)
        peak_rss = _peak_rss_mib(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    direct = {}
    for batch in (1, 32):
        times = _signature_latency(args.export, pool, batch, 200)
        direct[str(batch)] = {"p50_ms": round(float(np.percentile(times, 50)) * 1000, 2), "p99_ms": round(float(np.percentile(times, 99)) * 1000, 2)}
    import tensorflow as tf

    result = {
        "export": os.path.relpath(health["export"], ROOT) if os.path.isabs(health["export"]) else health["export"],
        "model_version": health["model_version"],
        "vocab_hash": health["vocab_hash"][:12],
        "top_k_served": health["top_k"],
        "request": "POST /v1/recommend, k=10, exclude_seen=true, sequences of the 50 most recent items of random users",
        "rows": rows,
        "signature_in_process": direct,
        "server_peak_rss_mib": round(peak_rss),
        "cpu_count": os.cpu_count(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "tensorflow": tf.__version__,
        "python": sys.version.split()[0],
    }
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, f"{args.name}.json"), "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    lines = [
        f"# {args.name}",
        "",
        f"`python benchmarks/serve_load.py`: `python -m pipelines.serve` on 127.0.0.1 serving `{result['export']}` "
        f"(version {result['model_version']}), {result['request']}; client threads and server on the same "
        f"{result['cpu_count']} CPU cores (load average before the run {result['load_average_before'][0]}, "
        f"after {result['load_average_after'][0]}); TensorFlow {result['tensorflow']}.",
        "",
        "| sequences per request | client threads | requests | p50 latency (ms) | p99 latency (ms) | requests/s | sequences/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['batch']} | {r['concurrency']} | {r['requests']} | {r['p50_ms']} | {r['p99_ms']} | "
            f"{r['requests_per_second']} | {r['sequences_per_second']} |"
        )
    lines += [
        "",
        f"Server peak RSS (VmHWM): {result['server_peak_rss_mib']} MiB. The `top_k_exclude_seen` signature called in-process "
        f"(no HTTP, no JSON): batch 1 p50 {direct['1']['p50_ms']} ms / p99 {direct['1']['p99_ms']} ms; "
        f"batch 32 p50 {direct['32']['p50_ms']} ms / p99 {direct['32']['p99_ms']} ms.",
        "",
    ]
    write_markdown(lines, args.name, echo=True)


if __name__ == "__main__":
    main()
