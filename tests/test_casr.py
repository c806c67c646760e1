"""CASR: counterfactual generation invariants, the frozen sampler, the anchor's training and bad input."""

import csv
import os

import numpy as np
import pytest
import tensorflow as tf

from peterrec import export, pretraining
from peterrec.augment import casr, counterfactual, generate
from peterrec.recipes import casr as casr_recipe
from peterrec.augment.embeddings import hidden_states, item_table, last_logits
from peterrec.backbones.nextitnet import NextItNetBackbone
from peterrec.data import dataset
from peterrec.data.vocab import Vocabulary
from peterrec.errors import ConfigError
from peterrec.features import ITEM_IDS, LENGTHS, NUM_RESERVED
from peterrec.models.gru4rec import GRU4RecBackbone
from peterrec.models.narm import NARMBackbone
from peterrec.models.sasrec import SASRecBackbone
from peterrec.models.stamp import STAMPBackbone
from peterrec.tasks.next_item import NextItemTask

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_LEN = 10
TINY = dict(embedding_dim=16, max_len=MAX_LEN, stride=5, batch_size=32, verbose=0, num_shards=2, learning_rate=1e-2)
ANCHOR = dict(num_layers=1, num_heads=1, inner_size=16)  # a one-layer SASRec anchor (it has dropout: a strict reproducibility check)


def _write_world(path, users=120, items=40, seed=0):
    """Users mostly step to the next item id (a learnable order); 10-19 items each."""
    rng = np.random.default_rng(seed)
    lines = ["user_id:token\titem_id:token\ttimestamp:float"]
    for u in range(users):
        item = int(rng.integers(items))
        for t in range(int(rng.integers(10, 20))):
            lines.append(f"u{u}\ti{item}\t{t}")
            item = (item + 1) % items if rng.random() < 0.8 else int(rng.integers(items))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Tiny data, its TFRecord set and a trained STAMP sampler export."""
    tmp = tmp_path_factory.mktemp("casr")
    data = _write_world(tmp / "data" / "world.inter")
    cfg = pretraining.PretrainConfig(
        backbone="stamp", data=str(data), tfrecord_dir=str(tmp / "tfr"), model_dir=str(tmp / "sampler"), epochs=4, **TINY
    )
    pretraining.run(cfg)
    set_dir, metadata, vocab = pretraining.prepare_data(cfg)
    sampler = casr.load_sampler(str(tmp / "sampler" / "export"), vocab, "test data")
    return dict(tmp=tmp, data=data, set_dir=set_dir, metadata=metadata, vocab=vocab, sampler=sampler, tfr=str(tmp / "tfr"))


def _casr_config(world, name, **overrides):
    args = dict(TINY, **ANCHOR, data=str(world["data"]), tfrecord_dir=world["tfr"], model_dir=str(world["tmp"] / name),
                sampler_dir=str(world["tmp"] / "sampler" / "export"), anchor_model="sasrec", epochs=1, deterministic=True)
    args.update(overrides)
    return casr_recipe.CASRConfig(**args)


def _heldout_and_training(set_dir):
    """{user: (training items, held-out items)} from the set's records."""
    out = {}
    for record in generate.read_records(set_dir):
        train = dataset.train_items(record).numpy().tolist()
        out[record["user"].numpy().decode()] = (train, record["items"].numpy().tolist()[len(train):])
    return out


def _read_tsv(path):
    with open(path) as f:
        return list(csv.DictReader(f, delimiter="\t"))


def _generate(world, out, intervention, *, seed=1, sample=1.0, n_per_seq=1, batch_size=64):
    return generate.generate(
        world["sampler"].task, world["set_dir"], str(out), world["vocab"], max_len=MAX_LEN, seed=seed, sample=sample,
        n_per_seq=n_per_seq, intervention=intervention, batch_size=batch_size, num_shards=2,
        tsv_path=str(out) + ".tsv", inspect_rows=100000, verbose=0,
    )


