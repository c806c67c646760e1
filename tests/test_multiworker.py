"""Multi-worker training really runs: two worker processes on 127.0.0.1 (MultiWorkerMirroredStrategy,
CPU collectives over loopback) end with identical weights, equal to one process trained on the union of
their data; the data split gives every worker disjoint data and the same step count; bad cluster
settings are one clear error each."""

import json
import os
import signal
import socket

import numpy as np
import pytest
import tensorflow as tf

from peterrec import distribute
from peterrec.data import convert, dataset
from peterrec.errors import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 4

# One training run: "worker" under MultiWorkerMirroredStrategy (TF_CONFIG from the environment), or
# "union": one process, default strategy, whose global batch k is worker 0's batch k followed by
# worker 1's batch k (each worker's pipeline built with its own InputContext, exactly as the workers
# build it).
#
# Why the weights must agree: a worker's loss is the sum of its positions' losses divided by the
# all-reduced count of positions with loss in the *global* batch, and the optimizer sums the workers'
# gradients, so each step applies grad(sum over the global batch) / (global count): the gradient of the
# union process's mean loss over the same global batch. Same initial weights (MultiWorkerMirrored
# broadcasts the chief's initial values; all processes seed Keras alike), same batches, same Adam
# step -> the same weights up to float summation order.
WORKER = r"""
import json, os, signal, sys
import keras, numpy as np, tensorflow as tf
from peterrec import distribute, jobs, pretraining
from peterrec.data import dataset
from peterrec.training import Trainer, TrainConfig, TrainingInterrupted

set_dir, model_dir, out, mode, steps = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
interrupt_after = int(sys.argv[6]) if len(sys.argv) > 6 else -1  # worker 1 sends itself SIGTERM after this batch
cfg = pretraining.PretrainConfig(data=set_dir, model_dir=model_dir, embedding_dim=8, dilations=(1, 2), batch_size=16,
                                 eval_batch_size=64, max_len=12, stride=6, verbose=0)
set_dir, metadata, vocab = pretraining.prepare_data(cfg)
inputs = pretraining.build_inputs(set_dir, metadata, cfg)
inputs.steps_per_epoch = steps
callbacks = []
if mode == "worker":
    strategy = distribute.get_strategy("multiworker", tf_config=os.environ["TF_CONFIG"])
    os.makedirs(model_dir, exist_ok=True)
    jobs.check_job_config(model_dir, {"tf_config": os.environ["TF_CONFIG"]})  # only the chief writes job_config.json
    if strategy.cluster_resolver.task_id == 1 and interrupt_after >= 0:
        class Preempt(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                if batch == interrupt_after:
                    os.kill(os.getpid(), signal.SIGTERM)
        callbacks.append(Preempt())
else:
    strategy = tf.distribute.get_strategy()
    def union(epoch, skip, ctx):
        parts = [dataset.train_dataset(set_dir, max_len=cfg.max_len, stride=cfg.stride, batch_size=cfg.batch_size, steps=steps,
                                       seed=cfg.seed, epoch=epoch, skip_steps=skip, input_context=tf.distribute.InputContext(2, i, 2))
                 for i in range(2)]
        return tf.data.Dataset.zip(tuple(parts)).map(lambda a, b: tf.nest.map_structure(lambda x, y: tf.concat([x, y], 0), a, b))
    inputs.train = union
keras.utils.set_random_seed(0)
trainer = Trainer(lambda: pretraining.build_task(cfg, vocab), inputs, model_dir,
                  TrainConfig(epochs=1, verbose=0, checkpoint_every_steps=0), strategy, callbacks=callbacks)
initial = np.concatenate([w.numpy().ravel() for w in trainer.task.weights])
interrupted = exit_code = None
try:
    result = trainer.fit()
except TrainingInterrupted as err:
    interrupted, exit_code = str(err), err.exit_code  # what pipelines.flags.run exits with
np.savez(out, initial=initial, final=np.concatenate([w.numpy().ravel() for w in trainer.task.weights]))
print(json.dumps({"chief": trainer.is_chief, "steps": int(trainer.global_step.numpy()), "replicas": strategy.num_replicas_in_sync,
                  "model_dir": trainer.model_dir, "model_dir_left": os.path.exists(trainer.model_dir), "interrupted": interrupted,
                  "exit_code": exit_code}))
"""


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.fixture(scope="module")
def tfrecord_sets(small_world, tmp_path_factory):
    """``num_shards -> TFRecord set`` of the small world (converted once per module)."""
    root, sets = str(tmp_path_factory.mktemp("mw") / "tfr"), {}

    def get(num_shards):
        if num_shards not in sets:
            sets[num_shards] = convert.resolve_data(str(small_world / "source.inter"), "auto", root, num_shards=num_shards)
        return sets[num_shards]

    return get


