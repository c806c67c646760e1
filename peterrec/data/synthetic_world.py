"""The generative model of the embedded synthetic dataset (:mod:`peterrec.data.synthetic` writes its files).

Generative model (every knob is a field of :class:`SyntheticConfig`):

* **Genres.** ``n_genres`` latent genres, each owning ``n_items / n_genres``
  source items and ``n_target_items / n_genres`` target items (assignment and
  within-genre rank are random permutations, so an id says nothing about its
  genre). Genres are split into ``n_classes`` equal *genre groups*.
* **Popularity.** Within a genre the item of rank ``r`` (1-based) has weight
  ``r ** -zipf`` (``item_zipf`` for source, ``target_zipf`` for target items).
* **Tastes.** A user has a sparse mixture over genres: 1, 2 or 3 dominant
  genres (``dominant_probs``) with Dirichlet(1) weights sharing
  ``1 - background`` of the mass; ``background`` is spread evenly over all
  genres. Taste drifts linearly along the sequence from ``theta_start`` to
  ``theta_end = (1 - drift) * theta_start + drift * theta_new`` where
  ``theta_new`` is a fresh sparse mixture.
* **Transitions (order matters).** Every source item has ``n_successors``
  preferred successors (distinct, never itself), each from its own genre with
  probability ``successor_in_genre`` and uniform over all items otherwise,
  chosen with probabilities ``successor_weights``. At every step after the first,
  with probability ``p_successor`` the next item is a successor of the current
  one; otherwise a genre is drawn from the current taste and an item from that
  genre's popularity.
* **Lengths.** Lognormal, median ``length_median``, log-sd ``length_sigma``,
  rounded and clipped to ``[length_min, length_max]``.
* **Timestamps.** Start uniform in ``[start_time, start_time_end)``; gaps are
  log-uniform "in-session" (1-30 min) with probability ``p_session_gap``,
  otherwise log-uniform "between sessions" (1 h - 5 days); all gaps >= 60 s, so
  timestamps strictly increase within a user.
* **Target domain.** ``1..5`` interactions per user (``target_count_probs``),
  distinct items; each comes with probability ``target_noise`` from a random
  genre, otherwise from a genre drawn from ``theta_end``; then an item from that
  genre's target popularity. The first one is 1 h - 14 days after the user's
  last source interaction.
* **Profile class.** ``label = argmax`` over genre groups of the user's mean
  taste along the sequence (``(theta_start + theta_end) / 2``); with
  probability ``label_noise`` it is replaced by a uniformly chosen *other*
  class.

Determinism: all randomness comes from ``rng.random()`` (uniform doubles from
``np.random.default_rng``, whose PCG64 stream is stable); normals, choices,
permutations and Dirichlet weights are derived from those uniforms here
(Box-Muller, inverse CDF, argsort of keys, exponentials) rather than with
numpy's samplers whose algorithms have changed between releases. Each part of
the model has its own stream (``default_rng([seed, part])``), so changing one
part leaves the draws of the others unchanged. Only integers are written, so the
files are byte-identical on every regeneration with the same seed and knobs.
"""

from __future__ import annotations

import dataclasses

import numpy as np

DEFAULT_SEED = 2026

