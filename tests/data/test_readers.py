"""Tests of peterrec.data.readers: each format, malformed input, stable time sort."""

import importlib.util
import os

import pytest

from peterrec.data.readers import UserSequence, detect_format, read_sequences
from peterrec.errors import DataError

SHARED_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "..", "shared")

SHARED = SHARED_DIR
DEMO = os.path.join(SHARED, "fixtures", "peterrec_demo", "Session")
ML100K = os.path.join(SHARED, "data", "ml-100k", "ml-100k.inter")
INTER_HEADER = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"


def write(tmp_path, name, text, encoding="utf-8"):
    """Writes ``text`` (str or bytes) to ``tmp_path/name`` and returns the path."""
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode(encoding))
    return str(path)


def by_user(sequences):
    return {sequence.user: sequence for sequence in sequences}


# ---------------------------------------------------------------- RecBole .inter
def test_inter_groups_by_user_and_sorts_stably_by_time(tmp_path):
    path = write(
        tmp_path,
        "a.inter",
        "user_id:token\titem_id:token\textra:float\ttimestamp:float\n"
        "u1\ti3\t0.5\t30\n"
        "u2\ti1\t0.5\t5\n"
        "u1\ti1\t0.5\t10\n"
        "u1\ti2\t0.5\t30\n"  # same time as i3: keeps file order (i3 before i2)
        "u1\ti4\t0.5\t20.9\n",
    )
    sequences, stats = read_sequences(path, "inter")
    assert [s.user for s in sequences] == ["u1", "u2"]  # first appearance
    assert sequences[0] == UserSequence("u1", ["i1", "i4", "i3", "i2"], [10, 20, 30, 30])
    assert sequences[1] == UserSequence("u2", ["i1"], [5])
    assert stats["lines_read"] == 5 and stats["interactions"] == 5 and stats["users"] == 2
    assert stats["format"] == "inter" and stats["has_timestamps"] and not stats["has_targets"]


def test_inter_sorts_by_full_precision_and_stores_whole_seconds(tmp_path):
    path = write(tmp_path, "a.inter", "user_id:token\titem_id:token\ttimestamp:float\nu\tlate\t10.7\nu\tearly\t10.2\n")
    (sequence,), _ = read_sequences(path, "inter")
    assert sequence.items == ["early", "late"] and sequence.timestamps == [10, 10]


def test_inter_ids_with_spaces_bom_and_crlf(tmp_path):
    text = "\ufeffuser_id:token\titem_id:token\r\nuser one\tthe item\r\nuser one\tother item\r\n\r\n"
    sequences, _ = read_sequences(write(tmp_path, "a.inter", text), "auto")
    assert sequences == [UserSequence("user one", ["the item", "other item"], None)]


def test_inter_without_timestamp_keeps_file_order(tmp_path):
    path = write(tmp_path, "a.inter", "item_id:token\tuser_id:token\nb\tu\na\tu\nc\tu\n")
    (sequence,), stats = read_sequences(path, "inter")
    assert sequence.items == ["b", "a", "c"] and sequence.timestamps is None
    assert not stats["has_timestamps"]


def test_inter_rating_threshold(tmp_path):
    path = write(tmp_path, "a.inter", INTER_HEADER + "u\ta\t5\t1\nu\tb\t2\t2\nv\tc\t1\t3\nu\tc\t4\t3\n")
    sequences, stats = read_sequences(path, "inter", rating_threshold=4)
    assert sequences == [UserSequence("u", ["a", "c"], [1, 3])]  # v loses its only interaction
    assert stats["rating_filtered"] == 2 and stats["interactions"] == 2 and stats["users"] == 1


def test_inter_rating_threshold_without_rating_column(tmp_path):
    path = write(tmp_path, "a.inter", "user_id:token\titem_id:token\nu\ta\n")
    with pytest.raises(DataError, match=r"a\.inter.*rating"):
        read_sequences(path, "inter", rating_threshold=3.0)


@pytest.mark.parametrize(
    "text, pattern",
    [
        ("", r"a\.inter: empty file"),
        ("\n\n", r"a\.inter: empty file"),
        (INTER_HEADER, r"a\.inter: header only"),
        ("user_id:token\trating:float\nu\t1\n", r"a\.inter:1: header 'user_id:token\\trating:float' lacks the column\(s\) item_id"),
        ("user_id:token\titem_id:token\titem_id:float\nu\ta\t1\n", r"a\.inter:1: duplicate column 'item_id'"),
        (INTER_HEADER + "u\ta\t1\t5\nu\tb\t1\tyesterday\n", r"a\.inter:3: column 'timestamp' .*'yesterday'"),
        (INTER_HEADER + "u\ta\tgood\t5\n", r"a\.inter:2: column 'rating'"),
        (INTER_HEADER + "u\ta\t1\tnan\n", r"a\.inter:2: column 'timestamp'"),
        (INTER_HEADER + "u\ta\t1\n", r"a\.inter:2: expected 4 tab-separated columns"),
        (INTER_HEADER + "u\t\t1\t1\n", r"a\.inter:2: empty item_id"),
    ],
)
def test_inter_malformed(tmp_path, text, pattern):
    with pytest.raises(DataError, match=pattern):
        read_sequences(write(tmp_path, "a.inter", text), "inter")