def _worker_envs(n):
    """Environments of ``n`` worker processes of one loopback cluster (free ports)."""
    cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(n)]}
    env = {"TF_CONFIG": None}  # on top of this process's environment, without a cluster
    return [dict(env, TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})) for i in range(n)], env


def _run_all(cli, commands, timeout=240):
    """Run ``(module, argv, env)`` command lines concurrently (``module`` None: ``python -c WORKER``); returns their
    stdouts. Bounded: whatever still runs at the end (a failed assertion, a timeout, a hung collective) is killed with
    its process group."""
    procs = []
    try:
        for module, argv, env in commands:
            procs.append(cli.start(module, argv, cwd=REPO, env=env, code=None if module else WORKER))
        outputs = []
        for proc in procs:
            stdout, stderr = proc.communicate(timeout=timeout)
            assert proc.returncode == 0, stderr[-3000:]
            outputs.append(stdout)
        return outputs
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _worker_commands(tfrecord_set, tmp_path, tag, union=True, interrupt_after=-1):
    """Two workers (sharing ``tmp_path/model``, as on a shared file system) and optionally the union process."""
    worker_envs, env = _worker_envs(2)
    runs = [("worker", i, worker_env) for i, worker_env in enumerate(worker_envs)] + ([("union", 0, env)] if union else [])
    return [
        (None, [tfrecord_set, str(tmp_path / ("model" if mode == "worker" else "union")),
                str(tmp_path / f"{tag}{mode}{index}.npz"), mode, str(STEPS), str(interrupt_after)], run_env)
        for mode, index, run_env in runs
    ]


def _only_chief_wrote(model_dir, reports):
    """The non-chief worker's scratch directory is gone, nothing of it is in model_dir, job_config.json is the chief's."""
    assert reports[0]["chief"] and not reports[1]["chief"]
    assert reports[0]["model_dir"] == str(model_dir) and reports[1]["model_dir"] != reports[0]["model_dir"]
    assert not reports[1]["model_dir_left"] and not str(reports[1]["model_dir"]).startswith(str(model_dir))
    assert set(os.listdir(model_dir)) <= {".lock", "ckpt", "history.jsonl", "job_config.json", "logs"}  # no worker scratch
    assert set(os.listdir(model_dir / "ckpt")) <= {"best", "checkpoint"} | {n for n in os.listdir(model_dir / "ckpt") if n.startswith("ckpt-")}
    with open(model_dir / "job_config.json") as f:
        assert json.loads(json.load(f)["tf_config"])["task"]["index"] == 0


def test_two_workers_match_each_other_and_one_process_on_their_union(tfrecord_sets, tmp_path, cli):
    reports = [json.loads(out.strip().splitlines()[-1]) for out in _run_all(cli, _worker_commands(tfrecord_sets(4), tmp_path, ""))]
    w0, w1, union = (np.load(tmp_path / name) for name in ("worker0.npz", "worker1.npz", "union0.npz"))
    assert [r["steps"] for r in reports] == [STEPS] * 3 and [r["replicas"] for r in reports] == [2, 2, 1]
    assert np.abs(w0["final"] - w0["initial"]).max() > 1e-3  # it trained
    np.testing.assert_array_equal(w0["initial"], union["initial"])
    np.testing.assert_array_equal(w0["final"], w1["final"])  # the replicas stay in sync
    np.testing.assert_allclose(w0["final"], union["final"], atol=1e-5, rtol=0)
    # only the chief (worker 0) writes into --model_dir; the other worker writes to a temporary directory, removed at the end
    _only_chief_wrote(tmp_path / "model", reports)
    assert os.path.exists(tmp_path / "model" / "history.jsonl")


