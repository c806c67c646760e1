"""Tests of peterrec.data.convert and the pipelines.convert CLI."""

import os

import numpy as np
import pytest
import tensorflow as tf

from peterrec import features
from peterrec.data.convert import convert, resolve_data
from peterrec.data.readers import read_sequences
from peterrec.data.tfrecord import load_metadata, parse_example, shard_files
from peterrec.data.vocab import Vocabulary
from peterrec.errors import ConfigError, DataError, VocabularyError

SHARED_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "..", "shared")

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO_FINETUNE = SHARED_DIR + "/fixtures/peterrec_demo/Session/history_sequences_20181014_fajie_transfer_finetune_small.csv"
ML100K = SHARED_DIR + "/data/ml-100k/ml-100k.inter"
N = features.NUM_RESERVED
HEADER = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
SMALL = HEADER + "".join(
    f"{user}\t{item}\t{rating}\t{time}\n"
    for user, item, rating, time in [
        ("u1", "a", 5, 3), ("u1", "b", 4, 1), ("u1", "c", 3, 2), ("u1", "d", 5, 4),
        ("u2", "a", 5, 1), ("u2", "b", 5, 2), ("u2", "e", 5, 3),
        ("u3", "a", 1, 1), ("u3", "c", 5, 2),
    ]
)  # sorted by time: u1 = b c a d, u2 = a b e, u3 = a c


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def rows(set_dir):
    """Every record of a TFRecord set as numpy values."""
    dataset = tf.data.TFRecordDataset(shard_files(set_dir)).map(parse_example)
    return [{key: value.numpy() for key, value in row.items()} for row in dataset]


def decoded(set_dir, vocab_file="vocab.json", key="items"):
    """``{user: decoded tokens}`` of a TFRecord set."""
    vocab = Vocabulary.load(os.path.join(set_dir, vocab_file))
    return {row["user"].decode(): vocab.decode(row[key]) for row in rows(set_dir)}


def random_inter(tmp_path, num_users=40, seed=0):
    rng = np.random.default_rng(seed)
    lines = [
        f"user {u}\titem {rng.integers(30)}\t{rng.integers(1, 6)}\t{rng.integers(1000)}\n"
        for u in range(num_users)
        for _ in range(rng.integers(3, 12))
    ]
    return write(tmp_path, "random.inter", HEADER + "".join(lines))


# ---------------------------------------------------------------- convert
def test_loo_counts_use_training_positions_only(tmp_path):
    out = str(tmp_path / "set")
    metadata = convert(write(tmp_path, "small.inter", SMALL), "auto", out, num_shards=2)
    vocab = Vocabulary.load(out)
    assert vocab.tokens == ["b", "a", "c", "d", "e"]  # frequency, ties by first appearance
    assert dict(zip(vocab.tokens, vocab.counts[N:].tolist())) == {"b": 1, "a": 1, "c": 1, "d": 0, "e": 0}
    assert decoded(out) == {"u1": ["b", "c", "a", "d"], "u2": ["a", "b", "e"]}
    assert all(row["role"] == features.ROLE_LOO for row in rows(out))
    counts = metadata["counts"]
    assert (counts["users_read"], counts["users_kept"], counts["users_skipped_short"]) == (3, 2, 1)
    assert (counts["interactions_read"], counts["interactions"], counts["short_removed_interactions"]) == (9, 7, 2)
    assert metadata["length_histogram"]["loo"] == {"3": 1, "4": 1}
    assert metadata["roles"] == {"loo": 2, "train": 0, "valid": 0, "test": 0}
    assert metadata["vocab_hash"] == vocab.hash and metadata["vocab_size"] == N + 5
    assert metadata["reserved"] == features.RESERVED_IDS and metadata["format"] == "inter"
    assert metadata == load_metadata(out)


