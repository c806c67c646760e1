"""RecBole 1.2.1's own time per epoch on the same data and machine (``benchmarks.zoo --recbole``).

A child process runs RecBole's NextItNet for one epoch when ``recbole`` and ``torch`` can be imported
(by this interpreter or ``--recbole_python``); otherwise the result says why it was skipped.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

from peterrec.errors import ConfigError


_RECBOLE_CHILD = r'''
import json, os, resource, sys, time
args = json.loads(sys.argv[1])
try:
    import torch
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.model.sequential_recommender import NextItNet
    from recbole.trainer import Trainer
    from recbole.utils import init_seed
except ImportError as err:
    print(json.dumps({"skipped": f"cannot import recbole/torch ({err})"}))
    sys.exit(0)
config = Config(model="NextItNet", dataset=args["dataset"], config_dict={
    "data_path": args["data_path"], "checkpoint_dir": args["checkpoint_dir"],
    "USER_ID_FIELD": "user_id", "ITEM_ID_FIELD": "item_id", "TIME_FIELD": "timestamp",
    "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
    "MAX_ITEM_LIST_LENGTH": 50, "train_batch_size": 256, "learning_rate": 0.001, "embedding_size": 64,
    "loss_type": "CE", "train_neg_sample_args": None, "epochs": 1,
    "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full", "group_by": "user"},
    "metrics": ["Hit", "NDCG", "MRR"], "topk": [10], "valid_metric": "MRR@10",
    "device": "cpu", "use_gpu": False, "show_progress": False, "seed": args["seed"], "reproducibility": True,
})
init_seed(config["seed"], config["reproducibility"])
dataset = create_dataset(config)
train_data, valid_data, test_data = data_preparation(config, dataset)
model = NextItNet(config, train_data.dataset).to(config["device"])
trainer = Trainer(config, model)
start, cpu_start = time.perf_counter(), time.process_time()
loss = trainer._train_epoch(train_data, 0, show_progress=False)
seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
loss = sum(loss) if isinstance(loss, tuple) else loss
print(json.dumps({
    "seconds_per_epoch": seconds, "cpu_seconds_per_epoch": cpu_seconds, "train_samples": len(train_data.dataset), "loss": float(loss),
    "samples_per_second": len(train_data.dataset) / seconds, "torch": torch.__version__,
    "torch_threads": torch.get_num_threads(), "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
}))
'''


def recbole_layout(data):
    """``(data_path, dataset)`` for RecBole, which reads ``<data_path>/<dataset>/<dataset>.inter``."""
    path = os.path.abspath(data)
    dataset = os.path.splitext(os.path.basename(path))[0]
    if os.path.basename(os.path.dirname(path)) != dataset or not path.endswith(".inter"):
        raise ConfigError(f"--recbole: RecBole reads <dir>/<name>/<name>.inter; {data} is not laid out that way")
    return os.path.dirname(os.path.dirname(path)), dataset


def time_recbole_epoch(data, python=None, seed=1, timeout=7200):
    """Wall time of one RecBole 1.2.1 NextItNet training epoch on ``data`` (batch 256, Adam 1e-3, embedding 64).

    Runs in a child interpreter (``python``, default this one). Returns its
    measurements, or ``{"skipped": reason}`` when recbole or torch do not import
    there (``pip install --no-deps recbole==1.2.1`` plus torch CPU). A child that
    fails otherwise raises ConfigError with its last output lines.
    """
    import importlib.util

    python = python or sys.executable
    if python == sys.executable and not all(importlib.util.find_spec(m) for m in ("recbole", "torch")):
        return {"skipped": "recbole or torch is not installed (pip install --no-deps recbole==1.2.1 plus torch CPU)"}
    data_path, dataset = recbole_layout(data)
    with tempfile.TemporaryDirectory(prefix="recbole-") as work:  # RecBole writes log/ and saved/ into its cwd
        args = {"data_path": data_path, "dataset": dataset, "seed": seed, "checkpoint_dir": os.path.join(work, "saved")}
        try:
            proc = subprocess.run([python, "-c", _RECBOLE_CHILD, json.dumps(args)], cwd=work, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as err:
            raise ConfigError(f"--recbole: one RecBole epoch did not finish within {timeout} s") from err
        except OSError as err:
            raise ConfigError(f"--recbole_python {python}: cannot run ({err.strerror or err})") from err
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
        raise ConfigError(f"--recbole: the RecBole epoch failed (exit {proc.returncode}):\n{tail}")
    return json.loads(lines[-1])


# --- running ------------------------------------------------------------------------------------
