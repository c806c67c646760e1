"""TF1 checkpoint import: exact coverage, parity with a TF1-style forward pass, CLI and bad input.

Uses the original code's demo checkpoints and CSVs from ../shared/fixtures/peterrec_demo
(skipped when absent). The reference forward pass below is written from the raw TF1 arrays
with the original's ops (atrous_conv2d on [B, 1, T, C], explicit causal left padding or SAME,
LayerNorm by hand) and fed with the ORIGINAL TF1 ids; nothing of peterrec is used in it.
"""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(os.path.dirname(REPO), "shared", "fixtures", "peterrec_demo")
if not os.path.isdir(DEMO):
    pytest.skip(f"{DEMO} is absent", allow_module_level=True)

from peterrec import tf1  # noqa: E402
from peterrec import export, features  # noqa: E402
from peterrec.errors import VocabularyError  # noqa: E402

MODELS = os.path.join(DEMO, "Models")
NEXTITNET = os.path.join(MODELS, "model_nextitnet_transfer_pretrain.ckpt")
GREC = os.path.join(MODELS, "model_nextitnet_cloze")
PRETRAIN_CSV = os.path.join(DEMO, "Session", "history_sequences_20181014_fajie_transfer_pretrain_small.csv")
FINETUNE_CSV = os.path.join(DEMO, "Session", "history_sequences_20181014_fajie_transfer_finetune_small.csv")
CHECKPOINTS = {"nextitnet": NEXTITNET, "grec": GREC}
TOL = dict(rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def imported():
    return {name: tf1.import_checkpoint(path, PRETRAIN_CSV, name) for name, path in CHECKPOINTS.items()}


@pytest.fixture(scope="module")
def demo_tf1_ids():
    """The 30 demo sequences in TF1 ids, built independently of the importer."""
    vocab = {"<UNK>": 0}
    rows = []
    for line in open(PRETRAIN_CSV).read().splitlines():
        row = []
        for token in line.split(","):
            vocab.setdefault(token, len(vocab))
            row.append(vocab[token])
        rows.append(row)
    return np.array(rows, dtype=np.int64), vocab


# --- the reference: the original's forward pass on the raw TF1 arrays ---------------------
def _layer_norm(x, gamma, beta):
    mean = tf.reduce_mean(x, axis=-1, keepdims=True)
    variance = tf.reduce_mean(tf.square(x - mean), axis=-1, keepdims=True)  # population variance
    return gamma * (x - mean) / tf.sqrt(variance + 1e-8) + beta


def _conv(x, weight, bias, rate, causal):
    """ops.conv1d of the original: weight [1, k, Cin, Cout] on a [B, 1, T, C] view."""
    k = weight.shape[1]
    if causal:
        x = tf.pad(x, [[0, 0], [(k - 1) * rate, 0], [0, 0]])
        out = tf.nn.atrous_conv2d(x[:, None], weight, rate=rate, padding="VALID")
    else:
        out = tf.nn.atrous_conv2d(x[:, None], weight, rate=rate, padding="SAME")
    return tf.squeeze(out, 1) + bias


def reference_forward(prefix, tf1_ids, causal, dilations=(1, 4, 1, 4, 1, 4, 1, 4)):
    """Hidden states [B, T, C] and logits [B, T, V] in TF1 column order."""
    reader = tf.train.load_checkpoint(prefix)
    x = tf.gather(reader.get_tensor("allitem_embeddings"), tf1_ids)
    for i, d in enumerate(dilations):
        get = lambda name: reader.get_tensor(f"nextitnet_residual_blockdecoder_layer_{i}_{d}/{name}")  # noqa: E731
        h = _conv(x, get("dilated_conv1/weight"), get("dilated_conv1/bias"), d, causal)
        h = tf.nn.relu(_layer_norm(h, get("layer_norm1/gamma"), get("layer_norm1/beta")))
        h = _conv(h, get("dilated_conv2/weight"), get("dilated_conv2/bias"), 2 * d, causal)
        h = tf.nn.relu(_layer_norm(h, get("layer_norm2/gamma"), get("layer_norm2/beta")))
        x = x + h
    names = dict(reader.get_variable_to_shape_map())
    if "logits/weight" in names:  # full softmax: 1x1 conv on ReLU(h)
        logits = _conv(tf.nn.relu(x), reader.get_tensor("logits/weight"), reader.get_tensor("logits/bias"), 1, False)
    else:  # sampled-softmax head at test time: h W^T + b
        logits = tf.einsum("btc,vc->btv", x, reader.get_tensor("softmax_w")) + reader.get_tensor("softmax_b")
    return x.numpy(), logits.numpy()


# --- vocabulary and id mapping ------------------------------------------------------------
def test_demo_vocabulary_and_explicit_id_mapping(imported, demo_tf1_ids):
    _, ref_vocab = demo_tf1_ids
    vocab = tf1.read_tf1_vocabulary(PRETRAIN_CSV)
    assert list(vocab.tokens) == list(ref_vocab) and vocab.size == 175 and vocab.pad_id == 73
    assert vocab.sequence_length == 9 and vocab.fixed_length and not vocab.finetune
    finetune = tf1.read_tf1_vocabulary(FINETUNE_CSV)
    assert finetune.finetune and finetune.tokens == vocab.tokens  # identical source parts

    mapping = imported["nextitnet"].mapping
    assert mapping.vocab.size == 175 - 2 + features.NUM_RESERVED  # minus <UNK> and "0", plus 4 reserved
    assert "0" not in mapping.vocab and mapping.vocab.tokens[0] == vocab.tokens[1]
    assert mapping.our_to_tf1[features.PAD_ID] == 73
    assert all(mapping.our_to_tf1[i] == 0 for i in (features.OOV_ID, features.MASK_ID, features.SEP_ID))
    items = [j for j in range(1, 175) if j != 73]
    assert mapping.encode_tf1_ids(items).tolist() == list(range(features.NUM_RESERVED, mapping.vocab.size))
    for j in items:
        assert mapping.vocab.id_of(vocab.tokens[j]) == mapping.tf1_to_our[j]
    assert (mapping.our_to_tf1[mapping.tf1_to_our] == np.arange(175)).all()
    emb = tf.train.load_checkpoint(NEXTITNET).get_tensor("allitem_embeddings")
    ours = imported["nextitnet"].task.backbone.embedding.embeddings.numpy()
    np.testing.assert_array_equal(ours[features.PAD_ID], emb[73])
    for reserved in (features.OOV_ID, features.MASK_ID, features.SEP_ID):
        np.testing.assert_array_equal(ours[reserved], emb[0])


# --- coverage -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["nextitnet", "grec"])
def test_every_tensor_used_and_every_weight_assigned_once(imported, name):
    result = imported[name]
    listed = tf.train.list_variables(CHECKPOINTS[name])
    model_vars = sorted(n for n, _ in listed if "Adam" not in n and not n.startswith("beta"))
    assert len(listed) == 203 and len(model_vars) == 67  # 1 embedding + 8 blocks x 8 + 2 head
    assert sorted(result.variable_map) == model_vars and result.ignored == {}
    assert len(result.checkpoint.optimizer_variables) == 136
    paths = [w.path for w in result.task.weights]
    assert sorted(result.variable_map.values()) == sorted(paths) and len(set(paths)) == len(paths) == 67
    head = {"nextitnet": "logits/weight", "grec": "softmax_w"}[name]
    assert result.checkpoint.head == head.split("/")[0]
    assert result.task.loss_name == {"nextitnet": "full_softmax", "grec": "sampled_softmax"}[name]
    assert result.task.backbone.causal == (name == "nextitnet") and not result.task.backbone.mask_padding
    ckpt = result.checkpoint
    assert (ckpt.vocabulary_size, ckpt.channels, ckpt.kernel_size, ckpt.dilations) == (175, 64, 3, (1, 4, 1, 4, 1, 4, 1, 4))


# --- parity -------------------------------------------------------------------------------
def test_parity_nextitnet_causal_full_softmax(imported, demo_tf1_ids):
    tf1_ids, _ = demo_tf1_ids
    result = imported["nextitnet"]
    ref_hidden, ref_logits = reference_forward(NEXTITNET, tf1_ids, causal=True)
    ours = result.mapping.encode_tf1_ids(tf1_ids)
    assert (ours[tf1_ids == 73] == features.PAD_ID).all()
    hidden = result.task(ours).numpy()
    logits = result.mapping.logits_to_tf1(result.task.logits(hidden).numpy())
    np.testing.assert_allclose(hidden, ref_hidden, **TOL)
    np.testing.assert_allclose(logits, ref_logits, **TOL)
    # the original's prediction: the last item from the first L-1 (predict_graph drops the last column)
    _, ref_next = reference_forward(NEXTITNET, tf1_ids[:, :-1], causal=True)
    last = result.task.score_last(ours[:, :-1], np.full(len(ours), 8)).numpy()
    np.testing.assert_allclose(result.mapping.logits_to_tf1(last), ref_next[:, -1], **TOL)


def test_parity_grec_noncausal_sampled_head(imported, demo_tf1_ids):
    tf1_ids, _ = demo_tf1_ids
    result = imported["grec"]
    end_masked = tf1_ids.copy()
    end_masked[:, -1] = 0  # the original's evaluation: the last item replaced by id 0 ([MASK])
    for inputs in (tf1_ids, end_masked):
        ref_hidden, ref_logits = reference_forward(GREC, inputs, causal=False)
        ours = result.mapping.encode_tf1_ids(inputs)
        hidden = result.task(ours).numpy()
        np.testing.assert_allclose(hidden, ref_hidden, **TOL)
        logits = result.mapping.logits_to_tf1(result.task.logits(hidden).numpy())
        np.testing.assert_allclose(logits, ref_logits, **TOL)
    ours = result.mapping.encode_tf1_ids(end_masked)
    ours[:, -1] = features.MASK_ID  # MASK_ID shares <UNK>'s row
    np.testing.assert_allclose(result.task(ours).numpy(), ref_hidden, **TOL)


# --- checkpoints that do not fit ----------------------------------------------------------
def _save_tf1(prefix, tensors):
    """A name-based (TF1 Saver) checkpoint holding ``tensors``."""
    with tf.Graph().as_default():
        variables = {name: tf.compat.v1.Variable(value, name=name.replace("/", "_")) for name, value in tensors.items()}
        saver = tf.compat.v1.train.Saver(var_list=variables)
        with tf.compat.v1.Session() as session:
            session.run(tf.compat.v1.global_variables_initializer())
            saver.save(session, str(prefix), write_meta_graph=False)
    return str(prefix)


def _demo_tensors(prefix):
    reader = tf.train.load_checkpoint(prefix)
    return {n: reader.get_tensor(n) for n, _ in tf.train.list_variables(prefix) if not tf1.is_optimizer_variable(n)}


def test_unused_and_missing_tensors_are_listed(tmp_path):
    tensors = _demo_tensors(NEXTITNET)
    extra = dict(tensors)
    extra["nextitnet_residual_blockdecoder_layer_0_1/mp_1/mp_conv1_down_0/weight"] = np.zeros((1, 1, 64, 16), np.float32)
    with pytest.raises(tf1.CheckpointError, match=r"1 checkpoint tensor\(s\) would not be used: .*mp_conv1_down_0/weight"):
        tf1.import_checkpoint(_save_tf1(tmp_path / "extra", extra), PRETRAIN_CSV, "nextitnet")
    missing = {n: v for n, v in tensors.items() if n != "nextitnet_residual_blockdecoder_layer_3_4/layer_norm2/gamma"}
    with pytest.raises(tf1.CheckpointError, match="missing: nextitnet_residual_blockdecoder_layer_3_4/layer_norm2/gamma"):
        tf1.import_checkpoint(_save_tf1(tmp_path / "missing", missing), PRETRAIN_CSV, "nextitnet")


def test_grec_with_full_softmax_head_ignores_its_untrained_softmax_w(tmp_path):
    tensors = _demo_tensors(NEXTITNET)  # logits head ...
    tensors.update({n: v for n, v in _demo_tensors(GREC).items() if n.startswith("softmax")})  # ... plus softmax_w/b
    result = tf1.import_checkpoint(_save_tf1(tmp_path / "both", tensors), PRETRAIN_CSV, "grec")
    assert result.task.loss_name == "full_softmax" and sorted(result.ignored) == ["softmax_b", "softmax_w"]
    assert len(result.variable_map) == 67
    with pytest.raises(tf1.CheckpointError, match="not a nextitnet checkpoint: it has both 'logits' and 'softmax_w'"):
        tf1.import_checkpoint(tmp_path / "both", PRETRAIN_CSV, "nextitnet")


def test_library_errors(tmp_path):
    with pytest.raises(tf1.CheckpointError, match="no TF checkpoint with this prefix"):
        tf1.import_checkpoint(os.path.join(MODELS, "nope"), PRETRAIN_CSV, "nextitnet")
    with pytest.raises(tf1.CheckpointError, match="not a nextitnet checkpoint: the embedding of id 0"):
        tf1.import_checkpoint(GREC, PRETRAIN_CSV, "nextitnet")
    assert tf1.import_checkpoint(GREC, PRETRAIN_CSV, "nextitnet", verify_backbone=False).task.backbone.causal
    short = tmp_path / "short.csv"
    short.write_text("\n".join(open(PRETRAIN_CSV).read().splitlines()[:10]) + "\n")
    with pytest.raises(VocabularyError, match=r"short\.csv: gives a vocabulary of \d+ ids .* trained with 175"):
        tf1.import_checkpoint(NEXTITNET, short, "nextitnet")
    assert tf1.resolve_checkpoint(MODELS).endswith("model_nextitnet_transfer_pretrain.ckpt")  # the 'checkpoint' file


# --- CLI ----------------------------------------------------------------------------------
def _cli(cli, *args):
    return cli("pipelines.import_tf1", args, cwd=REPO, timeout=300)


def test_cli_export_loads_and_serves_raw_ids(imported, tmp_path, demo_tf1_ids, cli):
    done = _cli(cli, "--checkpoint", NEXTITNET, "--vocab_from", FINETUNE_CSV, "--backbone", "nextitnet", "--model_dir", tmp_path / "m")
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    assert summary["model_variables"] == 67 and summary["optimizer_variables_skipped"] == 136
    path = summary["export_dir"]
    assert path == str(tmp_path / "m" / "export" / "1")

    loaded = export.load_export(path)
    assert loaded.config["kind"] == "tf1_import" and loaded.max_len == 9
    info = loaded.config["tf1_import"]
    assert info["id_mapping"]["tf1_pad_id"] == 73 and info["id_mapping"]["reserved_rows"]["PAD_ID"] == 73
    assert len(info["variable_map"]) == 67 and info["head"] == "logits"
    assert loaded.vocab.hash == imported["nextitnet"].mapping.vocab.hash
    tf1_ids, _ = demo_tf1_ids
    ours = imported["nextitnet"].mapping.encode_tf1_ids(tf1_ids)
    np.testing.assert_allclose(loaded.task(ours).numpy(), imported["nextitnet"].task(ours).numpy(), rtol=0, atol=1e-6)

    serving = tf.saved_model.load(path).signatures["serving_default"]
    rows = [line.split(",") for line in open(PRETRAIN_CSV).read().splitlines()[:4]]
    rows = [["" if token == "0" else token for token in row] for row in rows]  # "" is the serving pad
    out = serving(item_ids=tf.constant(rows))
    assert out["top_k_ids"].shape == (4, 50) and out["top_k_scores"].shape == (4, 50)
    returned = {token.decode() for token in out["top_k_ids"].numpy().ravel()}
    assert returned <= set(loaded.vocab.tokens)
    assert [[i for i, _ in r] for r in loaded.recommend(rows, top_k=5)] == [
        [t.decode() for t in r[:5]] for r in out["top_k_ids"].numpy()
    ]


@pytest.mark.parametrize("case", ["wrong_backbone", "csv_mismatch"])
def test_cli_bad_input_exits_2_with_one_line(tmp_path, case, cli):
    if case == "wrong_backbone":
        args = ("--checkpoint", NEXTITNET, "--vocab_from", PRETRAIN_CSV, "--backbone", "grec")
        expected = "is not a grec checkpoint"
    else:
        extra = tmp_path / "extra.csv"
        extra.write_text(open(PRETRAIN_CSV).read() + "0,0,0,0,0,0,0,999999991,999999992\n")
        args = ("--checkpoint", GREC, "--vocab_from", extra, "--backbone", "grec")
        expected = f"{extra}: gives a vocabulary of 177 ids"
    done = _cli(cli, *args, "--model_dir", tmp_path / "m")
    assert done.returncode == 2, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expected in errors[0] and "Traceback" not in done.stderr
    assert export.versions(str(tmp_path / "m" / "export")) == []
    assert not os.path.exists(tmp_path / "m")


# --- serving on the original's padded layout ----------------------------------------------
def _reference_top5(prefix, tf1_ids, vocab, causal):
    """Top-5 raw ids of the original network at the last position, reserved columns excluded."""
    _, logits = reference_forward(prefix, tf1_ids, causal=causal)
    last = logits[:, -1].copy()
    last[:, [0, vocab["0"]]] = -np.inf  # <UNK> and the pad item are never recommended
    token = {i: t for t, i in vocab.items()}
    return [[token[j] for j in np.argsort(-row, kind="stable")[:5]] for row in last]


@pytest.mark.parametrize("backbone", ["nextitnet", "grec"])
def test_serving_top5_equals_the_original_network_on_every_demo_line(tmp_path, demo_tf1_ids, backbone):
    """All 30 demo lines, padded with "0" (the CSV's token) or "" (the serving pad) or not at all:
    the export answers with the original network's top-5 for the fixed-length left-padded row."""
    tf1_ids, vocab = demo_tf1_ids
    path, _ = tf1.export_tf1_checkpoint(CHECKPOINTS[backbone], PRETRAIN_CSV, backbone, tmp_path / "m")
    if backbone == "nextitnet":  # the row as it is; the next item is read at its last position
        expected = _reference_top5(NEXTITNET, tf1_ids, vocab, causal=True)
    else:  # GRec's end mask: the 8 most recent positions of the row, then [MASK] (TF1 id 0)
        shifted = np.concatenate([tf1_ids[:, 1:], np.zeros((len(tf1_ids), 1), tf1_ids.dtype)], axis=1)
        expected = _reference_top5(GREC, shifted, vocab, causal=False)
    lines = [line.split(",") for line in open(PRETRAIN_CSV).read().splitlines()]
    padded = [i for i, row in enumerate(lines) if "0" in row]
    assert len(lines) == 30 and len(padded) == 8
    loaded = export.load_export(path)
    assert loaded.config["serving"]["layout"] == "left" and loaded.config["serving"]["pad_tokens"] == ["", "0"]
    serving = tf.saved_model.load(path).signatures["serving_default"]
    for rows in (
        lines,  # the CSV's own "0" padding
        [["" if t == "0" else t for t in row] for row in lines],  # the serving pad, same place
        [[t for t in row if t != "0"] + [""] * row.count("0") for row in lines],  # real items first
    ):
        got = [[t.decode() for t in r[:5]] for r in serving(item_ids=tf.constant(rows))["top_k_ids"].numpy()]
        assert got == expected
        assert [[i for i, _ in r] for r in loaded.recommend(rows, top_k=5)] == expected
    if backbone == "grec":
        return  # its end mask reads the 8 most recent positions only
    # the oldest item dropped: one pad more before the others, and so another answer of a pad-as-item model
    shorter = [row[1:] for row in lines]
    got = [[t.decode() for t in r[:5]] for r in serving(item_ids=tf.constant(shorter))["top_k_ids"].numpy()]
    assert got != expected