def test_random_split_round_trip_all_roles(tmp_path):
    path = random_inter(tmp_path)
    out = str(tmp_path / "set")
    metadata = convert(path, "inter", out, split="random", valid_fraction=0.2, test_fraction=0.1, seed=7, num_shards=3)
    assert metadata["roles"] == {"loo": 0, "train": 28, "valid": 8, "test": 4}
    source, _ = read_sequences(path, "inter")
    assert decoded(out) == {s.user: s.items for s in source}
    timestamps = {row["user"].decode(): row["timestamps"].tolist() for row in rows(out)}
    assert timestamps == {s.user: s.timestamps for s in source}
    roles = {row["user"].decode(): int(row["role"]) for row in rows(out)}
    vocab = Vocabulary.load(out)
    train_items = [item for s in source if roles[s.user] == features.ROLE_TRAIN for item in s.items]
    assert int(vocab.counts.sum()) == len(train_items)
    assert all(vocab.counts[vocab.id_of(t)] == train_items.count(t) for t in vocab.tokens)
    again = convert(path, "inter", str(tmp_path / "again"), split="random", valid_fraction=0.2, test_fraction=0.1, seed=7)
    assert again["roles"] == metadata["roles"]
    assert {row["user"].decode(): int(row["role"]) for row in rows(str(tmp_path / "again"))} == roles


def test_random_split_gives_each_nonzero_fraction_a_user(tmp_path):
    metadata = convert(random_inter(tmp_path, num_users=4), "inter", str(tmp_path / "s"), split="random", valid_fraction=0.01, test_fraction=0.01)
    assert metadata["roles"] == {"loo": 0, "train": 2, "valid": 1, "test": 1}
    with pytest.raises(DataError, match="too few"):
        convert(random_inter(tmp_path, num_users=2), "inter", str(tmp_path / "t"), split="random")


def test_vocab_from_keeps_hash_and_counts_oov(tmp_path):
    first = str(tmp_path / "first")
    convert(write(tmp_path, "small.inter", SMALL), "inter", first)
    vocab = Vocabulary.load(first)
    new = write(tmp_path, "new.inter", HEADER + "x\ta\t1\t1\nx\tzz\t1\t2\nx\tb\t1\t3\nx\tyy\t1\t4\n")
    out = str(tmp_path / "second")
    metadata = convert(new, "inter", out, vocab=vocab)
    assert metadata["vocab_hash"] == vocab.hash and metadata["vocab_source"] == "given"
    assert metadata["counts"]["oov_interactions"] == 2
    assert Vocabulary.load(out) == vocab
    assert decoded(out) == {"x": ["a", "[OOV]", "b", "[OOV]"]}


def test_min_seq_len_skips_are_counted_and_raised_for_loo(tmp_path):
    path = write(tmp_path, "small.inter", SMALL)
    metadata = convert(path, "inter", str(tmp_path / "a"), min_seq_len=1)
    assert metadata["filters"]["min_seq_len"] == 3 and metadata["filters"]["min_seq_len_requested"] == 1
    assert metadata["notes"] and "raised" in metadata["notes"][0]
    with pytest.raises(DataError, match=r"2 of 3 users \(66\.7%\) have fewer than 4 interactions.*--max_skipped_share 0\.5"):
        convert(path, "inter", str(tmp_path / "b"), min_seq_len=4)
    metadata = convert(path, "inter", str(tmp_path / "b"), min_seq_len=4, max_skipped_share=0.7)
    assert metadata["counts"]["users_skipped_short"] == 2 and metadata["counts"]["users_kept"] == 1


def test_k_core_is_iterative(tmp_path):
    text = HEADER + "".join(f"{u}\t{i}\t1\t{t}\n" for t, (u, i) in enumerate(
        [("u1", "a"), ("u1", "b"), ("u1", "c"), ("u2", "a"), ("u2", "b"), ("u3", "a"), ("u3", "d"), ("u4", "e")]
    ))
    out = str(tmp_path / "set")
    metadata = convert(write(tmp_path, "k.inter", text), "inter", out, k_core=2, split="random",
                       valid_fraction=0.0, test_fraction=0.0, min_seq_len=2)
    # pass 1 drops c, d, e (1 use each); u3 is left with one item and u4 with none, so both go;
    # pass 2 then counts a=2, b=2 and stops.
    assert decoded(out) == {"u1": ["a", "b"], "u2": ["a", "b"]}
    counts = metadata["counts"]
    assert (counts["kcore_removed_interactions"], counts["kcore_removed_users"], counts["users_kept"]) == (4, 2, 2)