# Stream ids of the model's parts (see ``part_rng``); never renumber.
PART_ITEMS, PART_SUCCESSORS, PART_TASTES, PART_SEQUENCES = 1, 2, 3, 4
PART_TIMES, PART_TARGET, PART_LABELS = 5, 6, 7
PART_SIDE, PART_BEHAVIOUR = 8, 9


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    """Knobs of the generative model; the defaults made the committed files."""

    n_users: int = 3000
    n_items: int = 6000
    n_genres: int = 20
    n_classes: int = 5
    item_zipf: float = 0.9
    # tastes
    dominant_probs: tuple = (0.35, 0.45, 0.20)
    background: float = 0.10
    drift: float = 0.30
    # transitions
    n_successors: int = 3
    successor_weights: tuple = (0.5, 0.3, 0.2)
    successor_in_genre: float = 0.8
    p_successor: float = 0.5
    # lengths
    length_median: float = 42.0
    length_sigma: float = 0.55
    length_min: int = 8
    length_max: int = 200
    # timestamps (unix seconds, UTC)
    start_time: int = 1704067200  # 2024-01-01
    start_time_end: int = 1759276800  # 2025-10-01
    p_session_gap: float = 0.7
    # target domain
    n_target_items: int = 300
    target_zipf: float = 1.0
    target_count_probs: tuple = (0.25, 0.25, 0.20, 0.15, 0.15)
    target_noise: float = 0.25
    # profile classes
    label_noise: float = 0.12
    # item side information (source.item): category = the latent genre, or with probability
    # category_noise another genre; brands_per_genre brands per genre, an item's brand from another
    # genre with probability brand_cross; each value missing with its own probability
    category_noise: float = 0.10
    p_missing_category: float = 0.20
    brands_per_genre: int = 8
    brand_cross: float = 0.15
    p_missing_brand: float = 0.30
    p_missing_price: float = 0.15
    # behaviour types (source_behaviour.inter): shares for items of the user's dominant genres
    # (taste weight >= behaviour_taste) and for the others
    behaviour_taste: float = 0.15
    behaviour_probs_taste: tuple = (0.60, 0.25, 0.15)
    behaviour_probs_other: tuple = (0.85, 0.11, 0.04)

    def validate(self) -> None:
        """Raises ``ValueError`` naming the first inconsistent knob."""
        if self.n_items % self.n_genres:
            raise ValueError("n_items must be a multiple of n_genres")
        if self.n_target_items % self.n_genres:
            raise ValueError("n_target_items must be a multiple of n_genres")
        if self.n_genres % self.n_classes:
            raise ValueError("n_genres must be a multiple of n_classes")
        if len(self.successor_weights) != self.n_successors:
            raise ValueError("successor_weights needs n_successors entries")
        if not 1 <= len(self.dominant_probs) <= self.n_genres:
            raise ValueError("dominant_probs: 1..n_genres entries")
        if not 1 <= self.length_min <= self.length_max:
            raise ValueError("need 1 <= length_min <= length_max")
        if self.n_successors >= self.n_items // self.n_genres:
            raise ValueError("n_successors must be below the genre size")
        if len(self.target_count_probs) > self.n_target_items // self.n_genres:
            raise ValueError("target_count_probs longer than a target genre")


@dataclasses.dataclass
class SyntheticWorld:
    """The sampled data plus the latent structure that produced it.

    Item, target-item, user and class numbers are 0-based indices; the files
    name them ``i%05d``/``t%04d``/``u%04d``/``c%d`` of ``index + 1`` (classes
    of ``index``).
    """

    config: SyntheticConfig
    seed: int
    item_genre: np.ndarray  # (n_items,) genre of each source item
    item_rank: np.ndarray  # (n_items,) 0-based popularity rank within genre
    successors: np.ndarray  # (n_items, n_successors) preferred successors
    target_genre: np.ndarray  # (n_target_items,)
    target_rank: np.ndarray  # (n_target_items,)
    genre_group: np.ndarray  # (n_genres,) genre -> group (= class)
    theta_start: np.ndarray  # (n_users, n_genres)
    theta_end: np.ndarray  # (n_users, n_genres)
    true_class: np.ndarray  # (n_users,) label before noise
    labels: np.ndarray  # (n_users,) label written to profile.inter
    source_items: list  # per user int array of item indices
    source_times: list  # per user int64 array of unix seconds
    target_items: list
    target_times: list


# --------------------------------------------------------------------------
# Uniform-only sampling primitives (stable across numpy versions).


def part_rng(seed: int, part: int) -> np.random.Generator:
    return np.random.default_rng([seed, part])


def _permutation(rng, n):
    return np.argsort(rng.random(n), kind="stable")


def normal(rng, n):
    """Box-Muller standard normals from 2n uniforms."""
    u1 = rng.random(n)
    u2 = rng.random(n)
    return np.sqrt(-2.0 * np.log1p(-u1)) * np.cos(2.0 * np.pi * u2)