def test_sigterm_on_one_worker_saves_on_all_and_the_cluster_resumes(tfrecord_sets, tmp_path, cli):
    """Preemption: worker 1 gets SIGTERM after step 2; both workers stop after that same step (no hung
    collective), the chief's checkpoint holds it, and re-running both resumes to the weights of an
    uninterrupted run (the union process)."""
    reports = [json.loads(out.strip().splitlines()[-1])
               for out in _run_all(cli, _worker_commands(tfrecord_sets(4), tmp_path, "cut", interrupt_after=1))]
    assert [r["steps"] for r in reports] == [2, 2, STEPS]
    assert "interrupted by SIGTERM/SIGINT on another worker at global step 2" in reports[0]["interrupted"]
    assert "interrupted by SIGTERM at global step 2" in reports[1]["interrupted"] and reports[2]["interrupted"] is None
    assert [r["exit_code"] for r in reports] == [143, 143, None]  # both workers exit 143, as the preempted one
    saved = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(tmp_path / "model" / "ckpt")))
    assert saved.get_tensor("global_step/.ATTRIBUTES/VARIABLE_VALUE") == 2
    _only_chief_wrote(tmp_path / "model", reports)
    resumed = [json.loads(out.strip().splitlines()[-1])
               for out in _run_all(cli, _worker_commands(tfrecord_sets(4), tmp_path, "resumed", union=False))]
    assert [r["steps"] for r in resumed] == [STEPS, STEPS] and not any(r["interrupted"] for r in resumed)
    w0, w1, union = (np.load(tmp_path / name) for name in ("resumedworker0.npz", "resumedworker1.npz", "cutunion0.npz"))
    np.testing.assert_array_equal(w0["final"], w1["final"])
    np.testing.assert_allclose(w0["final"], union["final"], atol=1e-5, rtol=0)
    _only_chief_wrote(tmp_path / "model", resumed)


@pytest.mark.slow  # 1-2 min on 2 shared cores; the test above covers the loop, this one the pipeline's chief-only outputs
def test_pretrain_pipeline_on_two_workers_exports_once(tfrecord_sets, tmp_path, cli):
    worker_envs, _ = _worker_envs(2)
    model_dir = tmp_path / "model"
    argv = ["--strategy", "multiworker", "--data", tfrecord_sets(4), "--model_dir",
            str(model_dir), "--epochs", "1", "--embedding_dim", "8", "--dilations", "1,2", "--batch_size", "64", "--max_len", "12",
            "--stride", "6", "--verbose", "0"]
    summaries = [json.loads(out[out.index("{"):]) for out in _run_all(cli, [("pipelines.pretrain", argv, env) for env in worker_envs], timeout=400)]
    assert summaries[0]["export_dir"] == str(model_dir / "export" / "1") and summaries[1]["export_dir"] is None
    assert summaries[0]["test"] == summaries[1]["test"]  # the same model, evaluated on every worker's share together
    assert os.listdir(model_dir / "export") == ["1"] and (model_dir / "metrics.json").exists()


def _batches(ds):
    return [{k: v.numpy() for k, v in batch.items()} for batch in ds]


