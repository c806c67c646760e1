"""ATRank (Zhou et al. 2018): attention over the history with item side information and time buckets.

The settings, data + item-feature tables and the job are in :mod:`peterrec.tasks.side_info`
(:class:`~peterrec.tasks.side_info.ATRankConfig`, :func:`~peterrec.tasks.side_info.run_atrank`);
``--behaviour_field`` trains multi-behaviour ATRank.
"""

import dataclasses

from peterrec import recipes
from peterrec.data import item_features
from peterrec.tasks import atrank as atrank_tasks
from peterrec.tasks.side_info import ATRankConfig, run_atrank


def eval_rows(loaded, set_dir, split, batch_size):
    """An export's evaluation rows: the job's history width, time buckets, seeded negatives and behaviours."""
    job = loaded.config["job"]
    behaviour_fn = None
    if job.get("behaviour_field"):
        behaviours = item_features.behaviours_for_set(
            set_dir, loaded.vocab, job["data"], job["behaviour_field"], rating_threshold=job.get("rating_threshold")
        )
        behaviour_fn = behaviours.lookup_fn()
    return lambda ctx: atrank_tasks.eval_dataset(
        set_dir, split, max_len=job["history_width"], batch_size=batch_size, seed=job["seed"], vocabulary_size=loaded.vocab.size,
        input_context=ctx, behaviour_fn=behaviour_fn,
    )


recipes.register(recipes.Recipe(
    "atrank", ATRankConfig, run_atrank, layout="candidate_pairs", causal=True, pipeline="train", eval_rows=eval_rows, order=7,
    own_defaults=tuple(field.name for field in dataclasses.fields(ATRankConfig)),  # unset flags keep the original's defaults
    summary="ATRank: attention-based user behaviour modelling with item side information",
))
