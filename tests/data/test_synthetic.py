"""Tests of the embedded synthetic dataset (Data/synthetic) and its generator.

Plain numpy only: the committed files must be reproducible byte for byte, have
the documented structure and carry learnable signal (order, genres, classes).
"""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from peterrec.data import synthetic

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "Data" / "synthetic"
K = 10


def _sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _read(path):
    lines = Path(path).read_bytes().decode("utf-8").split("\n")
    assert lines[-1] == "", f"{path} must end with a newline"
    return lines[0], [line.split("\t") for line in lines[1:-1]]


def _by_user(rows):
    """{user: (items, times)} in file order."""
    out = {}
    for user, item, ts in rows:
        items, times = out.setdefault(user, ([], []))
        items.append(item)
        times.append(int(ts))
    return out


@pytest.fixture(scope="module")
def files():
    src_header, src = _read(DATA / synthetic.SOURCE_FILE)
    tgt_header, tgt = _read(DATA / synthetic.TARGET_FILE)
    prof_header, prof = _read(DATA / synthetic.PROFILE_FILE)
    return {
        "headers": (src_header, tgt_header, prof_header),
        "source_rows": src,
        "target_rows": tgt,
        "profile_rows": prof,
        "source": _by_user(src),
        "target": _by_user(tgt),
        "profile": dict(prof),
    }


@pytest.fixture(scope="module")
def world():
    return synthetic.build()


@pytest.fixture(scope="module")
def source_seqs(files):
    """Per user (file order) int arrays of source item indices (id - 1)."""
    return [np.array([int(i[1:]) - 1 for i in items]) for items, _ in files["source"].values()]


# --------------------------------------------------------------------------
# Reproducibility


def test_regeneration_is_byte_identical(tmp_path):
    stats = synthetic.generate(tmp_path)
    for name in synthetic.FILES:
        assert _sha256(tmp_path / name) == _sha256(DATA / name) == synthetic.DEFAULT_SHA256[name], name
        assert stats["files"][name]["sha256"] == _sha256(DATA / name)


def test_the_default_files_are_written_on_first_use_with_the_recorded_bytes(tmp_path):
    default_dir = tmp_path / "Data" / "synthetic"
    path = default_dir / synthetic.TARGET_FILE
    assert synthetic.ensure_default(str(path)) == str(path)
    assert {name: _sha256(default_dir / name) for name in synthetic.DEFAULT_SHA256} == synthetic.DEFAULT_SHA256
    assert sorted(os.listdir(default_dir)) == sorted(synthetic.DEFAULT_SHA256)  # no temporary directory left
    (default_dir / synthetic.PROFILE_FILE).write_text("kept")  # an existing file is never rewritten
    synthetic.ensure_default(str(default_dir / synthetic.PROFILE_FILE))
    assert (default_dir / synthetic.PROFILE_FILE).read_text() == "kept"
    other = tmp_path / "elsewhere" / synthetic.SOURCE_FILE  # not under Data/synthetic: left missing for its reader
    synthetic.ensure_default(str(other))
    assert not other.parent.exists()


def test_script_regenerates(tmp_path):
    out = tmp_path / "out"
    subprocess.run(
        [sys.executable, str(REPO / "Data" / "generate.py"), "--output_dir", str(out)],
        check=True,
        capture_output=True,
    )
    for name in synthetic.FILES:
        assert _sha256(out / name) == _sha256(DATA / name), name


def test_other_seed_differs(tmp_path):
    world = synthetic.build(seed=7, n_users=50)
    synthetic.write_files(world, tmp_path)
    assert _sha256(tmp_path / synthetic.PROFILE_FILE) != _sha256(DATA / synthetic.PROFILE_FILE)


# --------------------------------------------------------------------------
# Structure


def test_headers_and_bytes(files):
    assert files["headers"] == (
        "user_id:token\titem_id:token\ttimestamp:float",
        "user_id:token\titem_id:token\ttimestamp:float",
        "user_id:token\tlabel:token",
    )
    total = 0
    for name in synthetic.FILES:
        raw = (DATA / name).read_bytes()
        assert b"\r" not in raw
        raw.decode("utf-8")
        total += len(raw)
    assert total <= 4_000_000


def test_counts(files):
    src, tgt, prof = files["source"], files["target"], files["profile"]
    assert 2500 <= len(src) <= 3500
    n_inter = len(files["source_rows"])
    assert 130_000 <= n_inter <= 150_000
    items = {row[1] for row in files["source_rows"]}
    assert 5000 <= len(items) <= 8000
    lengths = np.array([len(v[0]) for v in src.values()])
    assert lengths.min() >= 8 and lengths.max() <= 200
    assert 35 <= np.median(lengths) <= 55
    assert 200 <= len({row[1] for row in files["target_rows"]}) <= 400
    assert all(1 <= len(v[0]) <= 5 for v in tgt.values())
    assert set(tgt) == set(src) and set(prof) == set(src)
    assert len(files["profile_rows"]) == len(src)
    shares = np.unique(list(prof.values()), return_counts=True)[1] / len(prof)
    assert 4 <= len(shares) <= 6 and shares.max() <= 0.40