def pick(cdf, u):
    """Inverse-CDF index for uniforms ``u`` (``cdf`` increasing, unnormalised)."""
    idx = np.searchsorted(cdf, np.asarray(u) * cdf[-1], side="right")
    return np.minimum(idx, len(cdf) - 1)


def _pick_rows(cdf, u):
    """Row-wise inverse CDF: ``cdf`` is (n, k) with increasing rows."""
    idx = (cdf < (u * cdf[:, -1])[:, None]).sum(axis=1)
    return np.minimum(idx, cdf.shape[1] - 1)


def _log_uniform(u, low, high):
    return np.exp(np.log(low) + u * (np.log(high) - np.log(low)))


def _zipf_cdf(size, exponent):
    return np.cumsum(np.arange(1, size + 1, dtype=np.float64) ** -exponent)


# --------------------------------------------------------------------------
# The model.


def _assign_genres(rng, n, n_genres):
    """Random genre (equal sizes) and within-genre rank for ``n`` items.

    Returns ``genre``, ``rank`` and ``members[g, r]`` = item of rank r in g.
    """
    perm = _permutation(rng, n)
    per = n // n_genres
    members = perm.reshape(n_genres, per)
    genre = np.empty(n, np.int64)
    rank = np.empty(n, np.int64)
    genre[members] = np.arange(n_genres)[:, None]
    rank[members] = np.arange(per)[None, :]
    return genre, rank, members


def _sample_successors(rng, cfg, item_genre, members):
    n, k = cfg.n_items, cfg.n_successors
    per = n // cfg.n_genres
    out = np.empty((n, k), np.int64)
    for i in range(n):
        chosen = []
        while len(chosen) < k:
            in_genre, pos = rng.random(2)
            if in_genre < cfg.successor_in_genre:
                cand = int(members[item_genre[i], int(pos * per)])
            else:
                cand = int(pos * n)
            if cand != i and cand not in chosen:
                chosen.append(cand)
        out[i] = chosen
    return out


def _sparse_tastes(rng, cfg, n_users):
    """(n_users, n_genres) sparse mixtures: 1-3 dominant genres + background."""
    g = cfg.n_genres
    n_dom = pick(np.cumsum(cfg.dominant_probs), rng.random(n_users)) + 1
    keys = rng.random((n_users, g))
    weights = -np.log1p(-rng.random((n_users, len(cfg.dominant_probs))))
    theta = np.full((n_users, g), cfg.background / g)
    for u in range(n_users):
        dom = np.argsort(keys[u], kind="stable")[: n_dom[u]]
        w = weights[u, : n_dom[u]]
        theta[u, dom] += (1.0 - cfg.background) * w / w.sum()
    return theta


def _gaps(rng, n, p_session):
    """Integer gaps (seconds, >= 60): in-session or between sessions."""
    kind, u = rng.random(n), rng.random(n)
    short = _log_uniform(u, 60.0, 1800.0)
    long = _log_uniform(u, 3600.0, 5 * 86400.0)
    return np.floor(np.where(kind < p_session, short, long)).astype(np.int64)