def test_dedup_and_rating_threshold_and_count_identity(tmp_path):
    text = HEADER + "".join(f"u\t{item}\t{rating}\t{t}\n" for t, (item, rating) in enumerate(
        [("a", 5), ("a", 5), ("b", 5), ("x", 1), ("b", 5), ("a", 5), ("c", 5), ("c", 4)]
    ))
    out = str(tmp_path / "set")
    metadata = convert(write(tmp_path, "d.inter", text), "inter", out, dedup=True, rating_threshold=3)
    assert decoded(out) == {"u": ["a", "b", "a", "c"]}  # x dropped first, then both b's are adjacent
    counts = metadata["counts"]
    assert counts["rating_filtered"] == 1 and counts["duplicates_removed"] == 3
    removed = ("rating_filtered", "duplicates_removed", "kcore_removed_interactions", "short_removed_interactions")
    assert counts["interactions_read"] - sum(counts[key] for key in removed) == counts["interactions"] == 4


def test_finetune_targets_get_their_own_vocabulary(tmp_path):
    path = write(tmp_path, "f.csv", "0,1,2,3,,t1,t2\n4,5,6,,t2\n0,0,7,,t3\n")
    out = str(tmp_path / "set")
    metadata = convert(path, "auto", out)
    targets = Vocabulary.load(os.path.join(out, "target_vocab.json"))
    assert metadata["target_vocab_hash"] == targets.hash and targets.tokens == ["t2", "t1"]
    assert metadata["counts"]["users_skipped_short"] == 1 and metadata["has_targets"]
    assert decoded(out, "target_vocab.json", "targets") == {"line-1": ["t1", "t2"], "line-2": ["t2"]}
    assert targets.counts[N:].tolist() == [2, 1]  # t3 belongs to the skipped (too short) user only
    given = convert(write(tmp_path, "g.csv", "1,2,3,,t9,t1\n"), "peterrec", str(tmp_path / "g"), target_vocab=targets)
    assert given["target_vocab_hash"] == targets.hash and given["counts"]["target_oov_interactions"] == 1
    with pytest.raises(DataError, match="no targets"):
        convert(write(tmp_path, "p.csv", "1,2,3\n"), "peterrec", str(tmp_path / "p"), target_vocab=targets)


def test_errors_before_writing(tmp_path):
    path = write(tmp_path, "small.inter", SMALL)
    with pytest.raises(DataError, match="no user has 10 or more"):
        convert(path, "inter", str(tmp_path / "a"), min_seq_len=10)
    with pytest.raises(ConfigError, match="split='time'"):
        convert(path, "inter", str(tmp_path / "a"), split="time")
    with pytest.raises(ConfigError, match="test_fraction=1.5"):
        convert(path, "inter", str(tmp_path / "a"), test_fraction=1.5)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep me")
    with pytest.raises(DataError, match="not empty"):
        convert(path, "inter", str(tmp_path / "full"))
    assert sorted(os.listdir(tmp_path)) == ["full", "small.inter"]


@pytest.mark.skipif(not os.path.isfile(DEMO_FINETUNE), reason="../shared demo files absent")
def test_demo_finetune_file(tmp_path):
    metadata = convert(DEMO_FINETUNE, "auto", str(tmp_path / "demo"), split="random")
    assert metadata["counts"]["users_kept"] == 30 and metadata["counts"]["target_interactions"] == 47
    assert metadata["target_vocab_size"] == N + 31


@pytest.mark.skipif(not os.path.isfile(ML100K), reason="../shared ml-100k absent")
def test_ml100k_loo(tmp_path):
    metadata = convert(ML100K, "auto", str(tmp_path / "ml"))
    assert metadata["counts"]["users_kept"] == 943 and metadata["counts"]["interactions"] == 100_000
    assert int(Vocabulary.load(str(tmp_path / "ml")).counts.sum()) == 100_000 - 2 * 943


