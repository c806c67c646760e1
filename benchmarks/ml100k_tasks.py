"""Transfer tasks built from MovieLens-100K (RecBole ``.inter`` + ``.item``), for benchmarks only.

The licence of ml-100k forbids redistribution: these functions read the files from a path
(``../shared/data/ml-100k/`` by default) and write the derived task files into a work folder
outside the repository.

Domains: an item is in the *target* domain when one of its genres is in ``TARGET_GENRES``
(Action, Adventure, Sci-Fi, War, Western, Fantasy: 424 of 1,682 movies, 39 % of the ratings);
every other movie is the *source* domain. Each user's source-domain ratings, in time order, are
the behaviour sequence that is pretrained on and that every downstream task reads.

Tasks (every one uses only the source sequence as input):

- ``items`` (cold-start cross-domain items): the user's last ``targets_per_user`` target-domain
  movies, one (user, target) pair each; ranked by the paper's sampled protocol (1 + 99).
- ``generous`` (2 classes): the user's mean rating (over all of their ratings) is above the median
  of the users' means: a taste attribute that item ids only hint at (as gender does).
- ``action_share`` (3 classes): tercile of the share of the user's ratings that fall in the
  target domain, i.e. how much of an action/sci-fi fan the user is, read from what else they watch.
"""

from __future__ import annotations

import csv
import os

import numpy as np
import pandas as pd

TARGET_GENRES = ("Action", "Adventure", "Sci-Fi", "War", "Western", "Fantasy")
TASKS = ("items", "generous", "action_share")


def _atomic_columns(path):
    frame = pd.read_csv(path, sep="\t", quoting=csv.QUOTE_NONE, dtype=str, keep_default_na=False)
    frame.columns = [c.split(":")[0] for c in frame.columns]
    return frame


def load(inter_path, item_path):
    """Ratings joined with the target-domain flag, sorted by (user, timestamp, file order)."""
    for path in (inter_path, item_path):
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path}: not found (ml-100k in RecBole format is expected there)")
    inter = _atomic_columns(inter_path)
    items = _atomic_columns(item_path)
    genres = items["class"].str.split()
    target = {iid for iid, g in zip(items["item_id"], genres) if set(g) & set(TARGET_GENRES)}
    inter["rating"] = inter["rating"].astype(float)
    inter["timestamp"] = inter["timestamp"].astype(float)
    inter["order"] = np.arange(len(inter))
    inter["target_domain"] = inter["item_id"].isin(target)
    return inter.sort_values(["user_id", "timestamp", "order"], kind="stable").reset_index(drop=True)


def _write(path, header, rows):
    """Write atomically (a job reading the previous, identical file is never shown a partial one)."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", newline="") as f:
        f.write("\t".join(header) + "\n")
        for row in rows:
            f.write("\t".join(str(x) for x in row) + "\n")
    os.replace(tmp, path)


def build(inter_path, item_path, out_dir, targets_per_user=5):
    """Write ``source.inter`` and one targets file per task into ``out_dir``; returns their paths and stats."""
    os.makedirs(out_dir, exist_ok=True)
    inter = load(inter_path, item_path)
    source = inter[~inter["target_domain"]]
    target = inter[inter["target_domain"]]
    paths = {"source": os.path.join(out_dir, "source.inter")}
    _write(paths["source"], ["user_id:token", "item_id:token", "timestamp:float"],
           source[["user_id", "item_id", "timestamp"]].itertuples(index=False))

    last_targets = target.groupby("user_id", sort=False).tail(targets_per_user)
    paths["items"] = os.path.join(out_dir, "items.inter")
    _write(paths["items"], ["user_id:token", "item_id:token", "timestamp:float"],
           last_targets[["user_id", "item_id", "timestamp"]].itertuples(index=False))

    users = sorted(source["user_id"].unique(), key=int)
    mean_rating = inter.groupby("user_id")["rating"].mean().loc[users]
    generous = np.where(mean_rating.to_numpy() > np.median(mean_rating.to_numpy()), "generous", "strict")
    share = inter.groupby("user_id")["target_domain"].mean().loc[users].to_numpy()
    cuts = np.quantile(share, [1 / 3, 2 / 3])
    tercile = np.array(["low", "mid", "high"])[np.searchsorted(cuts, share, side="right")]
    for name, labels in (("generous", generous), ("action_share", tercile)):
        paths[name] = os.path.join(out_dir, f"{name}.inter")
        _write(paths[name], ["user_id:token", "label:token"], zip(users, labels))

    stats = {
        "users": len(users),
        "source_items": int(source["item_id"].nunique()),
        "source_interactions": len(source),
        "target_items": int(last_targets["item_id"].nunique()),
        "target_pairs": len(last_targets),
        "targets_per_user": targets_per_user,
        "target_domain_share_of_ratings": float(inter["target_domain"].mean()),
        "generous_majority": float(max(np.mean(generous == "generous"), np.mean(generous == "strict"))),
        "action_share_majority": float(max(np.mean(tercile == c) for c in ("low", "mid", "high"))),
    }
    return paths, stats
