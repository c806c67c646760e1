"""Item side information: .item / Amazon meta / ratings CSV readers, tables, persistence, synthetic side files."""

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

from peterrec.data import item_features as F
from peterrec.data import synthetic
from peterrec.data.readers import read_sequences
from peterrec.data.vocab import Vocabulary
from peterrec.errors import ConfigError, DataError, VocabularyError
from peterrec.features import MASK_ID, NUM_RESERVED, OOV_ID, PAD_ID

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "Data" / "synthetic"
ML100K_ITEM = REPO.parent / "shared" / "data" / "ml-100k" / "ml-100k.item"


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


ITEM = (
    "item_id:token\tgenre:token_seq\tbrand:token\tprice:float\tvec:float_seq\n"
    "a\tx y\tB1\t2.5\t1 2\n"
    "b\ty\t\t\t3 4\n"
    "c\t\tB1\t1.0\t\n"
    "zz\tq\tB9\t9\t0 0\n"  # not an item of the data: counted, dropped
)


@pytest.fixture
def vocab():
    return Vocabulary(["a", "b", "c", "d"])  # ids 4..7; "d" has no feature row


def test_item_file_tables_reserve_pad_and_missing(tmp_path, vocab):
    raw = F.read_item_sources(write(tmp_path, "f.item", ITEM))
    feats = F.ItemFeatures.build(raw, vocab)
    a, b, c, d = (vocab.id_of(t) for t in "abcd")
    # genre: y is in 2 rows, x in 1 -> y = 2, x = 3 (frequency order); q belongs to an unknown item
    assert feats.values["genre"] == ["y", "x"] and feats.size("genre") == 4
    g = feats.tables["genre"]
    assert g.shape == (vocab.size, 2)
    assert g[a].tolist() == [3, 2] and g[b].tolist() == [2, 0]
    assert g[c].tolist() == [F.MISSING_VALUE, 0] and g[d].tolist() == [F.MISSING_VALUE, 0]  # empty cell, no row
    assert g[PAD_ID].tolist() == [F.PAD_VALUE, 0] and g[OOV_ID].tolist() == [F.MISSING_VALUE, 0] and g[MASK_ID][0] == F.MISSING_VALUE
    brand = feats.tables["brand"]
    assert brand[a] == brand[c] == 2 and brand[b] == brand[d] == F.MISSING_VALUE and brand[PAD_ID] == F.PAD_VALUE
    assert feats.tables["price"][a] == pytest.approx(2.5) and feats.tables["vec"][b].tolist() == [3.0, 4.0]
    assert feats.present[:, 0].tolist() == [False] * 4 + [True, True, False, False]  # genre
    assert feats.present[:, 2].tolist() == [False] * 4 + [True, False, True, False]  # price
    assert not feats.present[d].any() and not feats.present[:NUM_RESERVED].any()
    assert feats.stats["feature_rows_unknown_items"] == 1 and feats.stats["items_without_features"] == 1
    assert feats.spec() == [
        {"name": "genre", "kind": "token_seq", "size": 4, "width": 2},
        {"name": "brand", "kind": "token", "size": 3, "width": 1},
        {"name": "price", "kind": "float", "size": 0, "width": 1},
        {"name": "vec", "kind": "float_seq", "size": 0, "width": 2},
    ]


def test_field_selection_and_bad_item_files(tmp_path):
    path = write(tmp_path, "f.item", ITEM)
    assert list(F.read_item_sources(path, "brand,genre").kinds) == ["genre", "brand"]
    with pytest.raises(ConfigError, match=r"--item_fields: unknown field\(s\) 'colour'"):
        F.read_item_sources(path, ["brand", "colour"])
    with pytest.raises(DataError, match=r"f2.item:3: expected 2 tab-separated columns"):
        F.read_item_sources(write(tmp_path, "f2.item", "item_id:token\tc:token\na\tx\nb\tx\ty\n"))
    with pytest.raises(DataError, match=r"f3.item:2: column 'p' must hold numbers"):
        F.read_item_sources(write(tmp_path, "f3.item", "item_id:token\tp:float\na\tcheap\n"))
    with pytest.raises(DataError, match=r"f4.item:1: column 'p:int' has type 'int'"):
        F.read_item_sources(write(tmp_path, "f4.item", "item_id:token\tp:int\na\t1\n"))
    with pytest.raises(DataError, match="cannot tell the item-feature format"):
        F.read_item_sources(write(tmp_path, "f.csv", "x"))