# ------------------------------------------------------------------ running a model from input embeddings
@pytest.mark.parametrize("name", ["nextitnet", "sasrec", "narm", "stamp", "gru4rec"])
def test_embeddings_input_reproduces_the_id_call_and_reaches_the_output(name):
    vocab = 30
    backbone = {
        "nextitnet": lambda: NextItNetBackbone(vocab, 8, dilations=[1, 2]),
        "sasrec": lambda: SASRecBackbone(vocab, 8, max_positions=6, num_layers=1, num_heads=1, inner_size=8),
        "narm": lambda: NARMBackbone(vocab, 8, hidden_size=8),
        "stamp": lambda: STAMPBackbone(vocab, 8),
        "gru4rec": lambda: GRU4RecBackbone(vocab, 8, hidden_size=8),
    }[name]()
    task = NextItemTask(backbone, output="dense" if name == "nextitnet" else "tied")
    ids = tf.constant([[5, 6, 7, 8, 0, 0], [9, 10, 11, 12, 13, 14]], tf.int32)
    lengths = tf.constant([4, 6])
    looked_up = tf.gather(item_table(task), ids)
    plain = last_logits(task, ids, lengths)
    np.testing.assert_array_equal(last_logits(task, ids, lengths, embeddings=looked_up).numpy(), plain.numpy())
    np.testing.assert_array_equal(hidden_states(backbone, ids, looked_up).numpy(), backbone(ids).numpy())
    noise = tf.random.stateless_normal([2, 1, 8], seed=[1, 2])
    moved = looked_up + noise * tf.one_hot(2, 6)[None, :, None]  # change the input at position 2 only
    changed = last_logits(task, ids, lengths, embeddings=moved)
    assert np.all(np.abs(changed.numpy() - plain.numpy()).max(axis=1) > 1e-5 * np.abs(plain.numpy()).max(axis=1))
    assert "call" not in vars(backbone.get_layer("item_embedding"))  # the override is gone
    # the boundary search runs on every model: a gradient for the input embedding only
    positions, held, y0 = tf.constant([2, 4]), -tf.ones([2, 2], tf.int32), tf.constant([20, 21])
    e = tf.gather(looked_up, positions, batch_dims=1)
    gradient, _, watched = counterfactual.boundary_gradient(task, ids, lengths, positions, held, e, e, y0, 1.0, 0.1, 1.0)
    assert watched == () and np.abs(gradient.numpy()).sum() > 0


# ------------------------------------------------------------------ the boundary search and the frozen sampler
def test_boundary_search_differentiates_only_the_input_embedding(world):
    sampler = world["sampler"].task
    intervention = counterfactual.Intervention(method="learning", index=1, iters=3)
    batch = next(iter(generate.training_prefixes(world["set_dir"], max_len=MAX_LEN, seed=0, sample=1.0, n_per_seq=1,
                                                 intervention=intervention, batch_size=32)))
    ids, lengths, positions, held = batch[ITEM_IDS], batch[LENGTHS], batch[counterfactual.POSITIONS_KEY], batch[counterfactual.HELDOUT]
    _, y0, _ = counterfactual.sampler_labels(sampler, ids, lengths, held)
    table = item_table(sampler)
    scale = counterfactual.rms_norm(table)
    e = tf.gather(table, tf.gather(ids, positions, batch_dims=1))
    gradient, hinge, watched = counterfactual.boundary_gradient(sampler, ids, lengths, positions, held, e, e, y0, 0.0, 0.1, scale)
    assert watched == ()  # no model variable is watched
    assert gradient.shape == e.shape and np.all(np.isfinite(gradient.numpy()))
    assert np.abs(gradient.numpy()[hinge.numpy() > 0]).sum() > 0
    with tf.GradientTape(watch_accessed_variables=False, persistent=True) as tape:
        tape.watch(e)
        objective, _ = counterfactual.boundary_objective(sampler, ids, lengths, positions, held, e, e, y0, 0.0, 0.1, scale)
    assert all(g is None for g in tape.gradient(objective, sampler.weights))  # the sampler's weights get no gradient
    assert tape.gradient(objective, e) is not None
    searched = counterfactual.boundary_search(sampler, ids, lengths, positions, held, y0, intervention)
    _, after = counterfactual.boundary_objective(sampler, ids, lengths, positions, held, searched, e, y0, 0.0, 0.1, scale)
    assert float(tf.reduce_mean(after)) < float(tf.reduce_mean(hinge))  # the search moves towards the decision boundary


