"""Training windows and evaluation views of the tf.data pipeline."""

import numpy as np
import pytest
import tensorflow as tf

from peterrec.data import dataset, tfrecord
from peterrec.features import ITEM_IDS, LABELS, LENGTHS, PAD_ID, ROLE_LOO, ROLE_TEST, ROLE_TRAIN, ROLE_VALID, SAMPLE_WEIGHT


def _windows(n, max_len, stride, pad_as_item=False):
    items = tf.constant(np.arange(100, 100 + n), tf.int32)
    return {k: v.numpy() for k, v in dataset._windows(items, max_len, stride, pad_as_item).items()}


@pytest.mark.parametrize("n", [2, 3, 9, 10, 11, 12, 23, 50, 51, 52, 97, 200])
@pytest.mark.parametrize("max_len, stride", [(8, 3), (8, 8), (8, 1), (50, 10), (50, 25), (50, 50)])
def test_every_target_once_with_enough_context(n, max_len, stride):
    w = _windows(n, max_len, stride)
    assert w[ITEM_IDS].shape == (dataset.count_windows(n, max_len, stride), max_len)
    trained = []
    for inputs, labels, weights in zip(w[ITEM_IDS], w[LABELS], w[SAMPLE_WEIGHT]):
        real = inputs != PAD_ID
        assert np.all(real[: real.sum()]) and not np.any(real[real.sum():])  # right-padded
        assert np.all(labels[real][:-1] == inputs[real][1:])  # labels are the next items
        for j in np.flatnonzero(weights):
            assert real[j] and labels[j] == inputs[j] + 1
            target = labels[j] - 100
            context = j + 1  # items visible to position j inside the window
            assert context >= min(target, max_len - stride + 1)
            trained.append(target)
    assert sorted(trained) == list(range(1, n))  # each target exactly once


def test_pad_as_item_reproduces_the_original_layout():
    w = _windows(6, 8, 3, pad_as_item=True)
    np.testing.assert_array_equal(w[ITEM_IDS][0], [0, 0, 0, 100, 101, 102, 103, 104])
    np.testing.assert_array_equal(w[LABELS][0], [0, 0, 100, 101, 102, 103, 104, 105])
    np.testing.assert_array_equal(w[SAMPLE_WEIGHT][0], np.ones(8))


def _record(items, role):
    return {"user": f"u{len(items)}-{role}", "items": list(items), "timestamps": [], "role": role, "targets": []}


@pytest.fixture
def tiny_set(tmp_path):
    records = [
        _record(range(10, 16), ROLE_LOO),  # train 10..13, valid 14, test 15
        _record(range(20, 25), ROLE_TRAIN),
        _record(range(30, 34), ROLE_VALID),
        _record(range(40, 43), ROLE_TEST),
    ]
    out = tmp_path / "set"
    hist = {"loo": {"6": 1}, "train": {"5": 1}, "valid": {"4": 1}, "test": {"3": 1}}
    tfrecord.write_tfrecord_set(records, str(out), 2, {"length_histogram": hist, "vocab_size": 50})
    return str(out), tfrecord.load_metadata(str(out))


def test_eval_views(tiny_set):
    set_dir, _ = tiny_set
    rows = {
        split: {int(r[LABELS]): (r[ITEM_IDS].tolist(), int(r[LENGTHS])) for r in dataset.eval_dataset(set_dir, split, max_len=3, batch_size=8).unbatch().as_numpy_iterator()}
        for split in ("valid", "test")
    }
    assert rows["valid"] == {14: ([11, 12, 13], 3), 33: ([30, 31, 32], 3)}
    assert rows["test"] == {15: ([12, 13, 14], 3), 42: ([40, 41, 0], 2)}


def test_train_epoch_covers_training_items_only(tiny_set):
    set_dir, metadata = tiny_set
    steps = dataset.steps_per_epoch(metadata, max_len=4, stride=2, batch_size=1)
    assert steps == dataset.num_train_windows(metadata, 4, 2) == 2  # one window per user (n <= max_len + 1)
    assert dataset.num_train_targets(metadata) == 3 + 4
    batches = list(dataset.train_dataset(set_dir, max_len=4, stride=2, batch_size=1, steps=steps, seed=0).as_numpy_iterator())
    targets = sorted(int(l) for b in batches for l, w in zip(b[LABELS][0], b[SAMPLE_WEIGHT][0]) if w > 0)
    assert targets == [11, 12, 13, 21, 22, 23, 24]  # never 14/15 (held out) nor valid/test users
    again = list(dataset.train_dataset(set_dir, max_len=4, stride=2, batch_size=1, steps=steps, seed=0).as_numpy_iterator())
    assert all(np.array_equal(a[ITEM_IDS], b[ITEM_IDS]) for a, b in zip(batches, again))  # seeded order
    resumed = list(dataset.train_dataset(set_dir, max_len=4, stride=2, batch_size=1, steps=steps, seed=0, skip_steps=1).as_numpy_iterator())
    assert all(np.array_equal(a[ITEM_IDS], b[ITEM_IDS]) for a, b in zip(batches[1:], resumed))


def test_shuffle_once_keeps_epoch_zeros_order_and_the_originals_step_count(tiny_set):
    """--shuffle once (the original): every epoch reads epoch 0's order; batch b only while (b + 1) * B < N."""
    set_dir, metadata = tiny_set
    assert dataset.epoch_steps(7, 3, "once") == 2 and dataset.epoch_steps(6, 3, "once") == 1 and dataset.epoch_steps(1, 3, "once") == 1
    assert dataset.epoch_steps(7, 3) == 3 and dataset.epoch_steps(6, 3) == 2  # default: the last batch is filled from the next pass
    assert dataset.steps_per_epoch(metadata, max_len=4, stride=2, batch_size=1, shuffle="once") == 1  # 2 windows, the last dropped
    assert dataset.order_seed(4, 3) == 4003 and dataset.order_seed(4, 3, "once") == 4000

    def epoch(e, shuffle):
        ds = dataset.train_dataset(set_dir, max_len=4, stride=2, batch_size=1, steps=2, seed=0, epoch=e, shuffle=shuffle)
        return [b[ITEM_IDS].tolist() for b in ds.as_numpy_iterator()]

    once = [epoch(e, "once") for e in range(6)]
    assert all(o == once[0] for o in once) and once[0] == epoch(0, "epoch")
    assert len({str(epoch(e, "epoch")) for e in range(6)}) > 1  # the default reorders (2 windows: some epochs differ)
