"""The embedded default dataset: a seeded, licence-clean synthetic recommender world.

The files are not tracked in git: :func:`ensure_default` writes them (0.7 s, the same bytes every time,
:data:`DEFAULT_SHA256`) the first time a job or test opens one of them under a ``Data/synthetic/``
directory. ``generate(output_dir)`` writes the three interaction files under
``Data/synthetic/`` (RecBole atomic format, tab separated, typed header,
``\\n`` line endings, UTF-8, sorted by user then time):

``source.inter``   ``user_id:token  item_id:token  timestamp:float``
                   long behaviour sequences on ~6,000 source items (``i00001``..)
``target.inter``   same header; 1-5 interactions per user on ~300 target items
                   (``t0001``..), all later in time than the user's source sequence
``profile.inter``  ``user_id:token  label:token``; one user-profile class per user
                   (``c0``..``c4``)

Timestamps are written as integers (unix seconds) even though the RecBole type
is ``float``.

The generative model (every knob is a field of
:class:`~peterrec.data.synthetic_world.SyntheticConfig`) and its determinism are
described in :mod:`peterrec.data.synthetic_world`; :func:`build` samples it. This
module names, writes and summarises the files, and samples the side information
(``source.item``, ``source_behaviour.inter``) on streams of its own, so the
interaction files are unchanged by it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from pathlib import Path
import shutil
import tempfile

import numpy as np

from peterrec.data.synthetic_world import DEFAULT_SEED, PART_BEHAVIOUR, PART_SIDE, SyntheticWorld, build, normal, part_rng, pick

SOURCE_FILE = "source.inter"
TARGET_FILE = "target.inter"
PROFILE_FILE = "profile.inter"
FILES = (SOURCE_FILE, TARGET_FILE, PROFILE_FILE)
# Side information, written next to the interaction files (which they leave byte-identical).
ITEM_FILE = "source.item"
BEHAVIOUR_FILE = "source_behaviour.inter"
SIDE_FILES = (ITEM_FILE, BEHAVIOUR_FILE)

DEFAULT_DIR = os.path.join("Data", "synthetic")
# What generate(seed=DEFAULT_SEED) writes (tests/data/test_synthetic.py checks it).
DEFAULT_SHA256 = {
    SOURCE_FILE: "a2bccdf45233021bd44b31d73ff16772e09a4f1a91d7ce345466ad83be6657d5",
    TARGET_FILE: "3ab525bdd56cbb0706409a8df3cf091be86b2f742016998c0be1aa1da5861ae6",
    PROFILE_FILE: "d050fa28e7a59614983983dfbfaf26be7876c3549a9ab5eefe6e111ef79d838e",
    ITEM_FILE: "c23547999292b82c67198ea559106814a31254e2e9eb714fb15a45caecbb8d03",
    BEHAVIOUR_FILE: "4b506d50deacde33c17fe40ba21b874f1766b34b59f5e02febb1edcb1be31e74",
}

INTER_HEADER = "user_id:token\titem_id:token\ttimestamp:float"
PROFILE_HEADER = "user_id:token\tlabel:token"
ITEM_HEADER = "item_id:token\tcategory:token\tbrand:token\tprice:float"
BEHAVIOUR_HEADER = "user_id:token\titem_id:token\ttimestamp:float\tbehaviour:token"
BEHAVIOURS = ("click", "like", "purchase")


# --------------------------------------------------------------------------
# Ids, writing and stats.


def user_id(u: int) -> str:
    return "u%04d" % (u + 1)


def item_id(i: int) -> str:
    return "i%05d" % (i + 1)


def target_id(i: int) -> str:
    return "t%04d" % (i + 1)


def class_id(k: int) -> str:
    return "c%d" % k


def _write(path: Path, header: str, rows) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(header + "\n")
        f.writelines(rows)


def write_files(world: SyntheticWorld, output_dir) -> dict:
    """Writes the three files; returns ``{name: {"bytes", "sha256"}}``."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    users = range(world.config.n_users)

    def interactions(items, times, name):  # one "user<TAB>item<TAB>time" line per interaction, users in order
        return ("%s\t%s\t%d\n" % (user_id(u), name(i), t) for u in users for i, t in zip(items[u].tolist(), times[u].tolist()))

    _write(out / SOURCE_FILE, INTER_HEADER, interactions(world.source_items, world.source_times, item_id))
    _write(out / TARGET_FILE, INTER_HEADER, interactions(world.target_items, world.target_times, target_id))
    _write(
        out / PROFILE_FILE,
        PROFILE_HEADER,
        ("%s\t%s\n" % (user_id(u), class_id(int(world.labels[u]))) for u in users),
    )
    return {name: file_info(out / name) for name in FILES}