def test_ad_replacement_raises_the_anchors_loss_on_the_batch(world):
    """CASR "AD": the chosen replacement gives the anchor a higher loss than a random replacement at the same position."""
    task = world["sampler"].task  # a trained anchor (as its own labeller: y' = the sampler's top-1 on the new prefix)
    learning = counterfactual.Intervention(method="learning", index=1)
    batch = next(iter(generate.training_prefixes(world["set_dir"], max_len=MAX_LEN, seed=0, sample=1.0, n_per_seq=1,
                                                 intervention=learning, batch_size=256)))
    ids, lengths, held = tf.cast(batch[ITEM_IDS], tf.int32), tf.cast(batch[LENGTHS], tf.int32), batch[counterfactual.HELDOUT]

    def anchor_loss(item_ids, labels):
        logits = last_logits(task, item_ids, lengths)
        return float(tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)))

    def adversarial(**settings):
        intervention = counterfactual.Intervention(method="ad", index=1, **settings)
        u = tf.random.stateless_uniform([tf.shape(ids)[0], intervention.uniforms], seed=[3, 4])
        new_ids, labels, _ = counterfactual.adversarial_samples(task, task, ids, lengths, held, u, intervention)
        changed = tf.reduce_sum(tf.cast(tf.not_equal(new_ids, ids), tf.int32), axis=1).numpy()
        assert np.all(changed == 1)  # exactly one item replaced per prefix
        return anchor_loss(new_ids, labels), u, intervention

    ad_loss, u, intervention = adversarial(iters=3, candidates=4)
    positions = counterfactual.intervention_positions(lengths, intervention, u[:, 0])
    old = tf.gather(ids, positions, batch_dims=1)
    allowed = counterfactual.allowed_replacements(task.backbone.vocabulary_size, held, old)
    random_ids = counterfactual.with_item(ids, positions, counterfactual.sample_rows(tf.where(allowed, 1.0, 0.0), u[:, 2]))
    random_labels, _, _ = counterfactual.sampler_labels(task, random_ids, lengths, held)
    random_loss = anchor_loss(random_ids, random_labels)
    one_candidate, _, _ = adversarial(iters=3, candidates=1)
    assert ad_loss > random_loss + 0.05, (ad_loss, random_loss)
    assert ad_loss > one_candidate  # keeping the highest-loss candidate raises it further


@pytest.mark.parametrize("method", ["heuristic", "learning"])
def test_generated_sequences_respect_the_invariants_and_leave_the_sampler_unchanged(world, tmp_path, method):
    sampler = world["sampler"].task
    before = [w.numpy().copy() for w in sampler.weights]
    intervention = counterfactual.Intervention(method=method, index=1 if method == "learning" else 2, iters=2,
                                         replacement="popularity", filter="none")
    stats = _generate(world, tmp_path / "gen", intervention, sample=0.5, n_per_seq=2)
    for old, new in zip(before, sampler.weights):
        np.testing.assert_array_equal(old, new.numpy())  # bit-identical: generation never updates the sampler

    users = _heldout_and_training(world["set_dir"])
    rows = _read_tsv(str(tmp_path / "gen") + ".tsv")
    assert stats["generated"] == len(rows) == stats["selected"]  # filter none: every candidate is kept
    assert 0.3 * 2 * stats["eligible"] < stats["selected"] < 0.7 * 2 * stats["eligible"] and stats["eligible"] <= stats["prefixes"]
    pairs = {}
    for row in rows:
        pairs.setdefault((row["user"], row["prefix_end"]), []).append(row["original"])
    assert all(len(v) == 2 and v[0] == v[1] for v in pairs.values())  # n_per_seq candidates of each selected prefix
    for row in rows:
        train, heldout = users[row["user"]]
        heldout_tokens = {world["vocab"].tokens[i - NUM_RESERVED] for i in heldout}
        original, generated = row["original"].split(" "), row["generated"].split(" ")
        end = int(row["prefix_end"])
        assert 1 <= end < len(train)  # a training prefix: its target is a training item
        assert original == [world["vocab"].tokens[i - NUM_RESERVED] for i in train[max(0, end - MAX_LEN):end]]
        k = int(row["position"]) - 1
        assert 0 <= k < len(original) and original[k] == row["old_item"] != "[PAD]"
        assert [i for i in range(len(original)) if original[i] != generated[i]] == [k] and len(generated) == len(original)
        assert generated[k] == row["new_item"] and not row["new_item"].startswith("[")
        assert row["new_item"] not in heldout_tokens and row["label"] not in heldout_tokens and not row["label"].startswith("[")
        if method == "heuristic":
            assert int(row["position_from_end"]) == 2
    # the TFRecords hold the same samples: the counterfactual prefix and the sampler's label
    records = list(generate.read_records(str(tmp_path / "gen")))
    assert len(records) == len(rows)
    token_of = lambda i: world["vocab"].tokens[i - NUM_RESERVED]  # noqa: E731
    assert sorted((" ".join(map(token_of, r["items"].numpy())), token_of(int(r["targets"][0]))) for r in records) == sorted(
        (row["generated"], row["label"]) for row in rows
    )