META = [
    '{"asin": "A1", "categories": [["Beauty", "Skin"], ["Beauty", "Face", "Cream"]], "brand": "Acme", "price": 3.5}',
    "{'asin': 'A2', 'categories': [['Toys']], 'title': 'a \"quoted\" title', 'brand': ''}",  # Python literal, empty brand
    "{'asin': 'A3', 'categories': [], 'related': {'also_bought': ['A1']}}",
    "__import__('os').system('touch pwned')",  # never evaluated
    "{'asin': 'A4', 'categories': [['Toys', 'Cars']], 'brand': 'Acme'",  # truncated line
    '{"asin": "A5", "category": ["Sports", "Balls"], "brand": "Kick"}',  # 2018 format: flat category list
]


def test_amazon_meta_is_parsed_safely_and_bad_lines_are_counted(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path, "meta_Beauty.json", "\n".join(META) + "\n")
    raw = F.read_item_sources(path, "categories,category,brand", max_bad_share=0.5)
    assert not (tmp_path / "pwned").exists()
    assert raw.stats[path]["bad_lines"] == 2 and raw.stats[path]["first_bad_line"] == 4 and raw.stats[path]["lines"] == 6
    assert raw.rows["A1"] == {"categories": ["Beauty", "Skin", "Face", "Cream"], "category": "Cream", "brand": "Acme"}
    assert raw.rows["A2"] == {"categories": ["Toys"], "category": "Toys"}  # '' brand is missing
    assert raw.rows["A3"] == {} and raw.rows["A5"]["category"] == "Balls"
    with pytest.raises(DataError, match=r"2 of 6 lines \(33.3%\) .* \(first: line 4\), more than --max_bad_share 0.1"):
        F.read_item_sources(path, "brand", max_bad_share=0.1)
    with pytest.raises(ConfigError, match="title of .* is text; .* float_seq column"):
        F.read_item_sources(path, "brand,title")
    with pytest.raises(ConfigError, match=r"--item_fields: unknown field\(s\) 'colour'"):
        F.read_item_sources(path, "colour", max_bad_share=0.5)


def test_ratings_csv_reader(tmp_path):
    path = write(tmp_path, "ratings_Beauty.csv", "user,item,rating,timestamp\nU1,A1,5.0,30\nU1,A2,2.0,10\nU2,A1,4,5\n")
    sequences, stats = read_sequences(path, "ratings", rating_threshold=3)
    assert [(s.user, s.items, s.timestamps) for s in sequences] == [("U1", ["A1"], [30]), ("U2", ["A1"], [5])]
    assert stats["rating_filtered"] == 1 and stats["has_timestamps"]
    with pytest.raises(DataError, match=r"bad.csv:2: expected 4 comma-separated columns"):
        read_sequences(write(tmp_path, "bad.csv", "U1,A1,5,1\nU1,A2,5\n"), "ratings")


def test_save_load_cache_and_checks(tmp_path, vocab):
    path = write(tmp_path, "f.item", ITEM)
    set_dir = tmp_path / "set"
    set_dir.mkdir()
    built = F.for_set(str(set_dir), vocab, path)
    files = sorted(os.listdir(set_dir))
    assert len(files) == 2 and files[0].startswith("item_features-") and files[0].endswith(".json")
    again = F.for_set(str(set_dir), vocab, path)  # from the cache
    assert again.hash == built.hash and again.values == built.values
    assert sorted(os.listdir(set_dir)) == files
    other = F.for_set(str(set_dir), vocab, path, "brand")  # another selection: another cache entry
    assert other.fields == ["brand"] and len(os.listdir(set_dir)) == 4
    with pytest.raises(VocabularyError, match="built for vocabulary"):
        F.ItemFeatures.load(str(set_dir / files[0]), Vocabulary(["a", "b"]))
    (set_dir / files[1]).write_bytes(b"garbage")
    with pytest.raises(DataError, match="missing or modified"):
        F.ItemFeatures.load(str(set_dir / files[0]))


def test_discard_drops_present_cells_only_and_is_seeded(tmp_path):
    tokens = [f"i{k}" for k in range(400)]
    rows = "".join(f"i{k}\tc{k % 7}\t{'' if k % 3 == 0 else 'b' + str(k % 5)}\n" for k in range(400))
    raw = F.read_item_sources(write(tmp_path, "f.item", "item_id:token\tcat:token\tbrand:token\n" + rows))
    feats = F.ItemFeatures.build(raw, Vocabulary(tokens))
    half = feats.discard(0.5, seed=3)
    dropped = feats.present & ~half.present
    assert not (half.present & ~feats.present).any()  # nothing appears
    assert 0.4 < dropped.sum() / feats.present.sum() < 0.6
    assert (half.tables["cat"][dropped[:, 0]] == F.MISSING_VALUE).all()
    assert np.array_equal(half.present, feats.discard(0.5, seed=3).present)
    assert half.hash != feats.hash and feats.discard(0.0, seed=3) is feats


