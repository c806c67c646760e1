"""Out-of-core benchmark: streaming conversion and one training epoch on 1M, 4M and 16M interactions.

For each size, a synthetic RecBole ``.inter`` file with the same item vocabulary (``--items``) and
users of 20-80 interactions (interleaved in blocks, so the file is not grouped by user) is written
under ``--work_dir``; then, each in its own SUBPROCESS (so the peak RSS is that job's alone):

1. ``convert``: ``peterrec.data.convert.convert(..., streaming=True)`` -> a TFRecord set;
2. ``train``: one epoch of a small NextItNet with sampled softmax (the pretraining job's data
   pipeline, task and ``Trainer``, then its end-of-epoch validation) on that set.

Each child reports its wall time and peak RSS (``VmHWM`` from /proc, ``ru_maxrss``); the training
child also the RSS after building the model (before the first step) and the trained positions/s.
Results: ``<out>.json``, ``<out>.md``, ``<out>.png``.

Usage (from a snapshot of the repository, so concurrent edits cannot break a long run)::

    rsync -a --exclude .venv --exclude checkpoints --exclude tfrecords /work/main/ /tmp/ooc-src/
    cd /tmp/ooc-src && PYTHONPATH=/tmp/ooc-src /work/main/.venv/bin/python benchmarks/out_of_core.py \\
        --work_dir /tmp/ooc --out benchmarks/results/out_of_core
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

import numpy as np

HEADER = "user_id:token\titem_id:token\ttimestamp:float\n"


def peak_rss_mb():
    """Peak resident set size of this process: (VmHWM, ru_maxrss) in MiB."""
    hwm = None
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) / 1024
    return hwm, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return None


def generate(path, interactions, num_items, seed, block_users=5000):
    """Writes ~``interactions`` rows: users of 20-80 Zipf-popular items, rows shuffled within blocks of users."""
    if os.path.exists(path):
        return
    rng = np.random.default_rng(seed)
    popularity = 1.0 / np.arange(1, num_items + 1) ** 0.8
    popularity /= popularity.sum()
    tmp = path + ".tmp"
    written, user = 0, 0
    with open(tmp, "w") as stream:
        stream.write(HEADER)
        while written < interactions:
            lengths = rng.integers(20, 81, size=block_users)
            lengths = lengths[np.cumsum(lengths) <= interactions - written] if written + lengths.sum() > interactions else lengths
            if not len(lengths):
                break
            users = np.repeat(np.arange(user, user + len(lengths)), lengths)
            steps = np.concatenate([np.arange(n) for n in lengths])
            items = rng.choice(num_items, size=len(users), p=popularity)
            times = 1_000_000 + steps * 60 + rng.integers(0, 60, size=len(users))
            order = rng.permutation(len(users))
            stream.writelines(f"u{u}\ti{i}\t{t}\n" for u, i, t in zip(users[order].tolist(), items[order].tolist(), times[order].tolist()))
            written += len(users)
            user += len(lengths)
    os.replace(tmp, path)


def child_convert(args):
    from peterrec.data.convert import convert

    import_hwm, _ = peak_rss_mb()  # TensorFlow's import (the TFRecord writer) is most of it
    t0 = time.perf_counter()
    metadata = convert(args.data, "inter", args.set_dir, streaming=True, num_shards=8, split="random", valid_fraction=0.01,
                       test_fraction=0.01, overwrite=True)
    seconds = time.perf_counter() - t0
    hwm, maxrss = peak_rss_mb()
    counts = metadata["counts"]
    return {"seconds": seconds, "vmhwm_mb": hwm, "ru_maxrss_mb": maxrss, "vmhwm_after_import_mb": import_hwm, "users": counts["users_kept"],
            "interactions": counts["interactions"], "vocab_size": metadata["vocab_size"],
            "partitions": metadata["streaming"]["partitions"], "input_mb": os.path.getsize(args.data) / 2**20}


def child_train(args):
    import keras
    import tensorflow as tf

    from peterrec import pretraining
    from peterrec.training import Trainer, TrainConfig

    tf.config.threading.set_inter_op_parallelism_threads(2)
    tf.config.threading.set_intra_op_parallelism_threads(2)
    cfg = pretraining.PretrainConfig(data=args.set_dir, model_dir=args.model_dir, embedding_dim=args.channels,
                                     dilations=tuple(args.dilations), loss="sampled_softmax", sampled_fraction=args.sampled_fraction, batch_size=args.batch_size,
                                     eval_batch_size=512, max_len=args.max_len, stride=args.stride, verbose=0)
    set_dir, metadata, vocab = pretraining.prepare_data(cfg)
    inputs = pretraining.build_inputs(set_dir, metadata, cfg)
    full_steps = inputs.steps_per_epoch
    if args.max_steps:
        inputs.steps_per_epoch = min(full_steps, args.max_steps)
    keras.utils.set_random_seed(0)
    trainer = Trainer(lambda: pretraining.build_task(cfg, vocab), inputs, args.model_dir,
                      TrainConfig(epochs=1, verbose=0, checkpoint_every_steps=0, learning_rate=1e-3), tf.distribute.get_strategy())
    rss_before = current_rss_mb()
    hwm_before, _ = peak_rss_mb()
    t0 = time.perf_counter()
    result = trainer.fit()
    seconds = time.perf_counter() - t0
    hwm, maxrss = peak_rss_mb()
    history = result.history[-1]
    return {"steps": inputs.steps_per_epoch, "full_epoch_steps": full_steps, "train_seconds": result.train_seconds,
            "fit_seconds": seconds, "positions_per_second": result.positions_per_second,
            "positions": result.positions_per_second * result.train_seconds, "loss": history["loss"],
            "val_hr@10": history.get("val_hr@10"), "valid_users": int(metadata["roles"]["valid"]),
            "rss_before_fit_mb": rss_before, "vmhwm_before_fit_mb": hwm_before, "vmhwm_mb": hwm, "ru_maxrss_mb": maxrss,
            "params": int(sum(np.prod(w.shape) for w in trainer.task.weights))}


def run_child(mode, extra, timeout):
    argv = [sys.executable, os.path.abspath(__file__), "--child", mode, *extra]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} child failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def write_results(out, rows, settings):
    with open(out + ".json", "w") as stream:
        json.dump({"settings": settings, "rows": rows}, stream, indent=2)
        stream.write("\n")
    lines = [
        "# Out-of-core: streaming conversion and one training epoch",
        "",
        f"Synthetic `.inter` files, {settings['items']} items at every size, users of 20-80 interactions; conversion "
        f"`convert(streaming=True)` (split random 98/1/1 %, 8 shards), then one epoch of NextItNet "
        f"(C={settings['channels']}, dilations {settings['dilations']}, max_len {settings['max_len']}, stride {settings['stride']}, "
        f"sampled softmax with {settings['sampled_fraction']:g} x {settings['items']} negatives, batch {settings['batch_size']}) with its end-of-epoch validation; each in its own subprocess. "
        f"Peak RSS = the child's `VmHWM`. {settings['machine']}.",
        "",
        "| interactions | input MiB | users | partitions | convert s | convert peak RSS MiB | train steps | train s | positions/s | "
        "RSS after model build MiB | train peak RSS MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        c, t = row["convert"], row["train"]
        steps = f"{t['steps']}" + ("" if t["steps"] == t["full_epoch_steps"] else f" of {t['full_epoch_steps']} (capped)")
        lines.append(
            f"| {row['interactions']:,} | {c['input_mb']:.0f} | {c['users']:,} | {c['partitions']} | {c['seconds']:.1f} | "
            f"{c['vmhwm_mb']:.0f}" + (f" ({c['vmhwm_after_import_mb']:.0f} after imports)" if "vmhwm_after_import_mb" in c else "")
            + f" | {steps} | {t['train_seconds']:.1f} | {t['positions_per_second']:,.0f} | "
            f"{t['rss_before_fit_mb']:.0f} | {t['vmhwm_mb']:.0f} |"
        )
    lines += ["", settings.get("note", ""), ""]
    with open(out + ".md", "w") as stream:
        stream.write("\n".join(lines))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [row["interactions"] / 1e6 for row in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.2))
    ax1.plot(sizes, [row["convert"]["vmhwm_mb"] for row in rows], marker="o", label="convert")
    ax1.plot(sizes, [row["train"]["vmhwm_mb"] for row in rows], marker="o", label="train epoch")
    ax1.set(xscale="log", xlabel="interactions (M)", ylabel="peak RSS (MiB)", title="peak RSS", ylim=(0, None))
    ax1.legend()
    ax2.plot(sizes, [row["train"]["positions_per_second"] for row in rows], marker="o", label="train positions/s")
    ax2.plot(sizes, [row["interactions"] / row["convert"]["seconds"] for row in rows], marker="o", label="convert interactions/s")
    ax2.set(xscale="log", xlabel="interactions (M)", title="throughput", ylim=(0, None))
    ax2.legend()
    fig.tight_layout()
    fig.savefig(out + ".png", dpi=100)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000000,4000000,16000000")
    parser.add_argument("--items", type=int, default=20000)
    parser.add_argument("--work_dir", default="/tmp/ooc")
    parser.add_argument("--out", default="benchmarks/results/out_of_core")
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--dilations", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 4])
    parser.add_argument("--max_len", type=int, default=32)
    parser.add_argument("--stride", type=int, default=16)
    parser.add_argument("--batch_size", type=int, default=512)
    parser.add_argument("--sampled_fraction", type=float, default=0.01, help="negatives per position = this share of the items")
    parser.add_argument("--max_steps", type=int, default=0, help="cap the epoch's steps (0: the full epoch)")
    parser.add_argument("--note", default="")
    parser.add_argument("--child", choices=["convert", "train"])
    parser.add_argument("--data")
    parser.add_argument("--set_dir")
    parser.add_argument("--model_dir")
    args = parser.parse_args()
    if args.child:
        report = child_convert(args) if args.child == "convert" else child_train(args)
        print(json.dumps(report))
        return
    os.makedirs(args.work_dir, exist_ok=True)
    settings = {key: getattr(args, key) for key in ("items", "channels", "dilations", "max_len", "stride", "batch_size", "sampled_fraction", "max_steps", "note")}
    settings["machine"] = f"{os.cpu_count()} CPU cores shared with other jobs ({platform.processor() or platform.machine()})"
    rows = []
    for size in [int(s) for s in args.sizes.split(",")]:
        data = os.path.join(args.work_dir, f"synthetic-{size}.inter")
        t0 = time.perf_counter()
        generate(data, size, args.items, seed=size)
        print(f"{size}: generated in {time.perf_counter() - t0:.0f}s", flush=True)
        set_dir, model_dir = os.path.join(args.work_dir, f"set-{size}"), os.path.join(args.work_dir, f"model-{size}")
        subprocess.run(["rm", "-rf", model_dir], check=True)
        converted = run_child("convert", ["--data", data, "--set_dir", set_dir], timeout=3600)
        print(f"{size}: convert {json.dumps(converted)}", flush=True)
        common = ["--channels", str(args.channels), "--dilations", ",".join(map(str, args.dilations)), "--max_len", str(args.max_len),
                  "--stride", str(args.stride), "--batch_size", str(args.batch_size), "--sampled_fraction", str(args.sampled_fraction), "--max_steps", str(args.max_steps)]
        trained = run_child("train", ["--set_dir", set_dir, "--model_dir", model_dir, *common], timeout=3600)
        print(f"{size}: train {json.dumps(trained)}", flush=True)
        rows.append({"interactions": size, "convert": converted, "train": trained})
        write_results(args.out, rows, settings)


if __name__ == "__main__":
    main()
