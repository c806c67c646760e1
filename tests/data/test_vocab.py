"""Tests of peterrec.data.vocab.Vocabulary."""

import json
import os

import numpy as np
import pytest

from peterrec import features
from peterrec.data.vocab import Vocabulary
from peterrec.errors import ConfigError, DataError, VocabularyError

N = features.NUM_RESERVED


def test_build_orders_by_frequency_then_first_appearance():
    vocab = Vocabulary.build([["b", "a", "c"], ["a", "d", "c"], ["e"]])
    assert vocab.tokens == ["a", "c", "b", "d", "e"]
    assert vocab.size == N + 5 and len(vocab) == vocab.size
    assert vocab.counts.tolist() == [0] * N + [2, 2, 1, 1, 1]
    assert vocab.counts.dtype == np.int64


def test_build_first_appearance_order_and_bad_order():
    assert Vocabulary.build([["b", "a", "c"], ["a", "d"]], order="first").tokens == ["b", "a", "c", "d"]
    with pytest.raises(ConfigError, match="order='alphabetical'"):
        Vocabulary.build([["a"]], order="alphabetical")


def test_encode_maps_unknown_to_oov_and_counts_them():
    vocab = Vocabulary(["x", "y"])
    ids, num_oov = vocab.encode(["y", "zz", "x", "zz"])
    assert ids.dtype == np.int64 and ids.tolist() == [N + 1, features.OOV_ID, N, features.OOV_ID]
    assert num_oov == 2
    assert vocab.id_of("x") == N and vocab.id_of("nope") == features.OOV_ID
    assert "x" in vocab and "nope" not in vocab
    assert vocab.encode([])[0].shape == (0,)


def test_decode_and_reserved_names_are_plain_items():
    vocab = Vocabulary(["[PAD]", "item"])  # a raw token equal to a reserved name is just an item
    assert vocab.id_of("[PAD]") == N
    assert vocab.decode(np.array([0, 1, 2, 3, N, N + 1])) == list(features.RESERVED_TOKENS) + ["[PAD]", "item"]
    with pytest.raises(VocabularyError, match="out of range"):
        vocab.decode([N + 2])


def test_invalid_tokens_and_counts():
    with pytest.raises(DataError, match="non-empty"):
        Vocabulary(["a", ""])
    with pytest.raises(VocabularyError, match="duplicate item token 'a'"):
        Vocabulary(["a", "b", "a"])
    with pytest.raises(VocabularyError, match="counts"):
        Vocabulary(["a", "b"], [1])
    with pytest.raises(VocabularyError, match="non-negative"):
        Vocabulary(["a"], [-1])


def test_hash_covers_tokens_not_counts():
    base = Vocabulary(["a", "b"], [3, 4])
    assert base.hash == Vocabulary(["a", "b"]).hash
    assert base.hash != Vocabulary(["b", "a"]).hash
    assert len(base.hash) == 64 and base != Vocabulary(["a", "b"])
    with pytest.raises(ValueError):
        base.counts[N] = 9  # read-only


def test_save_load_round_trip(tmp_path):
    vocab = Vocabulary(["a b", "ü", "[MASK]"], [5, 0, 2])
    path = vocab.save(str(tmp_path / "vocab.json"))
    loaded = Vocabulary.load(path)
    assert loaded == vocab and loaded.hash == vocab.hash
    assert Vocabulary.load(str(tmp_path)) == vocab  # a directory holding vocab.json
    assert os.listdir(tmp_path) == ["vocab.json"]  # no temp file left behind
    assert vocab.save(str(tmp_path)) == str(tmp_path / "vocab.json")


def _edit(path, **changes):
    data = json.loads(open(path, encoding="utf-8").read())
    data.update(changes)
    with open(path, "w", encoding="utf-8") as stream:
        json.dump(data, stream)


def test_hand_edited_vocab_is_refused(tmp_path):
    path = Vocabulary(["a", "b"]).save(str(tmp_path / "vocab.json"))
    _edit(path, tokens=["b", "a"])
    with pytest.raises(VocabularyError, match=r"vocab\.json: vocabulary hash mismatch"):
        Vocabulary.load(path)


def test_edited_counts_still_load(tmp_path):
    path = Vocabulary(["a", "b"]).save(str(tmp_path / "vocab.json"))
    _edit(path, counts=[7, 8])
    assert Vocabulary.load(path).counts[N:].tolist() == [7, 8]


@pytest.mark.parametrize(
    "content, pattern",
    [
        (None, "not found"),
        ("{not json", "not a valid vocabulary JSON"),
        ('{"tokens": []}', "not a peterrec vocabulary"),
        ('[1, 2]', "not a peterrec vocabulary"),
    ],
)
def test_missing_or_invalid_file(tmp_path, content, pattern):
    path = tmp_path / "vocab.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(VocabularyError, match=rf"vocab\.json: .*{pattern}"):
        Vocabulary.load(str(path))


def test_invalid_tokens_in_file_are_vocabulary_errors(tmp_path):
    path = Vocabulary(["a"]).save(str(tmp_path / "vocab.json"))
    _edit(path, tokens=["a", "a"], counts=[0, 0])
    with pytest.raises(VocabularyError, match=r"vocab\.json: invalid vocabulary: duplicate"):
        Vocabulary.load(path)