def test_heuristic_generation_is_reproducible_with_a_seed(world, tmp_path):
    intervention = counterfactual.Intervention(method="heuristic", index=2)
    _generate(world, tmp_path / "a", intervention, seed=5, sample=0.5, batch_size=19)
    _generate(world, tmp_path / "b", intervention, seed=5, sample=0.5, batch_size=64)  # batching does not matter
    _generate(world, tmp_path / "c", intervention, seed=6, sample=0.5)
    a, b, c = (_read_tsv(str(tmp_path / name) + ".tsv") for name in "abc")
    assert a == b and len(a) > 50
    assert a != c


def test_generated_batches_group_prefixes_of_similar_length_with_one_weighted_label(world, tmp_path):
    intervention = counterfactual.Intervention(method="heuristic", index=1)
    stats = _generate(world, tmp_path / "gen", intervention, sample=1.0)
    records = {}
    for r in generate.read_records(str(tmp_path / "gen")):
        key = tuple(r["items"].numpy()[-MAX_LEN:])
        records.setdefault(key, set()).add(int(r["targets"][0]))
    batches = list(generate.generated_batches(str(tmp_path / "gen"), max_len=MAX_LEN, beta=0.5, method="heuristic", batch_size=8,
                                               steps=20, seed=1))
    assert len(batches) == 20
    bands = set()
    for batch in batches:
        weights, labels, ids = batch["sample_weight"].numpy(), batch["labels"].numpy(), batch[ITEM_IDS].numpy()
        lengths = (ids != 0).sum(axis=1)
        np.testing.assert_array_equal(batch["lengths"].numpy(), lengths)
        width = ids.shape[1]
        low = {8: 1, MAX_LEN: 9}[width]  # bands of 8 items: 1..8 padded to 8, 9..10 padded to max_len
        assert np.all((lengths >= low) & (lengths <= width))
        bands.add(width)
        assert np.array_equal(weights, np.full(len(ids), 0.5, "float32"))  # beta, for the one target at lengths - 1
        for b, n in enumerate(lengths):
            assert labels[b] in records[tuple(ids[b, :n])]  # a stored sample with its sampler label
    assert bands == {8, MAX_LEN} and stats["generated"] > 100


def test_learning_keeps_only_flips(world, tmp_path):
    stats = _generate(world, tmp_path / "gen", counterfactual.Intervention(method="learning", index=1, iters=2, filter="flip"))
    rows = _read_tsv(str(tmp_path / "gen") + ".tsv")
    assert stats["generated"] == len(rows) > 0 and stats["flip_rate"] > 0
    assert all(row["flipped"] == "1" and row["sampler_top1_after"] != row["sampler_top1_before"] for row in rows)
    assert stats["generated"] == round(stats["flip_rate"] * stats["selected"])


# ------------------------------------------------------------------ the anchor
def _weights(model_dir):
    loaded = export.load_export(model_dir)
    return [w.numpy() for w in loaded.task.weights]


