"""MIIR: SFSA/DFSA masks, the fused token grid, MII and cloze losses, masked items, training rows, learning, MII -> finetune."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from peterrec import export
from peterrec.data import item_features
from peterrec.errors import ConfigError
from peterrec.features import ITEM_IDS, LABELS, MASK_ID, PAD_ID, SAMPLE_WEIGHT
from peterrec.models.miir import MIIR, attention_mask, sfsa_mask
from peterrec.tasks import miir as tasks
from peterrec.recipes.miir import MIIRConfig, build_miir_job, run_miir
from peterrec.side_info import prepare, sampled_metrics
from peterrec.training import Trainer as JobTrainer  # (a Trainer with the job's metric_fn)
from peterrec.training import PopularityScorer

V = 24
SPEC = [
    {"name": "cat", "kind": "token", "size": 5, "width": 1},
    {"name": "tags", "kind": "token_seq", "size": 6, "width": 2},
    {"name": "price", "kind": "float", "size": 0, "width": 1},
]


def _features():
    """Tables over V ids: item 10 has every field missing, item 11 misses cat and price."""
    rng = np.random.default_rng(0)
    cat = rng.integers(2, 5, V).astype(np.int32)
    tags = np.stack([rng.integers(2, 6, V), rng.integers(0, 6, V)], 1).astype(np.int32)
    price = rng.normal(size=V).astype(np.float32)
    for table, missing in ((cat, 1), (tags[:, 0], 1)):
        table[1:4] = missing  # OOV, MASK, SEP rows: missing
        table[10] = missing
    cat[11], cat[0], tags[0] = 1, 0, 0
    tags[1:4, 1] = tags[10, 1] = 0
    price[:4] = price[10] = price[11] = 0.0
    present = np.ones((V, 3), bool)
    present[:4] = False
    present[10] = False
    present[11, [0, 2]] = False
    return item_features.ItemFeatures(["cat", "tags", "price"], {"cat": "token", "tags": "token_seq", "price": "float"},
                                      {"cat": list("abc"), "tags": list("wxyz")}, {"cat": cat, "tags": tags, "price": price}, present, "h", {})


def _network(**kwargs):
    keras.utils.set_random_seed(0)
    net = MIIR(V, SPEC, embedding_dim=8, num_layers=kwargs.pop("num_layers", 2), num_heads=2, inner_size=16, dropout=0.0, max_positions=10, **kwargs)
    net.features.assign(_features())
    return net


# ---------------------------------------------------------------- masks
def test_sfsa_mask_pattern_on_a_small_grid():
    """L = 3 positions x F = 2 fields, tokens position-major: (0,id) (0,c) (1,id) (1,c) (2,id) (2,c)."""
    expected = np.array([
        [1, 1, 1, 0, 1, 0],
        [1, 1, 0, 1, 0, 1],
        [1, 0, 1, 1, 1, 0],
        [0, 1, 1, 1, 0, 1],
        [1, 0, 1, 0, 1, 1],
        [0, 1, 0, 1, 1, 1],
    ], bool)
    assert np.array_equal(sfsa_mask(3, 2), expected)
    real = tf.constant([[True, True, False]])  # position 2 is padding: both its tokens are masked keys
    dense = attention_mask(real, 2, sparse=False).numpy()[0]
    sparse = attention_mask(real, 2, sparse=True).numpy()[0]
    assert np.array_equal(dense, np.tile([1, 1, 1, 1, 0, 0], (6, 1)).astype(bool))
    assert np.array_equal(sparse, expected & dense)


def test_sfsa_layer_sees_only_its_item_and_its_field():
    net = _network(num_layers=1, attention="sfsa")
    ids = np.array([[4, 5, 6]])
    base = net.encode(ids).numpy()[0]
    other = net.encode(np.array([[4, 5, 7]])).numpy()[0]  # item at position 2 changes all its fields
    changed_tokens = ~np.isclose(base, other).all(-1)  # [L, F]
    # after one SFSA layer, (l, f) for l != 2 sees position 2 only through field f: every token changes
    # (the ID field changed everywhere), but a field-only change of item 2 reaches only that field's column
    assert changed_tokens[2].all()
    field_only = net.encode(ids, field_mask=np.array([[[0, 0, 0], [0, 0, 0], [1, 0, 0]]], np.float32)).numpy()[0]
    reached = ~np.isclose(base, field_only).all(-1)
    assert reached[2].all() and reached[:2, 1].all() and not reached[:2, [0, 2, 3]].any()
    dfsa = _network(num_layers=1)
    dense_reached = ~np.isclose(dfsa.encode(ids).numpy()[0], dfsa.encode(ids, field_mask=np.array([[[0, 0, 0]] * 2 + [[1, 0, 0]]], np.float32)).numpy()[0]).all(-1)
    assert dense_reached.all()  # DFSA: every token sees every token


def test_padding_never_changes_real_tokens():
    net = _network()
    a = net.encode(np.array([[4, 5, 6, PAD_ID, PAD_ID]])).numpy()[0, :3]
    b = net.encode(np.array([[4, 5, 6, PAD_ID]])).numpy()[0, :3]
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- masked items and fields
def test_a_masked_item_has_every_field_missing_in_finetuning_and_evaluation():
    net = _network()
    looked_up = net.features(tf.constant([MASK_ID]))
    assert looked_up["cat"][0].numpy().tolist() == [item_features.MISSING_VALUE]
    assert looked_up["tags"][0].numpy().tolist() == [[item_features.MISSING_VALUE, 0]]
    assert all(float(looked_up[f][1][0]) == 0.0 for f in ("cat", "tags", "price"))
    # the cloze input MASK_ID at a position == the item's id masked and all its side fields masked to "missing"
    masked_id = net.encode(np.array([[4, MASK_ID, 6]])).numpy()
    all_cells = np.array([[[0, 0, 0], [1, 1, 1], [0, 0, 0]]], np.float32)
    np.testing.assert_allclose(net.encode(np.array([[4, MASK_ID, 6]]), field_mask=all_cells).numpy(), masked_id, atol=1e-6)
    # evaluation and serving mask the slot after the last item (a full row drops its oldest item)
    task = tasks.MIIRTask(net)
    logits = task.score_last(np.array([[4, 5, 6, 0], [7, 8, 9, 12]]), np.array([3, 4])).numpy()
    h1 = net.encode(np.array([[4, 5, 6, MASK_ID]])).numpy()[0, 3, 0]
    h2 = net.encode(np.array([[8, 9, 12, MASK_ID]])).numpy()[0, 3, 0]
    np.testing.assert_allclose(logits, np.stack([h1, h2]) @ net.item_embedding.embeddings.numpy().T, rtol=1e-4, atol=1e-4)


def test_mii_loss_ignores_padding_and_originally_missing_fields():
    task = tasks.MIIRTask(_network(), stage="mii")
    ids = np.array([[4, 10, 11, 5, PAD_ID, PAD_ID]])
    everything = np.ones((1, 6, 4), np.float32)  # every cell drawn for masking, padding included
    cells = {k: v.numpy().tolist() for k, v in task.mii_cells({ITEM_IDS: ids, tasks.CELL_MASK: everything}).items()}
    assert cells["item_id"] == [[0, 0], [0, 1], [0, 2], [0, 3]]  # no padded position
    assert cells["cat"] == [[0, 0], [0, 3]]  # item 10 (all missing) and 11 (cat missing) are never targets
    assert cells["tags"] == [[0, 0], [0, 2], [0, 3]]
    assert cells["price"] == [[0, 0], [0, 3]]
    batch = {ITEM_IDS: ids, tasks.CELL_MASK: everything}
    loss = float(task.loss_sum(batch, training=False))
    # what the padded cells or the missing fields' (absent) values hold changes nothing
    other_pads = {ITEM_IDS: np.array([[4, 10, 11, 5, PAD_ID, PAD_ID, PAD_ID]]), tasks.CELL_MASK: np.ones((1, 7, 4), np.float32)}
    np.testing.assert_allclose(float(task.loss_sum(other_pads, training=False)), loss, rtol=1e-5)
    # hand value: per sequence, the summed loss of its 11 cells / 11
    net = task.backbone
    real = (ids != PAD_ID)[..., None]
    inputs = np.where(ids != PAD_ID, MASK_ID, ids)
    h = net.encode(inputs, field_mask=(everything[..., 1:] * real)).numpy()[0]
    f = _features()

    def ce(logits, label):
        logits = logits - logits.max()
        return np.log(np.exp(logits).sum()) - logits[label]

    total = sum(ce(h[p, 0] @ net.item_embedding.embeddings.numpy().T, ids[0, p]) for p in range(4))
    total += sum(ce(net.field_output("cat", h[p, 1][None]).numpy()[0], f.tables["cat"][ids[0, p]]) for p in (0, 3))
    for p in (0, 2, 3):
        logits = net.field_output("tags", h[p, 2][None]).numpy()[0]
        target = np.zeros(6)
        target[[v for v in f.tables["tags"][ids[0, p]] if v]] = 1
        total += np.sum(np.maximum(logits, 0) - logits * target + np.log1p(np.exp(-np.abs(logits))))
    total += sum((net.field_output("price", h[p, 3][None]).numpy()[0, 0] - f.tables["price"][ids[0, p]]) ** 2 for p in (0, 3))
    np.testing.assert_allclose(loss, total / 11, rtol=1e-4)
    assert float(task.loss_count(batch)) == 1.0


def test_rec_loss_is_the_mean_ce_of_masked_positions_per_sequence():
    task = tasks.MIIRTask(_network(), stage="rec")
    labels = np.array([[4, 5, 6, 0], [7, 8, 0, 0]])
    weight = np.array([[1, 0, 1, 0], [0, 1, 0, 0]], np.float32)
    batch = {ITEM_IDS: np.where(weight > 0, MASK_ID, labels), LABELS: labels, SAMPLE_WEIGHT: weight}
    h = task.backbone.encode(batch[ITEM_IDS]).numpy()[:, :, 0]
    logits = h @ task.backbone.item_embedding.embeddings.numpy().T
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    expected = -(logp[0, 0, 4] + logp[0, 2, 6]) / 2 - logp[1, 1, 8]
    np.testing.assert_allclose(float(task.loss_sum(batch, training=False)), expected, rtol=1e-4)
    assert float(task.loss_count(batch)) == 2.0


@pytest.mark.parametrize("stage", ["mii", "rec"])
def test_mixed_bfloat16_losses_are_float32_and_close_to_the_float32_losses(stage):
    """``--mixed_precision`` on a CPU: bfloat16 compute with float32 tables, outputs and losses (every field kind)."""
    from peterrec import distribute

    ids = np.array([[4, 10, 11, 5, PAD_ID, PAD_ID], [6, 7, 8, 9, 12, 13]])
    weight = np.array([[1, 0, 1, 1, 0, 0], [0, 1, 0, 1, 1, 0]], np.float32)
    batch = {ITEM_IDS: ids, tasks.CELL_MASK: np.ones((2, 6, 4), np.float32)} if stage == "mii" else {
        ITEM_IDS: np.where(weight > 0, MASK_ID, ids), LABELS: ids, SAMPLE_WEIGHT: weight}
    full = tasks.MIIRTask(_network(), stage=stage)
    with distribute.dtype_policy("mixed_bfloat16"):
        mixed = tasks.MIIRTask(_network(), stage=stage)
    mixed.backbone.set_weights(full.backbone.get_weights())
    loss = mixed.loss_sum(batch, training=False)
    assert loss.dtype == tf.float32
    np.testing.assert_allclose(float(loss), float(full.loss_sum(batch, training=False)), rtol=3e-2)


# ---------------------------------------------------------------- training rows
def test_chunks_count_from_the_oldest_and_masks_stay_on_real_positions():
    chunks, lengths = tasks.chunks_from_start(tf.constant([11, 12, 13, 14, 15]), 2)
    assert chunks.numpy().tolist() == [[11, 12], [13, 14], [15, 0]] and lengths.numpy().tolist() == [2, 2, 1]
    seed = tf.constant([3, 4], tf.int64)
    mii = tasks.mask_chunks(chunks, lengths, seed, stage="mii", num_fields=3, mask_prob=1.0)
    assert mii[tasks.CELL_MASK].numpy()[2, 1].tolist() == [0, 0, 0] and mii[tasks.CELL_MASK].numpy()[:2].all()
    rec = tasks.mask_chunks(chunks, lengths, seed, stage="rec", num_fields=3, mask_prob=0.5)
    weight = rec[SAMPLE_WEIGHT].numpy()
    assert weight[2, 1] == 0 and np.array_equal(rec[ITEM_IDS].numpy() == MASK_ID, weight > 0)
    assert rec[LABELS].numpy().tolist() == chunks.numpy().tolist()
    again = tasks.mask_chunks(chunks, lengths, seed, stage="rec", num_fields=3, mask_prob=0.5)
    assert np.array_equal(again[SAMPLE_WEIGHT].numpy(), weight)  # stateless: the same seed, the same masks


def test_mii_stage_runs_every_epoch_unless_patience_is_given():
    assert MIIRConfig().patience == 3
    assert MIIRConfig(stage="mii").patience == 8 and MIIRConfig(stage="mii", epochs=20).patience == 20
    assert MIIRConfig(stage="mii", patience=2).patience == 2


def test_config_errors_name_the_flag():
    with pytest.raises(ConfigError, match="--attention"):
        MIIRConfig(attention="sparse").validate()
    with pytest.raises(ConfigError, match="--pretrained: finetuning"):
        MIIRConfig(stage="mii", pretrained="x").validate()
    with pytest.raises(ConfigError, match="--num_heads: must divide --embedding_dim 64"):
        MIIRConfig(num_heads=5).validate()
    with pytest.raises(ConfigError, match="--discard_share"):
        MIIRConfig(discard_share=1.0).validate()


# ---------------------------------------------------------------- learning on the embedded default's structure
def test_learns_well_above_popularity(small_world, tmp_path):
    cfg = MIIRConfig(
        data=str(small_world / "source.inter"), item_data=str(small_world / "source.item"), tfrecord_dir=str(tmp_path / "tfr"),
        num_shards=2, embedding_dim=32, num_layers=1, num_heads=2, inner_size=64, dropout=0.1, batch_size=64,
        learning_rate=6e-3, discard_share=0.0, epochs=3, verbose=0, seed=1,
    )
    keras.utils.set_random_seed(1)
    set_dir, metadata, vocab, feats = prepare(cfg, None)
    assert feats.fields == ["category", "brand", "price"]
    job = build_miir_job(cfg, set_dir, metadata, vocab, feats)
    trainer = JobTrainer(job.task_factory, job.inputs, str(tmp_path / "run"), job.train_config, metric_fn=job.metric_fn)
    trainer.fit()
    test = trainer.evaluate("test")
    popularity = sampled_metrics(PopularityScorer(vocab.counts), job.inputs.evaluate("test", None), cfg.num_negatives, cfg.seed)
    assert test["users"] == 800
    assert test["hr@10"] >= popularity["hr@10"] + 0.08 and test["mrr"] >= 1.4 * popularity["mrr"], (test, popularity)


def test_mii_pretraining_then_finetuning_export(tmp_path):
    """The CLI-free runner: MII pretraining exports, finetuning loads it in full; metrics.json and serving."""
    lines = ["user_id:token\titem_id:token\ttimestamp:float"]
    lines += [f"u{u}\ti{(u * 3 + t) % 25}\t{t}" for u in range(40) for t in range(7)]
    (tmp_path / "d.inter").write_text("\n".join(lines) + "\n")
    (tmp_path / "d.item").write_text("item_id:token\tcat:token\ttags:token_seq\n" + "".join(f"i{k}\tc{k % 4}\tt{k % 3} t{k % 5}\n" for k in range(0, 25, 2)))
    base = dict(
        data=str(tmp_path / "d.inter"), item_data=str(tmp_path / "d.item"), tfrecord_dir=str(tmp_path / "tfr"), num_shards=1,
        embedding_dim=8, num_layers=1, num_heads=2, inner_size=16, batch_size=16, max_len=5, epochs=1, verbose=0,
    )
    pretrained = run_miir(MIIRConfig(stage="mii", model_dir=str(tmp_path / "mii"), **base))
    assert {"sampled_hr@10", "sampled_mrr", "sampled_auc", "hr@10"} <= set(pretrained["test"])
    with open(os.path.join(tmp_path, "mii", "job_config.json")) as f:
        assert json.load(f)["stage"] == "mii"
    finetuned = run_miir(MIIRConfig(stage="rec", pretrained=str(tmp_path / "mii"), model_dir=str(tmp_path / "rec"), **base))
    loaded = export.load_export(finetuned["export_dir"])
    assert loaded.task.stage == "rec" and loaded.backbone.get_config() == export.load_export(pretrained["export_dir"]).backbone.get_config()
    tokens = ["i3", "i6", "i9"]
    ids, _ = loaded.vocab.encode(tokens)
    scores = loaded.task.serve_scores(tf.constant([list(ids) + [PAD_ID]]), tf.constant([3])).numpy()[0]  # the free [MASK] slot
    scores[:4] = -np.inf
    served = loaded.recommend([tokens], top_k=5)[0]
    np.testing.assert_allclose([s for _, s in served], np.sort(scores)[::-1][:5], rtol=1e-4, atol=1e-5)
    assert [scores[loaded.vocab.id_of(item)] for item, _ in served] == pytest.approx([s for _, s in served], rel=1e-4, abs=1e-5)
    with pytest.raises(ConfigError, match="other item features"):
        run_miir(MIIRConfig(stage="rec", pretrained=str(tmp_path / "mii"), model_dir=str(tmp_path / "rec2"), **{**base, "seed": 7}))