def file_info(path) -> dict:
    data = Path(path).read_bytes()
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def stats(world: SyntheticWorld) -> dict:
    """Summary numbers of a world (the table in ``Data/README.md``)."""
    cfg = world.config
    lengths = np.array([len(s) for s in world.source_items])
    tcounts = np.array([len(s) for s in world.target_items])
    src = np.concatenate(world.source_items)
    tgt = np.concatenate(world.target_items)
    times = np.concatenate(world.source_times + world.target_times)
    shares = np.bincount(world.labels, minlength=cfg.n_classes) / cfg.n_users
    return {
        "seed": world.seed,
        "n_users": cfg.n_users,
        "n_source_items": int(len(np.unique(src))),
        "n_source_items_model": cfg.n_items,
        "n_source_interactions": int(lengths.sum()),
        "source_length_min": int(lengths.min()),
        "source_length_median": float(np.median(lengths)),
        "source_length_mean": float(lengths.mean()),
        "source_length_max": int(lengths.max()),
        "n_target_items": int(len(np.unique(tgt))),
        "n_target_items_model": cfg.n_target_items,
        "n_target_interactions": int(tcounts.sum()),
        "target_per_user_mean": float(tcounts.mean()),
        "n_genres": cfg.n_genres,
        "n_classes": cfg.n_classes,
        "class_shares": {class_id(k): float(s) for k, s in enumerate(shares)},
        "label_noise_realised": float(np.mean(world.labels != world.true_class)),
        "time_min": int(times.min()),
        "time_max": int(times.max()),
    }


# --------------------------------------------------------------------------
# Side information: item features and behaviour types (own random streams, so the
# interaction files above are unchanged by them).


@dataclasses.dataclass
class SideInfo:
    """Item features and per-interaction behaviour types of a world.

    ``category`` and ``brand`` are indices (-1 = missing), ``price`` floats
    (NaN = missing), ``behaviours`` per user an int array of indices into
    ``BEHAVIOURS`` aligned with ``world.source_items``.
    """

    category: np.ndarray
    brand: np.ndarray
    price: np.ndarray
    behaviours: list


def build_side_info(world: SyntheticWorld) -> SideInfo:
    """Samples the side information of ``world`` (deterministic in its seed and knobs)."""
    cfg = world.config
    n, g, per_brand = cfg.n_items, cfg.n_genres, cfg.brands_per_genre
    rng = part_rng(world.seed, PART_SIDE)
    u = rng.random((n, 8))
    other = (world.item_genre + 1 + np.minimum(np.floor(u[:, 1] * (g - 1)).astype(np.int64), g - 2)) % g
    category = np.where(u[:, 0] < cfg.category_noise, other, world.item_genre)
    category = np.where(u[:, 2] < cfg.p_missing_category, -1, category)
    brand_genre = np.where(u[:, 3] < cfg.brand_cross, np.minimum(np.floor(u[:, 4] * g).astype(np.int64), g - 1), world.item_genre)
    brand = brand_genre * per_brand + np.minimum(np.floor(u[:, 5] * per_brand).astype(np.int64), per_brand - 1)
    brand = np.where(u[:, 6] < cfg.p_missing_brand, -1, brand)
    genre_level = 2.0 + 2.0 * rng.random(g)
    price = np.round(np.exp(genre_level[world.item_genre] + 0.5 * normal(rng, n)), 2)
    price = np.where(u[:, 7] < cfg.p_missing_price, np.nan, price)

    rng = part_rng(world.seed, PART_BEHAVIOUR)
    mean_taste = 0.5 * (world.theta_start + world.theta_end)
    cdf_taste, cdf_other = np.cumsum(cfg.behaviour_probs_taste), np.cumsum(cfg.behaviour_probs_other)
    behaviours = []
    for user, items in enumerate(world.source_items):
        draws = rng.random(len(items))
        liked = mean_taste[user, world.item_genre[items]] >= cfg.behaviour_taste
        behaviours.append(np.where(liked, pick(cdf_taste, draws), pick(cdf_other, draws)).astype(np.int64))
    return SideInfo(category=category, brand=brand, price=price, behaviours=behaviours)