def test_inter_non_utf8_names_file_and_line(tmp_path):
    path = write(tmp_path, "a.inter", INTER_HEADER.encode() + b"u\ta\t1\t1\nu\t\xff\xfe\t1\t2\n")
    with pytest.raises(DataError, match=r"a\.inter:3: not valid UTF-8"):
        read_sequences(path, "inter")


# ---------------------------------------------------------------- PeterRec CSV
def test_peterrec_drops_left_padding_only(tmp_path):
    path = write(tmp_path, "p.csv", "0,0,5,0,7\n1,2,3,4,5\n\n0,0,0,0,0\n")
    sequences, stats = read_sequences(path, "auto")
    assert sequences == [
        UserSequence("line-1", ["5", "0", "7"], None),
        UserSequence("line-2", ["1", "2", "3", "4", "5"], None),
        UserSequence("line-4", [], None),  # only padding: kept here, skipped by convert as too short
    ]
    assert stats["lines_read"] == 3 and stats["interactions"] == 8 and not stats["has_targets"]


def test_peterrec_finetune_targets(tmp_path):
    path = write(tmp_path, "f.csv", "0,3,4,,t1,t2\r\n5,6,7,,t1\r\n")
    sequences, stats = read_sequences(path, "peterrec")
    assert sequences == [UserSequence("line-1", ["3", "4"], None, ["t1", "t2"]), UserSequence("line-2", ["5", "6", "7"], None, ["t1"])]
    assert stats["has_targets"]


@pytest.mark.parametrize(
    "text, pattern",
    [
        ("1,2,,t\n3,4\n", r"f\.csv:2: finetuning line without ',,'"),
        ("1,2\n3,4,,t\n", r"f\.csv:2: ',,' in a pretraining file"),
        ("1,2,,t,,u\n", r"f\.csv:1: more than one ',,'"),
        ("1,2 3,4\n", r"f\.csv:1: item '2 3' contains whitespace"),
        ("1,2,\n", r"f\.csv:1: empty item"),
        ("1,2,,\n", r"f\.csv:1: empty target"),
        ("", r"f\.csv: empty file"),
    ],
)
def test_peterrec_malformed(tmp_path, text, pattern):
    with pytest.raises(DataError, match=pattern):
        read_sequences(write(tmp_path, "f.csv", text), "peterrec")


def test_peterrec_rating_threshold_is_an_error(tmp_path):
    with pytest.raises(DataError, match="rating"):
        read_sequences(write(tmp_path, "p.csv", "1,2\n"), "peterrec", rating_threshold=1.0)


@pytest.mark.skipif(not os.path.isdir(DEMO), reason="../shared demo files absent")
def test_peterrec_demo_files():
    pretrain, _ = read_sequences(os.path.join(DEMO, "history_sequences_20181014_fajie_transfer_pretrain_small.csv"), "auto")
    finetune, _ = read_sequences(os.path.join(DEMO, "history_sequences_20181014_fajie_transfer_finetune_small.csv"), "auto")
    assert len(pretrain) == len(finetune) == 30
    assert [s.items for s in pretrain] == [s.items for s in finetune]
    assert sum(len(s.targets) for s in finetune) == 47
    assert pretrain[9].items == ["31544", "51967", "44427", "73960"]  # '0,0,0,0,0,31544,...'


# ---------------------------------------------------------------- Caser text
@pytest.mark.parametrize(
    "text, items, timestamps",
    [
        ("1 10\n1 11\n2 10\n", ["10", "11"], None),
        ("1 10 4\n1 11 5\n2 10 1\n", ["10", "11"], None),
        ("1 10 4 20\n1 11 5  10\n2 10 1 3\n", ["11", "10"], [10, 20]),
    ],
)
def test_caser_columns(tmp_path, text, items, timestamps):
    sequences, _ = read_sequences(write(tmp_path, "c.txt", text), "auto")
    assert by_user(sequences)["1"] == UserSequence("1", items, timestamps)


