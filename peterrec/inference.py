"""Batch inference: each user's top-k next items from an export, written to CSV."""

from __future__ import annotations

import csv
import os
import tempfile

from peterrec.data.readers import read_sequences
from peterrec.errors import ConfigError
from peterrec.export import load_export


def _write_rows(output, sequences, recommend, top_k, batch_size, progress):
    directory = os.path.dirname(os.path.abspath(output))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".csv")
    try:
        with os.fdopen(fd, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["user", "rank", "item", "score"])
            for start in range(0, len(sequences), batch_size):
                batch = sequences[start : start + batch_size]
                for seq, rec in zip(batch, recommend([s.items for s in batch], top_k)):  # the model keeps the last max_len
                    for rank, (item, score) in enumerate(rec, start=1):
                        writer.writerow([seq.user, rank, item, f"{score:.6g}"])
                if progress is not None:
                    progress(min(start + batch_size, len(sequences)))
        os.replace(tmp, output)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def predict_patches(backbone_export, patch_paths, data, fmt="auto", *, output_dir, top_k=10, batch_size=256):
    """One backbone export + N patch artifacts: one ``predictions-<i>.csv`` per patch (target ids or classes)."""
    from peterrec.patches import load_patched

    sequences, _ = read_sequences(data, fmt)
    outputs = []
    for i, model in enumerate(load_patched(backbone_export, patch_paths)):
        output = os.path.join(output_dir, f"predictions-{i}.csv")
        _write_rows(output, sequences, lambda seqs, k, m=model: m.recommend(seqs, top_k=k), top_k, batch_size, None)
        outputs.append(output)
    return {"users": len(sequences), "outputs": outputs}


def predict_file(export_path, data, fmt="auto", *, output, top_k=10, exclude_seen=False, batch_size=256, progress=None):
    """Write ``user,rank,item,score`` rows (rank 1 = best) for every user of ``data``.

    The user's whole history is sent (the model keeps the most recent ``max_len`` items as context;
    ``exclude_seen`` excludes every item of the history);
    unknown items map to OOV as in the serving signature. The CSV is written
    to a temporary file and renamed, so a reader never sees half of it.
    Returns ``{"users": n, "oov_items": m, "output": path}``.
    """
    loaded = load_export(export_path)
    served_k = loaded.config["serving"]["top_k"]
    if top_k > served_k:
        raise ConfigError(f"--top_k {top_k} is larger than the {served_k} items the export serves (its --top_k)")
    sequences, _ = read_sequences(data, fmt)
    known = set(loaded.vocab.tokens)
    oov = sum(1 for seq in sequences for item in seq.items if item not in known)
    recommend = lambda seqs, k: loaded.recommend(seqs, top_k=k, exclude_seen=exclude_seen)  # noqa: E731
    _write_rows(output, sequences, recommend, top_k, batch_size, progress)
    return {"users": len(sequences), "oov_items": oov, "output": output}