def test_beta_zero_or_no_samples_reproduce_the_plain_anchor_and_ad_trains_on_its_samples(world):
    plain_cfg = pretraining.PretrainConfig(
        **{**TINY, **ANCHOR}, backbone="sasrec", data=str(world["data"]), tfrecord_dir=world["tfr"],
        model_dir=str(world["tmp"] / "plain"), epochs=1, deterministic=True,
    )
    plain = pretraining.run(plain_cfg)
    beta0 = casr_recipe.run(_casr_config(world, "beta0", learning="heuristic", beta=0.0))
    sample0 = casr_recipe.run(_casr_config(world, "sample0", learning="learning", sample=0.0))
    assert beta0["casr"]["generation"]["generated"] > 0 and sample0["casr"]["generation"]["generated"] == 0
    for run in (beta0, sample0):
        assert run["valid"] == plain["valid"] and run["test"] == plain["test"]
        for a, b in zip(_weights(run["export_dir"]), _weights(plain["export_dir"])):
            np.testing.assert_array_equal(a, b)

    ad = casr_recipe.run(_casr_config(world, "ad", learning="ad", index=1, sample=0.5, beta=1.0))
    made = ad["casr"]["ad"]["generated_in_steps"]
    assert made == ad["casr"]["generated_per_step"] * ad["global_step"] > 0
    assert ad["test"] != plain["test"]  # the anchor trained on the generated samples
    rows = _read_tsv(str(world["tmp"] / "ad" / casr.TSV_FILE))
    assert rows and all(row["old_item"] != row["new_item"] for row in rows)
    assert os.listdir(world["tmp"] / "ad" / "logs" / "casr")
    served = export.load_export(ad["export_dir"]).recommend([["i1", "i2", "i3"]], top_k=3)
    assert len(served[0]) == 3


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    "overrides, flag",
    [
        (dict(learning="adversarial"), "--learning"),
        (dict(index=MAX_LEN + 1), "--index: 11 is beyond the sequence length"),
        (dict(index=0), "--index"),
        (dict(sample=1.5), "--sample"),
        (dict(tao=0.0), "--tao"),
        (dict(position="middle"), "--position"),
        (dict(sampler_model="grec", sampler_dir=None), "--sampler_model"),
        (dict(anchor_model="caser"), "--anchor_model"),
        (dict(hidden_size=8, sampler_model="stamp", sampler_dir=None), "--hidden_size"),
    ],
)
def test_bad_settings_name_the_flag(world, overrides, flag):
    with pytest.raises(ConfigError, match=flag):
        casr_recipe.run(_casr_config(world, "bad", **overrides))
    assert not os.path.exists(world["tmp"] / "bad")


def test_seed_spellings_are_accepted():
    cfg = casr_recipe.CASRConfig(learning="AD", sampler_model="NARM", anchor_model="STAMP")
    assert cfg.resolved_learning() == "ad" and cfg.resolved_model_dir().endswith("casr-narm-stamp-ad")
    cfg.validate()


def test_cli_bad_input_is_one_line_with_exit_2(world, tmp_path, cli):
    other = Vocabulary([f"x{i}" for i in range(30)], [1] * 30)  # another data set's vocabulary
    task = NextItemTask(STAMPBackbone(other.size, 16), output="tied")
    foreign = export.export_model(task, other, str(tmp_path / "foreign"), max_len=MAX_LEN, extra_config={"backbone_name": "stamp"})
    base = ["--data", str(world["data"]), "--tfrecord_dir", world["tfr"], "--max_len", str(MAX_LEN)]
    cases = {
        "--learning: 'magic' is not one of heuristic, learning, ad": ["--learning", "magic"],
        f"--index: {MAX_LEN + 1} is beyond the sequence length": ["--index", str(MAX_LEN + 1)],
        "the sampler's vocabulary": ["--sampler_dir", foreign],
    }
    for i, (message, args) in enumerate(cases.items()):
        done = cli("pipelines.casr", base + args + ["--model_dir", str(tmp_path / f"m{i}")])
        stderr = done.stderr
        assert done.returncode == 2, stderr[-2000:]
        assert f"error: {message}" in stderr or ("error: --sampler_dir" in stderr and message in stderr), stderr[-2000:]
        assert "Traceback" not in stderr
        assert not os.path.exists(tmp_path / f"m{i}")  # nothing written


def test_beta_weighs_the_loss_normaliser_but_not_the_trained_position_count():
    """The loop divides by loss_count (generated rows weigh beta) and reports throughput from position_count
    (one position per generated row), so a large beta does not inflate positions_per_second."""
    from peterrec.augment.task import GENERATED, CounterfactualTask
    from peterrec.features import LABELS, SAMPLE_WEIGHT

    task = CounterfactualTask(NextItemTask(STAMPBackbone(12, embedding_dim=8), output="tied"), beta=1e5)
    observed = {ITEM_IDS: tf.constant([[5, 6, 7, 0], [8, 9, 0, 0]]), LABELS: tf.constant([[6, 7, 8, 0], [9, 10, 0, 0]]),
                SAMPLE_WEIGHT: tf.constant([[1.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]])}
    generated = {ITEM_IDS: tf.fill([5, 4], 5), LENGTHS: tf.fill([5], 4), LABELS: tf.fill([5], 6), SAMPLE_WEIGHT: tf.fill([5], 1e5)}
    batch = observed | {GENERATED: generated}
    assert float(task.loss_count(batch)) == pytest.approx(3 + 5e5)
    assert float(task.position_count(batch)) == 8.0
    assert float(task.position_count(observed)) == float(task.loss_count(observed)) == 3.0