def test_ml100k_genres_are_a_token_seq_field():
    if not ML100K_ITEM.is_file():
        pytest.skip("../shared/data/ml-100k is absent")
    raw = F.read_item_sources(str(ML100K_ITEM), "class")
    assert raw.kinds == {"class": "token_seq"}
    assert raw.rows["1"]["class"] == ["Animation", "Children's", "Comedy"]  # Toy Story
    feats = F.ItemFeatures.build(raw, Vocabulary([str(i) for i in range(1, 1683)]))
    assert feats.size("class") == 2 + 19 and feats.width("class") == 6


# ---------------------------------------------------------------- the embedded default's side files
def _sha(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_synthetic_side_files_regenerate_byte_identical_next_to_unchanged_interactions(tmp_path):
    stats = synthetic.generate(tmp_path)
    for name in synthetic.FILES + synthetic.SIDE_FILES:
        assert _sha(tmp_path / name) == _sha(DATA / name), name
    assert stats["files"][synthetic.ITEM_FILE]["sha256"] == _sha(DATA / synthetic.ITEM_FILE)
    missing = stats["side"]["missing_share"]
    assert 0.15 <= missing["category"] <= 0.30 and 0.15 <= missing["brand"] <= 0.35 and 0.10 <= missing["price"] <= 0.30
    shares = stats["side"]["behaviour_share"]
    assert shares["click"] > shares["like"] > shares["purchase"] > 0.05


def test_synthetic_categories_follow_the_latent_genres():
    world = synthetic.build()
    side = synthetic.build_side_info(world)
    listed = side.category >= 0
    agree = np.mean(side.category[listed] == world.item_genre[listed])
    assert 0.85 <= agree <= 0.95  # the genre with 10 % noise
    raw = F.read_item_sources(str(DATA / synthetic.ITEM_FILE))
    assert raw.kinds == {"category": "token", "brand": "token", "price": "float"}
    first = synthetic.item_id(0)
    assert raw.rows[first].get("category") == (synthetic.category_id(int(side.category[0])) if side.category[0] >= 0 else None)
    header, *rows = (DATA / synthetic.BEHAVIOUR_FILE).read_text().split("\n")[:4]
    assert header == synthetic.BEHAVIOUR_HEADER and rows[0].split("\t")[3] in synthetic.BEHAVIOURS


def test_behaviour_column_is_read_as_the_readers_read_the_file(tmp_path):
    """Users by first appearance, each user's lines sorted stably by time, the same rating threshold as the readers."""
    path = write(tmp_path, "b.inter", "user_id:token\titem_id:token\trating:float\ttimestamp:float\tkind:token\n"
                 "u1\ta\t5\t20\tlike\nu2\tb\t4\t1\tclick\nu1\tb\t1\t10\tclick\nu1\tc\t4\t10\tbuy\n")
    assert F.read_behaviour_column(path, "kind") == {"u1": (["b", "c", "a"], [10, 10, 20], ["click", "buy", "like"]), "u2": (["b"], [1], ["click"])}
    kept = F.read_behaviour_column(path, "kind", rating_threshold=3)
    sequences = {s.user: s.items for s in read_sequences(path, "inter", rating_threshold=3)[0]}
    assert {u: v[0] for u, v in kept.items()} == sequences == {"u1": ["c", "a"], "u2": ["b"]}
    with pytest.raises(ConfigError, match=r"--behaviour_field: .*b.inter has no column 'behaviour' \(its columns: user_id, item_id, rating, timestamp, kind\)"):
        F.read_behaviour_column(path, "behaviour")
    bad = write(tmp_path, "bad.inter", "user_id:token\titem_id:token\tkind:token\nu1\ta\tclick\nu1\tb\t\n")
    with pytest.raises(DataError, match=r"bad.inter:3: empty 'kind'"):
        F.read_behaviour_column(bad, "kind")
    assert F.inter_columns(str(DATA / "source_behaviour.inter")) == ["user_id", "item_id", "timestamp", "behaviour"]
    assert F.inter_columns(str(tmp_path / "absent.inter")) == []