def category_id(k: int) -> str:
    return "g%02d" % (k + 1)


def brand_id(k: int) -> str:
    return "b%03d" % (k + 1)


def _item_rows(side: SideInfo):
    for i in range(len(side.category)):
        cells = (
            category_id(int(side.category[i])) if side.category[i] >= 0 else "",
            brand_id(int(side.brand[i])) if side.brand[i] >= 0 else "",
            "%.2f" % side.price[i] if np.isfinite(side.price[i]) else "",
        )
        if any(cells):  # an item with no feature at all has no row
            yield "%s\t%s\n" % (item_id(i), "\t".join(cells))


def write_side_files(world: SyntheticWorld, output_dir, side: SideInfo | None = None) -> dict:
    """Writes ``source.item`` and ``source_behaviour.inter``; returns ``{name: {"bytes", "sha256"}}``."""
    side = side or build_side_info(world)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    _write(out / ITEM_FILE, ITEM_HEADER, _item_rows(side))
    _write(
        out / BEHAVIOUR_FILE,
        BEHAVIOUR_HEADER,
        (
            "%s\t%s\t%d\t%s\n" % (user_id(u), item_id(i), t, BEHAVIOURS[b])
            for u in range(world.config.n_users)
            for i, t, b in zip(world.source_items[u].tolist(), world.source_times[u].tolist(), side.behaviours[u].tolist())
        ),
    )
    return {name: file_info(out / name) for name in SIDE_FILES}


def side_stats(side: SideInfo) -> dict:
    """Missing shares of the item features and the behaviour shares (``Data/README.md``)."""
    kinds = np.concatenate(side.behaviours)
    return {
        "missing_share": {
            "category": float(np.mean(side.category < 0)),
            "brand": float(np.mean(side.brand < 0)),
            "price": float(np.mean(~np.isfinite(side.price))),
            "all_fields": float(np.mean((side.category < 0) & (side.brand < 0) & ~np.isfinite(side.price))),
        },
        "behaviour_share": {name: float(np.mean(kinds == k)) for k, name in enumerate(BEHAVIOURS)},
    }


def generate(output_dir, seed: int = DEFAULT_SEED, **knobs) -> dict:
    """Samples the world and writes its files into ``output_dir``.

    ``knobs`` override :class:`SyntheticConfig` fields (the defaults made the
    committed ``Data/synthetic`` files with ``seed=2026``). Returns
    :func:`stats` plus ``"files"``: ``{name: {"bytes", "sha256"}}``.
    """
    world = build(seed, **knobs)
    result = stats(world)
    result["files"] = write_files(world, output_dir)
    side = build_side_info(world)
    result["files"].update(write_side_files(world, output_dir, side))
    result["side"] = side_stats(side)
    result["output_dir"] = os.fspath(output_dir)
    return result


def is_default_file(path) -> bool:
    """Whether ``path`` names a file of the default dataset: ``<anywhere>/Data/synthetic/<one of its files>``."""
    parent, name = os.path.split(os.path.abspath(os.fspath(path)))
    return name in DEFAULT_SHA256 and parent.endswith(os.sep + DEFAULT_DIR)


def ensure_default(path):
    """Write the default dataset into ``path``'s directory when ``path`` is one of its files and missing.

    Every other path, and an existing file, is left alone (a missing one is then reported by its reader). The files
    are generated in a temporary sibling directory and renamed into place one by one; concurrent callers write the
    same bytes, so the last rename wins harmlessly. Returns ``path``.
    """
    if os.path.exists(path) or not is_default_file(path):
        return path
    directory = os.path.dirname(os.path.abspath(os.fspath(path)))
    os.makedirs(directory, exist_ok=True)
    logging.getLogger(__name__).info("%s: writing the embedded synthetic default dataset (seed %d) into %s", path, DEFAULT_SEED, directory)
    tmp = tempfile.mkdtemp(dir=directory, prefix=".tmp-")
    try:
        generate(tmp)
        for name in DEFAULT_SHA256:
            os.replace(os.path.join(tmp, name), os.path.join(directory, name))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path