@pytest.mark.parametrize("num_shards,workers", [(4, 2), (2, 3)])  # whole files per worker; fewer files than workers
def test_workers_read_disjoint_data_and_run_equal_step_counts(tfrecord_sets, num_shards, workers):
    set_dir = tfrecord_sets(num_shards)
    users = [
        sorted(r["user"].numpy() for r in dataset._records(set_dir, input_context=tf.distribute.InputContext(workers, i, workers)))
        for i in range(workers)
    ]
    everyone = sorted(r["user"].numpy() for r in dataset._records(set_dir))
    assert all(users) and sorted(sum(users, [])) == everyone  # disjoint, nobody lost, nobody idle
    for i in range(workers):
        ctx = tf.distribute.InputContext(workers, i, workers)
        batches = _batches(dataset.train_dataset(set_dir, max_len=12, stride=6, batch_size=6 * workers, steps=5, seed=1, input_context=ctx))
        assert len(batches) == 5 and all(b["item_ids"].shape == (6, 12) for b in batches)


def test_one_pipeline_feeding_two_replicas_yields_a_batch_per_replica_per_step(tfrecord_sets):
    set_dir = tfrecord_sets(2)
    ctx = tf.distribute.InputContext(num_input_pipelines=1, input_pipeline_id=0, num_replicas_in_sync=2)
    args = dict(max_len=12, stride=6, batch_size=8, steps=3, seed=1)
    mirrored = _batches(dataset.train_dataset(set_dir, **args, input_context=ctx))
    single = _batches(dataset.train_dataset(set_dir, **args))
    assert len(mirrored) == 6 and mirrored[0]["item_ids"].shape == (4, 12)
    # the two replicas' halves of step k are the single-replica batch k
    np.testing.assert_array_equal(np.concatenate([mirrored[0]["item_ids"], mirrored[1]["item_ids"]]), single[0]["item_ids"])
    resumed = _batches(dataset.train_dataset(set_dir, **args, skip_steps=2, input_context=ctx))
    assert len(resumed) == 2 and np.array_equal(resumed[0]["item_ids"], mirrored[4]["item_ids"])
    with pytest.raises(ConfigError, match="--batch_size 9"):
        dataset.train_dataset(set_dir, **(args | {"batch_size": 9}), input_context=ctx)


CLUSTER = {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}


@pytest.mark.parametrize(
    "tf_config,message",
    [
        (None, "needs the TF_CONFIG environment variable"),
        ("{'cluster': 1}", "TF_CONFIG is not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        (json.dumps({"task": {"type": "worker", "index": 0}}), "'cluster' must map"),
        (json.dumps({"cluster": {"worker": "127.0.0.1:1"}, "task": {"type": "worker", "index": 0}}), "list of 'host:port'"),
        (json.dumps({"cluster": CLUSTER | {"ps": ["127.0.0.1:3"]}, "task": {"type": "worker", "index": 0}}), "'ps' is not supported"),
        (json.dumps({"cluster": CLUSTER}), "'task' must be"),
        (json.dumps({"cluster": CLUSTER, "task": {"type": "chief", "index": 0}}), "task type 'chief' is not in the cluster"),
        (json.dumps({"cluster": CLUSTER, "task": {"type": "worker", "index": 2}}), "task index 2 is out of range"),
    ],
)
def test_bad_tf_config_is_one_clear_error(tf_config, message):
    with pytest.raises(ConfigError, match=None) as err:
        distribute.get_strategy("multiworker", tf_config=tf_config)
    assert message in str(err.value)


def test_cluster_resolver_reads_tf_config_without_the_environment():
    resolver = distribute.cluster_resolver(json.dumps({"cluster": CLUSTER, "task": {"type": "worker", "index": 1}}))
    assert resolver.task_type == "worker" and resolver.task_id == 1
    assert resolver.cluster_spec().as_dict() == CLUSTER


def test_tpu_without_a_tpu_is_one_clear_error(monkeypatch):
    monkeypatch.delenv("TPU_NAME", raising=False)
    with pytest.raises(ConfigError, match="--strategy tpu: no TPU found"):
        distribute.get_strategy("tpu")
    assert distribute.get_strategy("auto") is tf.distribute.get_strategy()  # no TPU, no GPUs: the default strategy