def test_id_formats_and_order(files):
    for rows in (files["source_rows"], files["target_rows"], files["profile_rows"]):
        users = [row[0] for row in rows]
        assert users == sorted(users)  # grouped and sorted by user
        assert all(len(u) == 5 and u[0] == "u" and u[1:].isdigit() for u in set(users))
    assert all(r[1][0] == "i" and len(r[1]) == 6 for r in files["source_rows"])
    assert all(r[1][0] == "t" and len(r[1]) == 5 for r in files["target_rows"])
    assert all(r[1][0] == "c" and r[1][1:].isdigit() for r in files["profile_rows"])
    for rows in (files["source_rows"], files["target_rows"]):
        assert all(r[2].isdigit() for r in rows)  # integer unix seconds


def test_timestamps(files):
    lo, hi = 1704067200, 1767225600  # 2024-01-01 .. 2026-01-01 UTC
    for user, (_, times) in files["source"].items():
        assert np.all(np.diff(times) >= 0), user
        assert lo <= times[0] < hi
        tgt_times = files["target"][user][1]
        assert np.all(np.diff(tgt_times) >= 0), user
        assert tgt_times[0] > times[-1], user  # target after source


def test_committed_files_match_world(files, world, source_seqs):
    assert all(np.array_equal(a, b) for a, b in zip(source_seqs, world.source_items))
    labels = [int(files["profile"][synthetic.user_id(u)][1:]) for u in range(len(source_seqs))]
    assert np.array_equal(labels, world.labels)


# --------------------------------------------------------------------------
# Learnable signal


def _bigram_hr(eval_seqs, train_seqs, n_items):
    """HR@K of items[-1] given items[-2]; bigram fitted on train_seqs[:-2]."""
    pop = np.bincount(np.concatenate([s[:-2] for s in train_seqs]), minlength=n_items)
    pop_top = np.argsort(-pop, kind="stable")[:K]
    pairs = np.concatenate([s[:-3] * n_items + s[1:-2] for s in train_seqs])
    keys, counts = np.unique(pairs, return_counts=True)
    hits_bigram = hits_pop = 0
    for seq in eval_seqs:
        ctx, label = seq[-2], seq[-1]
        lo, hi = np.searchsorted(keys, [ctx * n_items, (ctx + 1) * n_items])
        nxt, cnt = keys[lo:hi] - ctx * n_items, counts[lo:hi]
        top = list(nxt[np.lexsort((nxt, -cnt))][:K])
        top += [p for p in pop_top if p not in top][: K - len(top)]
        hits_bigram += label in top
        hits_pop += label in pop_top
    return hits_bigram / len(eval_seqs), hits_pop / len(eval_seqs)


def test_order_carries_signal(source_seqs):
    n_items = max(int(s.max()) for s in source_seqs) + 1
    bigram, pop = _bigram_hr(source_seqs, source_seqs, n_items)
    assert bigram >= 2 * pop, (bigram, pop)
    assert bigram >= 0.3
    rng = np.random.default_rng(0)
    shuffled = [np.concatenate([rng.permutation(s[:-2]), s[-2:]]) for s in source_seqs]
    bigram_shuffled, _ = _bigram_hr(source_seqs, shuffled, n_items)
    assert bigram_shuffled <= 0.5 * bigram, (bigram_shuffled, bigram)


def test_target_predictable_from_source_genres(files, world, source_seqs):
    n_genres = world.config.n_genres
    target_genre = world.target_genre
    targets = [np.array([int(t[1:]) - 1 for t in v[0]]) for v in files["target"].values()]
    n_target = len(target_genre)
    pop = np.bincount(np.concatenate([t[:-1] for t in targets]), minlength=n_target)
    pop = pop + 1e-3
    pop_order = np.argsort(-pop, kind="stable")
    hits_genre = hits_pop = 0
    for seq, tgt in zip(source_seqs, targets):
        profile = np.bincount(world.item_genre[seq], minlength=n_genres) / len(seq)
        seen = set(tgt[:-1].tolist())
        order = np.argsort(-(profile[target_genre] * pop), kind="stable")
        hits_genre += tgt[-1] in [i for i in order if i not in seen][:K]
        hits_pop += tgt[-1] in [i for i in pop_order if i not in seen][:K]
    hr_genre, hr_pop = hits_genre / len(targets), hits_pop / len(targets)
    assert hr_genre >= 1.5 * hr_pop, (hr_genre, hr_pop)
    assert hr_genre <= 0.8  # learnable, not trivial


def test_profile_predictable_from_source(files, world, source_seqs):
    labels = np.array([int(v[1:]) for v in files["profile"].values()])
    n_classes = world.config.n_classes
    groups = world.genre_group[world.item_genre]
    pred = np.array([np.argmax(np.bincount(groups[s], minlength=n_classes)) for s in source_seqs])
    accuracy = np.mean(pred == labels)
    majority = np.bincount(labels).max() / len(labels)
    assert accuracy >= majority + 0.3, (accuracy, majority)
    assert accuracy <= 0.95  # label noise keeps it from being trivial
