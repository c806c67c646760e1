"""One training loop under several strategies: same loss curve and weights."""

import json

import pytest

from peterrec import distribute
from peterrec.errors import ConfigError

SCRIPT = r"""
import json, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras, numpy as np
from peterrec import pretraining
from peterrec.training import Trainer, TrainConfig

data, tmp, name = sys.argv[1], sys.argv[2], sys.argv[3]
cfg = pretraining.PretrainConfig(data=data, tfrecord_dir=tmp + "/tfr", model_dir=tmp + "/" + name, embedding_dim=16,
                                 dilations=(1, 2), batch_size=32, max_len=20, stride=10, verbose=0, num_shards=4)
set_dir, metadata, vocab = pretraining.prepare_data(cfg)
inputs = pretraining.build_inputs(set_dir, metadata, cfg)
inputs.steps_per_epoch = 6
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]) if name == "mirrored" else tf.distribute.get_strategy()
losses = []
class Record(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        losses.append(logs["loss"])
keras.utils.set_random_seed(0)
trainer = Trainer(lambda: pretraining.build_task(cfg, vocab), inputs, cfg.model_dir, TrainConfig(epochs=1, verbose=0, checkpoint_every_steps=0), strategy, [Record()])
trainer.fit()
print(json.dumps({"replicas": strategy.num_replicas_in_sync, "losses": losses,
                  "checksum": [float(np.abs(w.numpy()).sum()) for w in trainer.task.weights]}))
"""


def _run(cli, name, data, tmp):
    done = cli.code(SCRIPT, [data, tmp, name])
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_mirrored_two_replicas_match_the_default_strategy(mini_world, tmp_path, cli):
    default = _run(cli, "default", mini_world / "source.inter", tmp_path)
    mirrored = _run(cli, "mirrored", mini_world / "source.inter", tmp_path)
    assert default["replicas"] == 1 and mirrored["replicas"] == 2
    assert len(default["losses"]) == len(mirrored["losses"]) == 6
    for a, b in zip(default["losses"], mirrored["losses"]):
        assert abs(a - b) < 1e-4 * max(1.0, abs(a))
    for a, b in zip(default["checksum"], mirrored["checksum"]):
        assert abs(a - b) <= 1e-4 * max(1.0, abs(a))


def test_strategy_errors_name_the_flag():
    with pytest.raises(ConfigError, match="--strategy"):
        distribute.get_strategy("horovod")
    with pytest.raises(ConfigError, match="TF_CONFIG"):
        distribute.get_strategy("multiworker", tf_config=None)


def test_a_chief_worker_tf_config_names_the_chief_as_the_writer(monkeypatch):
    """A ``"chief"`` task type (TF_CONFIG of a chief/worker cluster): the chief writes, worker 0 does not."""
    from peterrec.training import cluster as cluster_mod
    from peterrec.training import locking

    cluster = {"chief": ["localhost:20000"], "worker": ["localhost:20001", "localhost:20002"]}
    text = lambda kind, index: json.dumps({"cluster": cluster, "task": {"type": kind, "index": index}})  # noqa: E731
    parsed = distribute.parse_tf_config(text("chief", 0))
    assert parsed == (cluster, "chief", 0, "grpc")
    resolver = distribute.cluster_resolver(text("chief", 0))
    assert resolver.task_type == "chief" and resolver.task_id == 0 and resolver.cluster_spec().as_dict() == cluster
    assert [locking.is_chief_task(text(k, i)) for k, i in (("chief", 0), ("worker", 0), ("worker", 1))] == [True, False, False]
    without_chief = json.dumps({"cluster": {"worker": cluster["worker"]}, "task": {"type": "worker", "index": 0}})
    assert locking.is_chief_task(without_chief)

    class Fake:  # what is_chief reads of a MultiWorkerMirroredStrategy: its cluster resolver
        def __init__(self, tf_config):
            self.resolver = distribute.cluster_resolver(tf_config)

    monkeypatch.setattr(cluster_mod, "_cluster", lambda strategy: strategy.resolver)
    for (kind, index), expected in {("chief", 0): True, ("worker", 0): False, ("worker", 1): False}.items():
        assert cluster_mod.is_chief(Fake(text(kind, index))) is expected, (kind, index)
    with pytest.raises(ConfigError, match="task index 1 is out of range for 1 chief"):
        distribute.parse_tf_config(text("chief", 1))