def build(seed: int = DEFAULT_SEED, **knobs) -> SyntheticWorld:
    """Samples the world; ``knobs`` override :class:`SyntheticConfig` fields."""
    cfg = SyntheticConfig(**knobs)
    cfg.validate()
    g = cfg.n_genres
    per_genre = cfg.n_items // g
    per_target_genre = cfg.n_target_items // g

    rng = part_rng(seed, PART_ITEMS)
    item_genre, item_rank, members = _assign_genres(rng, cfg.n_items, g)
    target_genre, target_rank, target_members = _assign_genres(
        rng, cfg.n_target_items, g
    )
    genre_group = np.arange(g) // (g // cfg.n_classes)
    successors = _sample_successors(
        part_rng(seed, PART_SUCCESSORS), cfg, item_genre, members
    )

    rng = part_rng(seed, PART_TASTES)
    theta_start = _sparse_tastes(rng, cfg, cfg.n_users)
    theta_new = _sparse_tastes(rng, cfg, cfg.n_users)
    theta_end = (1.0 - cfg.drift) * theta_start + cfg.drift * theta_new

    # Source sequences.
    rng = part_rng(seed, PART_SEQUENCES)
    raw = np.exp(np.log(cfg.length_median) + cfg.length_sigma * normal(rng, cfg.n_users))
    lengths = np.clip(np.floor(raw + 0.5), cfg.length_min, cfg.length_max).astype(np.int64)
    zipf = _zipf_cdf(per_genre, cfg.item_zipf)
    succ_cdf = np.cumsum(cfg.successor_weights)
    succ_list = successors.tolist()
    source_items = []
    for u in range(cfg.n_users):
        n = int(lengths[u])
        w = (np.arange(n, dtype=np.float64) / max(n - 1, 1))[:, None]
        taste = np.cumsum((1.0 - w) * theta_start[u] + w * theta_end[u], axis=1)
        genre = _pick_rows(taste, rng.random(n))
        drawn = members[genre, pick(zipf, rng.random(n))].tolist()
        use_succ = (rng.random(n) < cfg.p_successor).tolist()
        which = pick(succ_cdf, rng.random(n)).tolist()
        seq = [drawn[0]]
        for t in range(1, n):
            seq.append(succ_list[seq[-1]][which[t]] if use_succ[t] else drawn[t])
        source_items.append(np.asarray(seq, np.int64))

    # Source timestamps.
    rng = part_rng(seed, PART_TIMES)
    span = cfg.start_time_end - cfg.start_time
    starts = cfg.start_time + np.floor(rng.random(cfg.n_users) * span).astype(np.int64)
    source_times = []
    for u in range(cfg.n_users):
        gaps = _gaps(rng, int(lengths[u]) - 1, cfg.p_session_gap)
        source_times.append(starts[u] + np.concatenate([[0], np.cumsum(gaps)]))

    # Target domain.
    rng = part_rng(seed, PART_TARGET)
    tzipf = _zipf_cdf(per_target_genre, cfg.target_zipf)
    counts = pick(np.cumsum(cfg.target_count_probs), rng.random(cfg.n_users)) + 1
    end_cdf = np.cumsum(theta_end, axis=1)
    target_items, target_times = [], []
    for u in range(cfg.n_users):
        chosen = []
        while len(chosen) < counts[u]:
            noise, ug, ui = rng.random(3)
            if noise < cfg.target_noise:
                genre = min(int(ug * g), g - 1)
            else:
                genre = int(pick(end_cdf[u], ug))
            item = int(target_members[genre, pick(tzipf, ui)])
            if item not in chosen:
                chosen.append(item)
        first = np.floor(_log_uniform(rng.random(1), 3600.0, 14 * 86400.0))
        gaps = np.concatenate([first.astype(np.int64), _gaps(rng, len(chosen) - 1, cfg.p_session_gap)])
        target_items.append(np.asarray(chosen, np.int64))
        target_times.append(source_times[u][-1] + np.cumsum(gaps))

    # Profile classes.
    rng = part_rng(seed, PART_LABELS)
    mean_taste = 0.5 * (theta_start + theta_end)
    group_mass = np.zeros((cfg.n_users, cfg.n_classes))
    for k in range(cfg.n_classes):
        group_mass[:, k] = mean_taste[:, genre_group == k].sum(axis=1)
    true_class = np.argmax(group_mass, axis=1)
    flip = rng.random(cfg.n_users) < cfg.label_noise
    shift = 1 + np.minimum(
        np.floor(rng.random(cfg.n_users) * (cfg.n_classes - 1)).astype(np.int64),
        cfg.n_classes - 2,
    )
    labels = np.where(flip, (true_class + shift) % cfg.n_classes, true_class)

    return SyntheticWorld(
        config=cfg,
        seed=seed,
        item_genre=item_genre,
        item_rank=item_rank,
        successors=successors,
        target_genre=target_genre,
        target_rank=target_rank,
        genre_group=genre_group,
        theta_start=theta_start,
        theta_end=theta_end,
        true_class=true_class,
        labels=labels,
        source_items=source_items,
        source_times=source_times,
        target_items=target_items,
        target_times=target_times,
    )