# ---------------------------------------------------------------- resolve_data
def test_resolve_data_converts_once_and_reuses(tmp_path):
    path = write(tmp_path, "small.inter", SMALL)
    root = str(tmp_path / "cache")
    set_dir = resolve_data(path, "auto", root)
    assert os.path.basename(set_dir).startswith("small-") and len(os.path.basename(set_dir)) == len("small-") + 12
    stamp = os.stat(os.path.join(set_dir, "metadata.json")).st_mtime_ns
    assert resolve_data(path, "inter", root, num_shards=8) == set_dir  # same options, spelled out
    assert os.stat(os.path.join(set_dir, "metadata.json")).st_mtime_ns == stamp
    other = resolve_data(path, "inter", root, num_shards=2)
    assert other != set_dir and len(os.listdir(root)) == 2
    assert resolve_data(set_dir, "auto", root) == set_dir  # already a TFRecord set
    # leave-one-out does not depend on the seed or the fractions: one set for every seed; a random split does
    assert resolve_data(path, "auto", root, seed=7, valid_fraction=0.3) == set_dir
    assert load_metadata(set_dir)["split"] == {"mode": "loo"}
    random = {"split": "random", "valid_fraction": 0.0, "test_fraction": 0.0}
    assert resolve_data(path, "auto", root, seed=1, **random) != resolve_data(path, "auto", root, seed=2, **random)


def test_resolve_data_checks_vocab_hash_of_a_set(tmp_path):
    set_dir = resolve_data(write(tmp_path, "small.inter", SMALL), "auto", str(tmp_path / "cache"))
    vocab = Vocabulary.load(set_dir)
    assert resolve_data(set_dir, "auto", "unused", vocab=vocab) == set_dir
    other = Vocabulary(["q"])
    with pytest.raises(VocabularyError, match=f"{vocab.hash}.*{other.hash}"):
        resolve_data(set_dir, "auto", "unused", vocab=other)


def test_resolve_data_rebuilds_a_damaged_cache(tmp_path):
    path = write(tmp_path, "small.inter", SMALL)
    set_dir = resolve_data(path, "auto", str(tmp_path / "cache"), num_shards=1)
    shard = os.path.join(set_dir, "data-00000-of-00001.tfrecord")
    os.truncate(shard, 3)
    assert resolve_data(path, "auto", str(tmp_path / "cache"), num_shards=1) == set_dir
    assert load_metadata(set_dir)["counts"]["users_kept"] == 2