@pytest.mark.parametrize(
    "text, pattern",
    [
        ("1 10 4 20\n1 11 5\n", r"c\.txt:2: expected 4 whitespace-separated columns as on line 1, got 3"),
        ("1\n", r"c\.txt:1: expected 2, 3 or 4"),
        ("1 2 3 4 5\n", r"c\.txt:1: expected 2, 3 or 4"),
        ("1 10 x\n", r"c\.txt:1: column 'rating'"),
        ("", r"c\.txt: empty file"),
    ],
)
def test_caser_malformed(tmp_path, text, pattern):
    with pytest.raises(DataError, match=pattern):
        read_sequences(write(tmp_path, "c.txt", text), "caser")


def test_caser_rating_threshold(tmp_path):
    sequences, stats = read_sequences(write(tmp_path, "c.dat", "1 10 4\n1 11 2\n"), "auto", rating_threshold=3)
    assert sequences == [UserSequence("1", ["10"], None)] and stats["rating_filtered"] == 1


# ---------------------------------------------------------------- format detection, tfds, missing file
@pytest.mark.parametrize("name, fmt", [("x.inter", "inter"), ("x.CSV", "peterrec"), ("x.txt", "caser"), ("d/x.dat", "caser")])
def test_detect_format(name, fmt):
    assert detect_format(name) == fmt


def test_detect_format_unknown_lists_formats():
    with pytest.raises(DataError, match=r"data\.json.*\.inter.*inter.*peterrec.*caser"):
        detect_format("data.json")


def test_missing_file_and_unknown_format(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_sequences(str(tmp_path / "absent.inter"), "inter")
    with pytest.raises(DataError, match="unknown format 'xml'"):
        read_sequences(str(tmp_path / "a.inter"), "xml")


@pytest.mark.skipif(importlib.util.find_spec("tensorflow_datasets") is not None, reason="tensorflow_datasets installed")
def test_tfds_without_package_says_how_to_install():
    with pytest.raises(DataError, match=r"pip install -e \.\[tfds\]"):
        read_sequences("movielens/100k-ratings", "tfds")


@pytest.mark.skipif(importlib.util.find_spec("tensorflow_datasets") is None, reason="tensorflow_datasets not installed (pip install -e .[tfds])")
def test_a_local_tfds_dataset_reads_and_converts_like_the_same_inter_file(tmp_path, monkeypatch):
    """--format tfds end to end on a tiny TFDS dataset built here (a GeneratorBasedBuilder, nothing downloaded)."""
    import tensorflow as tf
    import tensorflow_datasets as tfds

    from peterrec.data import convert

    rows = [(f"u{u}", f"m{(u * 7 + t * 3) % 23}", 4.0, 1000 * u + 10 * (6 - t)) for u in range(12) for t in range(6)]  # times descend

    class PeterrecTinyRatings(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            features = {"user_id": tf.string, "movie_id": tf.string, "user_rating": tf.float32, "timestamp": tf.int64}
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            for key, (user, item, rating, time) in enumerate(rows):
                yield key, {"user_id": user, "movie_id": item, "user_rating": rating, "timestamp": time}

    data_dir = tmp_path / "tfds"
    monkeypatch.setenv("TFDS_DATA_DIR", str(data_dir))
    PeterrecTinyRatings(data_dir=str(data_dir)).download_and_prepare()
    inter = tmp_path / "same.inter"
    inter.write_text("user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
                     + "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in rows))
    from_tfds, stats = read_sequences("peterrec_tiny_ratings", "tfds")
    from_inter, _ = read_sequences(str(inter), "inter")
    assert stats["interactions"] == len(rows) and len(from_tfds) == 12
    assert sorted((s.user, s.items) for s in from_tfds) == sorted((s.user, s.items) for s in from_inter)  # time-ordered, as the .inter
    meta_tfds = convert.convert("peterrec_tiny_ratings", "tfds", str(tmp_path / "set_tfds"), num_shards=1)
    meta_inter = convert.convert(str(inter), "inter", str(tmp_path / "set_inter"), num_shards=1)
    assert meta_tfds["counts"] == meta_inter["counts"]
    from peterrec.data.vocab import Vocabulary

    vocabs = [Vocabulary.load(str(tmp_path / name)) for name in ("set_tfds", "set_inter")]  # (ids and split follow reading order)
    assert sorted(vocabs[0].tokens) == sorted(vocabs[1].tokens)


@pytest.mark.skipif(not os.path.isfile(ML100K), reason="../shared ml-100k absent")
def test_ml100k():
    sequences, stats = read_sequences(ML100K, "auto")
    assert stats["interactions"] == 100_000 and len(sequences) == 943
    assert all(s.timestamps == sorted(s.timestamps) for s in sequences)
    assert len({item for s in sequences for item in s.items}) == 1682