def test_resolve_data_missing_file(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        resolve_data(str(tmp_path / "absent.inter"), "auto", str(tmp_path))


# ---------------------------------------------------------------- CLI
def run_cli(cli, *args):
    return cli("pipelines.convert", args, cwd=REPO, timeout=120)


def test_cli_success(tmp_path, cli):
    out = tmp_path / "out"
    result = run_cli(cli, "--data", write(tmp_path, "small.inter", SMALL), "--output_dir", str(out), "--num_shards", "2")
    assert result.returncode == 0, result.stderr
    assert f"wrote {out}" in result.stdout
    assert sorted(os.listdir(out)) == ["data-00000-of-00002.tfrecord", "data-00001-of-00002.tfrecord", "metadata.json", "vocab.json"]


def test_cli_unknown_format_is_a_usage_error(tmp_path, cli):
    result = run_cli(cli, "--data", write(tmp_path, "small.inter", SMALL), "--format", "xml", "--output_dir", str(tmp_path / "o"))
    assert result.returncode not in (0, 2) and "format" in result.stderr
    assert not (tmp_path / "o").exists()


def test_cli_malformed_file_exits_2_and_writes_nothing(tmp_path, cli):
    bad = write(tmp_path, "bad.inter", HEADER + "u\ta\t1\t1\nu\tb\t1\tlater\n")
    result = run_cli(cli, "--data", bad, "--output_dir", str(tmp_path / "o"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: {bad}:3:")
    assert "Traceback" not in result.stderr
    assert sorted(os.listdir(tmp_path)) == ["bad.inter"]


def test_targets_file_attaches_per_user_targets(tmp_path):
    from peterrec.data.formats.inter import read_user_targets

    source = tmp_path / "source.inter"
    source.write_text("user_id:token\titem_id:token\ttimestamp:float\n" + "".join(f"u{u}\ti{(u + k) % 7}\t{k}\n" for u in range(20) for k in range(5)))
    targets = tmp_path / "targets.inter"
    targets.write_text("user_id:token\titem_id:token\ttimestamp:float\n" + "".join(f"u{u}\tt{u % 3}\t9\nu{u}\tt{(u + 1) % 3}\t8\n" for u in range(0, 20, 2)) + "ghost\tt0\t1\n")
    assert read_user_targets(str(targets))["u2"] == ["t0", "t2"]  # sorted by time
    metadata = convert(str(source), "inter", str(tmp_path / "set"), split="random", seed=3, targets=str(targets))
    assert metadata["counts"]["target_users_without_source"] == 1
    assert sum(metadata["target_pairs"].values()) == 20
    labels = tmp_path / "labels.inter"
    labels.write_text("user_id:token\tlabel:token\n" + "".join(f"u{u}\tc{u % 2}\n" for u in range(20)))
    metadata = convert(str(source), "inter", str(tmp_path / "set2"), split="random", seed=3, targets=str(labels))
    assert metadata["target_vocab_size"] == 4 + 2 and sum(metadata["target_pairs"].values()) == 20
    bad = tmp_path / "bad.inter"
    bad.write_text("user_id:token\tscore:float\nu1\t3\n")
    with pytest.raises(DataError, match="label"):
        read_user_targets(str(bad))


# ---------------------------------------------------------------- streaming (out-of-core) conversion
def messy_inter(tmp_path, num_users=60, seed=1):
    """Interleaved users, equal timestamps (stable order), consecutive repeats, low ratings, rare items."""
    rng = np.random.default_rng(seed)
    lines = [
        f"user {rng.integers(num_users)}\titem {int(rng.zipf(1.6)) % 40}\t{rng.integers(1, 6)}\t{rng.integers(30)}\n"
        for _ in range(num_users * 8)
    ]
    return write(tmp_path, "messy.inter", HEADER + "".join(lines))


def same_set(a, b):
    """Asserts two conversions wrote the same set: byte-identical shards, vocabularies and metadata."""
    meta_a, meta_b = load_metadata(a), load_metadata(b)
    assert "streaming" not in meta_a and meta_b["streaming"]["partitions"] > 1
    meta_b.pop("streaming")
    assert meta_a == meta_b  # counts, roles, histograms, vocab hashes and every shard's SHA-256
    assert sorted(os.listdir(a)) == sorted(os.listdir(b))
    for name in set(os.listdir(a)) - {"metadata.json"}:
        with open(os.path.join(a, name), "rb") as fa, open(os.path.join(b, name), "rb") as fb:
            assert fa.read() == fb.read(), name


@pytest.fixture
def tiny_partitions(monkeypatch):
    """Partitions of ~200 input bytes, so a small file is spread over many of them."""
    from peterrec.data import convert as convert_module

    monkeypatch.setattr(convert_module, "STREAM_PARTITION_BYTES", 200)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"split": "random", "valid_fraction": 0.2, "test_fraction": 0.1, "seed": 5},
        {"dedup": True, "rating_threshold": 2, "k_core": 5, "split": "random", "min_seq_len": 2, "max_skipped_share": 1.0},
    ],
    ids=["loo", "random", "filters+kcore"],
)
def test_streaming_writes_the_same_set_as_in_memory(tmp_path, tiny_partitions, options):
    path = messy_inter(tmp_path)
    memory = convert(path, "inter", str(tmp_path / "memory"), num_shards=3, streaming=False, **options)
    streamed = convert(path, "inter", str(tmp_path / "streamed"), num_shards=3, streaming=True, **options)
    same_set(str(tmp_path / "memory"), str(tmp_path / "streamed"))
    if options.get("k_core"):
        assert memory["counts"]["kcore_removed_users"] > 0 and streamed["counts"]["kcore_removed_interactions"] > 0
    assert [name for name in os.listdir(tmp_path) if name.startswith(".")] == []  # the partitions are gone


def test_streaming_other_formats_given_vocab_and_targets(tmp_path, tiny_partitions):
    csv = write(tmp_path, "f.csv", "".join(f"0,{i},{i + 1},{i + 2},{i % 5},,t{i % 3},t{i % 4}\n" for i in range(30)) + "0,0,7,,t3\n")
    caser = write(tmp_path, "c.txt", "".join(f"u{(7 * i) % 13} i{i % 9} {i % 5} {i % 4}\n" for i in range(120)))
    ratings = write(tmp_path, "r.csv", "user,item,rating,time\n" + "".join(f"u{i % 11},i{i % 7},{i % 5},{i // 3}\n" for i in range(90)))
    source = tmp_path / "source.inter"
    source.write_text("user_id:token\titem_id:token\ttimestamp:float\n" + "".join(f"u{u}\ti{(u + k) % 7}\t{k}\n" for k in range(5) for u in range(20)))
    targets = write(tmp_path, "targets.inter", "user_id:token\titem_id:token\n" + "".join(f"u{u}\tt{u % 3}\n" for u in range(0, 24, 2)))
    vocab_dir = str(tmp_path / "v")
    convert(caser, "caser", vocab_dir)
    cases = [
        (csv, "peterrec", {"split": "random"}),
        (caser, "caser", {"dedup": True}),
        (caser, "caser", {"vocab": Vocabulary.load(vocab_dir), "min_seq_len": 5, "max_skipped_share": 1.0}),
        (ratings, "ratings", {"rating_threshold": 1}),
        (str(source), "inter", {"targets": targets, "split": "random", "seed": 3}),
    ]
    for index, (path, fmt, options) in enumerate(cases):
        a, b = str(tmp_path / f"m{index}"), str(tmp_path / f"s{index}")
        convert(path, fmt, a, num_shards=2, streaming=False, **options)
        convert(path, fmt, b, num_shards=2, streaming=True, **options)
        same_set(a, b)


def test_streaming_is_chosen_by_size_and_cleans_up_on_errors(tmp_path, monkeypatch, tiny_partitions):
    from peterrec.data import convert as convert_module

    path = messy_inter(tmp_path)
    assert "streaming" not in convert(path, "inter", str(tmp_path / "a"))  # below the threshold: in memory
    monkeypatch.setattr(convert_module, "STREAMING_THRESHOLD_BYTES", 1000)
    assert convert(path, "inter", str(tmp_path / "b"))["streaming"]["partitions"] > 1
    bad = write(tmp_path, "bad.inter", open(path).read() + "u\ta\t1\tlater\n")
    with pytest.raises(DataError, match=r"bad\.inter:482: column 'timestamp'"):
        convert(bad, "inter", str(tmp_path / "c"))
    with pytest.raises(DataError, match="no user has 100 or more"):  # fails after the partitions were written
        convert(path, "inter", str(tmp_path / "c"), min_seq_len=100)
    with pytest.raises(ConfigError, match="TFDS datasets are read through tensorflow_datasets, not streamed"):
        convert("movielens/100k-ratings", "tfds", str(tmp_path / "c"), streaming=True)
    assert sorted(os.listdir(tmp_path)) == ["a", "b", "bad.inter", "messy.inter"]  # no partitions, no half-written set


def test_cli_streaming_flag(tmp_path, cli):
    out = tmp_path / "out"
    result = run_cli(cli, "--data", write(tmp_path, "small.inter", SMALL), "--output_dir", str(out), "--streaming")
    assert result.returncode == 0, result.stderr
    assert "streamed through 1 partition" in result.stdout
    assert load_metadata(str(out))["streaming"] == {"partitions": 1}
